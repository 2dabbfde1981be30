//! `runner bench`: throughput of each stage beside the baseline it sits on, measured in one
//! run on one machine, so the ratios mean something on shared, noisy hardware.
//!
//! Every figure is the median of `runs` runs, with min and max. Sections that need Kafka or
//! MongoDB run only when their address is given.

mod analytics;
mod backfill;
mod baseline;
mod dashboard;
mod discard;
mod formats;
mod kafka;
mod local;

pub use dashboard::{load_check, LoadOutcome, LoadSpec};
use kafka::{kafka_sections, latency_section, remove_bench_databases};
use local::{aggregate_section, embedded_section, generator_section, memory_section};

use crate::config::Pipeline;
use crate::generator::GeneratorScript;
use crate::pipeline::RunOptions;
use anyhow::Context;
use serde::Serialize;
use std::time::Duration;

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
    /// Quantile and histogram reducers against an average of the same field (apply cost per
    /// record), and the quantile's accuracy against the exact quantiles, in memory.
    Analytics,
    /// Kafka produce and consume, MongoDB insert_many, end to end and its peak RSS.
    Throughput,
    /// Event-to-visible latency at 10,000 events/s (needs Kafka and MongoDB).
    Latency,
    /// End to end on the embedded transport and store.
    Embedded,
    /// Peak RSS of a runner holding over 100,000 active users (embedded).
    Memory,
    /// Decode cost of the same records in JSON, Avro and Protobuf, the consuming path's CPU in
    /// each, and the file source end to end against reading the file raw.
    Formats,
    /// A new metric over a 1 h window filled from the Kafka log beside live traffic at the
    /// shipped rate: how fast, and what live throughput keeps meanwhile (needs Kafka and MongoDB).
    Backfill,
    /// The dashboard under load: a runner at 10,000 events/s (embedded), warmed up until its
    /// windows are full, with no viewer, then with 200 live viewers and 50 API requests/s, 60 s
    /// each (about 4.5 minutes; only when named in --only).
    Dashboard,
}

impl BenchOptions {
    fn includes(&self, section: Section) -> bool {
        self.only.contains(&section) || (self.only.is_empty() && section != Section::Dashboard)
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

/// User plus system CPU time of this process so far: the runner's own work, not the broker's
/// or the database's (they are other processes).
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Microseconds of `cpu` per event of `events`.
fn us_per_event(cpu: Duration, events: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / events.max(1) as f64
}

/// A CPU-per-event figure (`us/event`, its name says "cpu") and the events/s one core gives at
/// that cost.
fn push_cpu(figures: &mut Vec<Figure>, name: &str, us_per_event: Vec<f64>) {
    let per_core = us_per_event.iter().map(|us| 1e6 / us.max(1e-3)).collect();
    figures.push(figure(name, "us/event", us_per_event));
    figures.push(figure(
        "  events/s per core at that cpu",
        "events/s",
        per_core,
    ));
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
    let Some(base) = figures
        .iter()
        .find(|f| f.name == baseline)
        .map(|f| f.median)
    else {
        return;
    };
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
    let opts = &BenchOptions {
        runs: opts.runs.max(1),
        ..opts.clone()
    };
    let mut figures = Vec::new();
    let script = GeneratorScript::load(&pipeline.config.generator, &pipeline.schema())?;

    if opts.includes(Section::Generator) {
        generator_section(pipeline, &script, opts, &mut figures)?;
    }
    if opts.includes(Section::Aggregate) {
        aggregate_section(pipeline, &script, opts, &mut figures)?;
    }
    if opts.includes(Section::Analytics) {
        analytics::analytics_section(pipeline, &script, opts, &mut figures)?;
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
            if let (true, Some(uri)) = (opts.includes(Section::Backfill), &opts.mongodb) {
                backfill::backfill_section(pipeline, opts, servers, uri, &run_id, &mut figures)
                    .await?;
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
    if opts.includes(Section::Formats) {
        formats::formats_section(pipeline, &script, opts, &mut figures).await?;
    }
    if opts.includes(Section::Embedded) {
        embedded_section(pipeline, opts, &mut figures).await?;
    }
    if opts.includes(Section::Memory) {
        memory_section(pipeline, opts, &mut figures).await?;
    }
    if opts.includes(Section::Dashboard) {
        dashboard::dashboard_section(pipeline, &mut figures).await?;
    }
    Ok(figures)
}

/// `pipeline` on the bench's broker and server, with a topic, group and database of its own,
/// all named `bench_<run id>_<name>` (the databases are dropped at the end by that prefix).
fn on_services(pipeline: &Pipeline, servers: &str, uri: &str, name: &str) -> Pipeline {
    let mut p = pipeline.clone();
    p.config.kafka.bootstrap_servers = servers.to_string();
    p.config.kafka.topic = format!("bench_{name}");
    p.config.kafka.consumer_group = format!("bench_{name}");
    p.config.mongodb.uri = uri.to_string();
    p.config.mongodb.database = format!("bench_{name}");
    p
}

/// A fresh path under the temp folder for a bench run's files.
fn scratch_path(extension: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "runner-bench-{}{extension}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Runs with no progress lines, ending 2 s after the last event.
fn bench_run_options() -> RunOptions {
    RunOptions {
        progress_every: Duration::from_secs(3600),
        idle_exit: Some(Duration::from_secs(2)),
        ..RunOptions::default()
    }
}

/// Runs a runner process to its end, sampling its peak resident memory (VmHWM).
fn child_peak_rss_mb(mut command: std::process::Command) -> anyhow::Result<f64> {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("bench: cannot start a runner process")?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0.0f64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        });
        peak_kb = peak_kb.max(hwm.unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(50));
    };
    anyhow::ensure!(
        status.success(),
        "bench: the runner process being measured failed ({status})"
    );
    Ok(peak_kb / 1024.0)
}

/// The figures as a table a person reads.
pub fn print_table(figures: &[Figure], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let w = figures.iter().map(|f| f.name.len()).max().unwrap_or(10);
    writeln!(
        out,
        "{:w$}  {:>12} {:>12} {:>12}  {:>9}  unit",
        "figure", "median", "min", "max", "ratio"
    )?;
    for f in figures {
        let ratio = f.ratio.map_or(String::new(), |r| format!("{r:.2}x"));
        // Small figures (µs per event) keep their decimals.
        let n = |v: f64| match v.abs() {
            _ if v.fract() == 0.0 => format!("{v:.0}"),
            a if a < 10.0 => format!("{v:.2}"),
            a if a < 100.0 => format!("{v:.1}"),
            _ => format!("{v:.0}"),
        };
        writeln!(
            out,
            "{:w$}  {:>12} {:>12} {:>12}  {:>9}  {}",
            f.name,
            n(f.median),
            n(f.min),
            n(f.max),
            ratio,
            f.unit
        )?;
    }
    for f in figures.iter().filter(|f| f.ratio.is_some()) {
        writeln!(
            out,
            "ratio of \"{}\" is against \"{}\"",
            f.name.trim(),
            f.compared_with.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}
