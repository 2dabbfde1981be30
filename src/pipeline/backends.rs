//! What the two typed backend choices build: the transport ([`TransportKind`], from
//! `kafka.bootstrap_servers`) and the store ([`StoreKind`], from `mongodb.uri`). Each choice is
//! read once, by its section's `kind()`; here every question that depends on it is one `match`,
//! so adding a transport or a store is one arm per function of this file.

use super::Components;
use crate::codec::Codec;
use crate::config::PipelineConfig;
use crate::store::{Opened, StateStore, StoreKind};
use crate::telemetry::Stats;
use crate::transport::NO_PARTITION;
use crate::transport::{embedded, file, kafka, History, Publisher, Subscriber, TransportKind};
use anyhow::Context;
use std::sync::Arc;

/// The two ends of the transport this process uses (either may be absent).
pub(super) type Transport = (Option<Box<dyn Publisher>>, Option<Box<dyn Subscriber>>);

/// Where this pipeline's history can be read again, for a backfill or `runner backfill`: the
/// Kafka log, the source file read again, or the store's own replay (the embedded store's raw
/// rows behind the embedded queue); the error says why there is none.
pub fn history(config: &PipelineConfig, store: &Opened) -> Result<Arc<dyn History>, String> {
    match config.transport_kind() {
        TransportKind::Kafka => Ok(Arc::new(kafka::KafkaHistory::new(
            &config.kafka,
            codec(config).map_err(|e| e.to_string())?,
        ))),
        TransportKind::File => match file::FileHistory::new(
            &config.source,
            codec(config).map_err(|e| e.to_string())?,
        ) {
            Some(h) => Ok(Arc::new(h)),
            None => Err("a file source read from stdin keeps no history to read again".into()),
        },
        TransportKind::EmbeddedQueue => store.history.clone().ok_or_else(|| {
            "history is read from the Kafka log, the source file or the embedded store, and this pipeline runs the embedded queue into MongoDB, whose raw events keep no order of arrival".into()
        }),
    }
}

/// The partitions events arrive on: the Kafka topic's, the embedded queue's one, or the file's.
pub async fn partitions(config: &PipelineConfig) -> anyhow::Result<Vec<i32>> {
    match config.transport_kind() {
        TransportKind::EmbeddedQueue => Ok(vec![NO_PARTITION]),
        TransportKind::File => Ok(vec![file::FILE_PARTITION]),
        TransportKind::Kafka => kafka::topic_partitions(&config.kafka).await,
    }
}

/// Whether the transport connects the generator and the consumer inside one process (then a
/// change of either rebuilds it, and both must run here).
pub(super) fn in_process(config: &PipelineConfig) -> bool {
    match config.transport_kind() {
        TransportKind::EmbeddedQueue => true,
        TransportKind::Kafka | TransportKind::File => false,
    }
}

/// The transport for the dashboard's status line.
pub(super) fn transport_label(config: &PipelineConfig) -> String {
    match config.transport_kind() {
        TransportKind::EmbeddedQueue => "embedded queue".into(),
        TransportKind::File => format!("file {}", shown_source(config)),
        TransportKind::Kafka => format!("Kafka topic {}", config.kafka.topic),
    }
}

/// Connects the transport `config` names for the components this process runs. A Kafka
/// subscriber is created only `with_subscriber` (joining the group is left for when the
/// consumer starts); the embedded queue always gives both ends.
pub(super) async fn connect_transport(
    config: &PipelineConfig,
    components: Components,
    stats: &Arc<Stats>,
    with_subscriber: bool,
) -> anyhow::Result<Transport> {
    if !(components.generator || components.consumer) {
        return Ok((None, None));
    }
    match config.transport_kind() {
        TransportKind::EmbeddedQueue => {
            let (p, s) = embedded::channel(
                config.embedded.queue_capacity,
                config.consumer.batch_size,
                stats.clone(),
            );
            Ok((Some(Box::new(p)), Some(Box::new(s))))
        }
        TransportKind::File => {
            let s = match components.consumer {
                true => Some(Box::new(file::FileSubscriber::open(
                    &config.source,
                    codec(config)?,
                    config.consumer.batch_size,
                    stats.clone(),
                )?) as Box<dyn Subscriber>),
                false => None,
            };
            Ok((None, s))
        }
        TransportKind::Kafka => {
            let admin = kafka::connect(&config.kafka).await?;
            kafka::ensure_topic(&admin, &config.kafka).await?;
            let p = match components.generator {
                true => Some(Box::new(kafka::KafkaPublisher::new(
                    &config.kafka,
                    codec(config)?,
                    stats.clone(),
                )?) as Box<dyn Publisher>),
                false => None,
            };
            let s = match components.consumer && with_subscriber {
                true => Some(kafka_subscriber(config, stats)?),
                false => None,
            };
            Ok((p, s))
        }
    }
}

