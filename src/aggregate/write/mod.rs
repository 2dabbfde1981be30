//! The write side: the consumer's [`Aggregator`] keeps one partial state per (metric, pane,
//! partition) with the highest offset it includes, absorbs each batch in one call, and hands out
//! the changed partials to store before the batch is acknowledged.

mod load;

use super::backfill::{Backfiller, Command, Job};
use super::keys::{sessions_key, watermark_key, SESSIONS_PANE, WATERMARK_PANE};
use super::session::Table;
use super::{Metric, MetricSet, Partial, TimeMode};
use crate::base::{map_each, Workers};
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Record;
use crate::store::{PaneRecord, StateJson, StateStore, MAX_STATE_BYTES};
use crate::telemetry::Stats;
use crate::transport::{Batch, NO_PARTITION};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// A session metric's open sessions per partition (looked up per record: foldhash).
    sessions: HashMap<i32, Table, foldhash::fast::RandomState>,
}

impl MetricState {
    /// The newest event time that decides which of a partition's panes events may still
    /// reach: its watermark, or a session metric's table's when that is behind (sessions close
    /// into panes from the table's).
    fn newest(&self, partition: i32) -> i64 {
        let mark = self.watermarks.get(&partition).map_or(i64::MIN, |w| w.time);
        match self.sessions.get(&partition) {
            Some(t) => mark.min(t.watermark),
            None => mark,
        }
    }
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
    /// How often session metrics' tables of open sessions are stored (see
    /// [`Self::checkpoint_due`]), and when they last were.
    tables_every: Duration,
    tables_stored: Instant,
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
            tables_every: Duration::ZERO,
            tables_stored: Instant::now(),
        }
    }

    /// Stores session metrics' tables of open sessions (each rewritten whole) at most every
    /// `every` in [`Self::checkpoint_due`], instead of with every checkpoint.
    pub fn with_session_tables_every(mut self, every: Duration) -> Aggregator {
        self.tables_every = every;
        self
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

    /// What it counts (script errors, late events) in.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
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
                st.sessions.remove(p);
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
            let closed = |pane: i64, partition: i32| {
                all || pane.saturating_add(reach) <= st.newest(partition)
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

    /// The partials changed since the last checkpoint (with new watermarks, seams and tables of
    /// open sessions), marked clean: once they are stored, every batch ingested before may be
    /// acknowledged.
    pub fn checkpoint(&mut self) -> Vec<PaneRecord> {
        self.checkpoint_with(true)
    }

    /// [`Self::checkpoint`], but session metrics' tables of open sessions only when the last
    /// were stored `with_session_tables_every` ago: a table is rewritten whole, so storing it
    /// after every batch would cost the store more than the raw records. Returns whether the
    /// checkpoint is complete: only then may the batches ingested before be acknowledged (a
    /// crash replays from the last acknowledged one, which rebuilds the sessions exactly, and
    /// the partials stored meanwhile skip what they already hold).
    pub fn checkpoint_due(&mut self) -> (Vec<PaneRecord>, bool) {
        let tables = self.tables_stored.elapsed() >= self.tables_every;
        let out = self.checkpoint_with(tables);
        let complete = tables
            || !self
                .states
                .iter()
                .any(|st| st.sessions.values().any(|t| t.dirty));
        (out, complete)
    }

    fn checkpoint_with(&mut self, tables: bool) -> Vec<PaneRecord> {
        let mut out = std::mem::take(&mut self.seams);
        let stats = self.stats.clone();
        let changed = self.each_metric(|_| (), |m, st, _| checkpoint_metric(m, st, tables, &stats));
        out.extend(changed.into_iter().flatten());
        if tables {
            self.tables_stored = Instant::now();
        }
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
    let session = m.session();
    // The sessions one record closes, reused from record to record.
    let mut closed = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let (partition, offset) = sources.get(i).copied().unwrap_or((NO_PARTITION, -1));
        let t = match m.config.time {
            TimeMode::Event => e.time_ms(),
            TimeMode::Processing => now,
        };
        let key = (m.window.pane_of(t), partition);
        let replay = partition != NO_PARTITION;
        // A session metric's table of the partition, as it stood: its offset and watermark
        // (read once; the record updates the table below).
        let table = session.map(|_| st.sessions.get(&partition).map(|t| (t.offset, t.watermark)));
        let skip = match table {
            // A session metric's record may close sessions into any pane: its table says
            // whether it was applied.
            Some(t) => t.is_some_and(|(applied, _)| offset <= applied),
            None => st.cells.get(&key).is_some_and(|c| offset <= c.offset),
        };
        if replay && skip {
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
        // A session metric judges lateness by its table's watermark: stored with its open
        // sessions (the partition's watermark record may be stored ahead of them), it is on a
        // replay what it was on the first pass.
        let newest = match table {
            Some(t) => t.map_or(i64::MIN, |(_, watermark)| watermark),
            None => mark.time,
        };
        if newest != i64::MIN && t < newest - lateness {
            if seen {
                continue; // judged late before the crash; its dead letter is stored
            }
            let behind = newest - t;
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
        if let Some((spec, measure)) = &session {
            let table = st.sessions.entry(partition).or_default();
            table.offset = table.offset.max(offset);
            table.watermark = table.watermark.max(t_mark);
            table.dirty = true;
            closed.clear();
            match m.session_record(e, maps.get(i)) {
                Ok(Some((key, marked))) => closed.extend(table.add(&key, t, marked, spec)),
                Ok(None) => {}
                Err(err) => stats.script_error(m.name(), e.id(), &err),
            }
            table.close_due(spec, &mut closed);
            if !closed.is_empty() {
                close_sessions(m, st, &closed, *measure, (partition, offset), stats);
            }
            continue;
        }
        // The cell's lookup inline: this runs per record and metric.
        let cell = match st.cells.get_mut(&key) {
            Some(c) => c,
            None => match cell(m, st, key, e.id(), stats) {
                Some(c) => c,
                None => continue,
            },
        };
        if let Err(err) = m.add(&mut cell.partial, e, maps.get(i)) {
            stats.script_error(m.name(), e.id(), &err);
        }
        cell.offset = cell.offset.max(offset);
        cell.dirty = true;
    }
    late
}

/// The cell of (pane, partition), made empty when there is none (none: the metric's empty
/// state failed, reported for record `id`).
fn cell<'a>(
    m: &Metric,
    st: &'a mut MetricState,
    key: (i64, i32),
    id: &str,
    stats: &Stats,
) -> Option<&'a mut Cell> {
    match st.cells.entry(key) {
        std::collections::btree_map::Entry::Occupied(c) => Some(c.into_mut()),
        std::collections::btree_map::Entry::Vacant(v) => match m.empty() {
            Ok(partial) => Some(v.insert(Cell {
                partial,
                offset: -1,
                dirty: false,
            })),
            Err(err) => {
                stats.script_error(m.name(), id, &err);
                None
            }
        },
    }
}

/// Adds the sessions that the record at `(partition, offset)` closed to the panes of their
/// closing times. A pane whose stored partial already includes that offset (stored before a
/// crash whose table was not) holds them already.
fn close_sessions(
    m: &Metric,
    st: &mut MetricState,
    closed: &[super::session::Closed],
    measure: super::Measure,
    (partition, offset): (i32, i64),
    stats: &Stats,
) {
    for c in closed {
        let key = (m.window.pane_of(c.at), partition);
        // Offsets of a partition only grow within a run, so a changed cell at this very offset
        // took an earlier session of this record; an unchanged one was stored holding it.
        let holds = partition != NO_PARTITION
            && st
                .cells
                .get(&key)
                .is_some_and(|c| offset < c.offset || (offset == c.offset && !c.dirty));
        if holds {
            continue;
        }
        let Some(cell) = cell(m, st, key, "", stats) else {
            continue;
        };
        m.add_session(&mut cell.partial, c, measure);
        cell.offset = cell.offset.max(offset);
        cell.dirty = true;
    }
}

/// One metric's part of [`Aggregator::checkpoint`]: its changed partials and watermarks, marked
/// clean; panes no event can reach any more leave memory.
fn checkpoint_metric(
    m: &Metric,
    st: &mut MetricState,
    tables: bool,
    stats: &Stats,
) -> Vec<PaneRecord> {
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
    for (partition, table) in st.sessions.iter_mut().filter(|(_, t)| tables && t.dirty) {
        table.dirty = false;
        let state = table.encode();
        if state.len() > MAX_STATE_BYTES {
            let e = format!("the table of {} open sessions of partition {partition} is {} bytes, more than a store document may hold ({MAX_STATE_BYTES}); it is not stored (lower max_groups)", table.len(), state.len());
            stats.script_error(m.name(), "", &e);
            continue;
        }
        out.push(PaneRecord {
            metric: sessions_key(m),
            pane_start: SESSIONS_PANE,
            partition: *partition,
            offset: table.offset,
            state: StateJson::stored(state),
        });
    }
    // Panes no event can reach any more are only needed in the store.
    let reach = m.window.size_ms + m.config.lateness.as_millis() as i64 + m.window.slide_ms;
    let newest: HashMap<i32, i64> = st.watermarks.keys().map(|p| (*p, st.newest(*p))).collect();
    st.cells.retain(|(pane, partition), c| {
        c.dirty
            || *pane
                >= newest
                    .get(partition)
                    .map_or(i64::MIN, |w| *w)
                    .saturating_sub(reach)
    });
    out
}

#[cfg(test)]
pub(super) mod tests;
