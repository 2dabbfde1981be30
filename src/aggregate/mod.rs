//! Windowed aggregations defined by Rhai scripts.
//!
//! Each metric keeps one partial state per (pane, Kafka partition), together with the highest
//! offset of that partition it includes. States are written to the store before the batch's
//! offsets are acknowledged, and an event at or below a state's offset is skipped, so replays
//! after a crash or rebalance never count an event twice. Reads merge the partials of every
//! partition and pane in a window, so several runners in one group report one exact result.

mod metric;
mod reducer;
mod script;
mod sketch;
mod window;

pub use metric::{Metric, MetricConfig, Partial, TimeMode};
pub use reducer::ReducerKind;
pub use window::Window;

use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Event;
use crate::script::ScriptError;
use crate::store::EventStore;
use crate::telemetry::Stats;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Partition used for events from a transport without offsets (the embedded queue).
pub const NO_PARTITION: i32 = -1;

/// One stored partial state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaneRecord {
    pub metric: String,
    /// Pane start, ms since the epoch.
    pub pane_start: i64,
    pub partition: i32,
    /// Highest offset of `partition` included (-1: none, or no offsets).
    pub offset: i64,
    pub state: Value,
}

/// The compiled metrics of a pipeline.
pub struct MetricSet {
    metrics: Vec<Metric>,
}

impl MetricSet {
    /// Compiles every metric; the error names the script, and names duplicates.
    pub fn load(configs: &[MetricConfig]) -> Result<MetricSet, ScriptError> {
        let mut seen = HashSet::new();
        let mut metrics = Vec::with_capacity(configs.len());
        for c in configs {
            if !seen.insert(c.name.as_str()) {
                return Err(ScriptError::whole_file(&c.script, format!("metric name {:?} is used twice", c.name)));
            }
            metrics.push(Metric::load(c)?);
        }
        Ok(MetricSet { metrics })
    }

    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Current value of every metric for the window ending with the pane holding `at_ms`.
    pub async fn read_all(&self, store: &dyn EventStore, at_ms: i64) -> anyhow::Result<Vec<MetricValue>> {
        let mut out = Vec::with_capacity(self.metrics.len());
        for m in &self.metrics {
            out.push(read(m, store, at_ms).await?);
        }
        Ok(out)
    }
}

/// A metric's value over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricValue {
    pub name: String,
    pub description: String,
    /// The window, `[start, end)` in ms since the epoch.
    pub window_start: i64,
    pub window_end: i64,
    pub value: Value,
}

/// Reads one metric's window ending with the pane holding `at_ms`, merging every stored partial.
pub async fn read(metric: &Metric, store: &dyn EventStore, at_ms: i64) -> anyhow::Result<MetricValue> {
    let (start, end) = metric.window.range_at(at_ms);
    let records = store.load_panes(metric.state_key(), start, end, None).await?;
    let mut merged = metric.empty().map_err(anyhow::Error::msg)?;
    for r in &records {
        let partial = metric.decode(&r.state).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
        metric.merge(&mut merged, &partial).map_err(anyhow::Error::msg)?;
    }
    Ok(MetricValue {
        name: metric.name().to_string(),
        description: metric.config.description.clone(),
        window_start: start,
        window_end: end,
        value: metric.report(&merged).map_err(anyhow::Error::msg)?,
    })
}

/// One point of a metric's history: the window ending at `end` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub end: i64,
    pub value: Value,
}

/// A metric's value for windows ending every `step` (at least one slide) from `from` to `to`,
/// at most `max_points` of them; the partials are read once and merged in memory.
pub async fn history(metric: &Metric, store: &dyn EventStore, from: i64, to: i64, max_points: usize) -> anyhow::Result<Vec<Point>> {
    let w = metric.window;
    let span = (to - from).max(w.slide_ms);
    let per_point = span / max_points.max(1) as i64;
    let step = ((per_point + w.slide_ms - 1) / w.slide_ms).max(1) * w.slide_ms;
    let last_end = w.pane_of(to) + w.slide_ms;
    let first_end = (w.pane_of(from) + w.slide_ms).max(last_end - step * (max_points.max(1) as i64 - 1));
    let records = store.load_panes(metric.state_key(), first_end - w.size_ms, last_end, None).await?;
    let mut panes: BTreeMap<i64, Partial> = BTreeMap::new();
    for r in &records {
        let partial = metric.decode(&r.state).map_err(|e| anyhow::anyhow!("metric {}: {e}", metric.name()))?;
        match panes.get_mut(&r.pane_start) {
            Some(p) => metric.merge(p, &partial).map_err(anyhow::Error::msg)?,
            None => {
                panes.insert(r.pane_start, partial);
            }
        }
    }
    let mut points = Vec::new();
    let mut end = first_end;
    while end <= last_end {
        let mut merged = metric.empty().map_err(anyhow::Error::msg)?;
        for (_, p) in panes.range(end - w.size_ms..end) {
            metric.merge(&mut merged, p).map_err(anyhow::Error::msg)?;
        }
        points.push(Point { end, value: metric.report(&merged).map_err(anyhow::Error::msg)? });
        end += step;
    }
    Ok(points)
}

