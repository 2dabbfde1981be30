//! The write side: the consumer's [`Aggregator`] keeps one partial state per (metric, pane,
//! partition) with the highest offset it includes, absorbs each batch in one call, and hands out
//! the changed partials to store before the batch is acknowledged.

use super::backfill::{self, Backfiller, Command, Job};
use super::keys::{quarantine_key, seam_key, watermark_key, SEAM_PANE, WATERMARK_PANE};
use super::{Metric, MetricSet, Partial, TimeMode};
use crate::base::{map_each, Workers};
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Record;
use crate::store::{PaneRecord, StateStore, MAX_STATE_BYTES};
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
        Watermark {
            time: i64::MIN,
            offset: -1,
            dirty: false,
            seam: i64::MIN,
        }
    }
}

/// What absorbing one batch produced.
#[derive(Debug, Default)]
pub struct Absorbed {
    /// Partials that changed: written to the store before the batch is acknowledged.
    pub panes: Vec<PaneRecord>,
    /// Events later than a metric's lateness, one dead letter each.
    pub late: Vec<DeadLetter>,
}

/// What [`Aggregator::load`] read for one batch, for [`Aggregator::ingest`].
#[derive(Debug, Default)]
pub struct Loaded {
    partitions: Vec<PartitionLoad>,
}

/// The stored state of one partition new to the aggregator.
#[derive(Debug)]
struct PartitionLoad {
    partition: i32,
    /// The earliest pane start loaded.
    since: i64,
    records: Vec<PaneRecord>,
    /// Where the backfill of a metric new to the partition ends (none: no backfill, or nothing
    /// came before).
    seam: Option<i64>,
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
        Aggregator {
            set,
            stats,
            states,
            loaded: HashMap::new(),
            late: Vec::new(),
            backfill: None,
            seams: Vec::new(),
            jobs: Vec::new(),
            workers: Workers::default(),
        }
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

    /// The last [`Self::checkpoint`] is stored: the backfills whose seams it held may start.
    pub fn stored(&mut self) {
        if let Some(b) = &self.backfill {
            for job in self.jobs.drain(..) {
                b.send(Command::Start(Box::new(job)));
            }
        }
    }

    /// [`Self::load`], [`Self::ingest`] and [`Self::checkpoint`] in one call: the batch's
    /// changed partials, to write before it is acknowledged, and its late events as dead letters.
    pub async fn absorb(
        &mut self,
        batch: &Batch,
        store: &dyn StateStore,
    ) -> anyhow::Result<Absorbed> {
        let loaded = self.load(batch, store).await?;
        let late = self.ingest(batch, loaded)?;
        Ok(Absorbed {
            panes: self.checkpoint(),
            late,
        })
    }

    /// Reads what `batch` needs from the store before it can be applied: the stored partials,
    /// watermarks and seams of its partitions that are new to this aggregator (after start, a
    /// rebalance or a reload), and where a backfill of a metric new to one would end. Reads only:
    /// an error leaves everything as it was, so the call may simply be repeated. On the embedded
    /// queue the seam is the newest raw row, so this comes before the batch's raw events are
    /// stored.
    pub async fn load(&self, batch: &Batch, store: &dyn StateStore) -> anyhow::Result<Loaded> {
        let mut partitions: Vec<i32> = batch.sources.iter().map(|s| s.0).collect();
        if batch.sources.is_empty() && !batch.events.is_empty() {
            partitions.push(NO_PARTITION);
        }
        let mut loaded = Loaded::default();
        for partition in self.to_load(&partitions, &batch.revoked) {
            let (since, records) =
                Self::load_partition(&self.set, store, partition, &batch.events).await?;
            let seam = match (&self.backfill, partition) {
                (None, _) => None,
                // The embedded queue's seam: every raw row stored so far is history.
                (Some(b), NO_PARTITION) => {
                    Some(b.history.end(NO_PARTITION).await?).filter(|p| *p > 0)
                }
                // A Kafka partition's: the offset before this batch's first.
                (Some(_), p) => batch
                    .sources
                    .iter()
                    .filter(|s| s.0 == p)
                    .map(|s| s.1)
                    .min()
                    .map(|first| first - 1)
                    .filter(|at| *at >= 0),
            };
            loaded.partitions.push(PartitionLoad {
                partition,
                since,
                records,
                seam,
            });
        }
        Ok(loaded)
    }