/// A Kafka subscriber of `config`'s topic, not yet joined to its group.
pub(super) fn kafka_subscriber(
    config: &PipelineConfig,
    stats: &Arc<Stats>,
) -> anyhow::Result<Box<dyn Subscriber>> {
    Ok(Box::new(kafka::KafkaSubscriber::new(
        &config.kafka,
        config.consumer.batching(),
        codec(config)?,
        stats.clone(),
    )?))
}

/// The file source's name for people.
fn shown_source(config: &PipelineConfig) -> String {
    match config.source.file.as_deref() {
        Some(f) if f.as_os_str() == "-" => "stdin".into(),
        Some(f) => f.display().to_string(),
        None => String::new(),
    }
}

/// The start-up line naming the transport and the store, with how to choose the other kind.
pub(super) fn log_setup(
    config: &PipelineConfig,
    store: Option<&dyn StateStore>,
    components: Components,
) {
    let transport = match config.transport_kind() {
        TransportKind::EmbeddedQueue => {
            "embedded in-process queue (set KAFKA_BOOTSTRAP_SERVERS or --kafka host:port to use Kafka)"
                .to_string()
        }
        TransportKind::File => format!(
            "records from {}{} (no generator)",
            shown_source(config),
            if config.source.follow { ", following it" } else { ", until it ends" }
        ),
        TransportKind::Kafka => format!(
            "Kafka {} topic {:?} group {:?}",
            config.kafka.bootstrap_servers, config.kafka.topic, config.kafka.consumer_group
        ),
    };
    let store = match (store, config.mongodb.kind()) {
        (Some(s), StoreKind::Sqlite) => format!(
            "{} (set MONGODB_CONNECTION_STRING or --mongodb mongodb://... to use MongoDB)",
            s.describe()
        ),
        (Some(s), StoreKind::MongoDb) => s.describe(),
        (None, _) => "none (consumer not running here)".to_string(),
    };
    tracing::info!(
        pipeline = %config.name,
        generator = components.generator,
        consumer = components.consumer,
        "transport: {transport}; store: {store}"
    );
}

/// Opens the store `config` chooses, for its records, with its retention.
pub async fn open_store(config: &PipelineConfig) -> anyhow::Result<Opened> {
    let schema = config.schema().map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    crate::store::open(
        &config.mongodb,
        &config.embedded,
        &config.retention,
        &schema,
    )
    .await
}

/// The documents of every `[[lookup]] collection` of `config`, read from the store for the
/// compile step: at most `max_rows + 1` each, so a larger collection fails its table's load as a
/// larger file does, without reading all of it.
pub async fn fetch_collections(
    config: &PipelineConfig,
    store: &dyn crate::store::Collections,
) -> anyhow::Result<crate::aggregate::Fetched> {
    let mut fetched = crate::aggregate::Fetched::default();
    for l in &config.lookups {
        if let crate::aggregate::lookup::Source::Collection(c) = l.source() {
            let documents = store
                .documents(c, l.max_rows.saturating_add(1))
                .await
                .with_context(|| {
                    format!(
                        "lookup {:?}: cannot read collection {c:?} from the store",
                        l.name
                    )
                })?;
            fetched.insert(&l.name, documents);
        }
    }
    Ok(fetched)
}

/// Whether `config` has a lookup table kept in the store.
pub fn has_collections(config: &PipelineConfig) -> bool {
    config
        .lookups
        .iter()
        .any(|l| matches!(l.source(), crate::aggregate::lookup::Source::Collection(_)))
}

/// The codec of `config`'s messages: the format `[event] format` chooses (its schema files
/// read now), for records of its schema, refusing payloads over `max_event_bytes`.
pub fn codec(config: &PipelineConfig) -> anyhow::Result<Codec> {
    let schema = config.schema().map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    Codec::build(
        &config.event,
        schema,
        config.consumer.validation.max_event_bytes,
    )
    .map_err(anyhow::Error::msg)
}
