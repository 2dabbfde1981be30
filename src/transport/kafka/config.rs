//! `[kafka]`: the cluster, the topic, and librdkafka settings.

use crate::base::de;
use crate::transport::TransportKind;
use rdkafka::ClientConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[kafka]` section. `bootstrap_servers = "embedded"` selects the in-process queue instead.
/// The whole section is optional: without it a pipeline runs on the embedded queue.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`, or `embedded` for the in-process queue [default: env
    /// KAFKA_BOOTSTRAP_SERVERS, else `embedded`].
    #[serde(default)]
    pub bootstrap_servers: String,
    /// The topic events are published to and consumed from [default: the pipeline's name].
    #[serde(default)]
    pub topic: String,
    /// Partition count used when the runner creates the topic.
    #[serde(default = "default_partitions", deserialize_with = "de::number")]
    pub partitions: i32,
    /// Replication factor used when the runner creates the topic.
    #[serde(default = "default_replication", deserialize_with = "de::number")]
    pub replication_factor: i32,
    /// Consumer group the consumers join; runners in one group split the partitions [default:
    /// the pipeline's name with `-consumer`].
    #[serde(default)]
    pub consumer_group: String,
    /// How long to keep retrying an unreachable cluster at start before giving up.
    #[serde(default = "default_connect_timeout", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    /// librdkafka settings for both clients (`security.protocol`, `sasl.*`, ...).
    #[serde(default)]
    pub client: BTreeMap<String, toml::Value>,
    /// librdkafka settings for the producer only; they override the runner's defaults.
    #[serde(default)]
    pub producer: BTreeMap<String, toml::Value>,
    /// librdkafka settings for the consumer only; they override the runner's defaults.
    #[serde(default)]
    pub consumer: BTreeMap<String, toml::Value>,
}

impl std::fmt::Debug for KafkaConfig {
    /// librdkafka settings that hold secrets (`sasl.password`, `ssl.key.password`, ...) show as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |m: &BTreeMap<String, toml::Value>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| {
                    let secret = ["password", "secret", "key.pem", "oauthbearer.config"]
                        .iter()
                        .any(|s| k.contains(s));
                    (
                        k.clone(),
                        if secret {
                            "***".to_string()
                        } else {
                            v.to_string()
                        },
                    )
                })
                .collect()
        };
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("consumer_group", &self.consumer_group)
            .field("connect_timeout", &self.connect_timeout)
            .field("client", &shown(&self.client))
            .field("producer", &shown(&self.producer))
            .field("consumer", &shown(&self.consumer))
            .finish()
    }
}

fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Producer defaults: idempotent (no duplicates from retries), lz4 (the codec every broker we
/// test with handles), and enough lingering to send full batches. Two requests in flight, not
/// librdkafka's five: with five, an idempotent producer's broker thread polls with a zero timeout
/// while it waits for produce responses, which cost 0.31 of a core at 10,000 events/s against
/// Tansu (0.07 with two) for no more throughput.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("max.in.flight.requests.per.connection", "2"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "200000"),
    ("queue.buffering.max.kbytes", "262144"),
    ("message.timeout.ms", "300000"),
];

/// Consumer defaults: offsets are stored by the runner after the store acknowledged a batch,
/// then committed in the background; a fresh group starts at the beginning of the topic.
/// `fetch.wait.max.ms` is short because some brokers (Tansu) hold a fetch for the whole wait even
/// when data arrives meanwhile: produce-to-consume took 1.5x the wait there (p50 437 ms at
/// librdkafka's 500, 77 ms at 50).
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "2000"),
    ("fetch.wait.max.ms", "50"),
];

/// Settings the runner relies on for correctness; the TOML may not change them.
const CONSUMER_FIXED: &[&str] = &["enable.auto.offset.store"];

impl KafkaConfig {
    /// The settings for reading `topic` at `servers` as a group of its own (`runner init`
    /// samples a topic before any pipeline file exists); every other key at its default.
    pub fn reader_of(servers: &str, topic: &str) -> KafkaConfig {
        let mut c: KafkaConfig = toml::Table::new()
            .try_into()
            .expect("every key of [kafka] has a default");
        c.bootstrap_servers = servers.to_string();
        c.topic = topic.to_string();
        c.consumer_group = format!("runner-init-{}", uuid::Uuid::new_v4().simple());
        c
    }

