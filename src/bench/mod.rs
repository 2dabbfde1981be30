//! `runner bench`: throughput of each stage beside the baseline it sits on, measured in one
//! run on one machine, so the ratios mean something on shared, noisy hardware.
//!
//! Every figure is the median of `runs` runs, with min and max. Sections that need Kafka or
//! MongoDB run only when their address is given.

mod baseline;
mod discard;

use crate::aggregate::{Aggregator, MetricSet};
use crate::config::Pipeline;
use crate::event::Event;
use crate::generator::{Generator, GeneratorScript};
use crate::pipeline::{self, Components, RunOptions};
use crate::telemetry::Stats;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per run of each section.
    pub events: u64,
    /// Runs per section; the median is reported.
    pub runs: usize,
    /// Kafka bootstrap servers for the Kafka sections (skipped when `None`).
    pub kafka: Option<String>,
    /// MongoDB connection string for the MongoDB sections (skipped when `None`).
    pub mongodb: Option<String>,
    /// The sections to run; empty means all.
    pub only: Vec<Section>,
}

/// A part of the bench that can run alone (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Generator: Rhai plan, plain Rust, per-event hook.
    Generator,
    /// Aggregation of the shipped metrics, in memory.
    Aggregate,
    /// Kafka produce and consume, MongoDB insert_many, end to end and its peak RSS.
    Throughput,
    /// Event-to-visible latency at 10,000 events/s (needs Kafka and MongoDB).
    Latency,
    /// End to end on the embedded transport and store.
    Embedded,
    /// Peak RSS of a runner holding over 100,000 active users (embedded).
    Memory,
}

impl BenchOptions {
    fn includes(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The figure this one is compared with, and this one's median divided by it.
    pub compared_with: Option<String>,
    pub ratio: Option<f64>,
}

fn figure(name: &str, unit: &'static str, mut samples: Vec<f64>) -> Figure {
    samples.sort_by(|a, b| a.total_cmp(b));
    Figure {
        name: name.to_string(),
        unit,
        median: samples[samples.len() / 2],
        min: samples[0],
        max: samples[samples.len() - 1],
        compared_with: None,
        ratio: None,
    }
}

fn compare(figures: &mut [Figure], name: &str, baseline: &str) {
    let Some(base) = figures.iter().find(|f| f.name == baseline).map(|f| f.median) else { return };
    if let Some(f) = figures.iter_mut().find(|f| f.name == name) {
        f.ratio = Some(f.median / base);
        f.compared_with = Some(baseline.to_string());
    }
}

fn rate(events: u64, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64().max(1e-9)
}

/// Runs every section that the options allow, printing progress to the log.
pub async fn run(pipeline: &Pipeline, opts: &BenchOptions) -> anyhow::Result<Vec<Figure>> {
    let opts = &BenchOptions { runs: opts.runs.max(1), ..opts.clone() };
    let mut figures = Vec::new();
    let script = GeneratorScript::load(&pipeline.config.generator)?;

    if opts.includes(Section::Generator) {
        generator_section(pipeline, &script, opts, &mut figures)?;
    }
    if opts.includes(Section::Aggregate) {
        aggregate_section(pipeline, &script, opts, &mut figures)?;
    }
    if let Some(servers) = &opts.kafka {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let measured = async {
            if opts.includes(Section::Throughput) {
                kafka_sections(pipeline, opts, servers, &run_id, &mut figures).await?;
            }
            if let (true, Some(uri)) = (opts.includes(Section::Latency), &opts.mongodb) {
                latency_section(pipeline, opts, servers, uri, &run_id, &mut figures).await?;
            }
            anyhow::Ok(())
        }
        .await;
        // The database is shared with the tests and later runs: leave it as found.
        if let Some(uri) = &opts.mongodb {
            if let Err(e) = remove_bench_databases(uri, &run_id).await {
                tracing::warn!(error = %format!("{e:#}"), "bench: could not drop its databases");
            }
        }
        measured?;
    }
    if opts.includes(Section::Embedded) {
        embedded_section(pipeline, opts, &mut figures).await?;
    }
    if opts.includes(Section::Memory) {
        memory_section(pipeline, opts, &mut figures).await?;
    }
    Ok(figures)
}

fn generator_section(pipeline: &Pipeline, script: &GeneratorScript, opts: &BenchOptions, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    let g = &pipeline.config.generator;
    tracing::info!(events = n, runs, "bench: generator");
    let mut plan = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..runs {
        let mut gen = Generator::new(script.clone(), Some(1));
        plan.push(rate(n, time_fill(n, |k, out| gen.fill(k, out))));
        let mut base = baseline::PlainGenerator::new(g.users as usize, g.items as usize, 1.1);
        plain.push(rate(n, time_fill(n, |k, out| base.fill(k, out))));
    }
    figures.push(figure("generator: Rhai-described plan", "events/s", plan));
    figures.push(figure("generator: plain Rust", "events/s", plain));
    compare(figures, "generator: Rhai-described plan", "generator: plain Rust");

    let hook = with_hook(pipeline)?;
    let mut hooked = Vec::new();
    for _ in 0..runs {
        let mut gen = Generator::new(hook.0.clone(), Some(1));
        let k = (n / 4).max(1000);
        hooked.push(rate(k, time_fill(k, |m, out| gen.fill(m, out))));
    }
    figures.push(figure("generator: with on_event hook", "events/s", hooked));
    compare(figures, "generator: with on_event hook", "generator: plain Rust");
    Ok(())
}

fn aggregate_section(pipeline: &Pipeline, script: &GeneratorScript, opts: &BenchOptions, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    tracing::info!("bench: aggregation");
    let set = Arc::new(MetricSet::load(&pipeline.config.metrics)?);
    let mut events = Vec::with_capacity(n as usize);
    Generator::new(script.clone(), Some(2)).fill(n as usize, &mut events);
    let (mut apply_ns, mut full_ns) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut agg = Aggregator::new(set.clone(), Stats::new());
        let (mut apply, mut encode) = (Duration::ZERO, Duration::ZERO);
        for chunk in events.chunks(2000) {
            let t = Instant::now();
            agg.apply(chunk, &[]);
            apply += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(agg.take_dirty());
            encode += t.elapsed();
        }
        apply_ns.push(apply.as_nanos() as f64 / n as f64);
        full_ns.push((apply + encode).as_nanos() as f64 / n as f64);
    }
    figures.push(figure(&format!("aggregate: {} shipped metrics, apply", set.metrics().len()), "ns/event", apply_ns));
    figures.push(figure("aggregate: apply + encode partials to store", "ns/event", full_ns));
    Ok(())
}

