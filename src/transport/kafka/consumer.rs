//! Reads the topic in a consumer group and turns messages into decoded batches. Offsets are
//! stored only when the store-writing side acknowledges a batch; librdkafka commits stored
//! offsets in the background, on rebalance, and at close.

use super::KafkaConfig;
use crate::base::{map_each, Workers};
use crate::codec::Codec;
use crate::dead_letter::DeadLetter;
use crate::telemetry::{GroupMember, PartitionLag, Stats};
use crate::transport::{Acknowledge, Batch, Checkpoint, Poll, Subscriber};
use anyhow::Context;
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Logs assignments so an operator sees how partitions split across runners, and remembers
/// revoked partitions so the aggregation drops state another consumer now owns.
#[derive(Default)]
struct GroupEvents {
    revoked: std::sync::Mutex<Vec<i32>>,
    /// Partitions currently assigned to this consumer.
    assigned: std::sync::atomic::AtomicUsize,
}

impl ClientContext for GroupEvents {}

impl ConsumerContext for GroupEvents {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "kafka partitions assigned");
                self.assigned
                    .store(parts.len(), std::sync::atomic::Ordering::Relaxed);
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "kafka partitions revoked");
                self.revoked.lock().unwrap().extend(parts);
                self.assigned.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance failed"),
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "kafka offset commit failed; it is retried with the next commit")
            }
        }
    }
}

type GroupConsumer = StreamConsumer<GroupEvents>;

/// How the subscriber cuts the stream into batches (from `[consumer]`, which the pipeline owns).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most events in one batch.
    pub batch_size: usize,
    /// The longest a batch waits to fill.
    pub max_wait: Duration,
}

/// Consumer side of the Kafka transport.
pub struct KafkaSubscriber {
    consumer: Arc<GroupConsumer>,
    topic: String,
    batch_size: usize,
    max_wait: Duration,
    /// What the messages are written in, and hold.
    codec: Codec,
    stats: Arc<Stats>,
    /// The last lag the broker answered for (none yet; not renewed while it is away).
    lag: LagReading,
    /// Stops the lag sampler at close.
    sampler: tokio_util::sync::CancellationToken,
    sampler_task: tokio::task::JoinHandle<()>,
    /// With more than one thread, a batch's messages are gathered as they arrive and decoded
    /// side by side on these; with one, each is decoded as it arrives (no copy).
    workers: Workers,
}

/// A pause this long between messages means the fetched data has all been read.
const FETCH_GAP: Duration = Duration::from_millis(2);

/// How often the consumer's lag per partition is measured.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// How long one end-offset request may take before the measurement counts as failed.
const END_OFFSET_TIMEOUT: Duration = Duration::from_secs(1);

/// When the lag was measured, and the lag per assigned partition: (partition, lag).
type LagReading = Arc<std::sync::Mutex<Option<(std::time::Instant, Vec<PartitionLag>)>>>;

