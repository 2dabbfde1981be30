//! The query side: a metric's value over a window, and its history, merged from the stored
//! partials of every partition and pane (so several runners in one group read one result).

use super::keys::{rewrite_key, seam_key, REWRITE_PANE, SEAM_PANE};
use super::{Metric, Partial};
use crate::store::{PaneRecord, StateStore};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A metric's value over one window.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MetricValue {
    pub name: String,
    pub description: String,
    /// The window, `[start, end)` in ms since the epoch.
    pub window_start: i64,
    pub window_end: i64,
    pub value: Value,
    /// Set while the metric is being filled from history: `value` is partial until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfilling: Option<Backfilling>,
    /// Records of the window counted under `__other__`: a pane reached the metric's
    /// `max_groups`, so `value` leaves some keys out (the dashboard says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<u64>,
    /// Whether any record was counted in the window (an empty one reports a zero that is no
    /// data: alert rules tell the two apart).
    #[serde(skip)]
    pub filled: bool,
}

/// How far a metric's backfill has come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Backfilling {
    /// The share of the history read, 0 to 1.
    pub done: f64,
}

/// Reads one metric's window ending with the pane holding `at_ms`, merging every stored partial.
pub async fn read(
    metric: &Metric,
    store: &dyn StateStore,
    at_ms: i64,
) -> anyhow::Result<MetricValue> {
    let (start, end) = metric.window.range_at(at_ms);
    let (mut value, mut other, mut filled) = (Value::Null, None, false);
    each_window(metric, store, &[end], |_, merged, any| {
        value = metric.report(merged).map_err(anyhow::Error::msg)?;
        other = metric.overflow(merged);
        filled = any;
        Ok(())
    })
    .await?;
    // The seams that read saw: a backfill's progress without reading them again.
    let backfilling = super::backfill::progress_of(&metric.settled.kept.lock().await.seams);
    Ok(MetricValue {
        name: metric.name().to_string(),
        description: metric.config.description.clone(),
        window_start: start,
        window_end: end,
        value,
        backfilling: backfilling.map(|done| Backfilling { done }),
        other,
        filled,
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
pub async fn history(
    metric: &Metric,
    store: &dyn StateStore,
    from: i64,
    to: i64,
    max_points: usize,
) -> anyhow::Result<Vec<Point>> {
    let w = metric.window;
    let step = history_step(metric, from, to, max_points);
    let last_end = w.pane_of(to) + w.slide_ms;
    let first_end =
        (w.pane_of(from) + w.slide_ms).max(last_end - step * (max_points.max(1) as i64 - 1));
    let ends: Vec<i64> = (0..)
        .map(|i| first_end + i * step)
        .take_while(|e| *e <= last_end)
        .collect();
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

/// The metric's value for the windows ending at each of `ends` (ascending, pane-aligned).
/// Each window's merged state is reported and dropped before the next is merged: sixty merged
/// states of a per-session metric held at once (a 5-minute chart) cost ~400 MB at 10,000 events/s.
pub async fn windows(
    metric: &Metric,
    store: &dyn StateStore,
    ends: &[i64],
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::with_capacity(ends.len());
    each_window(metric, store, ends, |end, merged, filled| {
        points.push(Point {
            end,
            value: metric.report(merged).map_err(anyhow::Error::msg)?,
            filled,
        });
        Ok(())
    })
    .await?;
    Ok(points)
}

/// Calls `each` with the merged state of each window ending at `ends` (ascending, pane-aligned),
/// and whether any partial was stored for it. Settled panes come from the metric's [`SettledPanes`]; the others
/// are read from the store a window's span at a time, and dropped once no later window needs
/// them: a day of panes read at once (a long history) held hundreds of megabytes.
async fn each_window(
    metric: &Metric,
    store: &dyn StateStore,
    ends: &[i64],
    mut each: impl FnMut(i64, &Partial, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Some(&last_end) = ends.last() else {
        return Ok(());
    };
    let w = metric.window;
    let mut kept = metric.settled.kept.lock().await;
    kept.advance(metric, store).await?;
    // Panes outside the kept span: older ones (a long history) and those still changing.
    let mut loose = BTreeMap::new();
    let mut loaded_to = i64::MIN;
    for &end in ends {
        let start = end - w.size_ms;
        loose = loose.split_off(&start);
        if end > loaded_to {
            let (from, to) = (
                loaded_to.max(start),
                end.max(loaded_to.max(start) + w.size_ms).min(last_end),
            );
            load_merged(metric, store, from, to.min(kept.from), &mut loose).await?;
            load_merged(metric, store, from.max(kept.until), to, &mut loose).await?;
            loaded_to = to;
        }
        // A window still open is read again every refresh: its settled part is kept merged.
        let (mut merged, mut filled) = match start >= kept.from && end > kept.until {
            true => kept.prefix(metric, start, end)?.clone(),
            false => kept.merge(metric, start, end)?,
        };
        for p in loose.range(start..end).map(|(_, p)| p) {
            metric
                .merge(&mut merged, p)
                .map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
            filled = true;
        }
        each(end, &merged, filled)?;
    }
    Ok(())
}

/// Panes read from the store in one query at most: their stored form (JSON) is several times
/// the size of the decoded state, and two dozen panes of a per-session metric read at once
/// held ~100 MB beside their decoded copies.
const PANES_PER_QUERY: i64 = 4;

/// Reads the partials of panes `[from, to)` into `panes`, one merged state per pane.
async fn load_merged(
    metric: &Metric,
    store: &dyn StateStore,
    from: i64,
    to: i64,
    panes: &mut BTreeMap<i64, Partial>,
) -> anyhow::Result<()> {
    let step = PANES_PER_QUERY * metric.window.slide_ms;
    let mut at = from;
    while at < to {
        let until = at.saturating_add(step).min(to);
        for r in store
            .load_panes(metric.state_key(), at, until, None)
            .await?
        {
            let partial = metric
                .decode(&r.state)
                .map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
            match panes.get_mut(&r.pane_start) {
                Some(p) => metric
                    .merge(p, &partial)
                    .map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?,
                None => {
                    panes.insert(r.pane_start, partial);
                }
            }
        }
        at = until;
    }
    Ok(())
}

/// A metric's settled panes, decoded, kept between reads. A pane is settled once every
/// partition's stored watermark is past its end by the lateness: any event still to come for it
/// is late and left out, so its partials no longer change. At 10,000 events/s a pane of a
/// per-session metric holds ~35,000 keys; decoding the twelve panes of a window from the store
/// on every read cost the dashboard and alerts most of their time. Now a read decodes only the
/// panes still changing and merges them into the kept merge of the window's settled part.
#[derive(Default)]
pub struct SettledPanes {
    kept: tokio::sync::Mutex<Kept>,
}

/// Everything is read from the store again this often, whatever the marks say (a partition
/// that starts late writes behind the others' watermarks).
const REREAD_EVERY: Duration = Duration::from_secs(60);

/// Merged settled prefixes kept at most (the current window and the few history windows still
/// open; each may hold a whole window's keys).
const MAX_PREFIXES: usize = 8;

struct Kept {
    /// The store they came from (a reload may switch stores).
    store: String,
    /// The metric's rewrite marks and backfill seams as last read: a change means settled
    /// panes were rewritten.
    marks: Vec<PaneRecord>,
    seams: Vec<PaneRecord>,
    read_at: Option<Instant>,
    /// Every stored pane starting in `[from, until)`, merged over partitions.
    from: i64,
    until: i64,
    panes: BTreeMap<i64, Partial>,
    /// The merge of the kept panes in `[start, end)`, by (start, end), and whether there were any.
    prefixes: HashMap<(i64, i64), (Partial, bool)>,
}

impl Default for Kept {
    fn default() -> Self {
        // An empty span past every pane: nothing is kept, every read goes to the store.
        Kept {
            store: String::new(),
            marks: Vec::new(),
            seams: Vec::new(),
            read_at: None,
            from: i64::MAX,
            until: i64::MAX,
            panes: BTreeMap::new(),
            prefixes: HashMap::new(),
        }
    }
}

impl Kept {
    /// Moves the kept span up to the newest settled pane and back to two window sizes behind it.
    async fn advance(&mut self, metric: &Metric, store: &dyn StateStore) -> anyhow::Result<()> {
        let describe = store.describe();
        let marks = store
            .load_panes(&rewrite_key(metric), REWRITE_PANE, REWRITE_PANE + 1, None)
            .await?;
        let seams = store
            .load_panes(&seam_key(metric), SEAM_PANE, SEAM_PANE + 1, None)
            .await?;
        if self.store != describe
            || self.marks != marks
            || self.seams != seams
            || self.read_at.is_none_or(|t| t.elapsed() > REREAD_EVERY)
        {
            *self = Kept {
                store: describe,
                marks,
                seams,
                read_at: Some(Instant::now()),
                ..Kept::default()
            };
        }
        let w = metric.window;
        let lateness = metric.config.lateness.as_millis() as i64;
        let oldest = super::keys::stored_watermarks(metric, store)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .min();
        let Some(until) = oldest
            .and_then(|t| t.checked_sub(lateness))
            .map(|f| w.pane_of(f))
        else {
            *self = Kept {
                store: std::mem::take(&mut self.store),
                marks: std::mem::take(&mut self.marks),
                seams: std::mem::take(&mut self.seams),
                read_at: self.read_at,
                ..Kept::default()
            };
            return Ok(());
        };
        let keep_from = until.saturating_sub(2 * w.size_ms);
        if self.from == i64::MAX || until < self.until {
            // Nothing kept yet, or a watermark went back (a partition joined late): start over.
            *self = Kept {
                store: std::mem::take(&mut self.store),
                marks: std::mem::take(&mut self.marks),
                seams: std::mem::take(&mut self.seams),
                read_at: self.read_at,
                from: keep_from,
                until: keep_from,
                ..Kept::default()
            };
        }
        if keep_from > self.from {
            self.panes = self.panes.split_off(&keep_from);
            self.from = keep_from;
            self.prefixes.clear();
        }
        if until > self.until {
            load_merged(
                metric,
                store,
                self.until.max(self.from),
                until,
                &mut self.panes,
            )
            .await?;
            self.until = until;
            self.prefixes.clear();
        }
        Ok(())
    }

    /// The merge of the kept panes in `[start, end)` (start within the kept span), kept for the
    /// next read of the same window.
    fn prefix(
        &mut self,
        metric: &Metric,
        start: i64,
        end: i64,
    ) -> anyhow::Result<&(Partial, bool)> {
        let key = (start, end.min(self.until));
        if !self.prefixes.contains_key(&key) {
            if self.prefixes.len() >= MAX_PREFIXES {
                self.prefixes.clear();
            }
            let merged = self.merge(metric, key.0, key.1)?;
            self.prefixes.insert(key, merged);
        }
        Ok(&self.prefixes[&key])
    }

    /// The kept panes in `[start, end)` merged.
    fn merge(&self, metric: &Metric, start: i64, end: i64) -> anyhow::Result<(Partial, bool)> {
        let mut merged = metric.empty().map_err(anyhow::Error::msg)?;
        let (start, end) = (start.max(self.from), end.min(self.until));
        let mut filled = false;
        if start < end {
            for p in self.panes.range(start..end).map(|(_, p)| p) {
                metric
                    .merge(&mut merged, p)
                    .map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
                filled = true;
            }
        }
        Ok((merged, filled))
    }
}

#[cfg(test)]
mod tests {
    use super::super::write::tests::{event, per_item_set, schema};
    use super::*;
    use crate::aggregate::{Aggregator, MetricSet};
    use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
    use crate::telemetry::Stats;
    use crate::transport::Batch;
    use std::sync::Arc;

    /// Aggregates one event of item `a` per second of `seconds` on `partition` (offsets from
    /// `first_offset`) and stores the partials, as a consumer does.
    async fn consume(
        set: &Arc<MetricSet>,
        store: &EmbeddedStore,
        partition: i32,
        first_offset: i64,
        seconds: impl Iterator<Item = i64>,
    ) {
        let mut agg = Aggregator::new(set.clone(), Stats::new());
        let (mut events, mut sources) = (Vec::new(), Vec::new());
        for (i, s) in seconds.enumerate() {
            events.push(event(&format!("p{partition}-{s}-{i}"), "a", s));
            sources.push((partition, first_offset + i as i64));
        }
        let absorbed = agg
            .absorb(
                &Batch {
                    events,
                    sources,
                    ..Batch::default()
                },
                store,
            )
            .await
            .unwrap();
        store.write_panes(&absorbed.panes).await.unwrap();
    }

    fn count(v: &Value) -> u64 {
        v.get("a").and_then(Value::as_u64).unwrap_or(0)
    }

    const T0: i64 = 1_000_000_000;

    /// An embedded store in a fresh folder (kept while the folder guard lives).
    fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(
            &EmbeddedConfig {
                data_dir: dir.path().to_path_buf(),
                ..Default::default()
            },
            &Default::default(),
            &schema(),
            &[],
        )
        .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn settled_panes_are_read_once_and_the_changing_ones_on_every_read() {
        let (_dir, store) = store();
        let set = per_item_set(Duration::from_secs(60), Duration::from_secs(5));
        let m = &set.metrics()[0];
        // One event a second for 100 s: the watermark is at 99 s, so panes ending by 94 s
        // (starting before 90 s) are settled.
        consume(&set, &store, 0, 0, 0..100).await;
        let at = T0 + 99_000;
        assert_eq!(count(&read(m, &store, at).await.unwrap().value), 60);
        let kept = m.settled.kept.lock().await.until;
        assert_eq!(
            kept,
            T0 + 90_000,
            "settled up to the pane behind watermark minus lateness"
        );

        // A partial written into a settled pane by a partition with no watermark (only a
        // backfill rewrites settled panes) is not read again until everything is reread...
        let settled = store
            .load_panes(m.state_key(), T0 + 50_000, T0 + 55_000, None)
            .await
            .unwrap()
            .remove(0);
        store
            .write_panes(&[PaneRecord {
                partition: 7,
                ..settled.clone()
            }])
            .await
            .unwrap();
        assert_eq!(
            count(&read(m, &store, at).await.unwrap().value),
            60,
            "the kept pane"
        );
        // ...unless it says so: `runner backfill` leaves a rewrite mark.
        store
            .write_panes(&[
                PaneRecord {
                    partition: 8,
                    ..settled
                },
                crate::aggregate::keys::rewrite_mark(m, 1),
            ])
            .await
            .unwrap();
        assert_eq!(
            count(&read(m, &store, at).await.unwrap().value),
            70,
            "both partials read again after the mark"
        );
        store
            .write_panes(&[crate::aggregate::keys::rewrite_mark(m, 2)])
            .await
            .unwrap();
        // ...while an event in a pane still open shows on the next read.
        consume(&set, &store, 0, 100, [98].into_iter()).await;
        assert_eq!(count(&read(m, &store, at).await.unwrap().value), 71);
        // A fresh definition (a reload) reads the store whole.
        let fresh = per_item_set(Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(
            count(&read(&fresh.metrics()[0], &store, at).await.unwrap().value),
            71
        );

        // A partition whose watermark is behind what was kept starts the span over.
        consume(&set, &store, 1, 0, [41].into_iter()).await;
        assert_eq!(count(&read(m, &store, at).await.unwrap().value), 72);
        assert_eq!(m.settled.kept.lock().await.until, T0 + 35_000);
    }

    #[tokio::test]
    async fn windows_before_during_and_after_the_kept_span_merge_every_pane_once() {
        let (_dir, store) = store();
        let set = per_item_set(Duration::from_secs(20), Duration::from_secs(5));
        let m = &set.metrics()[0];
        consume(&set, &store, 0, 0, 0..300).await;
        // Warm the span (it covers two window sizes behind the settled pane), then read windows
        // from long before it to past the newest event.
        read(m, &store, T0 + 299_000).await.unwrap();
        let ends: Vec<i64> = (1..=61).map(|k| T0 + k * 5_000).collect();
        let points = windows(m, &store, &ends).await.unwrap();
        for p in &points {
            // One event a second from 0 s to 299 s.
            let (first, past) = (
                (p.end - 20_000 - T0).clamp(0, 300_000),
                (p.end - T0).min(300_000),
            );
            assert_eq!(
                count(&p.value) as i64,
                (past - first) / 1000,
                "window ending {} ms",
                p.end - T0
            );
            assert!(p.filled);
        }
    }
}