    /// Takes in one batch with what [`Self::load`] read for it, touching no store: forgets
    /// partitions revoked since the last batch, installs the loaded partials (and seams for
    /// metrics new to a partition, whose backfills start once the next checkpoint is stored),
    /// applies the events (skipping those already in a stored partial), and returns the late
    /// events as dead letters. The batch may be acknowledged only once a later
    /// [`Self::checkpoint`]'s partials are stored.
    pub fn ingest(&mut self, batch: &Batch, loaded: Loaded) -> anyhow::Result<Vec<DeadLetter>> {
        self.forget(&batch.revoked);
        for l in loaded.partitions {
            let fresh = self.install(l.partition, l.since, l.records)?;
            if self.backfill.is_some() {
                self.make_seams(l.partition, fresh, l.seam)?;
            }
        }
        self.apply(&batch.events, &batch.sources);
        Ok(self.take_late())
    }

    /// Partitions of this batch whose stored partials are not loaded yet (after start or a
    /// rebalance; a partition revoked by this batch is forgotten before it is applied).
    fn to_load(&self, partitions: &[i32], revoked: &[i32]) -> Vec<i32> {
        let mut new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.loaded.contains_key(p) || revoked.contains(p))
            .collect();
        new.sort_unstable();
        new.dedup();
        new
    }

    /// The stored partials of one partition that the batch's `events` can touch, for
    /// [`Self::install`], with the earliest pane start loaded. Each metric's watermark is read
    /// first: an event older than it less the lateness is late and touches no pane, so one
    /// record dated year 1 no longer loads every retained pane of the partition into memory.
    async fn load_partition(
        set: &MetricSet,
        store: &dyn StateStore,
        partition: i32,
        events: &[Record],
    ) -> anyhow::Result<(i64, Vec<PaneRecord>)> {
        let min_ts = events.iter().map(Record::time_ms).min().unwrap_or(0);
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::new();
        let mut earliest = i64::MAX;
        for m in &set.metrics {
            let marks = store
                .load_panes(
                    &watermark_key(m),
                    WATERMARK_PANE,
                    WATERMARK_PANE + 1,
                    Some(partition),
                )
                .await?;
            let reach = m.config.lateness.as_millis() as i64 + m.window.slide_ms;
            let t = match m.config.time {
                // Without a stored watermark the batch's events set the reach.
                TimeMode::Event => marks
                    .iter()
                    .filter_map(|r| r.state.as_i64())
                    .map(|w| w.min(now))
                    .max()
                    .map_or(min_ts, |w| w.max(min_ts)),
                TimeMode::Processing => now,
            };
            let since = t.saturating_sub(reach);
            earliest = earliest.min(since);
            out.extend(
                store
                    .load_panes(m.state_key(), since, i64::MAX, Some(partition))
                    .await?,
            );
            out.extend(marks);
            out.extend(
                store
                    .load_panes(&seam_key(m), SEAM_PANE, SEAM_PANE + 1, Some(partition))
                    .await?,
            );
        }
        Ok((if earliest == i64::MAX { 0 } else { earliest }, out))
    }

    /// Installs loaded partials, so new events add to them instead of replacing them, and
    /// restarts the backfills a seam says are unfinished. Returns the metrics that have no state
    /// on the partition at all (no watermark, no seam): new to it.
    fn install(
        &mut self,
        partition: i32,
        since: i64,
        records: Vec<PaneRecord>,
    ) -> anyhow::Result<Vec<usize>> {
        let mut known = vec![false; self.set.metrics.len()];
        for r in records {
            if let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| seam_key(m) == r.metric)
            {
                known[i] = true;
                self.states[i].watermarks.entry(partition).or_default().seam = r.offset;
                if self.backfill.is_some() {
                    self.jobs.extend(Job::of(&self.set, i, &r)?);
                }
                continue;
            }
            if let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| watermark_key(m) == r.metric)
            {
                known[i] = true;
                let time = r.state.as_i64().ok_or_else(|| {
                    anyhow::anyhow!(
                        "metric {}: a stored watermark is not a time: {}",
                        self.set.metrics[i].name(),
                        r.state
                    )
                })?;
                let mark = self.states[i].watermarks.entry(partition).or_default();
                // A watermark stored ahead of the clock (by an earlier version) is held to it.
                let time = time.min(chrono::Utc::now().timestamp_millis());
                if time > mark.time {
                    mark.time = time;
                }
                mark.offset = mark.offset.max(r.offset);
                continue;
            }
            let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| m.state_key() == r.metric)
            else {
                continue;
            };
            let m = &self.set.metrics[i];
            match m.decode(&r.state) {
                Ok(partial) => {
                    self.states[i].cells.insert(
                        (r.pane_start, partition),
                        Cell {
                            partial,
                            offset: r.offset,
                            dirty: false,
                        },
                    );
                }
                // Retrying cannot help a state that does not decode: it is quarantined, and the
                // pane starts again (see `quarantine`).
                Err(e) => self.quarantine(i, r, &e),
            }
        }
        self.loaded.insert(partition, since);
        Ok(known
            .iter()
            .enumerate()
            .filter(|(_, k)| !**k)
            .map(|(i, _)| i)
            .collect())
    }

    /// Keeps a stored partial that cannot be decoded whole under the metric's `#quarantined`
    /// key (written with this batch), reports it as a `corrupt_state` dead letter, and lets its
    /// pane start again empty: one damaged pane costs that pane's count, not the consumer.
    fn quarantine(&mut self, metric: usize, record: PaneRecord, error: &str) {
        let m = &self.set.metrics[metric];
        let detail = format!("metric {:?}: the stored state of pane {} (partition {}) cannot be read: {error}; kept whole under {:?}", m.name(), crate::event::iso(record.pane_start), record.partition, quarantine_key(m));
        tracing::error!(metric = m.name(), pane_start = record.pane_start, partition = record.partition, %error, "stored metric state cannot be read; quarantined, and its pane starts again");
        let id = format!(
            "state:{}:{}:{}",
            m.state_key(),
            record.pane_start,
            record.partition
        );
        self.late.push(DeadLetter::new(
            id,
            Reason::CorruptState,
            detail,
            (record.partition, record.offset),
            record.state.as_str().as_bytes(),
        ));
        self.seams.push(PaneRecord {
            metric: quarantine_key(m),
            ..record
        });
    }

    /// Makes a seam at position `at` of `partition` for each of `metrics` (none: nothing came
    /// before), to be stored with this batch's partials; their backfills start once it is.
    fn make_seams(
        &mut self,
        partition: i32,
        metrics: Vec<usize>,
        at: Option<i64>,
    ) -> anyhow::Result<()> {
        let Some(at) = at else { return Ok(()) };
        let now = chrono::Utc::now().timestamp_millis();
        for i in metrics {
            let Some(record) = backfill::new_seam(&self.set.metrics[i], partition, at, now) else {
                continue;
            };
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
            let keys: HashSet<String> = set
                .metrics
                .iter()
                .map(|m| m.state_key().to_string())
                .collect();
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
            |m, st, maps| {
                // A panic applying one metric (a bug an odd record meets) costs that metric this
                // batch, reported as one `internal_error` dead letter; the other metrics apply it.
                crate::base::catch_panic(|| apply_metric(m, st, events, sources, maps, now, stats))
                    .unwrap_or_else(|panic| vec![panicked(m, events, sources, &panic)])
            },
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
                true => metrics
                    .par_iter()
                    .zip(states.par_iter_mut())
                    .with_max_len(1)
                    .map(|(m, st)| each(m, st, &shared))
                    .collect(),
                false => metrics
                    .iter()
                    .zip(states.iter_mut())
                    .map(|(m, st)| each(m, st, &shared))
                    .collect(),
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
            let closed = |pane: i64, partition: i32| {
                all || pane.saturating_add(reach)
                    <= watermarks.get(&partition).map_or(i64::MIN, |w| w.time)
            };
            let keys: Vec<(i64, i32)> = st
                .cells
                .keys()
                .copied()
                .filter(|(pane, partition)| closed(*pane, *partition))
                .collect();
            for key in keys {
                let cell = st.cells.remove(&key).expect("listed above");
                out.extend(pane_record(m, key, &cell, &self.stats));
            }
        }
        out
    }

    /// The partials changed since the last checkpoint (with new watermarks and seams), marked
    /// clean: once they are stored, every batch ingested before may be acknowledged.
    pub fn checkpoint(&mut self) -> Vec<PaneRecord> {
        let mut out = std::mem::take(&mut self.seams);
        let stats = self.stats.clone();
        let changed = self.each_metric(|_| (), |m, st, _| checkpoint_metric(m, st, &stats));
        out.extend(changed.into_iter().flatten());
        out
    }
}

