//! Moves batches of events from the generator to the consumer.
//!
//! Two transports share one pair of interfaces: [`Publisher`] on the generator side and
//! [`Subscriber`] on the consumer side. Everything after the subscriber (store, acknowledge,
//! commit) is the same code whichever transport is in use.

pub mod embedded;
pub mod file;
pub mod kafka;

use crate::dead_letter::DeadLetter;
use crate::event::Record;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Which transport carries a pipeline's events, as `kafka.bootstrap_servers` chose it
/// ([`kafka::KafkaConfig::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// A Kafka cluster (any Kafka-protocol broker).
    Kafka,
    /// The in-process queue between this process's generator and consumer.
    EmbeddedQueue,
    /// Records read from a file or stdin (`[source] file`, `runner run --source`); no generator.
    File,
}

/// The generator's side: takes batches, applying backpressure when the transport is full.
#[async_trait]
pub trait Publisher: Send {
    /// Hands one batch to the transport; waits (never drops) while the transport is full.
    async fn publish(&mut self, batch: Vec<Record>) -> anyhow::Result<()>;
    /// Waits until every published event is acknowledged by the transport, or `timeout` passes.
    async fn flush(&mut self, timeout: Duration) -> anyhow::Result<()>;
}

/// The consumer's side: yields decoded batches with the position that acknowledges them.
#[async_trait]
pub trait Subscriber: Send {
    /// Waits up to `wait` for events and returns what arrived (up to the configured batch size).
    async fn poll_batch(&mut self, wait: Duration) -> anyhow::Result<Poll>;
    /// Whether everything available has been read, as measured after `since` (a Kafka consumer
    /// holds partitions and the broker said it reached their end); an idle exit waits for it.
    /// An older measurement does not count: the broker may have been away since.
    fn caught_up(&self, _since: std::time::Instant) -> bool {
        true
    }
    /// Decode on these threads (the consumer's), where decoding is the subscriber's work.
    fn use_workers(&mut self, _workers: crate::base::Workers) {}
    /// A handle the store-writing side uses to acknowledge batches once they are durable.
    fn acknowledger(&self) -> Arc<dyn Acknowledge>;
    /// Commits what was acknowledged and leaves the group; called once, after the last ack.
    async fn close(self: Box<Self>) -> anyhow::Result<()>;
}

/// Where earlier events of the stream can be read again, for backfilling a metric that was added
/// or redefined: the Kafka log (by offset), or the embedded store's raw events (by row number).
/// Positions are per partition and grow with arrival; a reader never commits anything.
#[async_trait]
pub trait History: Send + Sync {
    /// The first position of `partition` whose events may be at or after `since_ms`, and whether
    /// it is the oldest the history still holds after losing older ones (retention): then the
    /// range may begin before what is left.
    async fn start(&self, partition: i32, since_ms: i64) -> anyhow::Result<(i64, bool)>;
    /// Events of `partition` at positions in `(after, upto]`, at most `limit`, in position order.
    async fn read(
        &self,
        partition: i32,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> anyhow::Result<HistoryRead>;
    /// The position of the newest event of `partition` now (below the first: none yet).
    async fn end(&self, partition: i32) -> anyhow::Result<i64>;
}

/// What one [`History::read`] returned.
#[derive(Default)]
pub struct HistoryRead {
    /// The events, each with its position.
    pub events: Vec<(i64, Record)>,
    /// Every position up to this one is read (events, and messages that are not events); equal
    /// to `after` when nothing arrived in time.
    pub through: i64,
}

/// What a poll returned.
pub enum Poll {
    Batch(Batch),
    /// Nothing arrived within the wait.
    Empty,
    /// The transport has ended (the embedded queue's producer is gone); nothing more will come.
    Closed,
}

/// The partition of events from a transport without offsets (the embedded queue).
pub const NO_PARTITION: i32 = -1;

/// Decoded events plus the transport position just past them.
#[derive(Default)]
pub struct Batch {
    pub events: Vec<Record>,
    /// (partition, offset) of each event, for transports that have them (empty otherwise).
    pub sources: Vec<(i32, i64)>,
    /// Partitions taken away from this consumer since the previous batch.
    pub revoked: Vec<i32>,
    /// Messages that are not usable events, to be stored as dead letters with the batch (their
    /// offsets are in the checkpoint: once stored, they are acknowledged like the events).
    pub dead: Vec<DeadLetter>,
    pub checkpoint: Checkpoint,
}

/// For each partition, the next offset to consume once this batch is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint(pub Vec<(i32, i64)>);

impl Checkpoint {
    /// Notes that `offset` of `partition` is in the batch.
    pub fn include(&mut self, partition: i32, offset: i64) {
        match self.0.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, next)) => *next = (*next).max(offset + 1),
            None => self.0.push((partition, offset + 1)),
        }
    }
}

/// Marks a checkpoint as durably stored, so the transport may commit it.
pub trait Acknowledge: Send + Sync {
    fn acknowledge(&self, checkpoint: &Checkpoint);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_keeps_the_next_offset_per_partition() {
        let mut c = Checkpoint::default();
        for (p, o) in [(0, 5), (1, 2), (0, 7), (0, 6)] {
            c.include(p, o);
        }
        assert_eq!(c.0, vec![(0, 8), (1, 3)]);
    }
}
