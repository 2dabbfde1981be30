//! The write side: the consumer's [`Aggregator`] keeps one partial state per (metric, pane,
//! partition) with the highest offset it includes, absorbs each batch in one call, and hands out
//! the changed partials to store before the batch is acknowledged.

use super::backfill::{self, Backfiller, Command, Job, SEAM_PANE};
use super::{Metric, MetricSet, Partial, TimeMode};
use crate::base::{map_each, Workers};
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Record;
use crate::store::{EventStore, PaneRecord};
use crate::telemetry::Stats;
use crate::transport::{Batch, NO_PARTITION};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

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
    /// backlog while another is current, and neither is late. Looked up per event and metric:
    /// foldhash (SipHash of the partition was ~18 % of the instructions applying a batch).
    watermarks: HashMap<i32, Watermark, foldhash::fast::RandomState>,
}

/// A partition's watermark, stored with the partials (as a record of its own) so that after a
/// crash an event judged late before is judged late again, never counted on replay.
#[derive(Debug, Clone, Copy)]
struct Watermark {
    /// Newest event time seen, ms since the epoch (`i64::MIN`: none yet).
    time: i64,
    /// The highest offset of the partition it has seen: a late event at or below it is a replay
    /// of one already dead-lettered.
    offset: i64,
    dirty: bool,
    /// Offsets up to this one are a backfill's to count, not live's (`i64::MIN`: no backfill).
    seam: i64,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark { time: i64::MIN, offset: -1, dirty: false, seam: i64::MIN }
    }
}

/// The store key of a metric's watermark records (pane start [`WATERMARK_PANE`]); readers of
/// the metric's own key never see them.
fn watermark_key(m: &Metric) -> String {
    format!("{}#watermark", m.state_key())
}

/// Watermarks are stored at the timeless pane, so pane retention never deletes them.
const WATERMARK_PANE: i64 = crate::store::TIMELESS_PANE;

/// Every partition's stored watermark of `m`: (partition, newest event time).
pub(super) async fn stored_watermarks(m: &Metric, store: &dyn EventStore) -> anyhow::Result<Vec<(i32, i64)>> {
    let records = store.load_panes(&watermark_key(m), WATERMARK_PANE, WATERMARK_PANE + 1, None).await?;
    records
        .iter()
        .map(|r| r.state.as_i64().map(|t| (r.partition, t)).ok_or_else(|| anyhow::anyhow!("metric {}: a stored watermark is not a time: {}", m.name(), r.state)))
        .collect()
}

/// What absorbing one batch produced.
#[derive(Debug, Default)]
pub struct Absorbed {
    /// Partials that changed: written to the store before the batch is acknowledged.
    pub panes: Vec<PaneRecord>,
    /// Events later than a metric's lateness, one dead letter each.
    pub late: Vec<DeadLetter>,
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
    /// Where metrics new to a partition are filled from history; none: they start empty.
    backfill: Option<Backfiller>,
    /// Seams made by this batch, written with its partials.
    seams: Vec<PaneRecord>,
    /// Backfills to start once the batch that made their seams is stored.
    jobs: Vec<Job>,
    /// Threads that apply batches and encode partials, the metrics split between them.
    workers: Workers,
}

impl Aggregator {
    pub fn new(set: Arc<MetricSet>, stats: Arc<Stats>) -> Aggregator {
        let states = set.metrics.iter().map(|_| MetricState::default()).collect();
        Aggregator { set, stats, states, loaded: HashMap::new(), late: Vec::new(), backfill: None, seams: Vec::new(), jobs: Vec::new(), workers: Workers::default() }
    }

    /// Applies batches and encodes partials on `workers`, each metric on one thread at a time
    /// (a metric's state is its own). The caller waits for them, so a batch is applied whole
    /// before the next one, as on one thread.
    pub fn with_workers(mut self, workers: Workers) -> Aggregator {
        self.workers = workers;
        self
    }

    /// Fills metrics that are new to a partition (added or redefined by a reload, or new at
    /// start) from history through `backfill`, instead of starting them empty.
    pub fn with_backfill(mut self, backfill: Backfiller) -> Aggregator {
        self.backfill = Some(backfill);
        self
    }