/// A cell as the record to store. A state that cannot be stored is this metric's error, never
/// a write retried for ever: a custom state JSON cannot hold (see [`Metric::encode`]), or one
/// larger than any store takes ([`MAX_STATE_BYTES`]; grouped states are capped well below it by
/// `max_groups` and `max_len`, so only a custom reducer's can grow so far). Its pane keeps what
/// was stored last; every other pane and metric is written as usual.
fn pane_record(
    m: &Metric,
    (pane_start, partition): (i64, i32),
    cell: &Cell,
    stats: &Stats,
) -> Option<PaneRecord> {
    let state = match m.encode(&cell.partial) {
        Ok(state) if state.as_str().len() > MAX_STATE_BYTES => Err(format!("the state of pane {} is {} bytes, more than a store document may hold ({MAX_STATE_BYTES}); it is not stored", crate::event::iso(pane_start), state.as_str().len())),
        other => other,
    };
    match state {
        Ok(state) => Some(PaneRecord {
            metric: m.state_key().to_string(),
            pane_start,
            partition,
            offset: cell.offset,
            state,
        }),
        Err(e) => {
            stats.script_error(m.name(), "", &e);
            None
        }
    }
}

/// The dead letter of a batch that metric `m` panicked on: its first record, with where the
/// batch runs and the panic's message. The raw records are stored as usual (storing them does
/// not depend on the metrics), so a recomputation can count them once the bug is fixed.
fn panicked(m: &Metric, events: &[Record], sources: &[(i32, i64)], panic: &str) -> DeadLetter {
    let at = sources.first().copied().unwrap_or((NO_PARTITION, -1));
    let last = sources.last().map_or(-1, |s| s.1);
    tracing::error!(metric = m.name(), partition = at.0, first_offset = at.1, last_offset = last, %panic, "applying a batch to a metric panicked; the metric leaves the batch out");
    let detail = format!("metric {:?} failed applying a batch of {} records (partition {}, offsets {} to {last}): {panic}", m.name(), events.len(), at.0, at.1);
    let id = format!("panic:{}:{}:{}", m.name(), at.0, at.1);
    match events.first() {
        Some(e) => DeadLetter::of_record(id, Reason::InternalError, detail, at, e),
        None => DeadLetter::new(id, Reason::InternalError, detail, at, b""),
    }
}

