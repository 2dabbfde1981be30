//! The in-process sections: generation, aggregation, the embedded end to end and memory.

use super::baseline;
use super::{
    child_peak_rss_mb, compare, figure, process_cpu, rate, scratch_path, BenchOptions, Figure,
};
use crate::aggregate::{Aggregator, MetricSet};
use crate::config::Pipeline;
use crate::event::{Record, Schema};
use crate::generator::{Generator, GeneratorScript};
use crate::pipeline::{self, RunOptions};
use crate::store::mongo::to_raw;
use crate::telemetry::Stats;
use crate::transport::Batch;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub(super) fn generator_section(
    pipeline: &Pipeline,
    script: &GeneratorScript,
    opts: &BenchOptions,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    tracing::info!(events = n, runs, "bench: generator");
    let mut plan = Vec::new();
    let mut plain = Vec::new();
    // A session script, unpaced, keeps a thousand sessions open; paced at a huge rate it keeps
    // max_open (Little's law), the most the heap ever holds.
    let mut crowd = Vec::new();
    let mut crowd_open = 0;
    for _ in 0..runs {
        let mut gen = Generator::new(script.clone(), Some(1));
        plan.push(rate(n, time_fill(n, |k, out| gen.fill(k, out))));
        let mut base = baseline::PlainGenerator::new(pipeline.schema());
        plain.push(rate(n, time_fill(n, |k, out| base.fill(k, out))));
        if script.sessions().is_some() {
            let mut gen = Generator::new(script.clone(), Some(1));
            let effects = crate::generator::Effects::default();
            crowd.push(rate(
                n,
                time_fill(n, |k, out| {
                    let tick = crate::generator::Tick {
                        now_ms: chrono::Utc::now().timestamp_millis(),
                        rate: 1e12,
                        effects: &effects,
                    };
                    gen.fill_at(k, &tick, out)
                }),
            ));
            crowd_open = gen.open_sessions();
        }
    }
    let shipped = match script.sessions() {
        Some(_) => "generator: Rhai-described sessions, 1,000 open",
        None => "generator: Rhai-described plan",
    };
    figures.push(figure(shipped, "events/s", plan));
    figures.push(figure("generator: plain Rust", "events/s", plain));
    compare(figures, shipped, "generator: plain Rust");
    if !crowd.is_empty() {
        let name = format!("generator: sessions, {crowd_open} open");
        figures.push(figure(&name, "events/s", crowd));
        compare(figures, &name, "generator: plain Rust");
    }

    let hook = with_hook(pipeline)?;
    let mut hooked = Vec::new();
    for _ in 0..runs {
        let mut gen = Generator::new(hook.0.clone(), Some(1));
        let k = (n / 4).max(1000);
        hooked.push(rate(k, time_fill(k, |m, out| gen.fill(m, out))));
    }
    figures.push(figure("generator: with on_event hook", "events/s", hooked));
    compare(
        figures,
        "generator: with on_event hook",
        "generator: plain Rust",
    );
    Ok(())
}