    /// Whether this batch must be absorbed before its raw events are stored: it loads the
    /// embedded queue's partition with backfill on, and the seam there is the newest raw row
    /// stored before this batch.
    pub fn absorbs_before_storing(&self, batch: &Batch) -> bool {
        self.backfill.is_some() && batch.sources.is_empty() && !batch.events.is_empty() && !self.loaded.contains_key(&NO_PARTITION)
    }

    /// The last [`Self::checkpoint`] is stored: the backfills whose seams it held may start.
    pub fn stored(&mut self) {
        if let Some(b) = &self.backfill {
            for job in self.jobs.drain(..) {
                b.send(Command::Start(job));
            }
        }
    }

    /// [`Self::ingest`] and [`Self::checkpoint`] in one call: the batch's changed partials, to
    /// write before it is acknowledged, and its late events as dead letters.
    pub async fn absorb(&mut self, batch: &Batch, store: &dyn EventStore) -> anyhow::Result<Absorbed> {
        let late = self.ingest(batch, store).await?;
        Ok(Absorbed { panes: self.checkpoint(), late })
    }

    /// Takes in one batch: forgets partitions revoked since the last batch, loads the stored
    /// partials of partitions new to this aggregator, applies the events (skipping those already
    /// in a stored partial), and returns the late events as dead letters. The batch may be
    /// acknowledged only once a later [`Self::checkpoint`]'s partials are stored. A store error
    /// while loading leaves nothing applied, so the call may simply be repeated.
    pub async fn ingest(&mut self, batch: &Batch, store: &dyn EventStore) -> anyhow::Result<Vec<DeadLetter>> {
        self.forget(&batch.revoked);
        let mut partitions: Vec<i32> = batch.sources.iter().map(|s| s.0).collect();
        if batch.sources.is_empty() && !batch.events.is_empty() {
            partitions.push(NO_PARTITION);
        }
        for (partition, since) in self.to_load(&batch.events, &partitions) {
            let records = Self::load(&self.set, store, partition, since).await?;
            // The embedded queue's seam: every raw row stored so far is history.
            let position = match self.backfill.is_some() && partition == NO_PARTITION {
                true => store.raw_position().await?.filter(|p| *p > 0),
                false => None,
            };
            let fresh = self.install(partition, since, records)?;
            if self.backfill.is_some() {
                let at = match partition {
                    NO_PARTITION => position,
                    p => batch.sources.iter().filter(|s| s.0 == p).map(|s| s.1).min().map(|first| first - 1).filter(|at| *at >= 0),
                };
                self.make_seams(partition, fresh, at)?;
            }
        }
        self.apply(&batch.events, &batch.sources);
        Ok(self.take_late())
    }

