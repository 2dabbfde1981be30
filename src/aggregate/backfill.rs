//! Backfill: a metric that is added or redefined while the pipeline runs (or that is new to a
//! partition at start) is filled from history at once, instead of starting empty.
//!
//! The seam: when a metric first meets a partition with no state of its own there, the live
//! aggregator records a *seam* for (metric, partition): the position of the last event it will
//! not apply (the Kafka offset just before the first one it applies; on the embedded queue, the
//! newest raw row stored so far). Live counts only what follows the seam; a backfill reads the
//! history (the Kafka log, or the embedded store's raw rows) from the oldest pane the window
//! needs up to the seam and writes its partials under a partition id of its own
//! ([`backfill_partition`]). Readers merge every partition of a pane, so the window is the union
//! of the two, each event in exactly one.
//!
//! Crash safety follows from the live path's bookkeeping: the seam record is written with the
//! first partials after it (not after them, as watermarks are), the backfill's partials carry the
//! position they include, like live ones, and its progress is written after its partials, so a
//! restart resumes the backfill from its last progress, skipping whatever a partial already
//! holds.

use super::{Aggregator, Metric, MetricSet, TimeMode};
use crate::store::{PaneRecord, StateJson, StateStore};
use crate::telemetry::Stats;
use crate::transport::{Batch, History, HistoryRead};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::keys::backfill_partition;
use super::keys::{seam_key, SEAM_PANE};

/// What a seam record holds besides its position (the record's offset).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Seam {
    /// Events at or after this time are backfilled: the start of the oldest pane the metric's
    /// window needed when the seam was made.
    pub since: i64,
    /// The first position the backfill reads (none: not looked up yet).
    pub start: Option<i64>,
    /// Every position up to this one is backfilled (none: nothing yet).
    pub done: Option<i64>,
    /// The history began after `since` (retention): the time of the oldest event it held.
    pub held_from: Option<i64>,
}

impl Seam {
    /// True when every position up to the seam `at` is backfilled.
    fn complete(&self, at: i64) -> bool {
        match (self.start, self.done) {
            (Some(start), _) if start > at => true,
            (_, Some(done)) => done >= at,
            _ => false,
        }
    }

    /// Positions backfilled and to backfill in all (0 of 1 while the start is unknown).
    fn counts(&self, at: i64) -> (i64, i64) {
        match self.start {
            None => (0, 1),
            Some(start) => {
                let total = (at - start + 1).max(0);
                let done = self.done.map_or(0, |d| (d - start + 1).clamp(0, total));
                (done, total)
            }
        }
    }

    fn record(&self, m: &Metric, partition: i32, at: i64) -> PaneRecord {
        PaneRecord {
            metric: seam_key(m),
            pane_start: SEAM_PANE,
            partition,
            offset: at,
            state: StateJson::encode(self),
        }
    }
}

/// How far a metric's backfill has come, from its stored seams: `None` when there is nothing
/// left to fill (or nothing to fill at all), else the share done, 0 to 1.
pub async fn progress(m: &Metric, store: &dyn StateStore) -> anyhow::Result<Option<f64>> {
    Ok(progress_of(
        &store
            .load_panes(&seam_key(m), SEAM_PANE, SEAM_PANE + 1, None)
            .await?,
    ))
}

/// [`progress`] from the metric's seam records, already read.
pub(super) fn progress_of(records: &[PaneRecord]) -> Option<f64> {
    let seams: Vec<(Seam, i64)> = records
        .iter()
        .filter_map(|r| Some((r.state.parse().ok()?, r.offset)))
        .collect();
    if seams.iter().all(|(s, at)| s.complete(*at)) {
        return None;
    }
    let (done, total) = seams
        .iter()
        .map(|(s, at)| s.counts(*at))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    Some(if total == 0 {
        0.0
    } else {
        done as f64 / total as f64
    })
}

/// The seam a metric gets on a partition it has no state on, at position `at` (`None`: there is
/// nothing before it, or the metric cannot be recomputed from history).
pub(super) fn new_seam(m: &Metric, partition: i32, at: i64, now_ms: i64) -> Option<PaneRecord> {
    // Processing time is the time an event was consumed: history cannot say what it was.
    if at < 0 || m.config.time == TimeMode::Processing {
        return None;
    }
    let since = m.window.range_at(now_ms).0;
    Some(
        Seam {
            since,
            start: None,
            done: None,
            held_from: None,
        }
        .record(m, partition, at),
    )
}

/// One (metric, partition) to fill up to its seam.
pub struct Job {
    /// The metric alone, as it was when the seam was made.
    set: Arc<MetricSet>,
    partition: i32,
    at: i64,
    seam: Seam,
    /// The backfill's own aggregation state, kept between steps.
    aggregator: Option<Aggregator>,
    events: u64,
    started: Option<Instant>,
    logged: Instant,
    /// The history lost its oldest events (retention): its first event read says how much.
    check_held: bool,
}

