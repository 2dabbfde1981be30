//! Backfill beside live traffic: a pipeline consumes a history of events into MongoDB, then
//! restarts with a metric over a 1 h window added, which is new on every partition and so is
//! filled from the Kafka log while the generator goes on at the shipped rate.

use super::{bench_run_options, compare, figure, rate, scratch_path, BenchOptions, Figure};
use crate::aggregate::{backfill, MetricConfig};
use crate::config::Pipeline;
use crate::pipeline::{self, Components, RunOptions};
use anyhow::Context;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const NAME: &str = "bench_backfilled_1h";

pub(super) async fn backfill_section(
    pipeline: &Pipeline,
    opts: &BenchOptions,
    servers: &str,
    uri: &str,
    run_id: &str,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (n, runs) = (opts.events, opts.runs);
    // The shipped rate (the pipeline file's), or 1,000 events/s when it says "as fast as possible".
    let live_rate = if pipeline.config.generator.rate > 0.0 {
        pipeline.config.generator.rate
    } else {
        1000.0
    };
    let script = scratch_path(".rhai");
    std::fs::write(&script, "#{}").context("bench: cannot write the backfilled metric's script")?;
    let metric: MetricConfig = toml::from_str(&format!("name = \"{NAME}\"\nscript = {script:?}\nreducer = \"count\"\nwindow = \"1h\"\nslide = \"1m\"\n"))?;
    let quiet = bench_run_options();
    tracing::info!("bench: backfill of a 1 h window from {n} events of history, beside live traffic at {live_rate} events/s");
    let (mut filled, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let mut p = super::on_services(pipeline, servers, uri, &format!("{run_id}_backfill_{i}"));
        p.config.generator.rate = 0.0;
        p.config.generator.batch_size = 1000;
        // 1. The history: consumed and committed with the shipped metrics.
        let history = RunOptions {
            components: Components {
                alerting: false,
                ..Components::ALL
            },
            max_events: Some(n),
            ..quiet.clone()
        };
        pipeline::run(&p, history, CancellationToken::new()).await?;

        // 2. The same pipeline with the new metric, live traffic at the shipped rate.
        let mut q = p.clone();
        q.config.metrics.push(metric.clone());
        q.config.generator.rate = live_rate;
        q.config.generator.batch_size = 100;
        let stop = CancellationToken::new();
        let running = pipeline::start(
            q,
            RunOptions {
                components: Components {
                    alerting: false,
                    ..Components::ALL
                },
                ..quiet.clone()
            },
            stop.clone(),
        )
        .await?;
        let store = running
            .store
            .clone()
            .context("bench: the backfill run has no store")?;
        let m = running
            .metrics
            .borrow()
            .metrics()
            .iter()
            .find(|m| m.name() == NAME)
            .cloned()
            .context("bench: the backfilled metric is not in force")?;
        let t = Instant::now();
        let mut seen = false;
        loop {
            match backfill::progress(&m, &*store).await? {
                Some(_) => seen = true,
                None if seen => break,
                None => {}
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(600),
                "bench: the backfill did not finish in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = t.elapsed();
        let stored_during = running.stats.snapshot().stored;
        filled.push(rate(n, took));
        during.push(rate(stored_during, took));
        // Live throughput once the backfill is over, for comparison.
        let (s0, t0) = (running.stats.snapshot().stored, Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        after.push(rate(running.stats.snapshot().stored - s0, t0.elapsed()));
        stop.cancel();
        running.wait().await?;
        tracing::info!(run = i, took = ?took, "bench: backfill run done");
    }
    let _ = std::fs::remove_file(&script);
    let per_hour = 3600.0 * live_rate;
    let hour: Vec<f64> = filled.iter().map(|r| per_hour / r).collect();
    figures.push(figure(
        "backfill: history filled from the kafka log into a new 1 h metric, beside live traffic",
        "events/s",
        filled,
    ));
    figures.push(figure(
        &format!("  a 1 h window at {live_rate:.0} events/s ({per_hour:.0} events) takes"),
        "s",
        hour,
    ));
    figures.push(figure(
        "backfill: live events stored while it ran",
        "events/s",
        during,
    ));
    figures.push(figure(
        "backfill: live events stored after it",
        "events/s",
        after,
    ));
    compare(
        figures,
        "backfill: live events stored while it ran",
        "backfill: live events stored after it",
    );
    Ok(())
}