    /// Partitions of this batch whose stored partials are not loaded yet (after start or a
    /// rebalance), each with the earliest pane start any of its new events can touch.
    fn to_load(&self, events: &[Record], partitions: &[i32]) -> Vec<(i32, i64)> {
        let min_ts = events.iter().map(Record::time_ms).min().unwrap_or(0);
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
    async fn load(set: &MetricSet, store: &dyn EventStore, partition: i32, since: i64) -> anyhow::Result<Vec<PaneRecord>> {
        let mut out = Vec::new();
        for m in &set.metrics {
            out.extend(store.load_panes(m.state_key(), since, i64::MAX, Some(partition)).await?);
            out.extend(store.load_panes(&watermark_key(m), WATERMARK_PANE, WATERMARK_PANE + 1, Some(partition)).await?);
            out.extend(store.load_panes(&backfill::seam_key(m), SEAM_PANE, SEAM_PANE + 1, Some(partition)).await?);
        }
        Ok(out)
    }

    /// Installs loaded partials, so new events add to them instead of replacing them, and
    /// restarts the backfills a seam says are unfinished. Returns the metrics that have no state
    /// on the partition at all (no watermark, no seam): new to it.
    fn install(&mut self, partition: i32, since: i64, records: Vec<PaneRecord>) -> anyhow::Result<Vec<usize>> {
        let mut known = vec![false; self.set.metrics.len()];
        for r in records {
            if let Some(i) = self.set.metrics.iter().position(|m| backfill::seam_key(m) == r.metric) {
                known[i] = true;
                self.states[i].watermarks.entry(partition).or_default().seam = r.offset;
                if self.backfill.is_some() {
                    self.jobs.extend(Job::of(&self.set, i, &r)?);
                }
                continue;
            }
            if let Some(i) = self.set.metrics.iter().position(|m| watermark_key(m) == r.metric) {
                known[i] = true;
                let time = r.state.as_i64().ok_or_else(|| anyhow::anyhow!("metric {}: a stored watermark is not a time: {}", self.set.metrics[i].name(), r.state))?;
                let mark = self.states[i].watermarks.entry(partition).or_default();
                if time > mark.time {
                    mark.time = time;
                }
                mark.offset = mark.offset.max(r.offset);
                continue;
            }
            let Some(i) = self.set.metrics.iter().position(|m| m.state_key() == r.metric) else { continue };
            let m = &self.set.metrics[i];
            let partial = m.decode(&r.state).map_err(|e| anyhow::anyhow!("metric {}: {e}", m.name()))?;
            self.states[i].cells.insert((r.pane_start, partition), Cell { partial, offset: r.offset, dirty: false });
        }
        self.loaded.insert(partition, since);
        Ok(known.iter().enumerate().filter(|(_, k)| !**k).map(|(i, _)| i).collect())
    }

    /// Makes a seam at position `at` of `partition` for each of `metrics` (none: nothing came
    /// before), to be stored with this batch's partials; their backfills start once it is.
    fn make_seams(&mut self, partition: i32, metrics: Vec<usize>, at: Option<i64>) -> anyhow::Result<()> {
        let Some(at) = at else { return Ok(()) };
        let now = chrono::Utc::now().timestamp_millis();
        for i in metrics {
            let Some(record) = backfill::new_seam(&self.set.metrics[i], partition, at, now) else { continue };
            if partition != NO_PARTITION {
                self.states[i].watermarks.entry(partition).or_default().seam = at;
            }
            self.jobs.extend(Job::of(&self.set, i, &record)?);
            self.seams.push(record);
        }
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
        if let Some(b) = &self.backfill {
            let keys: HashSet<String> = set.metrics.iter().map(|m| m.state_key().to_string()).collect();
            self.jobs.retain(|j| keys.contains(j.state_key()));
            b.send(Command::Keep(keys));
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
    fn take_late(&mut self) -> Vec<DeadLetter> {
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
    fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            if let Some(b) = &self.backfill {
                b.send(Command::Stop(*p));
            }
            self.loaded.remove(p);
            for st in &mut self.states {
                st.cells.retain(|(_, part), _| part != p);
                st.watermarks.remove(p);
            }
        }
    }

    /// Applies a batch. `sources[i]` is the (partition, offset) of `events[i]`; events at or
    /// below the offset already in a partial are skipped.
    pub(crate) fn apply(&mut self, events: &[Record], sources: &[(i32, i64)]) {
        let now = chrono::Utc::now().timestamp_millis();
        let (set, stats) = (self.set.clone(), self.stats.clone());
        let (fields, stats) = (set.map_fields(), &*stats);
        let late = self.each_metric(
            // One map per record, shared by every metric that calls a script, with the fields any of them reads.
            |parallel| match fields {
                Some(f) => map_each(parallel, events, |e| crate::script::record_map_of(e, f)),
                None => Vec::new(),
            },
            |m, st, maps| apply_metric(m, st, events, sources, maps, now, stats),
        );
        self.late.extend(late.into_iter().flatten());
    }

    /// Runs `each` for every metric with its state, on the worker pool when there is one (a
    /// metric's state is its own, so metrics never wait on each other), after `shared` has made
    /// what they all read (told whether it runs on the pool). Results in metric order.
    fn each_metric<S: Sync, T: Send>(
        &mut self,
        shared: impl FnOnce(bool) -> S + Send,
        each: impl Fn(&Metric, &mut MetricState, &S) -> T + Sync + Send,
    ) -> Vec<T> {
        let metrics = &self.set.metrics;
        let states = &mut self.states;
        self.workers.run(|parallel| {
            let shared = shared(parallel);
            match parallel {
                true => metrics.par_iter().zip(states.par_iter_mut()).with_max_len(1).map(|(m, st)| each(m, st, &shared)).collect(),
                false => metrics.iter().zip(states.iter_mut()).map(|(m, st)| each(m, st, &shared)).collect(),
            }
        })
    }

    /// Partials no event can change any more (their pane's end plus the lateness is behind the
    /// partition's watermark), or every partial with `all`; they leave the aggregator. For a
    /// recomputation, which writes each pane once, complete.
    pub(crate) fn take_closed(&mut self, all: bool) -> Vec<PaneRecord> {
        let mut out = Vec::new();
        for (m, st) in self.set.metrics.iter().zip(self.states.iter_mut()) {
            let reach = m.config.lateness.as_millis() as i64 + m.window.slide_ms;
            let watermarks = &st.watermarks;
            let closed = |pane: i64, partition: i32| all || pane.saturating_add(reach) <= watermarks.get(&partition).map_or(i64::MIN, |w| w.time);
            let keys: Vec<(i64, i32)> = st.cells.keys().copied().filter(|(pane, partition)| closed(*pane, *partition)).collect();
            for key in keys {
                let cell = st.cells.remove(&key).expect("listed above");
                out.push(PaneRecord { metric: m.state_key().to_string(), pane_start: key.0, partition: key.1, offset: cell.offset, state: m.encode(&cell.partial) });
            }
        }
        out
    }

    /// The partials changed since the last checkpoint (with new watermarks and seams), marked
    /// clean: once they are stored, every batch ingested before may be acknowledged.
    pub fn checkpoint(&mut self) -> Vec<PaneRecord> {
        let mut out = std::mem::take(&mut self.seams);
        let changed = self.each_metric(|_| (), |m, st, _| checkpoint_metric(m, st));
        out.extend(changed.into_iter().flatten());
        out
    }
}

/// Applies a batch to one metric's state (see [`Aggregator::apply`]); returns its late events.
fn apply_metric(m: &Metric, st: &mut MetricState, events: &[Record], sources: &[(i32, i64)], maps: &[rhai::Dynamic], now: i64, stats: &Stats) -> Vec<DeadLetter> {
    let mut late = Vec::new();
    let lateness = m.config.lateness.as_millis() as i64;
    for (i, e) in events.iter().enumerate() {
        let (partition, offset) = sources.get(i).copied().unwrap_or((NO_PARTITION, -1));
        let t = match m.config.time {
            TimeMode::Event => e.time_ms(),
            TimeMode::Processing => now,
        };
        let key = (m.window.pane_of(t), partition);
        let replay = partition != NO_PARTITION;
        if replay && st.cells.get(&key).is_some_and(|c| offset <= c.offset) {
            continue; // already in the stored state: a replay
        }
        let mark = st.watermarks.entry(partition).or_default();
        if replay && offset <= mark.seam {
            continue; // before the metric's seam on this partition: its backfill counts it
        }
        let seen = replay && offset <= mark.offset;
        if offset > mark.offset {
            mark.offset = offset;
            mark.dirty = true;
        }
        if mark.time != i64::MIN && t < mark.time - lateness {
            if seen {
                continue; // judged late before the crash; its dead letter is stored
            }
            let behind = mark.time - t;
            stats.late_event(m.name(), e.id(), behind);
            let detail = format!("{behind} ms behind the newest event of its partition for metric {:?} (lateness {:?})", m.name(), m.config.lateness);
            late.push(DeadLetter::of_record(format!("late:{}", e.id()), Reason::Late, detail, (partition, offset), e));
            continue;
        }
        if t > mark.time {
            mark.time = t;
            mark.dirty = true;
        }
        let cell = match st.cells.get_mut(&key) {
            Some(c) => c,
            None => {
                let partial = match m.empty() {
                    Ok(p) => p,
                    Err(err) => {
                        stats.script_error(m.name(), e.id(), &err);
                        continue;
                    }
                };
                st.cells.entry(key).or_insert(Cell { partial, offset: -1, dirty: false })
            }
        };
        if let Err(err) = m.add(&mut cell.partial, e, maps.get(i)) {
            stats.script_error(m.name(), e.id(), &err);
        }
        cell.offset = cell.offset.max(offset);
        cell.dirty = true;
    }
    late
}

/// One metric's part of [`Aggregator::checkpoint`]: its changed partials and watermarks, marked
/// clean; panes no event can reach any more leave memory.
fn checkpoint_metric(m: &Metric, st: &mut MetricState) -> Vec<PaneRecord> {
    let mut out = Vec::new();
    for ((pane_start, partition), cell) in st.cells.iter_mut().filter(|(_, c)| c.dirty) {
        cell.dirty = false;
        out.push(PaneRecord { metric: m.state_key().to_string(), pane_start: *pane_start, partition: *partition, offset: cell.offset, state: m.encode(&cell.partial) });
    }
    for (partition, mark) in st.watermarks.iter_mut().filter(|(_, w)| w.dirty) {
        mark.dirty = false;
        out.push(PaneRecord { metric: watermark_key(m), pane_start: WATERMARK_PANE, partition: *partition, offset: mark.offset, state: mark.time.into() });
    }
    // Panes no event can reach any more are only needed in the store.
    let reach = m.window.size_ms + m.config.lateness.as_millis() as i64 + m.window.slide_ms;
    let watermarks = &st.watermarks;
    st.cells.retain(|(pane, partition), c| c.dirty || *pane >= watermarks.get(partition).map_or(i64::MIN, |w| w.time).saturating_sub(reach));
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::aggregate::{MetricConfig, ReducerKind};
    use crate::event::{Schema, Value};
    use std::time::Duration;

    /// A count-per-item metric set, its script in a directory removed once compiled.
    pub(in crate::aggregate) fn per_item_set(window: Duration, lateness: Duration) -> Arc<MetricSet> {
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
            unit: String::new(),
            stages: Vec::new(),
            exact_limit: 10_000,
        };
        Arc::new(MetricSet::load(&[config], &schema()).unwrap())
    }

    /// The record these tests aggregate: an id, an item and a time.
    pub(in crate::aggregate) fn schema() -> Arc<Schema> {
        crate::event::schema_of("fields = { event_id = \"string\", item_id = \"string\", timestamp = \"timestamp\" }\nid = \"event_id\"\ntime = \"timestamp\"")
    }

    pub(in crate::aggregate) fn event(id: &str, item: &str, second: i64) -> Record {
        let s = schema();
        let mut r = Record::new(&s);
        r.set_id(id);
        r.set(s.slot("item_id").unwrap(), Value::Text(item.into()));
        r.set_time_ms((1_000_000 + second) * 1000);
        r
    }

    /// Splits written records into metric partials and watermark records.
    fn panes_and_watermarks(records: Vec<PaneRecord>) -> (Vec<PaneRecord>, Vec<PaneRecord>) {
        records.into_iter().partition(|r| !r.metric.ends_with("#watermark"))
    }

    /// After a crash (memory lost), the stored watermark makes an event that was late before
    /// late again on replay, and a replayed late event is not dead-lettered twice.
    #[test]
    fn a_stored_watermark_keeps_late_events_late_after_a_crash() {
        let (mut agg, _) = aggregator(10);
        agg.apply(&[event("new", "x", 60), event("old", "x", 5)], &[(0, 1), (0, 2)]);
        assert_eq!(agg.take_late().len(), 1);
        let stored = agg.checkpoint();
        // A new process: loads what was stored, then replays from offset 2 and reads offset 3.
        let (mut again, stats) = aggregator(10);
        again.install(0, 0, stored).unwrap();
        again.apply(&[event("old", "x", 5), event("older", "x", 4)], &[(0, 2), (0, 3)]);
        let late = again.take_late();
        assert_eq!(late.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["late:older"], "the replayed one is not dead-lettered again");
        assert_eq!(stats.snapshot().late_events, 1);
        let (panes, _) = panes_and_watermarks(again.checkpoint());
        assert!(panes.is_empty(), "nothing counted: {panes:?}");
    }

    fn aggregator(lateness_s: u64) -> (Aggregator, Arc<Stats>) {
        let set = per_item_set(Duration::from_secs(60), Duration::from_secs(lateness_s));
        let stats = Stats::new();
        (Aggregator::new(set, stats.clone()), stats)
    }

    /// Offsets up to a metric's seam on a partition are its backfill's: live skips them, also
    /// when they are read again after a rebalance or restart.
    #[test]
    fn live_leaves_offsets_up_to_the_seam_to_the_backfill() {
        let (mut agg, _) = aggregator(10);
        let m = &agg.set.metrics[0];
        let seam = crate::aggregate::backfill::new_seam(m, 0, 11, 1_000_000_000).unwrap();
        agg.install(0, 0, vec![seam]).unwrap();
        let events: Vec<Record> = (0..5).map(|i| event(&format!("e{i}"), "x", i)).collect();
        agg.apply(&events, &[(0, 9), (0, 10), (0, 11), (0, 12), (0, 13)]);
        let (panes, _) = panes_and_watermarks(agg.checkpoint());
        assert_eq!(panes.len(), 1);
        assert_eq!(panes[0].state.to_value().unwrap()["grouped"]["x"]["count"], 2, "offsets 12 and 13 only");
    }

    /// Metrics applied side by side on worker threads give the partials, watermarks and late
    /// dead letters (each naming every metric that left its event out, in metric order) that
    /// one thread gives.
    #[test]
    fn metrics_applied_on_worker_threads_give_what_one_thread_gives() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("per_item.rhai");
        std::fs::write(&script, "#{ key: field(\"item_id\") }").unwrap();
        let metric = |name: &str, reducer, lateness| MetricConfig {
            name: name.into(),
            script: script.clone(),
            reducer,
            k: 2,
            window: Duration::from_secs(60),
            slide: Some(Duration::from_secs(5)),
            time: TimeMode::Event,
            lateness: Duration::from_secs(lateness),
            description: String::new(),
            unit: String::new(),
            stages: Vec::new(),
            exact_limit: 10_000,
        };
        let configs = [metric("count", ReducerKind::Count, 10), metric("top", ReducerKind::TopK, 30), metric("bottom", ReducerKind::BottomK, 5)];
        let set = Arc::new(MetricSet::load(&configs, &schema()).unwrap());
        // Out of order by up to two minutes over three partitions: some late for one metric, some for all.
        let events: Vec<Record> = (0..600).map(|i| event(&format!("e{i}"), &format!("item{}", i % 7), i / 4 + (i * 37 % 120) - 60)).collect();
        let sources: Vec<(i32, i64)> = (0..600).map(|i| ((i % 3) as i32, (i / 3) as i64)).collect();
        let run = |threads: usize| {
            let mut agg = Aggregator::new(set.clone(), Stats::new()).with_workers(Workers::new(threads));
            let (mut written, mut late) = (Vec::new(), Vec::new());
            for (events, sources) in events.chunks(64).zip(sources.chunks(64)) {
                agg.apply(events, sources);
                late.extend(agg.take_late().into_iter().map(|d| (d.id, d.detail)));
                // Watermarks and a state's keys come in hash order: sorted per checkpoint, and
                // states compared as JSON values (key order aside).
                let mut records: Vec<_> = agg.checkpoint().into_iter().map(|r| ((r.metric, r.pane_start, r.partition, r.offset), r.state.to_value().unwrap())).collect();
                records.sort_by(|a, b| a.0.cmp(&b.0));
                written.push(records);
            }
            (written, late)
        };
        let (one, three) = (run(1), run(3));
        assert!(one.1.iter().any(|(_, detail)| detail.contains("; ")), "an event late for several metrics");
        assert_eq!(one.0.len(), three.0.len());
        for (i, (a, b)) in one.0.iter().zip(&three.0).enumerate() {
            assert_eq!(a, b, "checkpoint {i}");
        }
        assert_eq!(one.1, three.1, "the same late events, the same details");
    }

