//! The subcommands behind the CLI, as library functions so tests can call them directly.

use crate::aggregate::{Metric, MetricSet, MetricValue};
use crate::alert::AlertSet;
use crate::config::Pipeline;
use crate::generator::{Generator, GeneratorScript};
use std::io::Write;
use std::path::Path;

/// Loads the pipeline file and compiles every script it references, without connecting to
/// anything. Returns every problem found, each naming its file and line.
pub fn validate(path: &Path) -> Result<Pipeline, Vec<String>> {
    let pipeline = Pipeline::load(path).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    if let Err(e) = GeneratorScript::load(&pipeline.config.generator) {
        problems.push(e.to_string());
    }
    for m in &pipeline.config.metrics {
        if let Err(e) = Metric::load(m) {
            problems.push(e.to_string());
        }
    }
    // Each rule alone first, so every broken one is listed; then the set (names, channels).
    let (alerting, alerts) = (&pipeline.config.alerting, &pipeline.config.alerts);
    let before = problems.len();
    for a in alerts {
        if let Err(e) = AlertSet::load(alerting, std::slice::from_ref(a), &pipeline.path) {
            problems.push(e.to_string());
        }
    }
    if problems.len() == before {
        if let Err(e) = AlertSet::load(alerting, alerts, &pipeline.path) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(pipeline)
    } else {
        Err(problems)
    }
}

/// Writes `count` generated events to `out` as JSON lines (no transport involved).
pub fn generate(pipeline: &Pipeline, count: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    let script = GeneratorScript::load(&pipeline.config.generator)?;
    let mut generator = Generator::new(script, pipeline.config.generator.seed);
    let mut batch = Vec::with_capacity(1000);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut left = count;
    while left > 0 {
        let n = left.min(1000) as usize;
        batch.clear();
        generator.fill(n, &mut batch);
        buf.clear();
        for e in &batch {
            e.write_json(&mut buf);
            buf.push(b'\n');
        }
        out.write_all(&buf)?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Reads every metric's current window from the pipeline's store.
pub async fn metrics(pipeline: &Pipeline, at_ms: i64) -> anyhow::Result<Vec<MetricValue>> {
    let set = MetricSet::load(&pipeline.config.metrics)?;
    let store = crate::store::open(&pipeline.config).await?;
    set.read_all(&*store, at_ms).await
}

/// Prints metric values as an aligned table.
pub fn print_metrics(values: &[MetricValue], out: &mut dyn Write) -> std::io::Result<()> {
    let width = values.iter().map(|v| v.name.len()).max().unwrap_or(6).max(6);
    writeln!(out, "{:width$}  {:<21}  value", "metric", "window (UTC)")?;
    for v in values {
        let start = chrono::DateTime::from_timestamp_millis(v.window_start).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
        let end = chrono::DateTime::from_timestamp_millis(v.window_end).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
        writeln!(out, "{:width$}  {start}-{end}      {}", v.name, v.value)?;
    }
    Ok(())
}