async fn embedded_section(pipeline: &Pipeline, opts: &BenchOptions, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
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
        let options = RunOptions { max_events: Some(n), progress_every: Duration::from_secs(3600), ..RunOptions::default() };
        let summary = pipeline::run(&p, options, CancellationToken::new()).await?;
        embedded.push(rate(summary.stats.stored, summary.elapsed));
        let _ = std::fs::remove_dir_all(dir);
    }
    figures.push(figure("end to end, embedded: generate -> queue -> aggregate -> SQLite", "events/s", embedded));
    Ok(())
}

fn time_fill(n: u64, mut fill: impl FnMut(usize, &mut Vec<Event>)) -> Duration {
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
    let source = std::fs::read_to_string(&pipeline.config.generator.script)?;
    let tmp = tempfile_path::TempScript::new(&format!(
        "fn on_event(e) {{ e.channel = if e.value > 5.0 {{ \"web\" }} else {{ \"app\" }}; e }}\n{source}"
    ))?;
    let mut cfg = pipeline.config.generator.clone();
    cfg.script = tmp.path.clone();
    Ok((GeneratorScript::load(&cfg)?, tmp))
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

async fn kafka_sections(pipeline: &Pipeline, opts: &BenchOptions, servers: &str, run_id: &str, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
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
    Generator::new(GeneratorScript::load(&base.config.generator)?, Some(3)).fill(1000, &mut sample);
    let payloads: Vec<Vec<u8>> = sample.iter().map(|e| { let mut b = Vec::new(); e.write_json(&mut b); b }).collect();
    let mut produced_topics = Vec::new();
    for i in 0..runs {
        let mut p = base.clone();
        p.config.kafka.topic = format!("bench_{run_id}_runner_{i}");
        let admin = crate::transport::kafka::connect(&p.config.kafka).await?;
        crate::transport::kafka::ensure_topic(&admin, &p.config.kafka).await?;
        let options = RunOptions { components: Components::GENERATOR, max_events: Some(n), ..quiet.clone() };
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
            let key = sample[k % sample.len()].user_id.as_bytes();
            loop {
                match producer.send(BaseRecord::to(&raw.topic).key(key).payload(payload)) {
                    Ok(()) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        producer.flush(Duration::from_secs(120))?;
        raw_rates.push(rate(n, t.elapsed()));

        // The topic the runner's consumers read next: the broker limit for that very data.
        raw_consume.push(rate(n, consume_all(&p.config.kafka, n)?));
    }
    figures.push(figure("kafka produce: runner (JSON encode + send)", "events/s", runner_rates));
    figures.push(figure("kafka produce: raw rdkafka, same-size messages", "events/s", raw_rates));
    compare(figures, "kafka produce: runner (JSON encode + send)", "kafka produce: raw rdkafka, same-size messages");
    figures.push(figure("kafka consume: raw rdkafka, no processing", "events/s", raw_consume));

    // The consuming path when no store limits it: the runner's consumer (decode, validate,
    // aggregate every metric, encode partials, commit) with writes discarded.
    tracing::info!("bench: end to end kafka -> aggregate -> discarded writes");
    let mut unlimited = Vec::new();
    for (i, topic) in produced_topics.iter().enumerate() {
        let mut p = base.clone();
        p.config.kafka.topic = topic.clone();
        p.config.kafka.consumer_group = format!("bench_{run_id}_discard_{i}");
        unlimited.push(consume_into_discard(&p).await?);
    }
    figures.push(figure(KAFKA_TO_DISCARD, "events/s", unlimited));
    compare(figures, KAFKA_TO_DISCARD, "kafka consume: raw rdkafka, no processing");

    let Some(uri) = &opts.mongodb else { return Ok(()) };
    tracing::info!("bench: mongodb raw insert_many");
    let mut inserts = Vec::new();
    // The runner's write concern (journaled) too: it is part of what a write costs.
    let client = mongodb::Client::with_options(crate::store::mongo::client_options(uri).await?).context("bench: cannot connect to MongoDB")?;
    for i in 0..runs {
        let coll = client.database(&format!("bench_{run_id}_raw_{i}")).collection::<mongodb::bson::Document>("raw");
        // The same indexes as the runner's raw collection: they are part of what a write costs.
        crate::store::mongo::create_indexes(&coll, pipeline.config.mongodb.retention).await?;
        let docs: Vec<_> = (0..n as usize).map(|k| {
            let mut d = crate::store::mongo::to_document(&sample[k % sample.len()]);
            d.insert("event_id", format!("{k}"));
            d
        }).collect();
        let t = Instant::now();
        for chunk in docs.chunks(pipeline.config.consumer.batch_size.max(1)) {
            coll.insert_many(chunk.to_vec()).ordered(false).await?;
        }
        inserts.push(rate(n, t.elapsed()));
    }
    figures.push(figure("mongodb insert_many: raw driver, same documents and indexes", "events/s", inserts));

    tracing::info!("bench: end to end kafka -> aggregate -> mongodb");
    let (mut e2e, mut rss) = (Vec::new(), Vec::new());
    for (i, topic) in produced_topics.iter().enumerate() {
        let mut p = base.clone();
        p.config.kafka.topic = topic.clone();
        p.config.kafka.consumer_group = format!("bench_{run_id}_group_{i}");
        p.config.mongodb.uri = uri.clone();
        p.config.mongodb.database = format!("bench_{run_id}_e2e_{i}");
        let options = RunOptions { components: Components::CONSUMER, ..quiet.clone() };
        let summary = pipeline::run(&p, options, CancellationToken::new()).await?;
        e2e.push(rate(summary.stats.stored, summary.consumer_busy));
        // Memory is measured on a separate runner process doing the same work: this process
        // still holds what the earlier sections allocated.
        p.config.kafka.consumer_group.push_str("_rss");
        p.config.mongodb.database.push_str("_rss");
        rss.push(child_consumer_peak_rss_mb(&pipeline.path, &p)?);
    }
    figures.push(figure("end to end: kafka -> decode -> MongoDB raw + metric partials", "events/s", e2e));
    compare(figures, "end to end: kafka -> decode -> MongoDB raw + metric partials", "kafka consume: raw rdkafka, no processing");
    let mut vs_insert = figures.last().unwrap().clone();
    vs_insert.name = "  (same, against raw insert_many)".into();
    figures.push(vs_insert);
    compare(figures, "  (same, against raw insert_many)", "mongodb insert_many: raw driver, same documents and indexes");
    figures.push(figure("peak RSS of a runner process doing the end to end", "MB", rss));
    Ok(())
}

async fn latency_section(pipeline: &Pipeline, opts: &BenchOptions, servers: &str, uri: &str, run_id: &str, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    let mut base = pipeline.clone();
    base.config.kafka.bootstrap_servers = servers.to_string();
    let quiet = bench_run_options();
    tracing::info!("bench: latency at 10,000 events/s");
    let (mut p50, mut p99, mut read50, mut read99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let mut p = base.clone();
        p.config.kafka.topic = format!("bench_{run_id}_latency_{i}");
        p.config.kafka.consumer_group = format!("bench_{run_id}_latency_{i}");
        p.config.mongodb.uri = uri.to_string();
        p.config.mongodb.database = format!("bench_{run_id}_latency_{i}");
        p.config.generator.rate = 10_000.0;
        p.config.generator.batch_size = 100;
        // The consumer joins its group first (with one warm-up event), so the figure is the
        // steady state, not the group join.
        let waiting = RunOptions { components: Components::CONSUMER, idle_exit: Some(Duration::from_secs(8)), ..quiet.clone() };
        let consumer = pipeline::start(p.clone(), waiting, CancellationToken::new()).await?;
        pipeline::run(&p, RunOptions { components: Components::GENERATOR, max_events: Some(1), ..quiet.clone() }, CancellationToken::new()).await?;
        let stats = consumer.stats.clone();
        let t = Instant::now();
        while stats.snapshot().stored < 1 && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let k = n.clamp(30_000, 100_000);
        let generator = {
            let (p, quiet) = (p.clone(), quiet.clone());
            tokio::spawn(async move {
                pipeline::run(&p, RunOptions { components: Components::GENERATOR, max_events: Some(k), ..quiet }, CancellationToken::new()).await
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
        let (a, b) = stats.visible_latency_ms().context("bench: the latency run stored no events")?;
        p50.push(a as f64);
        p99.push(b as f64);
        let (a, b) = stats.read_latency_ms().context("bench: the latency run read no events")?;
        read50.push(a as f64);
        read99.push(b as f64);
    }
    figures.push(figure("latency p50: event -> its metrics readable by /api/metrics, 10k events/s", "ms", p50));
    figures.push(figure("latency p99: event -> its metrics readable by /api/metrics, 10k events/s", "ms", p99));
    // Where the time goes: up to the consumer's read is producer batching and the broker.
    figures.push(figure("  (of which event -> read by the consumer, p50)", "ms", read50));
    figures.push(figure("  (of which event -> read by the consumer, p99)", "ms", read99));
    Ok(())
}

const KAFKA_TO_DISCARD: &str = "end to end, store not the limit: kafka -> decode -> aggregate -> commit, writes discarded";

/// The runner's consumer reading the whole topic into [`discard::Discard`]: events/s from the
/// first message to the last batch acknowledged.
async fn consume_into_discard(p: &Pipeline) -> anyhow::Result<f64> {
    let stats = Stats::new();
    let subscriber = crate::transport::kafka::KafkaSubscriber::new(&p.config.kafka, &p.config.consumer, stats.clone())?;
    let aggregator = Aggregator::new(Arc::new(MetricSet::load(&p.config.metrics)?), stats.clone());
    let producers_done = CancellationToken::new();
    producers_done.cancel();
    let until = crate::consumer::StopWhen {
        stop: CancellationToken::new(),
        idle: Some(Duration::from_secs(2)),
        producers_done,
        drain: CancellationToken::new(),
    };
    crate::consumer::run(Box::new(subscriber), Arc::new(discard::Discard), Some(aggregator), None, stats.clone(), &p.config.consumer, until).await?;
    Ok(rate(stats.snapshot().stored, stats.busy_span()))
}

/// Drops the databases this bench run made (all named `bench_{run_id}_...`). Its topics stay:
/// deleting one topic on Tansu 0.6.0 removed every topic of the broker, so a bench must not
/// delete topics on a broker it shares.
async fn remove_bench_databases(uri: &str, run_id: &str) -> anyhow::Result<()> {
    let prefix = format!("bench_{run_id}_");
    let client = mongodb::Client::with_uri_str(uri).await?;
    for name in client.list_database_names().await? {
        if name.starts_with(&prefix) {
            client.database(&name).drop().await?;
        }
    }
    Ok(())
}

/// A fresh path under the temp folder for a bench run's files.
fn scratch_path(extension: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("runner-bench-{}{extension}", uuid::Uuid::new_v4().simple()))
}

/// Runs with no progress lines, ending 2 s after the last event.
fn bench_run_options() -> RunOptions {
    RunOptions { progress_every: Duration::from_secs(3600), idle_exit: Some(Duration::from_secs(2)), ..RunOptions::default() }
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
        .args(["run", path.to_str().unwrap_or_default(), "--components", "consumer", "--exit-when-idle", "2s", "--log", "warn"])
        .args(["--kafka", &k.bootstrap_servers, "--mongodb", &p.config.mongodb.uri])
        .env("KAFKA_TOPIC", &k.topic)
        .env("KAFKA_CONSUMER_GROUP", &k.consumer_group)
        .env("MONGODB_DATABASE", &p.config.mongodb.database);
    child_peak_rss_mb(child)
}

/// Runs a runner process to its end, sampling its peak resident memory (VmHWM).
fn child_peak_rss_mb(mut command: std::process::Command) -> anyhow::Result<f64> {
    let mut child = command.stdout(std::process::Stdio::null()).spawn().context("bench: cannot start a runner process")?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0.0f64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        });
        peak_kb = peak_kb.max(hwm.unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(50));
    };
    anyhow::ensure!(status.success(), "bench: the runner process being measured failed ({status})");
    Ok(peak_kb / 1024.0)
}

/// Users drawn from and events generated for the memory figure: with the shipped skew, about
/// 120,000 distinct users in one 60 s window.
const MEMORY_USERS: i64 = 400_000;
const MEMORY_EVENTS: u64 = 1_200_000;

/// Peak RSS of a runner process (generator, consumer, every metric, embedded queue and store)
/// whose windows hold over 100,000 active users, and how many users that was.
async fn memory_section(pipeline: &Pipeline, opts: &BenchOptions, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    tracing::info!(users = MEMORY_USERS, events = MEMORY_EVENTS, "bench: memory with many active users");
    let (mut rss, mut active) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let dir = scratch_path("");
        let mut child = std::process::Command::new(std::env::current_exe()?);
        child
            .args(["run", pipeline.path.to_str().unwrap_or_default(), "--components", "generator,consumer", "--log", "warn"])
            .args(["--kafka", "embedded", "--mongodb", "embedded", "--data-dir", dir.to_str().unwrap_or_default()])
            .args(["--generation-rate", "0", "--batch-size", "1000", "--users", &MEMORY_USERS.to_string()])
            .args(["--events", &MEMORY_EVENTS.to_string(), "--exit-when-idle", "1s"]);
        let measured = match child_peak_rss_mb(child) {
            Ok(mb) => active_users_in_last_minute(pipeline, &dir).await.map(|users| (mb, users)),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&dir);
        let (mb, users) = measured?;
        rss.push(mb);
        active.push(users as f64);
    }
    figures.push(figure("active users in the last 60 s of the memory run (embedded, unthrottled)", "users", active));
    figures.push(figure("peak RSS of a runner process holding them (generator + consumer + metrics)", "MB", rss));
    Ok(())
}

/// Distinct users among the stored events of the last minute of event time.
async fn active_users_in_last_minute(pipeline: &Pipeline, dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut config = pipeline.config.embedded.clone();
    config.data_dir = dir.to_path_buf();
    let store = crate::store::embedded::EmbeddedStore::open(&config, None)?;
    let events = crate::store::EventStore::all_events(&store).await?;
    let newest = events.iter().map(|e| e.timestamp).max().context("bench: the memory run stored no events")?;
    let since = newest - chrono::Duration::seconds(60);
    Ok(events.iter().filter(|e| e.timestamp > since).map(|e| e.user_id.as_str()).collect::<std::collections::HashSet<_>>().len())
}

/// The figures as a table a person reads.
pub fn print_table(figures: &[Figure], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let w = figures.iter().map(|f| f.name.len()).max().unwrap_or(10);
    writeln!(out, "{:w$}  {:>12} {:>12} {:>12}  {:>9}  unit", "figure", "median", "min", "max", "ratio")?;
    for f in figures {
        let ratio = f.ratio.map_or(String::new(), |r| format!("{r:.2}x"));
        writeln!(out, "{:w$}  {:>12.0} {:>12.0} {:>12.0}  {:>9}  {}", f.name, f.median, f.min, f.max, ratio, f.unit)?;
    }
    for f in figures.iter().filter(|f| f.ratio.is_some()) {
        writeln!(out, "ratio of \"{}\" is against \"{}\"", f.name.trim(), f.compared_with.as_deref().unwrap_or(""))?;
    }
    Ok(())
}