struct Cell {
    partial: Partial,
    offset: i64,
    dirty: bool,
}

#[derive(Default)]
struct MetricState {
    cells: BTreeMap<(i64, i32), Cell>,
    /// Newest event time seen per partition (event-time metrics). Per partition, because
    /// partitions are read at different speeds: after a restart one may replay minutes of
    /// backlog while another is current, and neither is late.
    watermarks: HashMap<i32, i64>,
}

/// The consumer's aggregation state: applies batches, hands out changed partials to persist.
pub struct Aggregator {
    set: Arc<MetricSet>,
    stats: Arc<Stats>,
    states: Vec<MetricState>,
    /// Partitions whose stored partials are loaded, with the earliest pane start loaded.
    loaded: HashMap<i32, i64>,
    /// Events later than a metric's lateness since the last [`Aggregator::take_late`].
    late: Vec<DeadLetter>,
}

impl Aggregator {
    pub fn new(set: Arc<MetricSet>, stats: Arc<Stats>) -> Aggregator {
        let states = set.metrics.iter().map(|_| MetricState::default()).collect();
        Aggregator { set, stats, states, loaded: HashMap::new(), late: Vec::new() }
    }

    /// Partitions of this batch whose stored partials are not loaded yet (after start or a
    /// rebalance), each with the earliest pane start any of its new events can touch.
    pub fn to_load(&self, events: &[Event], partitions: &[i32]) -> Vec<(i32, i64)> {
        let min_ts = events.iter().map(|e| e.timestamp.timestamp_millis()).min().unwrap_or(0);
        let mut new: Vec<i32> = partitions.iter().copied().filter(|p| !self.loaded.contains_key(p)).collect();
        new.sort_unstable();
        new.dedup();
        // Earlier panes are out of reach: their events would be later than the allowed lateness.
        let since = self
            .set
            .metrics
            .iter()
            .map(|m| {
                let t = match m.config.time {
                    // A partition not loaded yet has no watermark here: its events set the reach.
                    TimeMode::Event => min_ts,
                    TimeMode::Processing => chrono::Utc::now().timestamp_millis(),
                };
                t.saturating_sub(m.config.lateness.as_millis() as i64 + m.window.slide_ms)
            })
            .min()
            .unwrap_or(0);
        new.into_iter().map(|p| (p, since)).collect()
    }

    /// The stored partials of one partition from `since` on, for [`Self::install`].
    pub async fn load(set: &MetricSet, store: &dyn EventStore, partition: i32, since: i64) -> anyhow::Result<Vec<PaneRecord>> {
        let mut out = Vec::new();
        for m in &set.metrics {
            out.extend(store.load_panes(m.state_key(), since, i64::MAX, Some(partition)).await?);
        }
        Ok(out)
    }

    /// Installs loaded partials, so new events add to them instead of replacing them.
    pub fn install(&mut self, partition: i32, since: i64, records: Vec<PaneRecord>) -> anyhow::Result<()> {
        for r in records {
            let Some(i) = self.set.metrics.iter().position(|m| m.state_key() == r.metric) else { continue };
            let m = &self.set.metrics[i];
            let partial = m.decode(&r.state).map_err(|e| anyhow::anyhow!("metric {}: {e}", m.name()))?;
            self.states[i].cells.insert((r.pane_start, partition), Cell { partial, offset: r.offset, dirty: false });
        }
        self.loaded.insert(partition, since);
        Ok(())
    }

