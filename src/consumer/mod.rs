//! The consuming side, the same for every transport: take a batch from the [`Subscriber`], write
//! it to the [`EventStore`], and only then acknowledge it, so a crash at any point replays
//! events instead of losing them (and the store's unique event_id absorbs the replay).
//!
//! Reading the next batch overlaps with writing the current one; acknowledgements still happen
//! in batch order, because one task writes and acknowledges.

mod validate;

pub use validate::Validation;

use crate::event::Record;
use crate::aggregate::{Aggregator, MetricSet};
use crate::base::{de, Backoff};
use crate::store::EventStore;
use crate::telemetry::Stats;
use crate::dead_letter::{DeadLetter, Reason};
use crate::transport::{Batch, Poll, Subscriber, NO_PARTITION};
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

impl ConsumerConfig {
    /// How a Kafka subscriber cuts the stream into batches for this consumer.
    pub fn batching(&self) -> crate::transport::kafka::Batching {
        crate::transport::kafka::Batching { batch_size: self.batch_size, max_wait: self.max_wait, max_event_bytes: self.validation.max_event_bytes }
    }

    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        (self.batch_size == 0).then(|| "consumer.batch_size must be at least 1".to_string())
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
    store: Arc<dyn EventStore>,
    mut aggregator: Option<Aggregator>,
    mut metrics: Option<tokio::sync::watch::Receiver<Arc<MetricSet>>>,
    stats: Arc<Stats>,
    config: &ConsumerConfig,
    until: StopWhen,
) -> anyhow::Result<()> {
    let acknowledger = subscriber.acknowledger();
    let (tx, mut rx) = mpsc::channel::<Batch>(config.read_ahead.max(1));
    let reader_until = until.clone();
    let stats_reader = stats.clone();
    let validation = config.validation.clone();
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
                    validation.apply(&mut batch);
                    stats_reader.read(batch.events.iter().map(Record::time_ms));
                    if tx.send(batch).await.is_err() {
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
                    let limit = |idle: Duration| if caught_up { idle } else { idle.max(NOT_CAUGHT_UP_IDLE) };
                    let draining = reader_until.drain.is_cancelled();
                    let idle = if draining { Some(DRAIN_IDLE) } else { reader_until.idle };
                    let idle_over = idle.is_some_and(|idle| (draining || producers_done) && last_data.elapsed() >= limit(idle));
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
    while let Some(batch) = rx.recv().await {
        // A reloaded metric set takes effect between batches, never inside one.
        if let (Some(agg), Some(rx)) = (aggregator.as_mut(), metrics.as_mut()) {
            if rx.has_changed().unwrap_or(false) {
                agg.reconfigure(rx.borrow_and_update().clone());
            }
        }
        match store_batch(&*store, aggregator.as_mut(), &stats, &batch, &until.stop).await {
            Ok(()) => {
                acknowledger.acknowledge(&batch.checkpoint);
                if let Some(agg) = aggregator.as_mut() {
                    agg.stored();
                }
            }
            Err(e) => {
                write_result = Err(e);
                break;
            }
        }
    }
    // Batches still queued were read but not stored: they are not acknowledged, so they replay.
    drop(rx);
    let (subscriber, read_result) = reader.await?;
    let close_result = subscriber.close().await;
    write_result.and(read_result).and(close_result)
}

/// Stores one batch: raw events, the metric partials that include them, and dead letters for
/// what could not be used. Only once all are durable may the batch be acknowledged.
async fn store_batch(
    store: &dyn EventStore,
    aggregator: Option<&mut Aggregator>,
    stats: &Stats,
    batch: &Batch,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let raw = with_retry(stats, stop, batch.events.len(), || store.insert_events(&batch.events));
    // A backfill seam taken from the raw rows must see them as they were before this batch.
    let partials_first = aggregator.as_ref().is_some_and(|a| a.absorbs_before_storing(batch));
    // Raw events and metric partials are independent writes (each is idempotent on replay), so
    // they go to the store at the same time; the batch is acknowledged once both are durable.
    let partials = async {
        let Some(agg) = aggregator else { return anyhow::Ok(Vec::new()) };
        let mut retry = StoreRetry::new(stats, stop, batch.events.len());
        let absorbed = loop {
            match agg.absorb(batch, store).await {
                Ok(a) => break a,
                Err(e) => retry.failed(e).await?,
            }
        };
        with_retry(stats, stop, batch.events.len(), || store.write_panes(&absorbed.panes)).await?;
        Ok(absorbed.late)
    };
    let (outcome, late) = match partials_first {
        true => {
            let late = partials.await;
            (raw.await, late)
        }
        false => tokio::join!(raw, partials),
    };
    let outcome = outcome?;
    let late = late?;
    // What the store refused for good is kept as dead letters, so the batch can be acknowledged.
    let refused = outcome.rejected.iter().map(|r| {
        let at = batch.sources.get(r.index).copied().unwrap_or((NO_PARTITION, -1));
        let e = &batch.events[r.index];
        DeadLetter::of_record(format!("store:{}", e.id()), Reason::StoreRejected, r.reason.clone(), at, e)
    });
    let refused: Vec<DeadLetter> = refused.collect();
    if !batch.dead.is_empty() || !late.is_empty() || !refused.is_empty() {
        let dead: Vec<_> = batch.dead.iter().cloned().chain(late).chain(refused).collect();
        with_retry(stats, stop, batch.events.len(), || store.write_dead_letters(&dead)).await?;
        for d in &dead {
            stats.dead_lettered(d);
        }
    }
    stats.stored(outcome.inserted, outcome.duplicates);
    stats.visible(batch.events.iter().map(Record::time_ms));
    Ok(())
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
        StoreRetry { stats, stop, events, backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10), None) }
    }

    /// Reports a failure and waits before the next attempt; an error means stop.
    async fn failed(&mut self, e: anyhow::Error) -> anyhow::Result<()> {
        let wait = self.backoff.next_wait().unwrap_or(Duration::from_secs(10));
        self.stats.store_retry(self.backoff.retries(), wait, &format!("{e:#}"));
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
async fn with_retry<T, F, Fut>(stats: &Stats, stop: &CancellationToken, events: usize, mut op: F) -> anyhow::Result<T>
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