pub(super) fn aggregate_section(
    pipeline: &Pipeline,
    script: &GeneratorScript,
    opts: &BenchOptions,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    tracing::info!("bench: aggregation");
    let set = Arc::new(
        pipeline
            .metric_set(&Default::default())
            .map_err(|mut e| e.remove(0))?,
    );
    let mut events = Vec::with_capacity(n as usize);
    Generator::new(script.clone(), Some(2)).fill(n as usize, &mut events);
    let (mut apply_ns, mut full_ns) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let stats = Stats::new();
        let mut agg = Aggregator::new(set.clone(), stats.clone());
        let (mut apply, mut encode) = (Duration::ZERO, Duration::ZERO);
        for chunk in events.chunks_mut(2000) {
            let t = Instant::now();
            set.derive(chunk, &stats);
            agg.apply(chunk, &[]);
            apply += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(agg.checkpoint());
            encode += t.elapsed();
        }
        apply_ns.push(apply.as_nanos() as f64 / n as f64);
        full_ns.push((apply + encode).as_nanos() as f64 / n as f64);
    }
    figures.push(figure(
        &format!("aggregate: {} shipped metrics, apply", set.metrics().len()),
        "ns/event",
        apply_ns,
    ));
    figures.push(figure(
        "aggregate: apply + encode partials to store",
        "ns/event",
        full_ns,
    ));
    let codec = crate::pipeline::codec(&pipeline.config).expect("the pipeline compiled");
    let messages: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut payload = Vec::new();
            codec
                .encode(e, &mut payload)
                .expect("generated records fit the schema");
            payload
        })
        .collect();
    let cpu = consuming_path_cpu(pipeline, &codec, &set, &messages, runs);
    super::push_cpu(figures, "consuming path cpu, store discarded: decode + validate + shipped metrics + encode, partials every batch", cpu);
    let mut curve = Vec::new();
    for threads in [1, 2] {
        let mut rates = Vec::new();
        for _ in 0..runs {
            let (p, set, events) = (pipeline.clone(), set.clone(), events.clone());
            let run = std::thread::spawn(move || -> anyhow::Result<f64> {
                // One thread is all of it on one: the runtime's only thread, no worker pool.
                let rt = match threads {
                    1 => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?,
                    n => tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(n)
                        .enable_all()
                        .build()?,
                };
                // Spawned, so the consumer runs on the runtime's threads as in `runner run`, not on
                // this one beside them.
                rt.block_on(async move {
                    tokio::spawn(async move {
                        drain_queue(&p, set, events, threads, Arc::new(super::discard::Discard))
                            .await
                    })
                    .await?
                })
            });
            rates.push(
                run.join()
                    .map_err(|_| anyhow::anyhow!("bench: the worker-thread run panicked"))??,
            );
        }
        curve.push(figure(
            &format!(
                "consuming path, writes discarded, {threads} worker thread{}",
                if threads == 1 { "" } else { "s" }
            ),
            "events/s",
            rates,
        ));
    }
    let one = curve[0].name.clone();
    let two = curve[1].name.clone();
    figures.extend(curve);
    compare(figures, &two, &one);
    match q5_like(pipeline)? {
        Some(q5) => {
            let cpu = consuming_path_cpu(pipeline, &codec, &q5, &messages, runs);
            super::push_cpu(figures, "nexmark q5-like cpu: hottest item, 60 s sliding 5 s (Flink published: 22,100/s/core)", cpu);
        }
        None => tracing::info!("bench: no item_id field, so no Nexmark q5-like line"),
    }
    Ok(())
}

/// The runner's consumer over an in-process queue already holding `events` (no broker to wait
/// for) into `store` (for the curve, one that encodes and drops), with `threads` runtime threads and as many worker
/// threads (`consumer.workers`): the reader encodes each batch for the store in parts, and the
/// metrics are applied and encoded split between the threads. Events/s from the first batch
/// consumed to the last checkpoint.
async fn drain_queue(
    pipeline: &Pipeline,
    set: Arc<MetricSet>,
    events: Vec<Record>,
    threads: usize,
    store: Arc<dyn crate::store::Store>,
) -> anyhow::Result<f64> {
    use crate::transport::Publisher;
    let stats = Stats::new();
    let batches = events.len().div_ceil(1000);
    let (mut publisher, subscriber) = crate::transport::embedded::channel(
        batches,
        pipeline.config.consumer.batch_size,
        stats.clone(),
    );
    for chunk in events.chunks(1000) {
        publisher.publish(chunk.to_vec()).await?;
    }
    drop(publisher);
    let never = CancellationToken::new;
    let until = crate::consumer::StopWhen {
        stop: never(),
        idle: None,
        producers_done: never(),
        drain: never(),
    };
    let aggregator = Aggregator::new(set, stats.clone());
    let config = crate::consumer::ConsumerConfig {
        workers: threads,
        ..pipeline.config.consumer.clone()
    };
    crate::consumer::run(
        Box::new(subscriber),
        store,
        Some(aggregator),
        None,
        stats.clone(),
        &config,
        until,
    )
    .await?;
    Ok(rate(stats.snapshot().stored, stats.busy_span()))
}

/// Nexmark q5 ("hot items": the item with the most bids over a 60 s window sliding every 5 s)
/// as a metric of this pipeline's records, so its cost compares like for like with Flink's
/// published figure; `None` when the records have no `item_id`.
fn q5_like(pipeline: &Pipeline) -> anyhow::Result<Option<Arc<MetricSet>>> {
    let schema = pipeline.schema();
    if schema.slot("item_id").is_none() {
        return Ok(None);
    }
    let script = scratch_path(".rhai");
    std::fs::write(&script, "#{ key: field(\"item_id\") }")?;
    let text = format!("name = \"q5_hot_items\"\nscript = {script:?}\nreducer = \"top_k\"\nk = 1\nwindow = \"60s\"\nslide = \"5s\"\n");
    let config: crate::aggregate::MetricConfig = toml::from_str(&text)?;
    let set = MetricSet::load(&[config], &[], &schema);
    let _ = std::fs::remove_file(&script);
    Ok(Some(Arc::new(set?)))
}

