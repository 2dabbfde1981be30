//! Final window results: once a window can no longer change, its value is written once to the
//! results collection as a plain document (`{metric, window_start, window_end, value}`), so
//! anyone can read metrics from the database without the runner.
//!
//! A window `[start, end)` of a metric is final when `end + lateness` is at or behind the stored
//! watermark of every partition of the topic: any event still to come for it would be late and
//! left out. Watermarks are stored after the partials of their batch, so a watermark that says
//! a window is final comes with every partial of it. A result is computed from the merged
//! partials only, so every consumer computes the same document, and writing it again (a replay,
//! another consumer, a restart) changes nothing.

use super::{history, Metric, MetricSet};
use crate::codec::{ResultEncoder, ResultFormat};
use crate::event::{EventConfig, Format, Framing};
use crate::store::{ResultRow, StateStore};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where closed windows go. The store's results (collection or table) are the first output; a
/// new one (a Kafka topic, say) is one more implementation handed to [`run`].
#[async_trait]
pub trait ResultsOutput: Send + Sync {
    /// The end of the newest window of `metric` this output holds, where a restart goes on.
    async fn latest(&self, metric: &str) -> anyhow::Result<Option<i64>>;
    /// Takes closed windows, oldest first; taking one again changes nothing (every consumer,
    /// replay and restart sends the same rows).
    async fn publish(&self, rows: &[ResultRow]) -> anyhow::Result<()>;
}

/// The store's results: `metric_results` on MongoDB, a table of the embedded store.
pub struct StoreResults(pub Arc<dyn StateStore>);

#[async_trait]
impl ResultsOutput for StoreResults {
    async fn latest(&self, metric: &str) -> anyhow::Result<Option<i64>> {
        self.0.latest_result(metric).await
    }

    async fn publish(&self, rows: &[ResultRow]) -> anyhow::Result<()> {
        self.0.write_results(rows).await
    }
}

/// `[results]`: where final window results go besides the store.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// A Kafka topic every final window result is also published to, keyed `metric|window_end`
    /// (created compacted if missing, on the `[kafka]` cluster). Published before the store's
    /// copy is written, so each window reaches the topic at least once; a repeat carries the same
    /// key and value [default: none].
    #[serde(default)]
    pub topic: Option<String>,
    /// How results are written on the topic: `json`, or `avro` (the `runner.Result` record of
    /// `schemas/result.avsc`, Confluent-framed when `[event] framing` is) [default: avro when
    /// `[event] format` is avro, else json].
    #[serde(default)]
    pub format: Option<ResultFormat>,
    /// Confluent-framed Avro results: the id of `schemas/result.avsc` in the readers' registry
    /// [default: registered at `[event] registry` under the subject `<topic>-value`].
    #[serde(default)]
    pub schema_id: Option<u32>,
}

impl ResultsConfig {
    /// The format results are written in on the topic.
    pub fn format(&self, event: &EventConfig) -> ResultFormat {
        self.format.unwrap_or(match event.format {
            Format::Avro => ResultFormat::Avro,
            Format::Json | Format::Protobuf => ResultFormat::Json,
        })
    }

    /// Whether Avro results carry the Confluent header (the event format's framing).
    fn framed(&self, event: &EventConfig) -> bool {
        self.format(event) == ResultFormat::Avro && event.framing == Framing::Confluent
    }

    /// What is wrong with `[results]` besides where it is published.
    pub fn problems(&self, event: &EventConfig) -> Vec<String> {
        let mut problems = Vec::new();
        if self.topic.is_none() && (self.format.is_some() || self.schema_id.is_some()) {
            problems.push(
                "results.format: results.format and results.schema_id are for results.topic, which is not set"
                    .to_string(),
            );
        }
        if self.topic.is_some()
            && self.framed(event)
            && self.schema_id.is_none()
            && event.registry.is_none()
        {
            problems.push(
                "results.topic: Confluent-framed Avro results need the id of schemas/result.avsc: set results.schema_id, or event.registry to register it"
                    .to_string(),
            );
        }
        problems
    }
}

/// The outputs in order, each taking every window: the last one (the store) says where a restart
/// goes on, so a window reaches every output before it at least once.
pub struct Chain(pub Vec<Arc<dyn ResultsOutput>>);

#[async_trait]
impl ResultsOutput for Chain {
    async fn latest(&self, metric: &str) -> anyhow::Result<Option<i64>> {
        match self.0.last() {
            Some(last) => last.latest(metric).await,
            None => Ok(None),
        }
    }

    async fn publish(&self, rows: &[ResultRow]) -> anyhow::Result<()> {
        for output in &self.0 {
            output.publish(rows).await?;
        }
        Ok(())
    }
}