impl Job {
    /// A job for a seam record of `set.metrics()[index]` read from the store or just made; none
    /// when it is complete.
    pub(super) fn of(
        set: &MetricSet,
        index: usize,
        record: &PaneRecord,
    ) -> anyhow::Result<Option<Job>> {
        let seam: Seam = record.state.parse().map_err(|e| {
            anyhow::anyhow!(
                "metric {}: a stored backfill seam is malformed: {e}",
                set.metrics()[index].name()
            )
        })?;
        if seam.complete(record.offset) {
            return Ok(None);
        }
        Ok(Some(Job {
            set: Arc::new(set.only(index)),
            partition: record.partition,
            at: record.offset,
            seam,
            aggregator: None,
            events: 0,
            started: None,
            logged: Instant::now(),
            check_held: false,
        }))
    }

    fn metric(&self) -> &Metric {
        &self.set.metrics()[0]
    }

    /// The state key of the metric it fills.
    pub(super) fn state_key(&self) -> &str {
        self.metric().state_key()
    }
}

/// What the backfill task is told by the live aggregator.
pub(super) enum Command {
    /// Boxed: a job is far larger than the other commands.
    Start(Box<Job>),
    /// The partition moved to another consumer, which goes on with its backfills.
    Stop(i32),
    /// A reload: only metrics with these state keys remain.
    Keep(HashSet<String>),
}

/// `[backfill]` section: how a backfill shares the machine with live traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// Fill new and redefined metrics from history (off: they start empty, as before).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The share of the time a backfill may work (it rests the rest), 0 to 1.
    #[serde(default = "default_share")]
    pub share: f64,
    /// Events read and aggregated in one step; between steps live batches go first.
    #[serde(
        default = "default_chunk",
        deserialize_with = "crate::base::de::number"
    )]
    pub chunk: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            enabled: default_enabled(),
            share: default_share(),
            chunk: default_chunk(),
        }
    }
}

fn default_enabled() -> bool {
    true
}
fn default_share() -> f64 {
    0.5
}
fn default_chunk() -> usize {
    5_000
}

impl BackfillConfig {
    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Some(format!(
                "backfill.share must be above 0 and at most 1, not {}",
                self.share
            ));
        }
        (self.chunk == 0).then(|| "backfill.chunk must be at least 1".to_string())
    }
}

/// Screens a batch read from history as the live consumer screens its batches (validation), so
/// both count the same events.
pub type Screen = Arc<dyn Fn(&mut Batch) + Send + Sync>;

/// The live aggregator's handle on the backfill task.
#[derive(Clone)]
pub struct Backfiller {
    tx: mpsc::UnboundedSender<Command>,
    /// Where the task reads: the aggregator asks it where the embedded queue's seam lies.
    pub(super) history: Arc<dyn History>,
}

impl Backfiller {
    pub(super) fn send(&self, command: Command) {
        // The task ends only at stop; then nothing is left to fill in this process.
        let _ = self.tx.send(command);
    }
}

/// Starts the backfill task, reading `history` and writing to `store`, until `stop`.
pub fn spawn(
    history: Arc<dyn History>,
    store: Arc<dyn StateStore>,
    screen: Screen,
    config: BackfillConfig,
    stop: CancellationToken,
) -> (Backfiller, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = Task {
        history: history.clone(),
        store,
        screen,
        config,
        queue: VecDeque::new(),
    };
    (Backfiller { tx, history }, tokio::spawn(task.run(rx, stop)))
}

struct Task {
    history: Arc<dyn History>,
    store: Arc<dyn StateStore>,
    screen: Screen,
    config: BackfillConfig,
    queue: VecDeque<Job>,
}

/// What one step of a backfill came to.
enum Step {
    Done,
    /// It read and stored a chunk; it rests before the next.
    Worked,
    /// Nothing arrived from the history in time: no work done, no rest owed.
    Waited,
}

/// The longest rest after one step.
const MAX_REST: Duration = Duration::from_secs(2);

/// How long a failed step waits before the next try.
const RETRY_WAIT: Duration = Duration::from_secs(1);

