//! Metric histories for the charts and the history API, kept between refreshes. A window older
//! than the metric's lateness (plus a margin) can no longer change, so it is computed once; each
//! refresh recomputes only the newest windows. Recomputing every window of a range every
//! refresh (60 windows of 12 panes for each metric, every 2 s) cost the render hundreds of
//! milliseconds under load. Window ends are multiples of the step, so they stay put as time
//! moves on, and everything is recomputed now and then, so a rewrite of past panes
//! (`runner backfill`) shows within [`RECOMPUTE_ALL_EVERY`].

use super::hub::Memo;
use crate::aggregate::{history_step, windows, Metric, Point};
use crate::store::StateStore;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many windows a history covers at most; charts and the API reduce them further
/// (largest-triangle-three-buckets) to [`super::chart::MAX_POINTS`].
pub const HISTORY_WINDOWS: usize = 1000;

/// Every window is recomputed at least this often.
const RECOMPUTE_ALL_EVERY: Duration = Duration::from_secs(60);

/// Which history: (metric set generation, metric, range).
type Key = (usize, String, &'static str);

#[derive(Default)]
pub(super) struct Histories {
    /// One computation per key per refresh, however many ask.
    memo: Memo<Key, Arc<Vec<Point>>>,
    kept: Mutex<HashMap<Key, Kept>>,
}

struct Kept {
    step: i64,
    points: BTreeMap<i64, Point>,
    full_at: Instant,
}

impl Histories {
    /// The metric's windows over the last `span_ms`, at most [`HISTORY_WINDOWS`], oldest first.
    pub async fn get(
        &self,
        generation: usize,
        metric: &Metric,
        store: &dyn StateStore,
        span_ms: i64,
        range: &'static str,
        ttl: Duration,
    ) -> Arc<Vec<Point>> {
        let key = (generation, metric.name().to_string(), range);
        self.memo
            .get(key.clone(), ttl, || async {
                Arc::new(self.compute(key, metric, store, span_ms).await)
            })
            .await
    }

    async fn compute(
        &self,
        key: Key,
        metric: &Metric,
        store: &dyn StateStore,
        span_ms: i64,
    ) -> Vec<Point> {
        let now = chrono::Utc::now().timestamp_millis();
        let w = metric.window;
        let step = history_step(metric, now - span_ms, now, HISTORY_WINDOWS);
        let last_end = w.pane_of(now) + w.slide_ms;
        let mut ends: Vec<i64> = ((now - span_ms).div_euclid(step) + 1..)
            .map(|k| k * step)
            .take_while(|e| *e <= last_end)
            .collect();
        if ends.last() != Some(&last_end) {
            ends.push(last_end);
        }
        let settled_before =
            now - metric.config.lateness.as_millis() as i64 - 2 * w.slide_ms - 5_000;
        let kept = {
            let mut all = self.kept.lock().unwrap();
            if all.len() > 64 {
                all.retain(|_, k| k.full_at.elapsed() < RECOMPUTE_ALL_EVERY * 10);
            }
            all.remove(&key)
        };
        let mut kept = match kept {
            Some(k) if k.step == step && k.full_at.elapsed() < RECOMPUTE_ALL_EVERY => k,
            _ => Kept {
                step,
                points: BTreeMap::new(),
                full_at: Instant::now(),
            },
        };
        let wanted: Vec<i64> = ends
            .iter()
            .copied()
            .filter(|e| *e >= settled_before || !kept.points.contains_key(e))
            .collect();
        match windows(metric, store, &wanted).await {
            Ok(fresh) => kept.points.extend(fresh.into_iter().map(|p| (p.end, p))),
            // The store is away: the chart shows what it had (the health panel says why).
            Err(e) => {
                tracing::debug!(metric = metric.name(), error = %format!("{e:#}"), "dashboard: history not read")
            }
        }
        let in_range: std::collections::HashSet<i64> = ends.iter().copied().collect();
        kept.points.retain(|end, _| in_range.contains(end));
        let points = kept.points.values().cloned().collect();
        self.kept.lock().unwrap().insert(key, kept);
        points
    }
}