/// A Kafka topic of results: one message per window, keyed `metric|window_end` (the window's
/// end in RFC 3339), its value the stored document's fields (JSON or Avro), so a compacted topic
/// keeps one value per window and a repeat (a replay, another consumer) is the same key and value.
pub struct TopicResults {
    sink: crate::transport::kafka::KafkaSink,
    encoder: ResultEncoder,
}

impl TopicResults {
    /// The results topic of `config` on the `kafka` cluster, its encoder built from `[results]`
    /// and `[event]` (asking `[event] registry` for the Avro schema's id when none is set).
    pub async fn connect(
        kafka: &crate::transport::kafka::KafkaConfig,
        config: &ResultsConfig,
        event: &EventConfig,
    ) -> anyhow::Result<Option<TopicResults>> {
        let Some(topic) = &config.topic else {
            return Ok(None);
        };
        let encoder = match (config.format(event), config.framed(event)) {
            (ResultFormat::Json, _) => ResultEncoder::json(),
            (ResultFormat::Avro, false) => ResultEncoder::avro(None),
            (ResultFormat::Avro, true) => {
                let id = match (config.schema_id, &event.registry) {
                    (Some(id), _) => id,
                    (None, Some(url)) => {
                        let (url, subject) = (url.clone(), format!("{topic}-value"));
                        tokio::task::spawn_blocking(move || {
                            crate::codec::register_result_schema(&url, &subject)
                        })
                        .await?
                        .map_err(|e| anyhow::anyhow!("results.topic: {e}"))?
                    }
                    (None, None) => anyhow::bail!("results.schema_id is not set"),
                };
                tracing::info!(topic, schema_id = id, "results are Confluent-framed Avro");
                ResultEncoder::avro(Some(id))
            }
        };
        let sink = crate::transport::kafka::KafkaSink::new(kafka, topic).await?;
        Ok(Some(TopicResults { sink, encoder }))
    }

    /// The key of one result's message.
    pub fn key(row: &ResultRow) -> String {
        format!("{}|{}", row.metric, crate::event::iso(row.window_end))
    }
}

#[async_trait]
impl ResultsOutput for TopicResults {
    async fn latest(&self, _metric: &str) -> anyhow::Result<Option<i64>> {
        // Not read back from the topic: in a chain the store, written after it, says this.
        Ok(None)
    }

    async fn publish(&self, rows: &[ResultRow]) -> anyhow::Result<()> {
        let messages = rows
            .iter()
            .map(|row| {
                let value = self
                    .encoder
                    .encode(&row.metric, row.window_start, row.window_end, &row.value)
                    .map_err(anyhow::Error::msg)?;
                Ok((Self::key(row), value))
            })
            .collect::<anyhow::Result<Vec<(String, Vec<u8>)>>>()?;
        self.sink.send_all(&messages).await
    }
}

/// The partitions whose watermarks a window waits for: the topic's, asked for again now and
/// then (a topic may gain partitions).
pub type Partitions = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Vec<i32>>> + Send + Sync>;

/// Most windows of one metric written in one round, so catching up after a long stop does not
/// hold the store for long; the next round goes on where this one stopped.
const WINDOWS_PER_ROUND: usize = 500;

/// The end of the newest window of `m` that is final, given each partition's stored watermark;
/// `None` while some partition has none (it has not been read yet).
pub fn final_until(m: &Metric, partitions: &[i32], watermarks: &HashMap<i32, i64>) -> Option<i64> {
    let lateness = m.config.lateness.as_millis() as i64;
    let oldest = partitions
        .iter()
        .map(|p| watermarks.get(p).copied())
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()?;
    // Window ends are pane boundaries; the newest whose end + lateness <= the oldest watermark.
    let frontier = oldest.checked_sub(lateness)?;
    Some(frontier.div_euclid(m.window.slide_ms) * m.window.slide_ms)
}

/// Hands final results of every metric to `output` until `stop`, checking every `every`; the
/// partials and watermarks are read from `store`.
pub async fn run(
    store: Arc<dyn StateStore>,
    output: Arc<dyn ResultsOutput>,
    mut set: watch::Receiver<Arc<MetricSet>>,
    partitions: Partitions,
    every: Duration,
    stop: CancellationToken,
) {
    let mut writer = Writer {
        store,
        output,
        written: HashMap::new(),
        partitions: Vec::new(),
        asked: None,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = set.borrow_and_update().clone();
        if let Err(e) = writer.round(&current, &partitions).await {
            tracing::warn!(error = %format!("{e:#}"), "final window results not written this round; will try again");
        }
    }
}

struct Writer {
    store: Arc<dyn StateStore>,
    output: Arc<dyn ResultsOutput>,
    /// Per metric (state key), the end of the newest window written.
    written: HashMap<String, i64>,
    partitions: Vec<i32>,
    /// When the partitions were last asked for.
    asked: Option<std::time::Instant>,
}