    /// Fills the keys the file left out from the pipeline's name and the environment.
    pub fn fill_defaults(&mut self, name: &str, env: &dyn Fn(&str) -> Option<String>) {
        if self.bootstrap_servers.is_empty() {
            self.bootstrap_servers = env("KAFKA_BOOTSTRAP_SERVERS")
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "embedded".into());
        }
        if self.topic.is_empty() {
            self.topic = name.to_string();
        }
        if self.consumer_group.is_empty() {
            self.consumer_group = format!("{name}-consumer");
        }
    }

    /// The transport this section chooses: the one place the word `embedded` is read, so
    /// everything after it matches on a [`TransportKind`] rather than asking about a string.
    pub fn kind(&self) -> TransportKind {
        match self
            .bootstrap_servers
            .trim()
            .eq_ignore_ascii_case("embedded")
        {
            true => TransportKind::EmbeddedQueue,
            false => TransportKind::Kafka,
        }
    }

    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        let mut p = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            p.push("kafka.bootstrap_servers is empty (use host:port, or \"embedded\")".to_string());
        } else if self.kind() == TransportKind::Kafka {
            for server in self.bootstrap_servers.split(',') {
                let s = server.trim();
                let s = s.split_once("://").map_or(s, |(_, rest)| rest);
                let ok = s
                    .rsplit_once(':')
                    .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    p.push(format!(
                        "kafka.bootstrap_servers: {server:?} is not host:port"
                    ));
                }
            }
        }
        if self.topic.trim().is_empty() {
            p.push("kafka.topic is empty".to_string());
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            p.push("kafka.partitions and kafka.replication_factor must be at least 1".to_string());
        }
        for (section, map) in [
            ("client", &self.client),
            ("producer", &self.producer),
            ("consumer", &self.consumer),
        ] {
            for (k, v) in map {
                if scalar(v).is_none() {
                    p.push(format!(
                        "kafka.{section}.{k:?} must be a string, number or boolean"
                    ));
                }
            }
        }
        for k in CONSUMER_FIXED {
            if self.consumer.contains_key(*k) || self.client.contains_key(*k) {
                p.push(format!("kafka: {k} is managed by the runner (offsets are stored only after the store acknowledges)"));
            }
        }
        (!p.is_empty()).then(|| p.join("; "))
    }

    /// librdkafka settings for the producer.
    pub fn producer_config(&self) -> ClientConfig {
        self.client_config(PRODUCER_DEFAULTS, &self.producer)
    }

    /// librdkafka settings for the consumer.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config(CONSUMER_DEFAULTS, &self.consumer);
        c.set("group.id", &self.consumer_group);
        c.set("enable.auto.offset.store", "false");
        c
    }

    /// librdkafka settings for admin calls.
    pub fn admin_config(&self) -> ClientConfig {
        self.client_config(&[], &BTreeMap::new())
    }

    fn client_config(
        &self,
        defaults: &[(&str, &str)],
        own: &BTreeMap<String, toml::Value>,
    ) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap_servers.trim());
        // librdkafka would otherwise log every failed connection attempt itself; we report reachability.
        c.set("log.connection.close", "false");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.client.iter().chain(own) {
            if let Some(v) = scalar(v) {
                c.set(k, v);
            }
        }
        c
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    /// TLS and SASL are compiled in (rdkafka's `ssl` feature, linked against the system OpenSSL):
    /// librdkafka accepts them instead of refusing the settings.
    #[test]
    fn tls_and_sasl_settings_are_supported() {
        let config: KafkaConfig = toml::from_str(
            r#"
            bootstrap_servers = "127.0.0.1:9093"
            topic = "t"
            consumer_group = "g"
            [client]
            "security.protocol" = "SASL_SSL"
            "sasl.mechanisms" = "SCRAM-SHA-512"
            "sasl.username" = "runner"
            "sasl.password" = "pw"
            "ssl.endpoint.identification.algorithm" = "https"
            "#,
        )
        .unwrap();
        let producer: Result<BaseProducer, _> = config.producer_config().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }
}
