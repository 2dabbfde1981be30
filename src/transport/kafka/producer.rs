//! Publishes batches to Kafka: values in the pipeline's codec, keyed by the `[event] key` field (records with one key
//! stay ordered in one partition), with delivery reports counted rather than awaited per message.

use super::KafkaConfig;
use crate::codec::Codec;
use crate::event::Record;
use crate::telemetry::Stats;
use crate::transport::Publisher;
use anyhow::Context;
use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::Duration;

/// Counts delivery reports; librdkafka calls it from its own polling thread.
struct Deliveries {
    stats: Arc<Stats>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.stats.delivered(1),
            Err((e, _)) => self.stats.delivery_failed(e),
        }
    }
}

/// Generator side of the Kafka transport.
pub struct KafkaPublisher {
    producer: Arc<ThreadedProducer<Deliveries>>,
    topic: String,
    codec: Codec,
    buf: Vec<u8>,
}

impl KafkaPublisher {
    /// Creates the producer; call after [`super::connect`] has seen the cluster.
    pub fn new(config: &KafkaConfig, codec: Codec, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let producer = config
            .producer_config()
            .create_with_context(Deliveries { stats })
            .context("cannot create the Kafka producer (check [kafka.producer] settings)")?;
        Ok(KafkaPublisher {
            producer: Arc::new(producer),
            topic: config.topic.clone(),
            codec,
            buf: Vec::with_capacity(512),
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&mut self, batch: Vec<Record>) -> anyhow::Result<()> {
        for event in &batch {
            self.buf.clear();
            if let Err(why) = self.codec.encode(event, &mut self.buf) {
                // The generator's script made a record the format's schema cannot hold (a bug in
                // the pipeline's files): that record is skipped, the rest still flow.
                tracing::warn!(
                    id = event.id(),
                    "generator: a record does not fit [event] schema and was not sent: {why}"
                );
                continue;
            }
            loop {
                let key = event.key();
                let mut record = BaseRecord::to(&self.topic).payload(&self.buf[..]);
                if let Some(key) = key.as_deref() {
                    record = record.key(key.as_bytes());
                }
                match self.producer.send(record) {
                    Ok(()) => break,
                    // librdkafka's queue is full (broker slow or away): wait, never drop.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => return Err(e).context("kafka producer refused a message"),
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await?
            .with_context(|| {
                format!("kafka producer could not deliver everything within {timeout:?}; undelivered messages are counted as failed")
            })
    }
}

/// Sends keyed messages to one topic and waits for each to be acknowledged (the results topic:
/// few messages, each of which must be known delivered before the caller moves on).
pub struct KafkaSink {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl KafkaSink {
    /// A producer with `config`'s client and producer settings, for `topic` (created with
    /// `config`'s partitions and replication if missing, compacted: one value per key is kept).
    pub async fn new(config: &KafkaConfig, topic: &str) -> anyhow::Result<KafkaSink> {
        let admin = super::connect(config).await?;
        super::admin::ensure_compacted_topic(&admin, config, topic).await?;
        let producer = config
            .producer_config()
            .create()
            .context("cannot create the Kafka producer of the results topic")?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Sends every (key, payload) and returns once all are acknowledged, or the first error.
    pub async fn send_all(&self, messages: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        let sends = messages.iter().map(|(key, payload)| {
            self.producer.send(
                rdkafka::producer::FutureRecord::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(payload),
                Duration::from_secs(30),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| e)
                .with_context(|| format!("results topic {:?} refused a message", self.topic))?;
        }
        Ok(())
    }
}
