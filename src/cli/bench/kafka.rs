//! The sections that need a broker (and a MongoDB server): produce, consume, the end to end
//! into the store or into nothing, and latency, each beside its raw-client baseline.

use super::discard;
use super::{
    bench_run_options, child_peak_rss_mb, compare, figure, process_cpu, push_cpu, rate,
    us_per_event, BenchOptions, Figure,
};
use crate::aggregate::Aggregator;
use crate::config::Pipeline;
use crate::generator::{Generator, GeneratorScript};
use crate::pipeline::{self, Components, RunOptions};
use crate::telemetry::Stats;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub(super) async fn kafka_sections(
    pipeline: &Pipeline,
    opts: &BenchOptions,
    servers: &str,
    run_id: &str,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let n = opts.events;
    let runs = opts.runs;
    let mut base = pipeline.clone();
    base.config.kafka.bootstrap_servers = servers.to_string();
    base.config.generator.rate = 0.0;
    base.config.generator.batch_size = 1000;
    let quiet = bench_run_options();

    tracing::info!("bench: kafka produce, runner vs raw producer");
    let (mut runner_rates, mut raw_rates, mut raw_consume) = (Vec::new(), Vec::new(), Vec::new());
    let mut sample = Vec::new();
    Generator::new(
        GeneratorScript::load(&base.config.generator, &base.schema())?,
        Some(3),
    )
    .fill(1000, &mut sample);
    let codec = crate::pipeline::codec(&base.config)?;
    let payloads: Vec<Vec<u8>> = sample
        .iter()
        .map(|e| {
            let mut b = Vec::new();
            codec
                .encode(e, &mut b)
                .expect("generated records fit the schema");
            b
        })
        .collect();
    let mut produced_topics = Vec::new();
    for i in 0..runs {
        let mut p = base.clone();
        p.config.kafka.topic = format!("bench_{run_id}_runner_{i}");
        let admin = crate::transport::kafka::connect(&p.config.kafka).await?;
        crate::transport::kafka::ensure_topic(&admin, &p.config.kafka).await?;
        let options = RunOptions {
            components: Components::GENERATOR,
            max_events: Some(n),
            ..quiet.clone()
        };
        let summary = pipeline::run(&p, options, CancellationToken::new()).await?;
        // From the first event to the last delivery, like the raw producer's clock: connecting
        // and creating the topic are not producing.
        runner_rates.push(rate(summary.stats.delivered, summary.generator_busy));
        produced_topics.push(p.config.kafka.topic.clone());

        let mut raw = base.config.kafka.clone();
        raw.topic = format!("bench_{run_id}_raw_{i}");
        crate::transport::kafka::ensure_topic(&admin, &raw).await?;
        let producer: ThreadedProducer<DefaultProducerContext> = raw.producer_config().create()?;
        let t = Instant::now();
        for k in 0..n as usize {
            let payload = &payloads[k % payloads.len()];
            let key = sample[k % sample.len()]
                .key()
                .map(|k| k.into_owned())
                .unwrap_or_default();
            loop {
                match producer.send(
                    BaseRecord::to(&raw.topic)
                        .key(key.as_bytes())
                        .payload(payload),
                ) {
                    Ok(()) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        producer.flush(Duration::from_secs(120))?;
        raw_rates.push(rate(n, t.elapsed()));
    }
    figures.push(figure(
        "kafka produce: runner (JSON encode + send)",
        "events/s",
        runner_rates,
    ));
    figures.push(figure(
        "kafka produce: raw rdkafka, same-size messages",
        "events/s",
        raw_rates,
    ));
    compare(
        figures,
        "kafka produce: runner (JSON encode + send)",
        "kafka produce: raw rdkafka, same-size messages",
    );

    // The consuming path when no store limits it: the runner's consumer (decode, validate,
    // aggregate every metric, encode partials, commit) with writes discarded, against a raw
    // consumer of the same topic (the broker's limit for that very data). The two read each
    // topic one right after the other, in turns (raw first, then the runner first): the broker's
    // speed on a shared machine drifts by more than the difference measured (raw reads of one
    // topic minutes apart differed by up to a fifth), so reads minutes apart would compare the drift.
    tracing::info!("bench: kafka consume, runner (writes discarded) vs raw consumer");
    let (mut unlimited, mut cpu) = (Vec::new(), Vec::new());
    for (i, topic) in produced_topics.iter().enumerate() {
        let mut p = base.clone();
        p.config.kafka.topic = topic.clone();
        p.config.kafka.consumer_group = format!("bench_{run_id}_discard_{i}");
        let raw_first = i % 2 == 0;
        if raw_first {
            raw_consume.push(rate(n, consume_all(&p.config.kafka, n)?));
        }
        let before = process_cpu();
        let (events_per_s, events) = consume_into_discard(&p).await?;
        cpu.push(us_per_event(process_cpu() - before, events));
        unlimited.push(events_per_s);
        if !raw_first {
            raw_consume.push(rate(n, consume_all(&p.config.kafka, n)?));
        }
    }
    figures.push(figure(
        "kafka consume: raw rdkafka, no processing",
        "events/s",
        raw_consume,
    ));
    figures.push(figure(KAFKA_TO_DISCARD, "events/s", unlimited));
    compare(
        figures,
        KAFKA_TO_DISCARD,
        "kafka consume: raw rdkafka, no processing",
    );
    push_cpu(
        figures,
        "  runner cpu of it (fetch + decode + metrics + encode + commit)",
        cpu,
    );

    let Some(uri) = &opts.mongodb else {
        return Ok(());
    };
    tracing::info!("bench: mongodb raw insert_many");
    // The runner's write concern (journaled) too: it is part of what a write costs.
    let client = mongodb::Client::with_options(crate::store::mongo::client_options(uri).await?)
        .context("bench: cannot connect to MongoDB")?;
    let schema = pipeline.schema();
    // The bytes the runner sends: its records, encoded as the store encodes them.
    let docs: Vec<_> = (0..n as usize)
        .map(|k| {
            let mut e = sample[k % sample.len()].clone();
            e.set(
                schema.id_slot(),
                crate::event::Value::Text(compact_str::format_compact!("{k}")),
            );
            crate::store::mongo::to_raw(&e, usize::MAX).map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<_>>()?;
    // One stream is the baseline; several concurrent streams per batch show what the server
    // takes from concurrent writers (the ceiling of `mongodb.insert_streams`).
    let mut raw_curve = Vec::new();
    for streams in [1, 2, 4] {
        let mut inserts = Vec::new();
        for i in 0..runs {
            let coll = client
                .database(&format!("bench_{run_id}_raw_{streams}_{i}"))
                .collection::<mongodb::bson::Document>("raw");
            // The same indexes as the runner's raw collection: they are part of what a write costs.
            crate::store::mongo::create_indexes(
                &coll,
                pipeline.config.retention.raw,
                &schema,
                &pipeline.config.mongodb.indexes,
            )
            .await?;
            let coll = coll.clone_with_type::<mongodb::bson::RawDocumentBuf>();
            let t = Instant::now();
            for batch in docs.chunks(pipeline.config.consumer.batch_size.max(1)) {
                let size = batch.len().div_ceil(streams);
                futures::future::try_join_all(
                    batch
                        .chunks(size)
                        .map(|chunk| coll.insert_many(chunk).ordered(false).into_future()),
                )
                .await?;
            }
            inserts.push(rate(n, t.elapsed()));
        }
        match streams {
            1 => figures.push(figure(RAW_INSERT, "events/s", inserts)),
            _ => raw_curve.push(figure(
                &format!("mongodb insert_many: raw driver, {streams} concurrent streams per batch"),
                "events/s",
                inserts,
            )),
        }
    }
    for f in raw_curve {
        let name = f.name.clone();
        figures.push(f);
        compare(figures, &name, RAW_INSERT);
    }

    // The configured number of insert streams is the headline; 1 to 4 draw the curve.
    let configured = base.config.mongodb.insert_streams;
    let (mut rss, mut curve) = (Vec::new(), Vec::new());
    for streams in (1..=4).chain((configured > 4).then_some(configured)) {
        tracing::info!(streams, "bench: end to end kafka -> aggregate -> mongodb");
        let (mut e2e, mut cpu, mut raw_bytes, mut state_bytes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, topic) in produced_topics.iter().enumerate() {
            let mut p = base.clone();
            p.config.kafka.topic = topic.clone();
            p.config.kafka.consumer_group = format!("bench_{run_id}_group_{streams}_{i}");
            p.config.mongodb.uri = uri.clone();
            p.config.mongodb.database = format!("bench_{run_id}_e2e_{streams}_{i}");
            p.config.mongodb.insert_streams = streams;
            let options = RunOptions {
                components: Components::CONSUMER,
                ..quiet.clone()
            };
            let before = process_cpu();
            let summary = pipeline::run(&p, options, CancellationToken::new()).await?;
            cpu.push(us_per_event(process_cpu() - before, summary.stats.stored));
            e2e.push(rate(summary.stats.stored, summary.consumer_busy));
            if streams == configured {
                let per_event = |bytes: u64| bytes as f64 / summary.stats.stored.max(1) as f64;
                raw_bytes.push(per_event(summary.stats.raw_bytes_written));
                state_bytes.push(per_event(summary.stats.state_bytes_written));
                // Memory is measured on a separate runner process doing the same work: this
                // process still holds what the earlier sections allocated.
                p.config.kafka.consumer_group.push_str("_rss");
                p.config.mongodb.database.push_str("_rss");
                rss.push(child_consumer_peak_rss_mb(&pipeline.path, &p)?);
            }
        }
        let name = format!("  mongodb.insert_streams = {streams}: end to end events/s");
        curve.push(figure(&name, "events/s", e2e.clone()));
        if streams != configured {
            continue;
        }
        figures.push(figure(E2E_MONGODB, "events/s", e2e));
        compare(
            figures,
            E2E_MONGODB,
            "kafka consume: raw rdkafka, no processing",
        );
        let mut vs_insert = figures.last().unwrap().clone();
        vs_insert.name = "  (same, against raw insert_many)".into();
        figures.push(vs_insert);
        compare(figures, "  (same, against raw insert_many)", RAW_INSERT);
        push_cpu(
            figures,
            "  runner cpu of it (MongoDB's own is its process's)",
            cpu,
        );
        // What it sends the server, raw records and metric partials apart: the partials are
        // the runner's cost on top of a raw insert.
        figures.push(figure(
            "  bytes sent to MongoDB per event: raw records (BSON)",
            "bytes",
            raw_bytes,
        ));
        figures.push(figure(
            "  bytes sent to MongoDB per event: metric partials",
            "bytes",
            state_bytes,
        ));
    }
    for f in curve {
        let name = f.name.clone();
        figures.push(f);
        compare(figures, &name, RAW_INSERT);
    }
    figures.push(figure(
        "peak RSS of a runner process doing the end to end",
        "MB",
        rss,
    ));
    Ok(())
}

pub(super) async fn latency_section(
    pipeline: &Pipeline,
    opts: &BenchOptions,
    servers: &str,
    uri: &str,
    run_id: &str,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    let mut base = pipeline.clone();
    base.config.kafka.bootstrap_servers = servers.to_string();
    let quiet = bench_run_options();
    tracing::info!("bench: latency at 10,000 events/s");
    let (mut p50, mut p99, mut read50, mut read99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let mut p = super::on_services(&base, servers, uri, &format!("{run_id}_latency_{i}"));
        p.config.generator.rate = 10_000.0;
        p.config.generator.batch_size = 100;
        // The consumer joins its group first (with one warm-up event), so the figure is the
        // steady state, not the group join.
        let waiting = RunOptions {
            components: Components::CONSUMER,
            idle_exit: Some(Duration::from_secs(8)),
            ..quiet.clone()
        };
        let consumer = pipeline::start(p.clone(), waiting, CancellationToken::new()).await?;
        pipeline::run(
            &p,
            RunOptions {
                components: Components::GENERATOR,
                max_events: Some(1),
                ..quiet.clone()
            },
            CancellationToken::new(),
        )
        .await?;
        let stats = consumer.stats.clone();
        let t = Instant::now();
        while stats.snapshot().stored < 1 && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let k = n.clamp(30_000, 100_000);
        let generator = {
            let (p, quiet) = (p.clone(), quiet.clone());
            tokio::spawn(async move {
                pipeline::run(
                    &p,
                    RunOptions {
                        components: Components::GENERATOR,
                        max_events: Some(k),
                        ..quiet
                    },
                    CancellationToken::new(),
                )
                .await
            })
        };
        // A new idempotent producer holds its first messages until the broker hands it a
        // producer id; the events queued meanwhile measure that start, not the steady state.
        // Count from the third second of traffic on.
        let t = Instant::now();
        while stats.snapshot().stored < 20_001 && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stats.reset_latency();
        generator.await??;
        consumer.wait().await?;
        let (a, b) = stats
            .visible_latency_ms()
            .context("bench: the latency run stored no events")?;
        p50.push(a as f64);
        p99.push(b as f64);
        let (a, b) = stats
            .read_latency_ms()
            .context("bench: the latency run read no events")?;
        read50.push(a as f64);
        read99.push(b as f64);
    }
    figures.push(figure(
        "latency p50: event -> its metrics readable by /api/metrics, 10k events/s",
        "ms",
        p50,
    ));
    figures.push(figure(
        "latency p99: event -> its metrics readable by /api/metrics, 10k events/s",
        "ms",
        p99,
    ));
    // Where the time goes: up to the consumer's read is producer batching and the broker.
    figures.push(figure(
        "  (of which event -> read by the consumer, p50)",
        "ms",
        read50,
    ));
    figures.push(figure(
        "  (of which event -> read by the consumer, p99)",
        "ms",
        read99,
    ));
    Ok(())
}

const RAW_INSERT: &str = "mongodb insert_many: raw driver, one stream, same documents and indexes";
const E2E_MONGODB: &str = "end to end: kafka -> decode -> MongoDB raw + metric partials";

const KAFKA_TO_DISCARD: &str =
    "end to end, store not the limit: kafka -> decode -> aggregate -> commit, writes discarded";

/// The runner's consumer reading the whole topic into [`discard::Discard`]: events/s from the
/// first message to the last batch acknowledged, and the events consumed.
async fn consume_into_discard(p: &Pipeline) -> anyhow::Result<(f64, u64)> {
    let stats = Stats::new();
    let subscriber = crate::transport::kafka::KafkaSubscriber::new(
        &p.config.kafka,
        p.config.consumer.batching(),
        crate::pipeline::codec(&p.config)?,
        stats.clone(),
    )?;
    let aggregator = Aggregator::new(
        Arc::new(
            p.metric_set(&Default::default())
                .map_err(|mut e| e.remove(0))?,
        ),
        stats.clone(),
    );
    let producers_done = CancellationToken::new();
    producers_done.cancel();
    let until = crate::consumer::StopWhen {
        stop: CancellationToken::new(),
        idle: Some(Duration::from_secs(2)),
        producers_done,
        drain: CancellationToken::new(),
    };
    crate::consumer::run(
        Box::new(subscriber),
        Arc::new(discard::Discard),
        Some(aggregator),
        None,
        stats.clone(),
        &p.config.consumer,
        until,
    )
    .await?;
    let stored = stats.snapshot().stored;
    Ok((rate(stored, stats.busy_span()), stored))
}

/// Drops the databases this bench run made (all named `bench_{run_id}_...`). Its topics stay:
/// deleting one topic on Tansu 0.6.0 removed every topic of the broker, so a bench must not
/// delete topics on a broker it shares.
pub(super) async fn remove_bench_databases(uri: &str, run_id: &str) -> anyhow::Result<()> {
    let prefix = format!("bench_{run_id}_");
    let client = mongodb::Client::with_uri_str(uri).await?;
    for name in client.list_database_names().await? {
        if name.starts_with(&prefix) {
            client.database(&name).drop().await?;
        }
    }
    Ok(())
}
/// Reads `n` messages of the topic from the start; the clock starts at the first message so
/// connection setup is not counted.
fn consume_all(config: &crate::transport::kafka::KafkaConfig, n: u64) -> anyhow::Result<Duration> {
    let mut c = config.consumer_config();
    c.set("group.id", format!("{}_raw", config.topic));
    let consumer: BaseConsumer = c.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.partitions {
        tpl.add_partition_offset(&config.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            std::hint::black_box(m.payload());
            seen += 1;
        }
    }
    anyhow::ensure!(seen == n, "raw consumer saw {seen} of {n} messages");
    Ok(started.map_or(Duration::ZERO, |s| s.elapsed()))
}

/// Runs `runner run --components consumer` over the configured topic in a child process and
/// returns its peak RSS, read from /proc while it runs.
fn child_consumer_peak_rss_mb(path: &std::path::Path, p: &Pipeline) -> anyhow::Result<f64> {
    let k = &p.config.kafka;
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child
        .args([
            "run",
            path.to_str().unwrap_or_default(),
            "--components",
            "consumer",
            "--exit-when-idle",
            "2s",
            "--log",
            "warn",
        ])
        .args([
            "--kafka",
            &k.bootstrap_servers,
            "--mongodb",
            &p.config.mongodb.uri,
        ])
        .env("KAFKA_TOPIC", &k.topic)
        .env("KAFKA_CONSUMER_GROUP", &k.consumer_group)
        .env("MONGODB_DATABASE", &p.config.mongodb.database);
    child_peak_rss_mb(child)
}
