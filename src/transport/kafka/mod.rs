//! The Kafka transport, through librdkafka: topic setup, an idempotent producer, and a
//! consumer-group subscriber that commits only offsets whose events are stored.

mod admin;
mod config;
mod consumer;
mod history;
mod producer;

pub use admin::{connect, ensure_topic, topic_partitions};
pub use config::KafkaConfig;
pub use consumer::{Batching, KafkaSubscriber};
pub use history::{sample, KafkaHistory};
pub use producer::{KafkaPublisher, KafkaSink};
