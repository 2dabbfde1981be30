//! Reachability and topic setup, done once before the producer or consumer starts.

use super::KafkaConfig;
use crate::base::Backoff;
use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until the cluster answers a metadata request, retrying with backoff up to
/// `connect_timeout`; never falls back to anything else.
pub async fn connect(
    config: &KafkaConfig,
) -> anyhow::Result<Arc<AdminClient<DefaultClientContext>>> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        config
            .admin_config()
            .create()
            .context("cannot create a Kafka admin client (check the [kafka] settings)")?,
    );
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5), None);
    // Short probes, so a slow failure still leaves room for retries within connect_timeout.
    let probe_timeout =
        (config.connect_timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        // A metadata request blocks its thread for up to the probe timeout: not on the runtime.
        let probe = {
            let client = admin.clone();
            tokio::task::spawn_blocking(move || {
                client
                    .inner()
                    .fetch_metadata(None, probe_timeout)
                    .map(|_| ())
            })
            .await?
        };
        match probe {
            Ok(_) => {
                if backoff.retries() > 0 {
                    tracing::info!(servers = %config.bootstrap_servers, "kafka is reachable now");
                }
                return Ok(admin);
            }
            Err(e) => match backoff
                .next_wait()
                .filter(|wait| started.elapsed() + *wait < config.connect_timeout)
            {
                Some(wait) => {
                    tracing::warn!(
                        servers = %config.bootstrap_servers, attempt = backoff.retries(), error = %e, retry_in = ?wait,
                        "cannot reach kafka; retrying (connect_timeout = {:?})", config.connect_timeout
                    );
                    tokio::time::sleep(wait).await;
                }
                None => bail!(
                    "cannot reach Kafka at {} after {:?} ({e}); check that the broker runs and \
                     kafka.bootstrap_servers / KAFKA_BOOTSTRAP_SERVERS / --kafka point at it",
                    config.bootstrap_servers,
                    started.elapsed()
                ),
            },
        }
    }
}

/// Creates the configured topic with its partitions and replication, if it is missing (brokers
/// may not auto-create topics).
pub async fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
) -> anyhow::Result<()> {
    create_topic(admin, config, &config.topic, &[]).await
}

/// Creates `topic` (with `config`'s partitions and replication) compacted, if it is missing: a
/// topic of one current value per key.
pub async fn ensure_compacted_topic(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    topic: &str,
) -> anyhow::Result<()> {
    create_topic(admin, config, topic, &[("cleanup.policy", "compact")]).await
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    topic: &str,
    settings: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut new = NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    for (key, value) in settings {
        new = new.set(key, value);
    }
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("cannot create Kafka topic {topic:?}"))?;
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = config.partitions, ?settings, "created kafka topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create Kafka topic {name:?}: {code}"),
        }
    }
    Ok(())
}

/// The partitions of the configured topic, as the broker reports them (none while the topic does
/// not exist).
pub async fn topic_partitions(config: &KafkaConfig) -> anyhow::Result<Vec<i32>> {
    let client: rdkafka::consumer::BaseConsumer = config
        .admin_config()
        .create()
        .context("cannot create a Kafka client (check the [kafka] settings)")?;
    let topic = config.topic.clone();
    // A blocking request: off the async runtime.
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("cannot read the partitions of Kafka topic {topic:?}"))?;
        Ok(metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect())
    })
    .await?
}