impl KafkaSubscriber {
    /// Joins the group and subscribes to the topic.
    pub fn new(
        config: &KafkaConfig,
        batching: Batching,
        codec: Codec,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Self> {
        let Batching {
            batch_size,
            max_wait,
        } = batching;
        let consumer: GroupConsumer = config
            .consumer_config()
            .create_with_context(GroupEvents::default())
            .context("cannot create the Kafka consumer (check [kafka.consumer] settings)")?;
        consumer
            .subscribe(&[&config.topic])
            .with_context(|| format!("cannot subscribe to Kafka topic {:?}", config.topic))?;
        let consumer = Arc::new(consumer);
        // End offsets are asked for on a connection of its own: a ListOffsets request queued
        // behind a waiting fetch on the consumer's connection made Tansu hold that fetch until
        // the request timed out, stalling the consumer for a minute at a time.
        let ends: BaseConsumer = config
            .admin_config()
            .create()
            .context("cannot create the Kafka client that measures consumer lag")?;
        let lag = LagReading::default();
        let sampler = tokio_util::sync::CancellationToken::new();
        let lag_sampler = LagSampler {
            consumer: consumer.clone(),
            ends: Arc::new(ends),
            topic: config.topic.clone(),
            group: config.consumer_group.clone(),
            stats: stats.clone(),
            reading: lag.clone(),
        };
        let sampler_task = tokio::spawn(lag_sampler.run(sampler.clone()));
        Ok(KafkaSubscriber {
            consumer,
            topic: config.topic.clone(),
            batch_size: batch_size.max(1),
            max_wait,
            codec,
            stats,
            lag,
            sampler,
            sampler_task,
            workers: Workers::default(),
        })
    }

    /// Takes one message into the batch: decoded now, or gathered into `pending` (its payload
    /// copied, the message released) when the workers decode the batch.
    fn take(&self, msg: &BorrowedMessage<'_>, batch: &mut Batch, pending: &mut Vec<Pending>) {
        match self.workers.threads() {
            1 => self.decode(msg, batch),
            _ => pending.push(Pending {
                payload: msg.payload().map(<[u8]>::to_vec),
                partition: msg.partition(),
                offset: msg.offset(),
            }),
        }
    }

    /// Decodes the gathered messages on the workers, into the batch in arrival order.
    fn decode_pending(&self, pending: Vec<Pending>, batch: &mut Batch) {
        if pending.is_empty() {
            return;
        }
        let decoded = self.workers.run(|parallel| {
            map_each(parallel, &pending, |m| {
                decode_payload(
                    &self.codec,
                    &self.topic,
                    m.payload.as_deref(),
                    m.partition,
                    m.offset,
                )
            })
        });
        for (m, result) in pending.iter().zip(decoded) {
            self.file(result, m.partition, m.offset, batch);
        }
    }

    fn decode(&self, msg: &BorrowedMessage<'_>, batch: &mut Batch) {
        self.file(
            decode_message(&self.codec, &self.topic, msg),
            msg.partition(),
            msg.offset(),
            batch,
        );
    }

    /// Puts a decoded message into the batch: an event, or a dead letter; its offset in the checkpoint either way.
    fn file(
        &self,
        decoded: Result<crate::event::Record, DeadLetter>,
        partition: i32,
        offset: i64,
        batch: &mut Batch,
    ) {
        batch.checkpoint.include(partition, offset);
        match decoded {
            Ok(event) => {
                batch.events.push(event);
                batch.sources.push((partition, offset));
            }
            Err(dead) => batch.dead.push(dead),
        }
    }
}

/// A message gathered for the workers to decode.
struct Pending {
    payload: Option<Vec<u8>>,
    partition: i32,
    offset: i64,
}

/// One message as an event, or as the dead letter saying why it is not one. An event without an
/// id (published by another producer) gets one from its position, so its replays are harmless
/// too; the live consumer and a backfill name it alike.
pub(super) fn decode_message(
    codec: &Codec,
    topic: &str,
    msg: &BorrowedMessage<'_>,
) -> Result<crate::event::Record, DeadLetter> {
    decode_payload(codec, topic, msg.payload(), msg.partition(), msg.offset())
}

/// [`decode_message`] of a message's payload and position.
fn decode_payload(
    codec: &Codec,
    topic: &str,
    payload: Option<&[u8]>,
    partition: i32,
    offset: i64,
) -> Result<crate::event::Record, DeadLetter> {
    match codec.decode(payload) {
        Ok(mut event) => {
            if event.id().is_empty() {
                event.set_id(compact_str::format_compact!("{topic}:{partition}:{offset}"));
            }
            Ok(event)
        }
        Err((reason, detail)) => {
            let id = format!("{topic}:{partition}:{offset}");
            Err(DeadLetter::new(
                id,
                reason,
                detail,
                (partition, offset),
                payload.unwrap_or_default(),
            ))
        }
    }
}

#[async_trait]
impl Subscriber for KafkaSubscriber {
    async fn poll_batch(&mut self, wait: Duration) -> anyhow::Result<Poll> {
        let consumer = self.consumer.clone();
        let first = match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => return Ok(Poll::Empty),
            Ok(Err(e)) => {
                // Transport errors (broker down, rebalance in progress) are transient for librdkafka.
                tracing::warn!(error = %e, "kafka consumer error; continuing");
                return Ok(Poll::Empty);
            }
            Ok(Ok(msg)) => msg,
        };
        let mut batch = Batch {
            events: Vec::with_capacity(self.batch_size),
            sources: Vec::with_capacity(self.batch_size),
            revoked: std::mem::take(&mut *consumer.context().revoked.lock().unwrap()),
            dead: Vec::new(),
            checkpoint: Checkpoint::default(),
        };
        let mut pending = Vec::new();
        self.take(&first, &mut batch, &mut pending);
        drop(first);
        let deadline = Instant::now() + self.max_wait;
        let mut received = 1;
        while received < self.batch_size {
            // Messages of one fetch response arrive together; once they stop, the batch goes to
            // the store rather than waiting out max_wait for the next fetch. A backlog still
            // makes full batches, because it never stops.
            let next = match consumer.recv().now_or_never() {
                Some(next) => Ok(next),
                None => {
                    tokio::time::timeout_at(
                        deadline.min(Instant::now() + FETCH_GAP),
                        consumer.recv(),
                    )
                    .await
                }
            };
            match next {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error; continuing");
                    break;
                }
                Ok(Ok(msg)) => {
                    self.take(&msg, &mut batch, &mut pending);
                    received += 1;
                }
            }
        }
        self.decode_pending(pending, &mut batch);
        self.stats.consumed(received);
        Ok(Poll::Batch(batch))
    }

    fn caught_up(&self, since: std::time::Instant) -> bool {
        let assigned = self
            .consumer
            .context()
            .assigned
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0;
        let reading = self.lag.lock().unwrap();
        assigned
            && reading.as_ref().is_some_and(|(at, lag)| {
                *at > since && !lag.is_empty() && lag.iter().all(|p| p.lag == 0)
            })
    }

    fn use_workers(&mut self, workers: Workers) {
        self.workers = workers;
    }

    fn acknowledger(&self) -> Arc<dyn Acknowledge> {
        Arc::new(OffsetStore {
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
        })
    }

    async fn close(self: Box<Self>) -> anyhow::Result<()> {
        // The sampler holds the consumer too; it must be gone before the consumer is, or the
        // consumer would leave the group (and auto-commit) later, after close returned.
        self.sampler.cancel();
        let _ = self.sampler_task.await;
        // The next consumer (after a reconnect) measures its own lag; this one's is stale.
        self.stats.set_lag(Vec::new());
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(e).context("final kafka offset commit failed; the uncommitted events will be consumed again (the store skips them)"),
        })
        .await?
    }
}