/// The process's CPU time per event on the consuming path, in µs, as the consumer does it per
/// batch: decode the message (in `codec`'s format), validate, aggregate, and encode the raw document and the
/// changed partials for the store (the writes themselves are the store's, not the runner's, work).
pub(super) fn consuming_path_cpu(
    pipeline: &Pipeline,
    codec: &crate::codec::Codec,
    set: &Arc<MetricSet>,
    messages: &[Vec<u8>],
    runs: usize,
) -> Vec<f64> {
    let mut cpu_us = Vec::new();
    for _ in 0..runs {
        let stats = Stats::new();
        let mut agg = Aggregator::new(set.clone(), stats.clone());
        let before = process_cpu();
        for chunk in messages.chunks(2000) {
            let mut batch = Batch::default();
            for m in chunk {
                match codec.decode(Some(m)) {
                    Ok(e) => batch.events.push(e),
                    Err((_, why)) => panic!("bench: a generated event does not decode: {why}"),
                }
            }
            pipeline.config.consumer.validation.apply(&mut batch);
            set.derive(&mut batch.events, &stats);
            agg.apply(&batch.events, &[]);
            std::hint::black_box(agg.checkpoint());
            std::hint::black_box(
                batch
                    .events
                    .iter()
                    .map(|e| to_raw(e, usize::MAX))
                    .collect::<Vec<_>>(),
            );
        }
        cpu_us.push(super::us_per_event(
            process_cpu() - before,
            messages.len() as u64,
        ));
    }
    cpu_us
}