/// How often a running backfill logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, stop: CancellationToken) {
        loop {
            if self.queue.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    command = rx.recv() => match command {
                        Some(c) => self.take(c),
                        None => return,
                    },
                }
            }
            while let Ok(c) = rx.try_recv() {
                self.take(c);
            }
            // Round robin: every metric and partition makes progress together.
            let Some(mut job) = self.queue.pop_front() else {
                continue;
            };
            let began = Instant::now();
            let rest = match self.step(&mut job).await {
                Ok(Step::Done) => {
                    let took = job.started.map_or(Duration::ZERO, |s| s.elapsed());
                    tracing::info!(metric = job.metric().name(), partition = job.partition, events = job.events, took = ?took, "backfill done");
                    None
                }
                Ok(Step::Worked) => {
                    // Work `share` of the time: rest in proportion to the step just taken (a step
                    // slowed by the broker, a first connection say, rests no longer than MAX_REST).
                    let worked = began.elapsed().as_secs_f64();
                    self.queue.push_back(job);
                    Some(
                        Duration::from_secs_f64(
                            worked * (1.0 - self.config.share) / self.config.share,
                        )
                        .min(MAX_REST),
                    )
                }
                Ok(Step::Waited) => {
                    self.queue.push_back(job);
                    None
                }
                Err(e) => {
                    tracing::warn!(metric = job.metric().name(), partition = job.partition, error = %format!("{e:#}"), "backfill step failed; trying again");
                    job.aggregator = None; // its state may be ahead of the store: load it again
                    self.queue.push_back(job);
                    Some(RETRY_WAIT)
                }
            };
            if let Some(rest) = rest.filter(|r| !r.is_zero()) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(rest) => {}
                }
            }
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Start(job) => {
                // A job made again (a rebalance gave the partition back) replaces the old one.
                self.queue.retain(|j| {
                    !(j.partition == job.partition && j.state_key() == job.state_key())
                });
                tracing::info!(
                    metric = job.metric().name(),
                    partition = job.partition,
                    upto = job.at,
                    "backfill starts"
                );
                self.queue.push_back(*job);
            }
            Command::Stop(partition) => self.queue.retain(|j| j.partition != partition),
            Command::Keep(keys) => self.queue.retain(|j| keys.contains(j.state_key())),
        }
    }

    /// One chunk of `job`.
    async fn step(&self, job: &mut Job) -> anyhow::Result<Step> {
        job.started.get_or_insert_with(Instant::now);
        let start = match job.seam.start {
            Some(s) => s,
            None => {
                let (start, oldest) = self.history.start(job.partition, job.seam.since).await?;
                job.seam.start = Some(start);
                job.check_held = oldest;
                self.store
                    .write_panes(&[job.seam.record(job.metric(), job.partition, job.at)])
                    .await?;
                start
            }
        };
        if job.seam.complete(job.at) {
            return Ok(Step::Done);
        }
        let after = job.seam.done.unwrap_or(start - 1);
        let read = self
            .history
            .read(job.partition, after, job.at, self.config.chunk)
            .await?;
        if read.through <= after {
            return Ok(Step::Waited); // nothing arrived in time; the next step asks again
        }
        self.absorb(job, read).await?;
        if job.logged.elapsed() >= LOG_EVERY {
            job.logged = Instant::now();
            let (done, total) = job.seam.counts(job.at);
            tracing::info!(
                metric = job.metric().name(),
                partition = job.partition,
                done = format!("{:.0}%", 100.0 * done as f64 / total.max(1) as f64),
                events = job.events,
                "backfilling"
            );
        }
        Ok(if job.seam.complete(job.at) {
            Step::Done
        } else {
            Step::Worked
        })
    }

    /// Aggregates what was read into the backfill's partials, stores them, then its progress.
    async fn absorb(&self, job: &mut Job, read: HistoryRead) -> anyhow::Result<()> {
        let since = job.seam.since;
        if std::mem::take(&mut job.check_held) {
            let first = read.events.first().map_or(i64::MIN, |(_, e)| e.time_ms());
            if first > since + job.metric().window.slide_ms {
                job.seam.held_from = Some(first);
                let size = job.metric().window.size_ms;
                let filled =
                    (100.0 * (since + size - first).max(0) as f64 / size as f64).min(100.0);
                tracing::warn!(
                    metric = job.metric().name(), partition = job.partition,
                    "the history no longer holds the start of the window (retention): it begins {} s after it, so the backfill fills {filled:.0}% of the window",
                    (first - since) / 1000
                );
            }
        }
        let bf = backfill_partition(job.partition);
        let mut batch = Batch::default();
        for (at, e) in read
            .events
            .into_iter()
            .filter(|(_, e)| e.time_ms() >= since)
        {
            batch.events.push(e);
            batch.sources.push((bf, at));
        }
        (self.screen)(&mut batch);
        if !batch.events.is_empty() {
            let aggregator = job
                .aggregator
                .get_or_insert_with(|| Aggregator::new(job.set.clone(), Stats::new()));
            job.set.derive(&mut batch.events, aggregator.stats());
            // Late events were dead-lettered by the live consumer; here they are only left out.
            let absorbed = aggregator.absorb(&batch, &*self.store).await?;
            self.store.write_panes(&absorbed.panes).await?;
            job.events += batch.events.len() as u64;
        }
        job.seam.done = Some(read.through);
        self.store
            .write_panes(&[job.seam.record(job.metric(), job.partition, job.at)])
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seam_counts_what_is_filled_and_knows_when_it_is_done() {
        let mut seam = Seam {
            since: 0,
            start: None,
            done: None,
            held_from: None,
        };
        assert_eq!(seam.counts(99), (0, 1), "the start is not looked up yet");
        assert!(!seam.complete(99));
        seam.start = Some(50);
        assert_eq!(seam.counts(99), (0, 50));
        seam.done = Some(74);
        assert_eq!(seam.counts(99), (25, 50));
        seam.done = Some(99);
        assert!(seam.complete(99));
        let empty = Seam {
            start: Some(100),
            done: None,
            ..seam
        };
        assert!(empty.complete(99), "nothing between the start and the seam");
    }
}