    /// A recomputation writes each pane once: a pane leaves only when no event can reach it.
    #[test]
    fn a_pane_is_closed_once_its_end_plus_lateness_is_behind_the_watermark() {
        let (mut agg, _) = aggregator(10);
        agg.apply(&[event("a", "x", 1), event("b", "x", 7), event("c", "x", 19)], &[(0, 1), (0, 2), (0, 3)]);
        // Watermark 1,000,019 s; panes of 5 s, lateness 10 s: the pane at 1,000,000 s closes
        // (its end 1,000,005 + 10 <= 1,000,019), the one at 1,000,005 does not (1,000,010 + 10).
        let closed = agg.take_closed(false);
        assert_eq!(closed.iter().map(|r| r.pane_start).collect::<Vec<_>>(), [1_000_000_000]);
        assert_eq!(closed[0].offset, 1);
        let rest = agg.take_closed(true);
        assert_eq!(rest.iter().map(|r| r.pane_start).collect::<Vec<_>>(), [1_000_005_000, 1_000_015_000]);
        assert!(agg.take_closed(true).is_empty(), "each pane is handed out once");
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
        let (dirty, marks) = panes_and_watermarks(agg.checkpoint());
        assert_eq!(marks.len(), 1, "the partition's watermark is stored too");
        assert_eq!(marks[0].state.as_i64(), Some(1_000_030_000));
        let total: u64 = dirty
            .iter()
            .map(|r| r.state.to_value().unwrap()["grouped"].as_object().unwrap().values().map(|a| a["count"].as_u64().unwrap()).sum::<u64>())
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
        let (dirty, marks) = panes_and_watermarks(agg.checkpoint());
        assert_eq!(marks[0].offset, 12, "the watermark knows the last offset it saw");
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].offset, 12);
        assert_eq!(dirty[0].state.to_value().unwrap()["grouped"]["x"]["count"], 3);
    }

    /// The shipped conversion rate as the built-in ratio and as the scripted custom reducer:
    /// the same number, over the same records.
    #[test]
    fn ratio_reducer_equals_the_custom_script_it_replaced() {
        let schema = crate::event::schema_of("fields = { id = \"string\", interaction_type = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"");
        let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/metrics");
        let metric = |name: &str, file: &str, reducer: ReducerKind| MetricConfig {
            name: name.into(),
            script: scripts.join(file),
            reducer,
            k: 1,
            window: Duration::from_secs(60),
            slide: None,
            time: TimeMode::Event,
            lateness: Duration::from_secs(3600),
            description: String::new(),
            unit: String::new(),
            stages: Vec::new(),
            exact_limit: 10_000,
        };
        let set = Arc::new(MetricSet::load(&[metric("ratio", "conversion_ratio.rhai", ReducerKind::Ratio), metric("custom", "conversion_rate.rhai", ReducerKind::Custom)], &schema).unwrap());
        let kinds = ["view", "purchase", "view", "click", "view", "purchase", "share", "view"];
        let events: Vec<Record> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| Record::from_json(&schema, format!(r#"{{"id":"e{i}","interaction_type":"{k}","t":"2026-01-01T00:00:{i:02}Z"}}"#).as_bytes()).unwrap())
            .collect();
        let mut agg = Aggregator::new(set.clone(), Stats::new());
        agg.apply(&events, &[]);
        let reported: Vec<serde_json::Value> = set.metrics().iter().enumerate().map(|(i, m)| m.report(&agg.states[i].cells.values().next().unwrap().partial).unwrap()).collect();
        assert_eq!(reported[0], serde_json::json!(0.5), "2 purchases per 4 views");
        assert_eq!(reported[0], reported[1]);
    }
}
