//! The subcommands behind the CLI, as library functions so tests can call them directly.
//! (`runner validate` is [`crate::pipeline::validate`], the compile step `run` uses.)

use crate::aggregate::{MetricSet, MetricValue};
use crate::config::Pipeline;
use crate::generator::{Generator, GeneratorScript};
use std::io::Write;

/// Writes `count` generated events to `out` as JSON lines (no transport involved).
pub fn generate(pipeline: &Pipeline, count: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    let script = GeneratorScript::load(&pipeline.config.generator, &pipeline.schema())?;
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
    let set = MetricSet::load(&pipeline.config.metrics, &pipeline.schema())?;
    let store = crate::store::open(&pipeline.config.mongodb, &pipeline.config.embedded, &pipeline.config.retention, &pipeline.schema()).await?;
    set.read_all(&*store, at_ms).await
}

/// Every metric's final result for the window that ends with the pane holding `at_ms`, read from
/// the results the consumers wrote when the window closed; with it, the names of the metrics
/// whose window has no result yet (not closed, or from before results were kept), which are
/// computed from the stored partials instead.
pub async fn metrics_at(pipeline: &Pipeline, at_ms: i64) -> anyhow::Result<(Vec<MetricValue>, Vec<String>)> {
    let set = MetricSet::load(&pipeline.config.metrics, &pipeline.schema())?;
    let store = crate::store::open(&pipeline.config.mongodb, &pipeline.config.embedded, &pipeline.config.retention, &pipeline.schema()).await?;
    let (mut values, mut not_final) = (Vec::new(), Vec::new());
    for m in set.metrics() {
        let (_, end) = m.window.range_at(at_ms);
        match store.load_results(m.name(), end, end + 1).await?.pop() {
            Some(r) => values.push(MetricValue { name: r.metric, description: m.config.description.clone(), window_start: r.window_start, window_end: r.window_end, value: r.value, backfilling: None }),
            None => {
                not_final.push(m.name().to_string());
                values.push(crate::aggregate::read(m, &*store, at_ms).await?);
            }
        }
    }
    Ok((values, not_final))
}

/// Prints metric values as an aligned table.
pub fn print_metrics(values: &[MetricValue], out: &mut dyn Write) -> std::io::Result<()> {
    let width = values.iter().map(|v| v.name.len()).max().unwrap_or(6).max(6);
    writeln!(out, "{:width$}  {:<21}  value", "metric", "window (UTC)")?;
    for v in values {
        let start = chrono::DateTime::from_timestamp_millis(v.window_start).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
        let end = chrono::DateTime::from_timestamp_millis(v.window_end).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
        match v.backfilling {
            // A partial value is not shown as if it were the window's.
            Some(b) => writeln!(out, "{:width$}  {start}-{end}      backfilling ({:.0}% done; partial: {})", v.name, 100.0 * b.done, v.value)?,
            None => writeln!(out, "{:width$}  {start}-{end}      {}", v.name, v.value)?,
        }
    }
    Ok(())
}