impl Writer {
    async fn round(&mut self, set: &MetricSet, partitions: &Partitions) -> anyhow::Result<()> {
        if self
            .asked
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.partitions = partitions().await?;
            self.asked = Some(std::time::Instant::now());
        }
        for m in set.metrics() {
            self.metric(m).await?;
        }
        Ok(())
    }

    /// Writes the windows of `m` that became final since the last round.
    async fn metric(&mut self, m: &Metric) -> anyhow::Result<()> {
        let watermarks: HashMap<i32, i64> = super::keys::stored_watermarks(m, &*self.store)
            .await?
            .into_iter()
            .collect();
        let Some(until) = final_until(m, &self.partitions, &watermarks) else {
            return Ok(());
        };
        let slide = m.window.slide_ms;
        let last = match self.written.get(m.state_key()) {
            Some(end) => *end,
            // After a start: go on from the newest stored result, or begin with the newest final
            // window (older windows are history, not results this run made final).
            None => self.output.latest(m.name()).await?.unwrap_or(until - slide),
        };
        // While the metric fills from history its windows are partial: none is final yet.
        if super::backfill::progress(m, &*self.store).await?.is_some() {
            self.written.insert(m.state_key().to_string(), last);
            return Ok(());
        }
        let upto = until.min(last + slide * WINDOWS_PER_ROUND as i64);
        if upto > last {
            // The windows ending at last + slide ..= upto, one step apart, from one read of their
            // partials (the dashboard's history does the same).
            let points = history(m, &*self.store, last, upto - 1, WINDOWS_PER_ROUND).await?;
            let rows: Vec<ResultRow> = points
                .into_iter()
                .map(|p| super::keys::result_row(m, p))
                .collect();
            self.output.publish(&rows).await?;
            tracing::debug!(
                metric = m.name(),
                windows = rows.len(),
                until,
                "final window results written"
            );
            self.written.insert(m.state_key().to_string(), upto);
        } else {
            self.written.insert(m.state_key().to_string(), last);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::MetricConfig;

    fn metric(window: &str, slide: &str, lateness: &str) -> Metric {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("m.rhai");
        std::fs::write(&script, "#{}").unwrap();
        let text = format!("name = \"m\"\nscript = {script:?}\nreducer = \"count\"\nwindow = \"{window}\"\nslide = \"{slide}\"\nlateness = \"{lateness}\"\n");
        let config: MetricConfig = toml::from_str(&text).unwrap();
        let schema = crate::event::schema_of(
            "fields = { id = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"",
        );
        Metric::load(&config, &schema, &Default::default()).unwrap()
    }

    #[test]
    fn results_follow_an_avro_event_format_and_confluent_ones_need_a_schema_id() {
        let event = |text: &str| {
            toml::from_str::<EventConfig>(&format!("id = \"i\"\ntime = \"t\"\n{text}")).unwrap()
        };
        let avro = event("format = \"avro\"\nschema = \"a.avsc\"\nframing = \"confluent\"");
        let protobuf = event("format = \"protobuf\"\nschema = \"a.proto\"");
        let results = |text: &str| toml::from_str::<ResultsConfig>(text).unwrap();
        let topic = results("topic = \"r\"");
        assert_eq!(topic.format(&avro), ResultFormat::Avro);
        assert_eq!(topic.format(&protobuf), ResultFormat::Json);
        assert_eq!(
            results("topic = \"r\"\nformat = \"json\"").format(&avro),
            ResultFormat::Json
        );
        let problems = topic.problems(&avro);
        assert!(
            problems.len() == 1 && problems[0].contains("results.schema_id"),
            "{problems:?}"
        );
        assert!(results("topic = \"r\"\nschema_id = 4")
            .problems(&avro)
            .is_empty());
        let mut registered = avro.clone();
        registered.registry = Some("http://registry:8081".into());
        assert!(topic.problems(&registered).is_empty());
        assert!(topic.problems(&protobuf).is_empty());
        let problems = results("format = \"avro\"").problems(&avro);
        assert!(
            problems.len() == 1 && problems[0].contains("results.topic, which is not set"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_window_is_final_once_its_end_plus_lateness_is_behind_every_partition() {
        let m = metric("60s", "5s", "5s");
        let marks = HashMap::from([(0, 100_000), (1, 72_000), (2, 200_000)]);
        // The slowest partition is at 72 s: windows ending at or before 67 s are final; the
        // newest such end on the 5 s grid is 65 s.
        assert_eq!(final_until(&m, &[0, 1, 2], &marks), Some(65_000));
        assert_eq!(
            final_until(&m, &[0, 2], &marks),
            Some(95_000),
            "only the partitions named count"
        );
        assert_eq!(
            final_until(&m, &[0, 1, 2, 3], &marks),
            None,
            "a partition with no watermark holds every window open"
        );
        assert_eq!(final_until(&m, &[], &marks), None);
    }
}