/// Measures, every [`LAG_EVERY`], how far each assigned partition's end is ahead of this
/// consumer's position, for the health panel, /metrics and the idle exit.
struct LagSampler {
    consumer: Arc<GroupConsumer>,
    /// A client of its own, used only to ask for end offsets.
    ends: Arc<BaseConsumer>,
    topic: String,
    group: String,
    stats: Arc<Stats>,
    reading: LagReading,
}

impl LagSampler {
    async fn run(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LAG_EVERY) => {}
            }
            let Ok(positions) = self.consumer.position() else {
                continue;
            };
            let offsets: Vec<(i32, i64)> = positions
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => (e.partition(), o),
                    _ => (e.partition(), 0),
                })
                .collect();
            let (ends, topic) = (self.ends.clone(), self.topic.clone());
            let lag = tokio::task::spawn_blocking(move || {
                offsets
                    .iter()
                    .map(|&(partition, at)| {
                        let (_, high) =
                            ends.fetch_watermarks(&topic, partition, END_OFFSET_TIMEOUT)?;
                        Ok(PartitionLag {
                            partition,
                            end: high,
                            lag: (high - at).max(0),
                        })
                    })
                    .collect::<Result<Vec<_>, KafkaError>>()
            })
            .await;
            // While the broker is away the last figure stays on show, but it no longer counts
            // as a measurement: the idle exit must not take an old "caught up" for a new one.
            if let Ok(Ok(lag)) = lag {
                self.stats.set_lag(lag.clone());
                *self.reading.lock().unwrap() = Some((std::time::Instant::now(), lag));
            }
            // Who else is in the group, for the topology panel; a broker that does not
            // describe groups leaves the list empty.
            let (ends, group, topic) = (self.ends.clone(), self.group.clone(), self.topic.clone());
            if let Ok(members) =
                tokio::task::spawn_blocking(move || group_members(&ends, &group, &topic)).await
            {
                self.stats.set_group(members);
            }
        }
    }
}

