//! The consuming side, the same for every transport: take a batch from the [`Subscriber`], write
//! it to the [`Store`], and only then acknowledge it, so a crash at any point replays
//! events instead of losing them (and the store's unique event_id absorbs the replay).
//!
//! Reading the next batch overlaps with writing the current one; acknowledgements still happen
//! in batch order, because one task writes and acknowledges.

mod validate;

pub use validate::Validation;

use crate::aggregate::{Aggregator, MetricSet};
use crate::base::{de, Backoff, Workers};
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Record;
use crate::store::{Encoded, PaneRecord, Store};
use crate::telemetry::Stats;
use crate::transport::{Acknowledge, Batch, Checkpoint, Poll, Subscriber, NO_PARTITION};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `[consumer]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Most events written to the store in one batch.
    #[serde(default = "default_batch_size", deserialize_with = "de::number")]
    pub batch_size: usize,
    /// The longest a batch waits to fill before what there is gets written. A batch goes sooner
    /// when the transport has nothing more at hand, so this bounds latency only under a trickle.
    #[serde(default = "default_max_wait", deserialize_with = "de::duration")]
    pub max_wait: Duration,
    /// Batches read ahead while the store writes the current one.
    #[serde(default = "default_read_ahead", deserialize_with = "de::number")]
    pub read_ahead: usize,
    /// While batches wait to be written (a backlog), metric partials are written, and the
    /// batches acknowledged, at most this often instead of after every batch: each write
    /// re-encodes every changed pane whole, a cost per batch, not per event. A consumer that has
    /// caught up writes them after every batch. `0s`: always after every batch.
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "de::duration"
    )]
    pub checkpoint_interval: Duration,
    /// How often the open sessions of session-window metrics are stored: each partition's
    /// table of them is rewritten whole, so not with every checkpoint. Batches are
    /// acknowledged when it is, so a crash replays at most this much (and the replay rebuilds
    /// the sessions exactly; partials stored meanwhile skip what they hold). Without session
    /// metrics, nothing waits.
    #[serde(
        default = "default_session_state_interval",
        deserialize_with = "de::duration"
    )]
    pub session_state_interval: Duration,
    /// Threads that decode each batch (where the transport carries bytes), encode it for the
    /// store in parts, apply it to the metrics and encode their partials (the metrics split
    /// between them); fetching and writing run beside them on the runtime's threads [default:
    /// the cores this process may use].
    #[serde(default = "default_workers", deserialize_with = "de::number")]
    pub workers: usize,
    /// What a message must be to count as an event; the rest is dead-lettered.
    #[serde(default)]
    pub validation: Validation,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            batch_size: default_batch_size(),
            max_wait: default_max_wait(),
            read_ahead: default_read_ahead(),
            checkpoint_interval: default_checkpoint_interval(),
            session_state_interval: default_session_state_interval(),
            workers: default_workers(),
            validation: Validation::default(),
        }
    }
}

fn default_batch_size() -> usize {
    2000
}
fn default_max_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_read_ahead() -> usize {
    2
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_session_state_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ConsumerConfig {
    /// How a Kafka subscriber cuts the stream into batches for this consumer.
    pub fn batching(&self) -> crate::transport::kafka::Batching {
        crate::transport::kafka::Batching {
            batch_size: self.batch_size,
            max_wait: self.max_wait,
        }
    }

    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        match (self.batch_size, self.workers) {
            (0, _) => Some("consumer.batch_size must be at least 1".to_string()),
            (_, 0) => Some("consumer.workers must be at least 1".to_string()),
            _ => None,
        }
    }
}

/// When the consumer stops.
#[derive(Clone)]
pub struct StopWhen {
    /// Stop now: finish the batches already read, acknowledge, commit.
    pub stop: CancellationToken,
    /// Stop once nothing arrived for this long, counted only after `producers_done` fires.
    pub idle: Option<Duration>,
    pub producers_done: CancellationToken,
    /// Finish up: read until caught up and idle for a moment, store, commit, return (a reload
    /// is moving the consumer to new settings; whatever is left is read by the next one).
    pub drain: CancellationToken,
}

/// How long a consumer that has not caught up waits for data before idleness ends it.
const NOT_CAUGHT_UP_IDLE: Duration = Duration::from_secs(30);

/// How long a draining consumer waits for more after catching up.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// How often the reader checks for stop and idleness while nothing arrives.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// Runs until the transport closes or `until` says stop; then commits and returns.
pub async fn run(
    mut subscriber: Box<dyn Subscriber>,
    store: Arc<dyn Store>,
    aggregator: Option<Aggregator>,
    mut metrics: Option<tokio::sync::watch::Receiver<Arc<MetricSet>>>,
    stats: Arc<Stats>,
    config: &ConsumerConfig,
    until: StopWhen,
) -> anyhow::Result<()> {
    let acknowledger = subscriber.acknowledger();
    // The CPU-heavy work of both tasks below runs on these threads, side by side.
    let workers = Workers::new(config.workers);
    subscriber.use_workers(workers.clone());
    let mut aggregator = aggregator.map(|a| a.with_workers(workers.clone()));
    // Each batch travels with its raw events already encoded for the store: the reader encodes
    // the next batch while the writer writes the current one.
    let (tx, mut rx) = mpsc::channel::<(Batch, Encoded)>(config.read_ahead.max(1));
    let encoder = store.clone();
    let reader_until = until.clone();
    let stats_reader = stats.clone();
    let validation = config.validation.clone();
    // Derived fields are set here, before the raw records are encoded for the store, with the
    // newest metric set's derivations (a reload reaches the batches read after it).
    let mut derivations = Derivations::new(aggregator.as_ref(), metrics.as_ref());
    let reader_workers = workers.clone();
    let reader = tokio::spawn(async move {
        let mut last_data = Instant::now();
        let mut producers_done_at = None;
        let result = loop {
            if reader_until.stop.is_cancelled() {
                break Ok(());
            }
            match subscriber.poll_batch(POLL_WAIT).await {
                Ok(Poll::Batch(mut batch)) => {
                    last_data = Instant::now();
                    let (batch, encoded) = reader_workers.run(|parallel| {
                        validation.apply(&mut batch);
                        derivations.apply(&mut batch.events, &stats_reader);
                        // Read as of now, before encoding, as the latency figures count it.
                        stats_reader.read(batch.events.iter().map(Record::time_ms));
                        let parts = if parallel {
                            reader_workers.threads()
                        } else {
                            1
                        };
                        let encoded = Encoded::in_parts(&*encoder, &batch.events, parts);
                        (batch, encoded)
                    });
                    if tx.send((batch, encoded)).await.is_err() {
                        break Ok(()); // the writer failed; it reports why
                    }
                }
                Ok(Poll::Empty) => {
                    // Silence means "done" only once the consumer has read all there is: a group
                    // join or a slow broker is not idleness. A consumer that never catches up
                    // (no partitions, broker gone) still ends, later.
                    let producers_done = reader_until.producers_done.is_cancelled();
                    if producers_done {
                        producers_done_at.get_or_insert_with(Instant::now);
                    }
                    // "At the end" counts only as measured after the last data and after the
                    // producers finished: an earlier measurement may predate events still on
                    // their way (a producer resending after a broker restart).
                    let since = producers_done_at.map_or(last_data, |done| done.max(last_data));
                    let caught_up = subscriber.caught_up(since.into_std());
                    let limit = |idle: Duration| {
                        if caught_up {
                            idle
                        } else {
                            idle.max(NOT_CAUGHT_UP_IDLE)
                        }
                    };
                    let draining = reader_until.drain.is_cancelled();
                    let idle = if draining {
                        Some(DRAIN_IDLE)
                    } else {
                        reader_until.idle
                    };
                    let idle_over = idle.is_some_and(|idle| {
                        (draining || producers_done) && last_data.elapsed() >= limit(idle)
                    });
                    if idle_over {
                        break Ok(());
                    }
                }
                Ok(Poll::Closed) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        (subscriber, result)
    });

    let mut write_result = Ok(());
    let mut unsaved = Unsaved::default();
    while let Some((batch, encoded)) = rx.recv().await {
        // A reloaded metric set takes effect between batches, never inside one, and after a
        // checkpoint: the new set reloads partials from the store.
        let reload = aggregator.is_some()
            && metrics
                .as_mut()
                .is_some_and(|rx| rx.has_changed().unwrap_or(false));
        if reload {
            if let Err(e) = unsaved
                .checkpoint(
                    &*store,
                    aggregator.as_mut(),
                    &*acknowledger,
                    &stats,
                    &until.stop,
                    Tables::All,
                )
                .await
            {
                write_result = Err(e);
                break;
            }
        }
        if let (Some(agg), Some(rx), true) = (aggregator.as_mut(), metrics.as_mut(), reload) {
            agg.reconfigure(rx.borrow_and_update().clone());
        }
        if let Err(e) = store_batch(
            &*store,
            aggregator.as_mut(),
            &stats,
            &batch,
            encoded,
            &until.stop,
        )
        .await
        {
            write_result = Err(e);
            break;
        }
        unsaved.add(batch);
        // Caught up (nothing waiting): write now, so what was read shows at once. Behind: write
        // at the interval, so a backlog is not slowed by re-encoding the same panes per batch.
        if rx.is_empty()
            || unsaved.since.elapsed() >= config.checkpoint_interval
            || aggregator.is_none()
        {
            if let Err(e) = unsaved
                .checkpoint(
                    &*store,
                    aggregator.as_mut(),
                    &*acknowledger,
                    &stats,
                    &until.stop,
                    Tables::WhenDue,
                )
                .await
            {
                write_result = Err(e);
                break;
            }
        }
    }
    if write_result.is_ok() {
        write_result = unsaved
            .checkpoint(
                &*store,
                aggregator.as_mut(),
                &*acknowledger,
                &stats,
                &until.stop,
                Tables::All,
            )
            .await;
    }
    // Batches still queued were read but not stored: they are not acknowledged, so they replay.
    drop(rx);
    let (subscriber, read_result) = reader.await?;
    let close_result = subscriber.close().await;
    write_result.and(read_result).and(close_result)
}

/// Whether a checkpoint stores session metrics' tables of open sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tables {
    /// All of them (before a reload, which reads state back from the store, and at the end).
    All,
    /// When `session_state_interval` has passed since they last were.
    WhenDue,
}

/// Batches whose raw events are stored but whose metric partials, or the session tables that
/// go with them, are not yet: they are acknowledged by the next complete
/// [`Unsaved::checkpoint`].
struct Unsaved {
    /// Each batch's position, and its events' times (for the latency figures; taken once its
    /// partials are stored); not the events, which a backlog would otherwise hold a second's
    /// worth of.
    batches: Vec<(Checkpoint, Vec<i64>)>,
    /// When the last checkpoint was written.
    since: Instant,
}

impl Default for Unsaved {
    fn default() -> Self {
        Unsaved {
            batches: Vec::new(),
            since: Instant::now(),
        }
    }
}

impl Unsaved {
    fn add(&mut self, batch: Batch) {
        let times = batch.events.iter().map(Record::time_ms).collect();
        self.batches.push((batch.checkpoint, times));
    }

    /// Writes the partials changed since the last checkpoint, then acknowledges the batches
    /// they include, in order, unless session tables wait for their interval (then the
    /// batches wait with them). A crash before the write replays those batches: their raw
    /// events are stored once (unique id), and the stored partials, older, count them once.
    async fn checkpoint(
        &mut self,
        store: &dyn Store,
        aggregator: Option<&mut Aggregator>,
        acknowledger: &dyn Acknowledge,
        stats: &Stats,
        stop: &CancellationToken,
        tables: Tables,
    ) -> anyhow::Result<()> {
        if self.batches.is_empty() {
            return Ok(());
        }
        let events = self.batches.iter().map(|b| b.1.len()).sum();
        let mut complete = true;
        if let Some(agg) = aggregator {
            let panes = match tables {
                Tables::All => agg.checkpoint(),
                Tables::WhenDue => {
                    let (panes, all) = agg.checkpoint_due();
                    complete = all;
                    panes
                }
            };
            with_retry(stats, stop, events, || store.write_panes(&panes)).await?;
            stats.bytes_written(0, panes.iter().map(PaneRecord::bytes).sum());
            agg.stored();
        }
        // Their metrics show them now, acknowledged or not.
        for (_, times) in &mut self.batches {
            stats.visible(std::mem::take(times).into_iter());
        }
        if complete {
            for (checkpoint, _) in self.batches.drain(..) {
                acknowledger.acknowledge(&checkpoint);
            }
        }
        stats.checkpointed();
        self.since = Instant::now();
        Ok(())
    }
}

/// The reader's view of the derivations: the running metric set's, following reloads.
struct Derivations {
    set: Option<Arc<MetricSet>>,
    reloads: Option<tokio::sync::watch::Receiver<Arc<MetricSet>>>,
}

impl Derivations {
    fn new(
        aggregator: Option<&Aggregator>,
        reloads: Option<&tokio::sync::watch::Receiver<Arc<MetricSet>>>,
    ) -> Self {
        Derivations {
            set: aggregator.map(|a| a.set().clone()),
            reloads: reloads.cloned(),
        }
    }

    fn apply(&mut self, events: &mut [Record], stats: &Stats) {
        if let Some(rx) = self.reloads.as_mut() {
            if rx.has_changed().unwrap_or(false) {
                self.set = Some(rx.borrow_and_update().clone());
            }
        }
        if let Some(set) = &self.set {
            set.derive(events, stats);
        }
    }
}

/// Stores one batch's raw events and dead letters for what could not be used, and applies it to
/// the metrics; its partials are written by the next checkpoint.
async fn store_batch(
    store: &dyn Store,
    aggregator: Option<&mut Aggregator>,
    stats: &Stats,
    batch: &Batch,
    encoded: Encoded,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    // What the batch's new partitions hold is read first: applying it then touches no store,
    // and a backfill seam taken from the raw rows sees them as they were before this batch.
    let loaded = match aggregator.as_deref() {
        Some(agg) => {
            Some(with_retry(stats, stop, batch.events.len(), || agg.load(batch, store)).await?)
        }
        None => None,
    };
    stats.bytes_written(encoded.bytes(), 0);
    // The first attempt sends the encoded batch; a retry encodes again.
    let mut encoded = Some(encoded);
    let raw = with_retry(stats, stop, batch.events.len(), || match encoded.take() {
        Some(e) => store.insert_encoded(&batch.events, e),
        None => store.insert_events(&batch.events),
    });
    // Inserting raw events and applying them to the metrics are independent (each is
    // idempotent on replay), so the metrics are counted while the store writes.
    let partials = async {
        let (Some(agg), Some(mut loaded)) = (aggregator, loaded) else {
            return anyhow::Ok(Vec::new());
        };
        // A stored state that installs badly is read again and retried, as a store error is.
        let mut retry = StoreRetry::new(stats, stop, batch.events.len());
        loop {
            match agg.ingest(batch, loaded) {
                Ok(late) => break Ok(late),
                Err(e) => retry.failed(e).await?,
            }
            loaded = loop {
                match agg.load(batch, store).await {
                    Ok(l) => break l,
                    Err(e) => retry.failed(e).await?,
                }
            };
        }
    };
    let (outcome, late) = tokio::join!(raw, partials);
    let outcome = outcome?;
    let late = late?;
    // What the store refused for good is kept as dead letters, so the batch can be acknowledged.
    let refused = outcome.rejected.iter().map(|r| {
        let at = batch
            .sources
            .get(r.index)
            .copied()
            .unwrap_or((NO_PARTITION, -1));
        let e = &batch.events[r.index];
        DeadLetter::of_record(
            format!("store:{}", e.id()),
            Reason::StoreRejected,
            r.reason.clone(),
            at,
            e,
        )
    });
    let refused: Vec<DeadLetter> = refused.collect();
    let collided = match outcome.duplicates.is_empty() {
        true => Vec::new(),
        false => {
            with_retry(stats, stop, batch.events.len(), || {
                collisions(store, batch, &outcome.duplicates)
            })
            .await?
        }
    };
    if !batch.dead.is_empty() || !late.is_empty() || !refused.is_empty() || !collided.is_empty() {
        let dead: Vec<_> = batch
            .dead
            .iter()
            .cloned()
            .chain(late)
            .chain(refused)
            .chain(collided.iter().cloned())
            .collect();
        with_retry(stats, stop, batch.events.len(), || {
            store.write_dead_letters(&dead)
        })
        .await?;
        for d in &dead {
            stats.dead_lettered(d);
        }
    }
    stats.stored(
        outcome.inserted,
        (outcome.duplicates.len() - collided.len()) as u64,
    );
    Ok(())
}

/// The records at `duplicates` (positions in `batch` whose id the store already held) that are
/// not replays: the stored record with that id says something else. Each becomes a
/// `duplicate_id` dead letter, so the record the raw store skipped is kept, and said. A replay
/// reads back equal and is only skipped.
async fn collisions(
    store: &dyn Store,
    batch: &Batch,
    duplicates: &[usize],
) -> anyhow::Result<Vec<DeadLetter>> {
    let ids: Vec<&str> = duplicates.iter().map(|i| batch.events[*i].id()).collect();
    let stored = store.stored_events(&ids).await?;
    let by_id: std::collections::HashMap<&str, &Record> =
        stored.iter().map(|r| (r.id(), r)).collect();
    let mut out = Vec::new();
    for &i in duplicates {
        let e = &batch.events[i];
        if by_id.get(e.id()).is_some_and(|s| !s.same_content(e)) {
            let at = batch.sources.get(i).copied().unwrap_or((NO_PARTITION, -1));
            let id = DeadLetter::record_id("duplicate_id", e, at);
            tracing::warn!(event_id = e.id(), partition = at.0, offset = at.1, "a record reuses an id stored with other content: the store keeps the first, the metrics count both, and this one is a duplicate_id dead letter");
            let detail = format!("event id {:?} is already stored with other content; the raw store keeps the first record, metrics count both, and this is the second", e.id());
            out.push(DeadLetter::of_record(
                id,
                Reason::DuplicateId,
                detail,
                at,
                e,
            ));
        }
    }
    Ok(out)
}

/// Retrying store operations while the store is unavailable: doubling waits up to 10 s, each
/// failure counted and logged. Gives up only when told to stop, leaving the batch
/// unacknowledged so it is consumed again after a restart.
struct StoreRetry<'a> {
    stats: &'a Stats,
    stop: &'a CancellationToken,
    /// Events in the batch, for the error at stop.
    events: usize,
    backoff: Backoff,
}

impl<'a> StoreRetry<'a> {
    fn new(stats: &'a Stats, stop: &'a CancellationToken, events: usize) -> Self {
        StoreRetry {
            stats,
            stop,
            events,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10), None),
        }
    }

    /// Reports a failure and waits before the next attempt; an error means stop.
    async fn failed(&mut self, e: anyhow::Error) -> anyhow::Result<()> {
        let wait = self.backoff.next_wait().unwrap_or(Duration::from_secs(10));
        self.stats
            .store_retry(self.backoff.retries(), wait, &format!("{e:#}"));
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.stop.cancelled() => Err(e.context(format!(
                "stopped while the store was failing; a batch of {} events was not acknowledged and will be consumed again",
                self.events
            ))),
        }
    }
}

/// Runs a store operation until it succeeds, through [`StoreRetry`].
async fn with_retry<T, F, Fut>(
    stats: &Stats,
    stop: &CancellationToken,
    events: usize,
    mut op: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut retry = StoreRetry::new(stats, stop, events);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => retry.failed(e).await?,
        }
    }
}