    /// Switches to a reloaded metric set between batches. A metric whose state shape is
    /// unchanged (same reducer, window, time and grouping) keeps its state and takes the new
    /// script; a redefined one starts fresh; a new one starts empty; a removed one stops.
    pub fn reconfigure(&mut self, set: Arc<MetricSet>) {
        let mut old: HashMap<String, MetricState> = self
            .set
            .metrics
            .iter()
            .map(|m| m.state_key().to_string())
            .zip(std::mem::take(&mut self.states))
            .collect();
        let old_names: HashSet<&str> = self.set.metrics.iter().map(|m| m.name()).collect();
        for m in &set.metrics {
            match old.remove(m.state_key()) {
                Some(state) => {
                    self.states.push(state);
                    tracing::info!(metric = m.name(), "metric reloaded; window state kept");
                }
                None => {
                    self.states.push(MetricState::default());
                    if old_names.contains(m.name()) {
                        tracing::info!(metric = m.name(), "metric redefined (reducer, window or grouping changed); its state starts fresh");
                    } else {
                        tracing::info!(metric = m.name(), "metric added");
                    }
                }
            }
        }
        let new_names: HashSet<&str> = set.metrics.iter().map(|m| m.name()).collect();
        for name in old_names.difference(&new_names) {
            tracing::info!(metric = name, "metric removed");
        }
        self.set = set;
        // In memory equals the store after every batch, so reloading partials is safe, and
        // brings in partials of metrics this aggregator did not have.
        self.loaded.clear();
    }

    /// The compiled metrics this aggregator runs.
    pub fn set(&self) -> &Arc<MetricSet> {
        &self.set
    }

    /// The late events found since the last call, as dead letters: one per event (stored raw),
    /// naming every metric that left it out.
    pub fn take_late(&mut self) -> Vec<DeadLetter> {
        let mut by_id: BTreeMap<String, DeadLetter> = BTreeMap::new();
        for d in self.late.drain(..) {
            match by_id.get_mut(&d.id) {
                Some(first) => {
                    first.detail.push_str("; ");
                    first.detail.push_str(&d.detail);
                }
                None => {
                    by_id.insert(d.id.clone(), d);
                }
            }
        }
        by_id.into_values().collect()
    }