/// The members of `group` and their partitions of `topic`, as the broker describes them.
fn group_members(client: &BaseConsumer, group: &str, topic: &str) -> Vec<GroupMember> {
    let Ok(list) = client.fetch_group_list(Some(group), END_OFFSET_TIMEOUT) else {
        return Vec::new();
    };
    let mut members: Vec<GroupMember> = list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| GroupMember {
            id: m.id().to_string(),
            client_id: m.client_id().to_string(),
            host: m.client_host().to_string(),
            partitions: m
                .assignment()
                .map(|a| assigned_partitions(a, topic))
                .unwrap_or_default(),
        })
        .collect();
    members.sort_by(|a, b| {
        a.partitions
            .cmp(&b.partitions)
            .then_with(|| a.id.cmp(&b.id))
    });
    members
}

/// The partitions of `topic` in a consumer protocol assignment (version: i16, then an array of
/// topic: string, partitions: [i32], then user data); empty where it does not parse.
fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = b.split_first_chunk::<N>()?;
        *b = rest;
        Some(*head)
    }
    let parse = || -> Option<Vec<i32>> {
        let mut b = bytes;
        take::<2>(&mut b)?;
        let topics = i32::from_be_bytes(take::<4>(&mut b)?);
        let mut out = Vec::new();
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(take::<2>(&mut b)?).max(0) as usize;
            let name = b.get(..len)?;
            b = &b[len..];
            let n = i32::from_be_bytes(take::<4>(&mut b)?);
            for _ in 0..n.max(0) {
                let p = i32::from_be_bytes(take::<4>(&mut b)?);
                if name == topic.as_bytes() {
                    out.push(p);
                }
            }
        }
        Some(out)
    };
    let mut partitions = parse().unwrap_or_default();
    partitions.sort_unstable();
    partitions
}

/// Stores offsets of acknowledged batches for librdkafka's next commit.
struct OffsetStore {
    consumer: Arc<GroupConsumer>,
    topic: String,
}

impl Acknowledge for OffsetStore {
    fn acknowledge(&self, checkpoint: &Checkpoint) {
        let mut tpl = TopicPartitionList::with_capacity(checkpoint.0.len());
        for &(partition, next) in &checkpoint.0 {
            if tpl
                .add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .is_err()
            {
                continue;
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // The partition moved to another consumer meanwhile; it will replay these, harmlessly.
            tracing::debug!(error = %e, "could not store offsets (partition no longer assigned)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    #[test]
    fn an_assignment_lists_the_partitions_of_our_topic() {
        // version 1; two topics: "other" [7], "events" [2, 0]; no user data.
        let mut b = vec![0, 1, 0, 0, 0, 2];
        for (name, parts) in [("other", vec![7]), ("events", vec![2, 0])] {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            parts.iter().for_each(|p: &i32| b.extend(p.to_be_bytes()));
        }
        b.extend((-1i32).to_be_bytes());
        assert_eq!(assigned_partitions(&b, "events"), vec![0, 2]);
        assert_eq!(
            assigned_partitions(&b[..9], "events"),
            Vec::<i32>::new(),
            "a cut assignment is none"
        );
    }
}
