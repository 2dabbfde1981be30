//! The formats section: the same records decoded from JSON, Avro and Protobuf (the schemas
//! derived from the pipeline's `[event]`), the consuming path's CPU in each, and the file
//! source end to end against reading its file raw.

use super::{compare, figure, rate, scratch_path, BenchOptions, Figure};
use crate::codec::{Codec, Format};
use crate::config::Pipeline;
use crate::event::{Framing, Record};
use crate::generator::{Generator, GeneratorScript};
use crate::pipeline::{self, Components, RunOptions};
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DECODE: &str = "decode";

pub(super) async fn formats_section(
    pipeline: &Pipeline,
    script: &GeneratorScript,
    opts: &BenchOptions,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    tracing::info!("bench: formats");
    let mut events = Vec::with_capacity(n as usize);
    Generator::new(script.clone(), Some(2)).fill(n as usize, &mut events);
    let dir = scratch_path("-formats");
    std::fs::create_dir_all(&dir)?;
    let codecs = codecs(pipeline, &dir)?;
    let set = Arc::new(
        pipeline
            .metric_set(&Default::default())
            .map_err(|mut e| e.remove(0))?,
    );
    for codec in &codecs {
        let messages = encode(codec, &events)?;
        let mut ns = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            for m in &messages {
                std::hint::black_box(codec.decode(Some(m)).map_err(|(_, why)| {
                    anyhow::anyhow!("bench: a record does not decode: {why}")
                })?);
            }
            ns.push(t.elapsed().as_nanos() as f64 / messages.len().max(1) as f64);
        }
        let bytes =
            messages.iter().map(Vec::len).sum::<usize>() as f64 / messages.len().max(1) as f64;
        figures.push(figure(
            &format!(
                "{DECODE} {}, {bytes:.0} bytes/record",
                codec.format().name()
            ),
            "ns/record",
            ns,
        ));
        let cpu = super::local::consuming_path_cpu(pipeline, codec, &set, &messages, runs);
        super::push_cpu(
            figures,
            &format!(
                "consuming path cpu in {}, store discarded",
                codec.format().name()
            ),
            cpu,
        );
    }
    let json_line = figures
        .iter()
        .find(|f| f.name.starts_with(&format!("{DECODE} JSON")))
        .map(|f| f.name.clone());
    if let Some(json) = json_line {
        for other in ["Avro", "Protobuf"] {
            if let Some(f) = figures
                .iter()
                .find(|f| f.name.starts_with(&format!("{DECODE} {other}")))
            {
                let name = f.name.clone();
                compare(figures, &name, &json);
            }
        }
    }
    file_source(pipeline, &codecs[0], &events, &dir, runs, figures).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// JSON, and Avro and Protobuf of schemas derived from the pipeline's record.
fn codecs(pipeline: &Pipeline, dir: &std::path::Path) -> anyhow::Result<Vec<Codec>> {
    let schema = pipeline.schema();
    let max = pipeline.config.consumer.validation.max_event_bytes;
    let avsc = dir.join("record.avsc");
    std::fs::write(&avsc, crate::codec::avro::schema_for(&schema, "Record"))?;
    let proto = dir.join("record.proto");
    std::fs::write(
        &proto,
        crate::codec::protobuf::proto_for(&schema, "bench", "Record"),
    )?;
    let event = |format, file: &std::path::Path, message: Option<&str>| crate::event::EventConfig {
        format,
        schema: Some(file.to_path_buf()),
        message: message.map(str::to_string),
        framing: Framing::None,
        schemas: Default::default(),
        registry: None,
        ..pipeline.config.event.clone()
    };
    let build = |e: crate::event::EventConfig| {
        Codec::build(&e, schema.clone(), max).map_err(anyhow::Error::msg)
    };
    Ok(vec![
        Codec::json(schema.clone(), max),
        build(event(Format::Avro, &avsc, None))?,
        build(event(Format::Protobuf, &proto, Some("bench.Record")))?,
    ])
}

fn encode(codec: &Codec, events: &[Record]) -> anyhow::Result<Vec<Vec<u8>>> {
    events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            codec.encode(e, &mut out).map_err(anyhow::Error::msg)?;
            Ok(out)
        })
        .collect()
}

/// The file source through the consumer into the embedded store, against reading the same file
/// line by line.
async fn file_source(
    pipeline: &Pipeline,
    json: &Codec,
    events: &[Record],
    dir: &std::path::Path,
    runs: usize,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let file = dir.join("records.jsonl");
    let mut text = Vec::new();
    for m in encode(json, events)? {
        crate::codec::write_delimited(Format::Json, &m, &mut text);
    }
    std::fs::write(&file, &text)?;
    let (mut raw, mut e2e) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let lines = std::io::BufReader::new(std::fs::File::open(&file)?)
            .split(b'\n')
            .count();
        raw.push(rate(lines as u64, t.elapsed()));
        let mut p = pipeline.clone();
        p.config.mongodb.uri = "embedded".into();
        p.config.embedded.data_dir = dir.join(format!("store-{i}"));
        p.config.source.file = Some(file.clone());
        let options = RunOptions {
            components: Components::CONSUMER,
            progress_every: Duration::from_secs(3600),
            ..RunOptions::default()
        };
        let summary = pipeline::run(&p, options, CancellationToken::new()).await?;
        e2e.push(rate(summary.stats.stored, summary.consumer_busy));
    }
    const RAW: &str = "file source baseline: read the JSON lines file raw";
    const E2E: &str = "file source end to end: JSON lines into the embedded store";
    figures.push(figure(RAW, "events/s", raw));
    figures.push(figure(E2E, "events/s", e2e));
    compare(figures, E2E, RAW);
    Ok(())
}