    /// Forgets partitions this process no longer owns; another consumer continues their state.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.loaded.remove(p);
            for st in &mut self.states {
                st.cells.retain(|(_, part), _| part != p);
                st.watermarks.remove(p);
            }
        }
    }

    /// Applies a batch. `sources[i]` is the (partition, offset) of `events[i]`; events at or
    /// below the offset already in a partial are skipped.
    pub fn apply(&mut self, events: &[Event], sources: &[(i32, i64)]) {
        let needs_map = self.set.metrics.iter().any(Metric::needs_event_map);
        let maps: Vec<rhai::Dynamic> = if needs_map { events.iter().map(script::event_map).collect() } else { Vec::new() };
        let now = chrono::Utc::now().timestamp_millis();
        for (m, st) in self.set.metrics.iter().zip(self.states.iter_mut()) {
            let lateness = m.config.lateness.as_millis() as i64;
            for (i, e) in events.iter().enumerate() {
                let (partition, offset) = sources.get(i).copied().unwrap_or((NO_PARTITION, -1));
                let t = match m.config.time {
                    TimeMode::Event => e.timestamp.timestamp_millis(),
                    TimeMode::Processing => now,
                };
                let watermark = st.watermarks.entry(partition).or_insert(i64::MIN);
                if *watermark != i64::MIN && t < *watermark - lateness {
                    let behind = *watermark - t;
                    self.stats.late_event(m.name(), &e.event_id, behind);
                    let mut json = Vec::new();
                    e.write_json(&mut json);
                    let detail = format!("{behind} ms behind the newest event of its partition for metric {:?} (lateness {:?})", m.name(), m.config.lateness);
                    self.late.push(DeadLetter::new(format!("late:{}", e.event_id), Reason::Late, detail, (partition, offset), &json));
                    continue;
                }
                *watermark = (*watermark).max(t);
                let key = (m.window.pane_of(t), partition);
                let cell = match st.cells.get_mut(&key) {
                    Some(c) => c,
                    None => {
                        let partial = match m.empty() {
                            Ok(p) => p,
                            Err(err) => {
                                self.stats.script_error(m.name(), &e.event_id, &err);
                                continue;
                            }
                        };
                        st.cells.entry(key).or_insert(Cell { partial, offset: -1, dirty: false })
                    }
                };
                if partition != NO_PARTITION && offset <= cell.offset {
                    continue; // already in the stored state: a replay
                }
                if let Err(err) = m.add(&mut cell.partial, e, maps.get(i)) {
                    self.stats.script_error(m.name(), &e.event_id, &err);
                }
                cell.offset = cell.offset.max(offset);
                cell.dirty = true;
            }
        }
    }

    /// Changed partials to write before acknowledging the batch; they are marked clean.
    pub fn take_dirty(&mut self) -> Vec<PaneRecord> {
        let mut out = Vec::new();
        for (m, st) in self.set.metrics.iter().zip(self.states.iter_mut()) {
            for ((pane_start, partition), cell) in st.cells.iter_mut().filter(|(_, c)| c.dirty) {
                cell.dirty = false;
                out.push(PaneRecord {
                    metric: m.state_key().to_string(),
                    pane_start: *pane_start,
                    partition: *partition,
                    offset: cell.offset,
                    state: m.encode(&cell.partial),
                });
            }
            // Panes no event can reach any more are only needed in the store.
            let reach = m.window.size_ms + m.config.lateness.as_millis() as i64 + m.window.slide_ms;
            let watermarks = &st.watermarks;
            st.cells.retain(|(pane, partition), c| {
                c.dirty || *pane >= watermarks.get(partition).copied().unwrap_or(i64::MIN).saturating_sub(reach)
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    /// A count-per-item metric set, its script in a directory removed once compiled.
    pub(super) fn per_item_set(window: Duration, lateness: Duration) -> Arc<MetricSet> {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("per_item.rhai");
        std::fs::write(&script, "#{ key: field(\"item_id\") }").unwrap();
        let config = MetricConfig {
            name: "per_item".into(),
            script,
            reducer: ReducerKind::Count,
            k: 1,
            window,
            slide: Some(Duration::from_secs(5)),
            time: TimeMode::Event,
            lateness,
            description: String::new(),
            exact_limit: 10_000,
        };
        Arc::new(MetricSet::load(&[config]).unwrap())
    }

    pub(super) fn event(id: &str, item: &str, second: i64) -> Event {
        Event {
            event_id: id.into(),
            user_id: "u".into(),
            item_id: item.into(),
            interaction_type: "view".into(),
            timestamp: chrono::Utc.timestamp_opt(1_000_000 + second, 0).unwrap(),
            session_id: String::new(),
            value: 0.0,
            price: None,
            view_duration: None,
            attributes: Default::default(),
        }
    }

    fn aggregator(lateness_s: u64) -> (Aggregator, Arc<Stats>) {
        let set = per_item_set(Duration::from_secs(60), Duration::from_secs(lateness_s));
        let stats = Stats::new();
        (Aggregator::new(set, stats.clone()), stats)
    }

    #[test]
    fn partitions_have_their_own_watermark() {
        let (mut agg, stats) = aggregator(10);
        // Partition 1 replays old events while partition 0 is current: neither is late.
        agg.apply(&[event("a", "x", 100), event("b", "x", 20)], &[(0, 1), (1, 1)]);
        assert_eq!(stats.snapshot().late_events, 0);
        agg.apply(&[event("c", "x", 5)], &[(1, 2)]);
        assert_eq!(stats.snapshot().late_events, 1, "15 s behind its own partition is late");
    }

    #[test]
    fn out_of_order_within_lateness_counts_and_later_is_late() {
        let (mut agg, stats) = aggregator(10);
        let events = [event("a", "x", 30), event("b", "x", 22), event("c", "y", 5)];
        agg.apply(&events, &[]);
        let dirty = agg.take_dirty();
        let total: u64 = dirty
            .iter()
            .map(|r| r.state["grouped"].as_object().unwrap().values().map(|a| a["count"].as_u64().unwrap()).sum::<u64>())
            .sum();
        assert_eq!(total, 2, "8 s out of order counts; 25 s behind is late");
        assert_eq!(stats.snapshot().late_events, 1);
        let late = agg.take_late();
        assert_eq!(late.len(), 1, "one dead letter for the late event");
        assert_eq!((late[0].id.as_str(), late[0].reason), ("late:c", Reason::Late));
        assert!(late[0].payload.contains("\"event_id\":\"c\""), "{}", late[0].payload);
        assert!(agg.take_late().is_empty());
        let panes: Vec<i64> = dirty.iter().map(|r| r.pane_start).collect();
        assert_eq!(panes, vec![1_000_020_000, 1_000_030_000], "each event touches its own pane");
    }

    #[test]
    fn replayed_offsets_are_skipped() {
        let (mut agg, _) = aggregator(10);
        let events = [event("a", "x", 1), event("b", "x", 2)];
        agg.apply(&events, &[(0, 10), (0, 11)]);
        agg.apply(&events, &[(0, 10), (0, 11)]);
        agg.apply(&[event("c", "x", 3)], &[(0, 12)]);
        let dirty = agg.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].offset, 12);
        assert_eq!(dirty[0].state["grouped"]["x"]["count"], 3);
    }
}

/// Random streams against a straightforward recomputation: interleaved partitions, batches cut
/// anywhere, and crashes that replay from an earlier commit with the aggregator's memory lost.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    fn set() -> Arc<MetricSet> {
        super::tests::per_item_set(Duration::from_secs(20), Duration::from_secs(3600))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn replays_and_interleaving_give_the_recomputed_counts(
            partitions in prop::collection::vec(prop::collection::vec((0u8..4, 0i64..90), 0..40), 3),
            cuts in prop::collection::vec(1usize..12, 1..20),
            crashes in prop::collection::vec(0u8..4, 20),
            seed in any::<u64>(),
        ) {
            // Each partition in offset order; the consumer sees them interleaved at random.
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut next = vec![0usize; partitions.len()];
            let mut stream: Vec<(Event, (i32, i64))> = Vec::new();
            while let Some(p) = {
                let open: Vec<usize> = (0..partitions.len()).filter(|&p| next[p] < partitions[p].len()).collect();
                (!open.is_empty()).then(|| open[rng.random_range(0..open.len())])
            } {
                let (item, second) = partitions[p][next[p]];
                stream.push((super::tests::event(&format!("p{p}-{}", next[p]), &format!("item_{item}"), second), (p as i32, next[p] as i64)));
                next[p] += 1;
            }

            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(&EmbeddedConfig { data_dir: dir.path().to_path_buf(), ..Default::default() }, None).unwrap();
            let set = set();
            rt.block_on(async {
                let mut agg = Aggregator::new(set.clone(), Stats::new());
                let (mut pos, mut committed, mut batch_no) = (0usize, 0usize, 0usize);
                while pos < stream.len() {
                    let n = cuts[batch_no % cuts.len()].min(stream.len() - pos);
                    let batch = &stream[pos..pos + n];
                    let events: Vec<Event> = batch.iter().map(|b| b.0.clone()).collect();
                    let sources: Vec<(i32, i64)> = batch.iter().map(|b| b.1).collect();
                    let parts: Vec<i32> = sources.iter().map(|s| s.0).collect();
                    for (partition, since) in agg.to_load(&events, &parts) {
                        let records = Aggregator::load(&set, &store, partition, since).await.unwrap();
                        agg.install(partition, since, records).unwrap();
                    }
                    agg.apply(&events, &sources);
                    store.write_panes(&agg.take_dirty()).await.unwrap();
                    pos += n;
                    // Sometimes the commit is lost with the process: memory gone, replay from the last commit.
                    match crashes[batch_no % crashes.len()] {
                        0 => {
                            agg = Aggregator::new(set.clone(), Stats::new());
                            pos = committed;
                        }
                        1 => {}
                        _ => committed = pos,
                    }
                    batch_no += 1;
                }
                let metric = &set.metrics()[0];
                for at in (0..100).step_by(5) {
                    let v = read(metric, &store, (1_000_000 + at) * 1000).await.unwrap();
                    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
                    for (e, _) in &stream {
                        if (v.window_start..v.window_end).contains(&e.timestamp.timestamp_millis()) {
                            *expected.entry(e.item_id.clone()).or_default() += 1;
                        }
                    }
                    let got: BTreeMap<String, u64> = serde_json::from_value(v.value.clone()).unwrap();
                    prop_assert_eq!(got, expected, "window ending {}", v.window_end);
                }
                Ok(())
            })?;
        }
    }
}
