//! The query side: a metric's value over a window, and its history, merged from the stored
//! partials of every partition and pane (so several runners in one group read one result).

use super::{Metric, Partial};
use crate::store::EventStore;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A metric's value over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricValue {
    pub name: String,
    pub description: String,
    /// The window, `[start, end)` in ms since the epoch.
    pub window_start: i64,
    pub window_end: i64,
    pub value: Value,
    /// Set while the metric is being filled from history: `value` is partial until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfilling: Option<Backfilling>,
}

/// How far a metric's backfill has come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backfilling {
    /// The share of the history read, 0 to 1.
    pub done: f64,
}

/// Reads one metric's window ending with the pane holding `at_ms`, merging every stored partial.
pub async fn read(metric: &Metric, store: &dyn EventStore, at_ms: i64) -> anyhow::Result<MetricValue> {
    let (start, end) = metric.window.range_at(at_ms);
    let records = store.load_panes(metric.state_key(), start, end, None).await?;
    let mut merged = metric.empty().map_err(anyhow::Error::msg)?;
    for r in &records {
        let partial = metric.decode(&r.state).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
        metric.merge(&mut merged, &partial).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
    }
    Ok(MetricValue {
        name: metric.name().to_string(),
        description: metric.config.description.clone(),
        window_start: start,
        window_end: end,
        value: metric.report(&merged).map_err(anyhow::Error::msg)?,
        backfilling: super::backfill::progress(metric, store).await?.map(|done| Backfilling { done }),
    })
}

/// One point of a metric's history: the window ending at `end` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub end: i64,
    pub value: Value,
    /// Whether any partial was stored for the window (an empty one reports a zero that is no data).
    #[serde(skip)]
    pub filled: bool,
}

/// A metric's value for windows ending every `step` (at least one slide) from `from` to `to`,
/// at most `max_points` of them; the partials are read once and merged in memory.
pub async fn history(metric: &Metric, store: &dyn EventStore, from: i64, to: i64, max_points: usize) -> anyhow::Result<Vec<Point>> {
    let w = metric.window;
    let step = history_step(metric, from, to, max_points);
    let last_end = w.pane_of(to) + w.slide_ms;
    let first_end = (w.pane_of(from) + w.slide_ms).max(last_end - step * (max_points.max(1) as i64 - 1));
    let ends: Vec<i64> = (0..).map(|i| first_end + i * step).take_while(|e| *e <= last_end).collect();
    windows(metric, store, &ends).await
}

/// The distance between the windows [`history`] reports for `from..to` in at most `max_points`:
/// a whole number of slides.
pub fn history_step(metric: &Metric, from: i64, to: i64, max_points: usize) -> i64 {
    let w = metric.window;
    let span = (to - from).max(w.slide_ms);
    let per_point = span / max_points.max(1) as i64;
    ((per_point + w.slide_ms - 1) / w.slide_ms).max(1) * w.slide_ms
}

/// The metric's value for the windows ending at each of `ends` (ascending, pane-aligned); the
/// partials they span are read once and merged in memory.
pub async fn windows(metric: &Metric, store: &dyn EventStore, ends: &[i64]) -> anyhow::Result<Vec<Point>> {
    let (Some(&first_end), Some(&last_end)) = (ends.first(), ends.last()) else { return Ok(Vec::new()) };
    let w = metric.window;
    let records = store.load_panes(metric.state_key(), first_end - w.size_ms, last_end, None).await?;
    let mut panes: BTreeMap<i64, Partial> = BTreeMap::new();
    for r in &records {
        let partial = metric.decode(&r.state).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
        match panes.get_mut(&r.pane_start) {
            Some(p) => metric.merge(p, &partial).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?,
            None => {
                panes.insert(r.pane_start, partial);
            }
        }
    }
    let mut points = Vec::with_capacity(ends.len());
    for &end in ends {
        let mut merged = metric.empty().map_err(anyhow::Error::msg)?;
        let mut filled = false;
        for (_, p) in panes.range(end - w.size_ms..end) {
            metric.merge(&mut merged, p).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
            filled = true;
        }
        points.push(Point { end, value: metric.report(&merged).map_err(anyhow::Error::msg)?, filled });
    }
    Ok(points)
}
