//! Reads a range of the topic again, for a backfill: a consumer of its own, outside the group
//! (it is assigned partitions, never subscribes, and never commits), so the live consumer's
//! position and the group's offsets are untouched.

use super::consumer::decode_message;
use super::KafkaConfig;
use crate::codec::Codec;
use crate::transport::{History, HistoryRead};
use anyhow::Context;
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;

/// How long a read waits for the next message of a range that is not read yet, before it
/// returns what it has (the broker may be slow; the caller asks again).
const READ_WAIT: Duration = Duration::from_secs(2);

/// How long one offset request may take.
const OFFSET_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kafka log as a [`History`].
pub struct KafkaHistory {
    config: KafkaConfig,
    codec: Codec,
    /// A reading consumer per partition, with the next offset it is positioned at (backfills
    /// take turns between partitions; each keeps its fetch position).
    readers: tokio::sync::Mutex<HashMap<i32, (StreamConsumer, i64)>>,
}

impl KafkaHistory {
    pub fn new(config: &KafkaConfig, codec: Codec) -> KafkaHistory {
        KafkaHistory {
            config: config.clone(),
            codec,
            readers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = self.config.admin_config();
        // A group id is required to consume; this one is never joined (assign, not subscribe)
        // and nothing is committed under it.
        c.set(
            "group.id",
            format!("{}-backfill", self.config.consumer_group),
        );
        c.set("enable.auto.commit", "false");
        c.set("enable.auto.offset.store", "false");
        c.set("auto.offset.reset", "earliest");
        c.set("fetch.wait.max.ms", "50");
        c
    }
}

#[async_trait]
impl History for KafkaHistory {
    async fn start(&self, partition: i32, since_ms: i64) -> anyhow::Result<(i64, bool)> {
        let client: BaseConsumer = self
            .client_config()
            .create()
            .context("cannot create the Kafka client that backfills")?;
        let topic = self.config.topic.clone();
        tokio::task::spawn_blocking(move || {
            let (low, high) = client
                .fetch_watermarks(&topic, partition, OFFSET_TIMEOUT)
                .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(since_ms.max(0)))?;
            let found = client
                .offsets_for_times(tpl, OFFSET_TIMEOUT)
                .with_context(|| {
                    format!("cannot look up the offset of {topic}/{partition} at {since_ms} ms")
                })?;
            let at = match found.find_partition(&topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // No message at or after that time: nothing of the range is in the log yet.
                _ => high,
            };
            let at = at.clamp(low, high);
            // At the log's start, and the log has lost its beginning (retention): the range may
            // begin before what it holds. A log starting at 0 holds all it ever had.
            Ok((at, at == low && low > 0))
        })
        .await?
    }

    async fn end(&self, partition: i32) -> anyhow::Result<i64> {
        let client: BaseConsumer = self
            .client_config()
            .create()
            .context("cannot create the Kafka client that backfills")?;
        let topic = self.config.topic.clone();
        tokio::task::spawn_blocking(move || {
            let (_, high) = client
                .fetch_watermarks(&topic, partition, OFFSET_TIMEOUT)
                .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
            Ok(high - 1)
        })
        .await?
    }

    async fn read(
        &self,
        partition: i32,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> anyhow::Result<HistoryRead> {
        let mut out = HistoryRead {
            events: Vec::new(),
            through: after,
        };
        if after >= upto {
            return Ok(out);
        }
        let mut readers = self.readers.lock().await;
        if readers
            .get(&partition)
            .is_none_or(|(_, next)| *next != after + 1)
        {
            let consumer: StreamConsumer = self
                .client_config()
                .create()
                .context("cannot create the Kafka consumer that backfills")?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.config.topic, partition, Offset::Offset(after + 1))?;
            consumer.assign(&tpl).with_context(|| {
                format!(
                    "cannot read {}/{partition} from offset {}",
                    self.config.topic,
                    after + 1
                )
            })?;
            readers.insert(partition, (consumer, after + 1));
        }
        let (consumer, next) = readers.get_mut(&partition).expect("positioned above");
        while out.events.len() < limit && *next <= upto {
            let msg = match tokio::time::timeout(READ_WAIT, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka backfill read failed; continuing");
                    break;
                }
                Ok(Ok(msg)) => msg,
            };
            let offset = msg.offset();
            *next = offset + 1;
            if offset > upto {
                out.through = upto; // offsets may skip (transaction markers): the range is read
                break;
            }
            out.through = offset;
            // A message that is not an event was dead-lettered by the live consumer already.
            if let Ok(event) = decode_message(&self.codec, &self.config.topic, &msg) {
                out.events.push((offset, event));
            }
        }
        if out.through >= upto {
            // The range is read: its consumer (a connection and a fetch thread) goes.
            readers.remove(&partition);
        }
        Ok(out)
    }
}

/// Up to `limit` payloads of `config.topic` from its start, waiting at most `wait` for more: a
/// consumer of `config.consumer_group` that commits nothing (what `runner init` infers from).
pub fn sample(config: &KafkaConfig, limit: usize, wait: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut c = config.consumer_config();
    c.set("enable.auto.commit", "false");
    c.set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = c.create().context("cannot create a Kafka consumer")?;
    consumer
        .subscribe(&[&config.topic])
        .with_context(|| format!("cannot subscribe to {:?}", config.topic))?;
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while out.len() < limit && last.elapsed() < wait {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                out.push(m.payload().unwrap_or_default().to_vec());
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka error while sampling {:?}; continuing", config.topic)
            }
            None => {}
        }
    }
    Ok(out)
}