/// Applies a batch to one metric's state (see [`Aggregator::apply`]); returns its late events.
fn apply_metric(
    m: &Metric,
    st: &mut MetricState,
    events: &[Record],
    sources: &[(i32, i64)],
    maps: &[rhai::Dynamic],
    now: i64,
    stats: &Stats,
) -> Vec<DeadLetter> {
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
            // Every metric that leaves the record out names the same id, so it is one dead letter.
            late.push(DeadLetter::of_record(
                DeadLetter::record_id("late", e, (partition, offset)),
                Reason::Late,
                detail,
                (partition, offset),
                e,
            ));
            continue;
        }
        // The watermark never passes the wall clock: records stamped minutes ahead (a device
        // clock off, within `max_future`) are counted in their panes, but do not make every
        // ordinary record after them late, nor close panes early.
        let t_mark = t.min(now);
        if t_mark > mark.time {
            mark.time = t_mark;
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
                st.cells.entry(key).or_insert(Cell {
                    partial,
                    offset: -1,
                    dirty: false,
                })
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
fn checkpoint_metric(m: &Metric, st: &mut MetricState, stats: &Stats) -> Vec<PaneRecord> {
    let mut out = Vec::new();
    for (key, cell) in st.cells.iter_mut().filter(|(_, c)| c.dirty) {
        cell.dirty = false;
        out.extend(pane_record(m, *key, cell, stats));
    }
    for (partition, mark) in st.watermarks.iter_mut().filter(|(_, w)| w.dirty) {
        mark.dirty = false;
        out.push(PaneRecord {
            metric: watermark_key(m),
            pane_start: WATERMARK_PANE,
            partition: *partition,
            offset: mark.offset,
            state: mark.time.into(),
        });
    }
    // Panes no event can reach any more are only needed in the store.
    let reach = m.window.size_ms + m.config.lateness.as_millis() as i64 + m.window.slide_ms;
    let watermarks = &st.watermarks;
    st.cells.retain(|(pane, partition), c| {
        c.dirty
            || *pane
                >= watermarks
                    .get(partition)
                    .map_or(i64::MIN, |w| w.time)
                    .saturating_sub(reach)
    });
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::aggregate::reducer::OTHER_KEY;
    use crate::aggregate::{MetricConfig, ReducerKind};
    use crate::event::{Schema, Value};
    use std::time::Duration;

    /// A count-per-item metric set, its script in a directory removed once compiled.
    pub(in crate::aggregate) fn per_item_set(
        window: Duration,
        lateness: Duration,
    ) -> Arc<MetricSet> {
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
            max_groups: 50_000,
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
        records
            .into_iter()
            .partition(|r| !r.metric.ends_with("#watermark"))
    }

    /// After a crash (memory lost), the stored watermark makes an event that was late before
    /// late again on replay, and a replayed late event is not dead-lettered twice.
    #[test]
    fn a_stored_watermark_keeps_late_events_late_after_a_crash() {
        let (mut agg, _) = aggregator(10);
        agg.apply(
            &[event("new", "x", 60), event("old", "x", 5)],
            &[(0, 1), (0, 2)],
        );
        assert_eq!(agg.take_late().len(), 1);
        let stored = agg.checkpoint();
        // A new process: loads what was stored, then replays from offset 2 and reads offset 3.
        let (mut again, stats) = aggregator(10);
        again.install(0, 0, stored).unwrap();
        again.apply(
            &[event("old", "x", 5), event("older", "x", 4)],
            &[(0, 2), (0, 3)],
        );
        let late = again.take_late();
        assert_eq!(
            late.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["late:0:3"],
            "the replayed one is not dead-lettered again"
        );
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
        assert_eq!(
            panes[0].state.to_value().unwrap()["grouped"]["x"]["count"],
            2,
            "offsets 12 and 13 only"
        );
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
            max_groups: 50_000,
        };
        let configs = [
            metric("count", ReducerKind::Count, 10),
            metric("top", ReducerKind::TopK, 30),
            metric("bottom", ReducerKind::BottomK, 5),
        ];
        let set = Arc::new(MetricSet::load(&configs, &schema()).unwrap());
        // Out of order by up to two minutes over three partitions: some late for one metric, some for all.
        let events: Vec<Record> = (0..600)
            .map(|i| {
                event(
                    &format!("e{i}"),
                    &format!("item{}", i % 7),
                    i / 4 + (i * 37 % 120) - 60,
                )
            })
            .collect();
        let sources: Vec<(i32, i64)> = (0..600).map(|i: i32| (i % 3, (i / 3) as i64)).collect();
        let run = |threads: usize| {
            let mut agg =
                Aggregator::new(set.clone(), Stats::new()).with_workers(Workers::new(threads));
            let (mut written, mut late) = (Vec::new(), Vec::new());
            for (events, sources) in events.chunks(64).zip(sources.chunks(64)) {
                agg.apply(events, sources);
                late.extend(agg.take_late().into_iter().map(|d| (d.id, d.detail)));
                // Watermarks and a state's keys come in hash order: sorted per checkpoint, and
                // states compared as JSON values (key order aside).
                let mut records: Vec<_> = agg
                    .checkpoint()
                    .into_iter()
                    .map(|r| {
                        (
                            (r.metric, r.pane_start, r.partition, r.offset),
                            r.state.to_value().unwrap(),
                        )
                    })
                    .collect();
                records.sort_by(|a, b| a.0.cmp(&b.0));
                written.push(records);
            }
            (written, late)
        };
        let (one, three) = (run(1), run(3));
        assert!(
            one.1.iter().any(|(_, detail)| detail.contains("; ")),
            "an event late for several metrics"
        );
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
        agg.apply(
            &[event("a", "x", 1), event("b", "x", 7), event("c", "x", 19)],
            &[(0, 1), (0, 2), (0, 3)],
        );
        // Watermark 1,000,019 s; panes of 5 s, lateness 10 s: the pane at 1,000,000 s closes
        // (its end 1,000,005 + 10 <= 1,000,019), the one at 1,000,005 does not (1,000,010 + 10).
        let closed = agg.take_closed(false);
        assert_eq!(
            closed.iter().map(|r| r.pane_start).collect::<Vec<_>>(),
            [1_000_000_000]
        );
        assert_eq!(closed[0].offset, 1);
        let rest = agg.take_closed(true);
        assert_eq!(
            rest.iter().map(|r| r.pane_start).collect::<Vec<_>>(),
            [1_000_005_000, 1_000_015_000]
        );
        assert!(
            agg.take_closed(true).is_empty(),
            "each pane is handed out once"
        );
    }

    #[test]
    fn partitions_have_their_own_watermark() {
        let (mut agg, stats) = aggregator(10);
        // Partition 1 replays old events while partition 0 is current: neither is late.
        agg.apply(
            &[event("a", "x", 100), event("b", "x", 20)],
            &[(0, 1), (1, 1)],
        );
        assert_eq!(stats.snapshot().late_events, 0);
        agg.apply(&[event("c", "x", 5)], &[(1, 2)]);
        assert_eq!(
            stats.snapshot().late_events,
            1,
            "15 s behind its own partition is late"
        );
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
            .map(|r| {
                r.state.to_value().unwrap()["grouped"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|a| a["count"].as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(total, 2, "8 s out of order counts; 25 s behind is late");
        assert_eq!(stats.snapshot().late_events, 1);
        let late = agg.take_late();
        assert_eq!(late.len(), 1, "one dead letter for the late event");
        assert_eq!(
            (late[0].id.as_str(), late[0].reason),
            ("late:c@1000005000", Reason::Late)
        );
        assert!(
            late[0].payload.contains("\"event_id\":\"c\""),
            "{}",
            late[0].payload
        );
        assert!(agg.take_late().is_empty());
        let panes: Vec<i64> = dirty.iter().map(|r| r.pane_start).collect();
        assert_eq!(
            panes,
            vec![1_000_020_000, 1_000_030_000],
            "each event touches its own pane"
        );
    }

    #[test]
    fn replayed_offsets_are_skipped() {
        let (mut agg, _) = aggregator(10);
        let events = [event("a", "x", 1), event("b", "x", 2)];
        agg.apply(&events, &[(0, 10), (0, 11)]);
        agg.apply(&events, &[(0, 10), (0, 11)]);
        agg.apply(&[event("c", "x", 3)], &[(0, 12)]);
        let (dirty, marks) = panes_and_watermarks(agg.checkpoint());
        assert_eq!(
            marks[0].offset, 12,
            "the watermark knows the last offset it saw"
        );
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].offset, 12);
        assert_eq!(
            dirty[0].state.to_value().unwrap()["grouped"]["x"]["count"],
            3
        );
    }

    /// The shipped conversion rate as the built-in ratio and as the scripted custom reducer:
    /// the same number, over the same records.
    #[test]
    fn ratio_reducer_equals_the_custom_script_it_replaced() {
        let schema = crate::event::schema_of("fields = { id = \"string\", interaction_type = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"");
        let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/metrics");
        let metric = |name: &str, file: &str, reducer: ReducerKind| MetricConfig {
            k: 1,
            ..config(name, scripts.join(file), reducer)
        };
        let set = Arc::new(
            MetricSet::load(
                &[
                    metric("ratio", "conversion_ratio.rhai", ReducerKind::Ratio),
                    metric("custom", "conversion_rate.rhai", ReducerKind::Custom),
                ],
                &schema,
            )
            .unwrap(),
        );
        let kinds = [
            "view", "purchase", "view", "click", "view", "purchase", "share", "view",
        ];
        let events: Vec<Record> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Record::from_json(
                    &schema,
                    format!(
                        r#"{{"id":"e{i}","interaction_type":"{k}","t":"2026-01-01T00:00:{i:02}Z"}}"#
                    )
                    .as_bytes(),
                )
                .unwrap()
            })
            .collect();
        let mut agg = Aggregator::new(set.clone(), Stats::new());
        agg.apply(&events, &[]);
        let reported: Vec<serde_json::Value> = set
            .metrics()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.report(&agg.states[i].cells.values().next().unwrap().partial)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            reported[0],
            serde_json::json!(0.5),
            "2 purchases per 4 views"
        );
        assert_eq!(reported[0], reported[1]);
    }

    /// A stored partial that does not decode (written as `null` by an older version, or damaged)
    /// is set aside whole with a dead letter, and its pane starts again: loading never fails on it.
    #[test]
    fn a_stored_state_that_cannot_be_read_is_quarantined_and_its_pane_starts_again() {
        let (mut agg, _) = aggregator(10);
        let key = agg.set.metrics[0].state_key().to_string();
        let broken = PaneRecord {
            metric: key.clone(),
            pane_start: 1_000_000_000,
            partition: 0,
            offset: 4,
            state: crate::store::StateJson::stored(
                r#"{"single":{"sum":{"sum":null,"n":2}}}"#.into(),
            ),
        };
        agg.install(0, 0, vec![broken.clone()])
            .expect("a bad state does not fail the load");
        let dead = agg.take_late();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, Reason::CorruptState);
        assert!(
            dead[0].detail.contains("per_item") && dead[0].payload.contains("null"),
            "{:?}",
            dead[0]
        );
        agg.apply(&[event("e", "x", 1)], &[(0, 5)]);
        let written = agg.checkpoint();
        let kept = written
            .iter()
            .find(|r| r.metric.ends_with("#quarantined"))
            .expect("the bad state is written aside");
        assert_eq!(
            (kept.pane_start, kept.partition, kept.state.as_str()),
            (broken.pane_start, 0, broken.state.as_str())
        );
        let pane = written
            .iter()
            .find(|r| r.metric == key)
            .expect("the pane starts again");
        assert_eq!(pane.state.to_value().unwrap()["grouped"]["x"]["count"], 1);
    }

    /// A record stamped minutes ahead (a device clock off, within max_future) counts in its
    /// pane, but the watermark stays at the wall clock: the ordinary records after it are not late.
    #[test]
    fn a_record_from_minutes_ahead_does_not_make_the_ordinary_ones_late() {
        let (mut agg, stats) = aggregator(5);
        let now = chrono::Utc::now().timestamp_millis();
        let at = |id: &str, ms: i64| {
            let mut e = event(id, "x", 0);
            e.set_time_ms(ms);
            e
        };
        agg.apply(&[at("ahead", now + 290_000)], &[(0, 1)]);
        agg.apply(
            &[at("now", now - 1_000), at("a bit late", now - 3_000)],
            &[(0, 2), (0, 3)],
        );
        assert!(agg.take_late().is_empty(), "nothing late");
        assert_eq!(stats.snapshot().late_events, 0);
        let (panes, marks) = panes_and_watermarks(agg.checkpoint());
        assert!(
            marks[0].state.as_i64().unwrap() <= chrono::Utc::now().timestamp_millis(),
            "the watermark is not in the future"
        );
        assert_eq!(
            panes
                .iter()
                .map(|p| p.state.to_value().unwrap()["grouped"]["x"]["count"]
                    .as_u64()
                    .unwrap())
                .sum::<u64>(),
            3,
            "all three counted"
        );
        // No pane is closed early by the future record.
        assert!(
            agg.take_closed(false)
                .iter()
                .all(|r| r.pane_start < now - 60_000),
            "nothing recent closed"
        );
    }

    /// After a start, one record dated year 1 no longer loads every retained pane of its
    /// partition: what is loaded starts at the stored watermark less the reach.
    #[tokio::test]
    async fn a_record_from_year_one_loads_only_the_panes_a_late_record_could_reach() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::store::embedded::EmbeddedConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let store = crate::store::embedded::EmbeddedStore::open(
            &config,
            &Default::default(),
            &schema(),
            &[],
        )
        .unwrap();
        let (mut agg, _) = aggregator(10);
        // A day of panes, then a restart.
        for hour in 0..24 {
            agg.apply(
                &[event(&format!("h{hour}"), "x", hour * 3600)],
                &[(0, hour)],
            );
        }
        store.write_panes(&agg.checkpoint()).await.unwrap();
        let (mut again, _) = aggregator(10);
        let mut ancient = event("ancient", "x", 0);
        ancient.set_time_ms(-62_135_596_800_000);
        let batch = crate::transport::Batch {
            events: vec![ancient, event("next", "x", 23 * 3600 + 1)],
            sources: vec![(0, 24), (0, 25)],
            ..Default::default()
        };
        let loaded = again.load(&batch, &store).await.unwrap();
        let late = again.ingest(&batch, loaded).unwrap();
        assert_eq!(late.len(), 1, "the ancient record is late");
        let loaded: Vec<i64> = again.states[0]
            .cells
            .keys()
            .map(|(pane, _)| *pane)
            .collect();
        assert!(
            loaded
                .iter()
                .all(|pane| *pane >= (1_000_000 + 23 * 3600 - 60) * 1000),
            "only panes near the watermark: {} loaded",
            loaded.len()
        );
    }

    /// A panic applying one metric is that metric's dead letter for the batch; the process goes on.
    #[test]
    fn a_panic_in_one_metric_is_a_dead_letter_not_the_end() {
        let set = per_item_set(Duration::from_secs(60), Duration::from_secs(5));
        let m = &set.metrics[0];
        let events = [event("a", "x", 1), event("b", "x", 2)];
        let letters =
            crate::base::catch_panic(|| -> Vec<DeadLetter> { panic!("index out of bounds") })
                .unwrap_or_else(|p| vec![panicked(m, &events, &[(2, 40), (2, 41)], &p)]);
        assert_eq!(letters.len(), 1);
        let d = &letters[0];
        assert_eq!(
            (d.reason, d.partition, d.offset),
            (Reason::InternalError, 2, 40)
        );
        assert!(
            d.detail.contains("index out of bounds") && d.detail.contains("offsets 40 to 41"),
            "{}",
            d.detail
        );
    }

    /// Two records that reuse one event id but sit at different offsets are two late dead
    /// letters, not one merged.
    #[test]
    fn late_records_that_reuse_an_id_stay_two_dead_letters() {
        let (mut agg, _) = aggregator(5);
        agg.apply(
            &[
                event("new", "x", 100),
                event("dup", "x", 1),
                event("dup", "y", 2),
            ],
            &[(0, 1), (0, 2), (0, 3)],
        );
        let late = agg.take_late();
        assert_eq!(
            late.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["late:0:2", "late:0:3"]
        );
    }

    /// A tumbling minute's metric with an hour's lateness and top 3.
    fn config(name: &str, script: std::path::PathBuf, reducer: ReducerKind) -> MetricConfig {
        MetricConfig {
            name: name.into(),
            script,
            reducer,
            k: 3,
            window: Duration::from_secs(60),
            slide: None,
            time: TimeMode::Event,
            lateness: Duration::from_secs(3600),
            description: String::new(),
            unit: String::new(),
            stages: Vec::new(),
            exact_limit: 10_000,
            max_groups: 50_000,
        }
    }

    /// [`config`] of a script written into `dir`.
    fn scripted(
        dir: &std::path::Path,
        name: &str,
        reducer: ReducerKind,
        script: &str,
        max_groups: usize,
    ) -> MetricConfig {
        let path = dir.join(format!("{name}.rhai"));
        std::fs::write(&path, script).unwrap();
        MetricConfig {
            max_groups,
            ..config(name, path, reducer)
        }
    }

    /// A custom state JSON cannot hold (infinity) and a value script's infinity are that
    /// metric's errors; the pane of a built-in metric beside them is written as usual.
    #[test]
    fn a_non_finite_number_is_one_metrics_error_and_never_stored_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let custom = "fn init() { #{ total: 0.0 } }\nfn update(e) { this.total += 1e308 * 10.0; }\nfn merge(o) { this.total += o.total; }\nfn finish() { this.total }";
        let configs = [
            scripted(
                dir.path(),
                "overflowing",
                ReducerKind::Custom,
                custom,
                50_000,
            ),
            scripted(
                dir.path(),
                "infinite_value",
                ReducerKind::Sum,
                "fn v(e) { 1e308 * 10.0 }\n#{ value: v }",
                50_000,
            ),
            scripted(
                dir.path(),
                "per_item",
                ReducerKind::Count,
                "#{ key: field(\"item_id\") }",
                50_000,
            ),
        ];
        let set = Arc::new(MetricSet::load(&configs, &schema()).unwrap());
        let stats = Stats::new();
        let mut agg = Aggregator::new(set, stats.clone());
        agg.apply(&[event("a", "x", 1), event("b", "y", 2)], &[]);
        let (panes, _) = panes_and_watermarks(agg.checkpoint());
        assert!(
            panes.iter().all(|p| !p.state.as_str().contains("null")),
            "{panes:?}"
        );
        assert!(
            !panes.iter().any(|p| p.metric.starts_with("overflowing")),
            "the custom state is not stored"
        );
        let sums: Vec<_> = panes
            .iter()
            .filter(|p| p.metric.starts_with("infinite_value"))
            .map(|p| p.state.to_value().unwrap())
            .collect();
        assert!(
            sums.iter().all(|s| s["single"]["sum"]["n"] == 0),
            "infinity left out of the sum: {sums:?}"
        );
        assert_eq!(
            panes
                .iter()
                .filter(|p| p.metric.starts_with("per_item"))
                .count(),
            1,
            "the built-in metric beside them is written"
        );
        assert!(
            stats.snapshot().script_errors >= 3,
            "each reported as a script error"
        );
    }

    /// Past `max_groups` keys in a pane, further keys are counted under `__other__`, which
    /// rankings leave out: the pane stays bounded and nothing is dropped from the count.
    #[test]
    fn keys_past_max_groups_are_counted_under_other_and_left_out_of_rankings() {
        let dir = tempfile::tempdir().unwrap();
        let configs = [scripted(
            dir.path(),
            "top",
            ReducerKind::TopK,
            "#{ key: field(\"item_id\") }",
            3,
        )];
        let set = Arc::new(MetricSet::load(&configs, &schema()).unwrap());
        let mut agg = Aggregator::new(set.clone(), Stats::new());
        let events: Vec<Record> = (0..20)
            .map(|i| event(&format!("e{i}"), &format!("item{}", i % 10), 1))
            .collect();
        agg.apply(&events, &[]);
        let (panes, _) = panes_and_watermarks(agg.checkpoint());
        let groups = panes[0].state.to_value().unwrap()["grouped"]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(groups.len(), 4, "three keys and the overflow: {groups:?}");
        assert_eq!(
            groups[OTHER_KEY]["count"], 14,
            "seven keys' records, twice each"
        );
        let top = set.metrics[0]
            .report(&agg.states[0].cells.values().next().unwrap().partial)
            .unwrap();
        assert!(!top.to_string().contains(OTHER_KEY), "{top}");
    }
}