pub(super) async fn embedded_section(
    pipeline: &Pipeline,
    opts: &BenchOptions,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    tracing::info!("bench: embedded end to end");
    let mut embedded = Vec::new();
    for _ in 0..runs {
        let dir = scratch_path("");
        let mut p = pipeline.clone();
        p.config.kafka.bootstrap_servers = "embedded".into();
        p.config.mongodb.uri = "embedded".into();
        p.config.embedded.data_dir = dir.clone();
        p.config.generator.rate = 0.0;
        p.config.generator.batch_size = 1000;
        let options = RunOptions {
            max_events: Some(n),
            progress_every: Duration::from_secs(3600),
            ..RunOptions::default()
        };
        let summary = pipeline::run(&p, options, CancellationToken::new()).await?;
        // From the first event consumed to the last checkpoint, like the baseline's clock:
        // opening the store and compiling the scripts are not moving events.
        embedded.push(rate(summary.stats.stored, summary.consumer_busy));
        let _ = std::fs::remove_dir_all(dir);
    }
    figures.push(figure(EMBEDDED_E2E, "events/s", embedded));

    // The baseline: the same rows (id, time, JSON body) into the same tables, indexes and
    // pragmas, straight through rusqlite: one prepared statement, one transaction per batch.
    tracing::info!("bench: raw SQLite insert");
    let schema = pipeline.schema();
    let script = crate::generator::GeneratorScript::load(&pipeline.config.generator, &schema)?;
    let mut events = Vec::with_capacity(n as usize);
    Generator::new(script, Some(4)).fill(n as usize, &mut events);
    let rows: Vec<(String, i64, String)> = events
        .iter()
        .map(|e| (e.id().to_string(), e.time_ms(), e.to_json()))
        .collect();
    let mut raw = Vec::new();
    for _ in 0..runs {
        let dir = scratch_path("");
        let config = crate::store::embedded::EmbeddedConfig {
            data_dir: dir.clone(),
            ..Default::default()
        };
        drop(crate::store::embedded::EmbeddedStore::open(
            &config,
            &pipeline.config.retention,
            &schema,
            &pipeline.config.mongodb.indexes,
        )?);
        let mut conn = rusqlite::Connection::open(dir.join("runner.db"))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        let t = Instant::now();
        for batch in rows.chunks(pipeline.config.consumer.batch_size.max(1)) {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO raw_records (id, time_ms, body) VALUES (?1, ?2, ?3)",
                )?;
                for r in batch {
                    stmt.execute(rusqlite::params![r.0, r.1, r.2])?;
                }
            }
            tx.commit()?;
        }
        raw.push(rate(n, t.elapsed()));
        drop(conn);
        let _ = std::fs::remove_dir_all(dir);
    }
    figures.push(figure(RAW_SQLITE, "events/s", raw));
    compare(figures, EMBEDDED_E2E, RAW_SQLITE);

    // The consumer alone, as the Kafka figures measure it (the topic written first): the queue
    // holds the same events before it starts, so the generator takes no core from it.
    let set = Arc::new(
        pipeline
            .metric_set(&Default::default())
            .map_err(|mut e| e.remove(0))?,
    );
    let mut drained = Vec::new();
    for _ in 0..runs {
        let dir = scratch_path("");
        let config = crate::store::embedded::EmbeddedConfig {
            data_dir: dir.clone(),
            ..Default::default()
        };
        let store = crate::store::embedded::EmbeddedStore::open(
            &config,
            &pipeline.config.retention,
            &schema,
            &pipeline.config.mongodb.indexes,
        )?;
        drained.push(
            drain_queue(
                pipeline,
                set.clone(),
                events.clone(),
                pipeline.config.consumer.workers,
                Arc::new(store),
            )
            .await?,
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    figures.push(figure(EMBEDDED_DRAIN, "events/s", drained));
    compare(figures, EMBEDDED_DRAIN, RAW_SQLITE);
    Ok(())
}

const EMBEDDED_E2E: &str = "end to end, embedded: generate -> queue -> aggregate -> SQLite";
const EMBEDDED_DRAIN: &str =
    "end to end, embedded, queue filled first: queue -> aggregate -> SQLite";
const RAW_SQLITE: &str =
    "sqlite insert: raw rusqlite, same rows, indexes and pragmas, a transaction per batch";

fn time_fill(n: u64, mut fill: impl FnMut(usize, &mut Vec<Record>)) -> Duration {
    let mut out = Vec::with_capacity(1000);
    let mut left = n;
    let t = Instant::now();
    while left > 0 {
        let k = left.min(1000) as usize;
        out.clear();
        fill(k, &mut out);
        std::hint::black_box(&out);
        left -= k as u64;
    }
    t.elapsed()
}

/// The pipeline's generator script plus a per-event hook that adds one field.
fn with_hook(pipeline: &Pipeline) -> anyhow::Result<(GeneratorScript, tempfile_path::TempScript)> {
    let path = pipeline
        .config
        .generator
        .script
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the bench needs a [generator] script"))?;
    let source = std::fs::read_to_string(path)?;
    let tmp = tempfile_path::TempScript::new(&format!(
        "fn on_event(e) {{ e.channel = if e.len() > 5 {{ \"web\" }} else {{ \"app\" }}; e }}\n{source}"
    ))?;
    let mut cfg = pipeline.config.generator.clone();
    cfg.script = Some(tmp.path.clone());
    Ok((GeneratorScript::load(&cfg, &pipeline.schema())?, tmp))
}

mod tempfile_path {
    /// A script file removed when dropped.
    pub struct TempScript {
        pub path: std::path::PathBuf,
    }
    impl TempScript {
        pub fn new(text: &str) -> std::io::Result<Self> {
            let path = super::scratch_path(".rhai");
            std::fs::write(&path, text)?;
            Ok(TempScript { path })
        }
    }
    impl Drop for TempScript {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The memory figure: records drawn from a population of this many keys (the pipeline's param
/// `MEMORY_PARAM`, when its generator script has one: `USERS` in the shipped pipeline), so that
/// over 100,000 distinct keys are active in one 60 s window. A session draws its key once, for
/// all its records, so the key's skew is flattened too (`MEMORY_SKEW_PARAM`, when the pipeline
/// has that param) to draw that many keys from 1.2M records.
const MEMORY_PARAM: &str = "USERS";
const MEMORY_SKEW_PARAM: &str = "SKEW";
const MEMORY_SKEW: f64 = 0.6;
const MEMORY_KEYS: i64 = 400_000;
const MEMORY_EVENTS: u64 = 1_200_000;

/// Peak RSS of a runner process (generator, consumer, every metric, embedded queue and store)
/// whose windows hold over 100,000 active keys, and how many keys that was.
pub(super) async fn memory_section(
    pipeline: &Pipeline,
    opts: &BenchOptions,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    tracing::info!(
        keys = MEMORY_KEYS,
        events = MEMORY_EVENTS,
        "bench: memory with many active keys"
    );
    let (mut rss, mut active, mut consumer, mut per_100k) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let dir = scratch_path("");
        let mut child = memory_run(pipeline, &dir)?;
        child
            .args([
                "--generation-rate",
                "0",
                "--batch-size",
                "1000",
                "--param",
                &format!("{MEMORY_PARAM}={MEMORY_KEYS}"),
            ])
            .args(["--events", &MEMORY_EVENTS.to_string()]);
        if pipeline
            .config
            .generator
            .params
            .contains_key(MEMORY_SKEW_PARAM)
        {
            child.args(["--param", &format!("{MEMORY_SKEW_PARAM}={MEMORY_SKEW}")]);
        }
        let measured = match child_peak_rss_mb(child) {
            Ok(mb) => consumer_alone(pipeline, &dir)
                .await
                .map(|(keys, alone)| (mb, keys, alone)),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&dir);
        let (mb, keys, alone) = measured?;
        rss.push(mb);
        consumer.push(alone);
        per_100k.push(alone / (keys as f64 / 100_000.0).max(1e-9));
        active.push(keys as f64);
    }
    figures.push(figure(
        "active keys in the last 60 s of the memory run (embedded, unthrottled)",
        "keys",
        active,
    ));
    figures.push(figure(
        "peak RSS of a runner process holding them (generator + consumer + metrics)",
        "MB",
        rss,
    ));
    figures.push(figure(
        "  the consumer alone, the same records read from a file (consumer + metrics)",
        "MB",
        consumer,
    ));
    figures.push(figure(
        "  the consumer alone, per 100,000 active keys",
        "MB",
        per_100k,
    ));
    Ok(())
}

/// The active keys of the memory run in `dir`, and the peak RSS of a runner that consumes the
/// same records (as the run stored them) from a JSON lines file: the consumer's memory without
/// the generator's (which holds up to `max_open` sessions of its own).
async fn consumer_alone(
    pipeline: &Pipeline,
    dir: &std::path::Path,
) -> anyhow::Result<(usize, f64)> {
    let mut config = pipeline.config.embedded.clone();
    config.data_dir = dir.to_path_buf();
    let schema: Arc<Schema> = pipeline.schema();
    let store =
        crate::store::embedded::EmbeddedStore::open(&config, &Default::default(), &schema, &[])?;
    let events = crate::store::RawEvents::all_events(&store).await?;
    drop(store);
    let keys = active_keys_in_last_minute(&events)?;
    let records = dir.join("records.jsonl");
    {
        let codec = crate::codec::Codec::json(schema, usize::MAX);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&records)?);
        let mut line = Vec::new();
        for e in &events {
            line.clear();
            codec.encode(e, &mut line).map_err(anyhow::Error::msg)?;
            line.push(b'\n');
            std::io::Write::write_all(&mut out, &line)?;
        }
        std::io::Write::flush(&mut out)?;
    }
    drop(events);
    let mut child = memory_run(pipeline, &dir.join("consumer-alone"))?;
    child.args(["--source", records.to_str().unwrap_or_default()]);
    Ok((keys, child_peak_rss_mb(child)?))
}

/// A runner process of the memory section: `pipeline` with the embedded queue and store in
/// `data_dir`, its records made or read as the caller adds, ending once it has caught up.
fn memory_run(
    pipeline: &Pipeline,
    data_dir: &std::path::Path,
) -> anyhow::Result<std::process::Command> {
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child
        .args(["run", pipeline.path.to_str().unwrap_or_default()])
        .args(["--components", "generator,consumer", "--log", "warn"])
        .args(["--kafka", "embedded", "--mongodb", "embedded"])
        .args(["--data-dir", data_dir.to_str().unwrap_or_default()])
        .args(["--exit-when-idle", "1s"]);
    Ok(child)
}

/// Distinct values of the record key among `events` of the last minute of event time.
fn active_keys_in_last_minute(events: &[Record]) -> anyhow::Result<usize> {
    let newest = events
        .iter()
        .map(Record::time_ms)
        .max()
        .context("bench: the memory run stored no events")?;
    let since = newest - 60_000;
    Ok(events
        .iter()
        .filter(|e| e.time_ms() > since)
        .filter_map(|e| e.key())
        .collect::<std::collections::HashSet<_>>()
        .len())
}
