//! The MongoDB store, through the official driver: `insert_many` in unordered batches against a
//! unique index on event_id, so a replayed batch writes only what is missing.

use super::{EventStore, InsertOutcome};
use crate::aggregate::PaneRecord;
use crate::alert::Notification;
use crate::dead_letter::DeadLetter;
use std::future::IntoFuture;
use crate::config::de;
use crate::event::Event;
use anyhow::{bail, Context};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::Deserialize;
use std::time::{Duration, Instant};

/// `[mongodb]` section. `uri = "embedded"` selects the embedded store instead.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// A `mongodb://` or `mongodb+srv://` connection string, or `embedded`.
    pub uri: String,
    /// Database holding the collections.
    pub database: String,
    /// Collection of raw events.
    #[serde(default = "default_raw")]
    pub raw_collection: String,
    /// Collection of aggregated metric state.
    #[serde(default = "default_metrics")]
    pub metrics_collection: String,
    /// Collection of alert notifications (the alert history).
    #[serde(default = "default_alerts")]
    pub alerts_collection: String,
    /// Collection of alert rule state (pending and firing instances), so a restart re-sends nothing.
    #[serde(default = "default_alert_state")]
    pub alert_state_collection: String,
    /// Collection of messages the pipeline could not use, with the reason.
    #[serde(default = "default_dead_letters")]
    pub dead_letter_collection: String,
    /// How long raw events are kept (a TTL index on timestamp); unset keeps them forever.
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub retention: Option<Duration>,
    /// How long to keep retrying an unreachable server at start before giving up.
    #[serde(default = "default_connect_timeout", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for MongoConfig {
    /// The uri's password is shown as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &redact(&self.uri))
            .field("database", &self.database)
            .field("raw_collection", &self.raw_collection)
            .field("metrics_collection", &self.metrics_collection)
            .field("alerts_collection", &self.alerts_collection)
            .field("alert_state_collection", &self.alert_state_collection)
            .field("dead_letter_collection", &self.dead_letter_collection)
            .field("retention", &self.retention)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

fn default_raw() -> String {
    "raw_interactions".into()
}
fn default_metrics() -> String {
    "aggregated_metrics".into()
}
fn default_alerts() -> String {
    "alerts".into()
}
fn default_alert_state() -> String {
    "alert_state".into()
}
fn default_dead_letters() -> String {
    "dead_letters".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(60)
}

impl MongoConfig {
    /// True when the pipeline uses the embedded store instead of MongoDB.
    pub fn is_embedded(&self) -> bool {
        self.uri.trim().eq_ignore_ascii_case("embedded")
    }

    /// Problems a parse cannot catch (the uri's form is checked without connecting).
    pub fn check(&self) -> Option<String> {
        let mut p = Vec::new();
        let scheme_ok = self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://");
        if !self.is_embedded() && !scheme_ok {
            p.push(format!(
                "mongodb.uri must start with mongodb:// or mongodb+srv:// (or be \"embedded\"), got {:?}",
                redact(&self.uri)
            ));
        }
        if self.database.is_empty() || self.raw_collection.is_empty() || self.metrics_collection.is_empty() {
            p.push("mongodb.database and the collection names must not be empty".to_string());
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

/// The uri with any password replaced, for logs and errors.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_string(),
    }
}

/// The driver settings the store writes with (the bench's raw baseline uses them too).
pub async fn client_options(uri: &str) -> anyhow::Result<ClientOptions> {
    let mut options =
        ClientOptions::parse(uri).await.with_context(|| format!("mongodb.uri {:?} is not a valid connection string", redact(uri)))?;
    options.app_name.get_or_insert_with(|| "runner".to_string());
    options.server_selection_timeout.get_or_insert(Duration::from_secs(3));
    // Kafka offsets are committed once the store acknowledges a batch, so an acknowledgment
    // must mean the write survives the server being killed: journaled, unless the connection
    // string says otherwise (`journal=false`).
    options.write_concern.get_or_insert_with(Default::default).journal.get_or_insert(true);
    Ok(options)
}

/// Raw events in a MongoDB collection.
pub struct MongoStore {
    raw: Collection<Document>,
    panes: Collection<Document>,
    alerts: Collection<Document>,
    alert_state: Collection<Document>,
    dead_letters: Collection<Document>,
    described: String,
}

impl MongoStore {
    /// Connects (retrying with backoff up to `connect_timeout`, never falling back) and creates
    /// the indexes.
    pub async fn connect(config: &MongoConfig) -> anyhow::Result<Self> {
        let shown = redact(&config.uri);
        let client = Client::with_options(client_options(&config.uri).await?).context("cannot create the MongoDB client")?;
        let db = client.database(&config.database);
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match db.run_command(doc! {"ping": 1}).await {
                Ok(_) => break,
                Err(e) if started.elapsed() + wait < config.connect_timeout => {
                    tracing::warn!(uri = %shown, attempt, error = %e, retry_in = ?wait,
                        "cannot reach mongodb; retrying (connect_timeout = {:?})", config.connect_timeout);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => bail!(
                    "cannot reach MongoDB at {shown} after {:?} ({e}); check that the server runs and \
                     mongodb.uri / MONGODB_CONNECTION_STRING / --mongodb point at it",
                    started.elapsed()
                ),
            }
        }
        let raw = db.collection::<Document>(&config.raw_collection);
        create_indexes(&raw, config.retention).await?;
        let panes = db.collection::<Document>(&config.metrics_collection);
        panes
            .create_index(IndexModel::builder().keys(doc! {"metric": 1, "pane_start": 1}).build())
            .await
            .with_context(|| format!("cannot create indexes on {}", panes.namespace()))?;
        let alerts = db.collection::<Document>(&config.alerts_collection);
        alerts
            .create_index(IndexModel::builder().keys(doc! {"at": -1}).build())
            .await
            .with_context(|| format!("cannot create indexes on {}", alerts.namespace()))?;
        Ok(MongoStore {
            raw,
            panes,
            alerts,
            alert_state: db.collection::<Document>(&config.alert_state_collection),
            dead_letters: db.collection::<Document>(&config.dead_letter_collection),
            described: format!("MongoDB {shown} database {:?} collection {:?}", config.database, config.raw_collection),
        })
    }
}

/// The raw collection's indexes: unique event_id, user_id, item_id, timestamp (TTL with retention).
pub async fn create_indexes(raw: &Collection<Document>, retention: Option<Duration>) -> anyhow::Result<()> {
    let unique = IndexOptions::builder().unique(true).name("event_id_unique".to_string()).build();
    let mut models = vec![
        IndexModel::builder().keys(doc! {"event_id": 1}).options(unique).build(),
        IndexModel::builder().keys(doc! {"user_id": 1}).build(),
        IndexModel::builder().keys(doc! {"item_id": 1}).build(),
    ];
    // The TTL index doubles as the timestamp index.
    let ts_options = retention.map(|r| IndexOptions::builder().expire_after(r).name("timestamp_ttl".to_string()).build());
    models.push(IndexModel::builder().keys(doc! {"timestamp": 1}).options(ts_options).build());
    raw.create_indexes(models)
        .await
        .with_context(|| format!("cannot create indexes on {} (an index with other options may exist: drop it, or align the retention setting)", raw.namespace()))?;
    Ok(())
}

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// A single-document write that failed only because the document is already there.
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(*e.kind, ErrorKind::Write(WriteFailure::WriteError(ref w)) if w.code == DUPLICATE_KEY)
}

/// The newest `limit` records of a history collection (sorted by `at`), each kept as JSON text
/// in `field`.
async fn newest<T: serde::de::DeserializeOwned>(c: &Collection<Document>, field: &str, limit: usize) -> anyhow::Result<Vec<T>> {
    let docs: Vec<Document> = c.find(doc! {}).sort(doc! {"at": -1}).limit(limit as i64).await?.try_collect().await?;
    docs.iter()
        .map(|d| Ok(serde_json::from_str(d.get_str(field)?)?))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("a stored record in {} is malformed", c.namespace()))
}

#[async_trait]
impl EventStore for MongoStore {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn insert_events(&self, events: &[Event]) -> anyhow::Result<InsertOutcome> {
        if events.is_empty() {
            return Ok(InsertOutcome::default());
        }
        let docs: Vec<Document> = events.iter().map(to_document).collect();
        let total = docs.len() as u64;
        match self.raw.insert_many(docs).ordered(false).await {
            Ok(r) => Ok(InsertOutcome { inserted: r.inserted_ids.len() as u64, duplicates: 0 }),
            Err(e) => match *e.kind {
                ErrorKind::InsertMany(ref failure) => {
                    let write_errors = failure.write_errors.as_deref().unwrap_or(&[]);
                    if let Some(other) = write_errors.iter().find(|w| w.code != DUPLICATE_KEY) {
                        bail!("MongoDB refused an event: {} (code {})", other.message, other.code);
                    }
                    if let Some(wc) = &failure.write_concern_error {
                        bail!("MongoDB write concern failed: {}", wc.message);
                    }
                    let duplicates = write_errors.len() as u64;
                    Ok(InsertOutcome { inserted: total - duplicates, duplicates })
                }
                ErrorKind::Write(WriteFailure::WriteError(ref w)) if w.code == DUPLICATE_KEY && total == 1 => {
                    Ok(InsertOutcome { inserted: 0, duplicates: 1 })
                }
                _ => Err(anyhow::Error::new(e).context("MongoDB insert_many failed")),
            },
        }
    }

    async fn count_events(&self) -> anyhow::Result<u64> {
        Ok(self.raw.count_documents(doc! {}).await.context("MongoDB count failed")?)
    }

    async fn all_events(&self) -> anyhow::Result<Vec<Event>> {
        let docs: Vec<Document> = self
            .raw
            .find(doc! {})
            .sort(doc! {"timestamp": 1})
            .await
            .context("MongoDB find failed")?
            .try_collect()
            .await
            .context("MongoDB find failed")?;
        docs.into_iter().map(from_document).collect()
    }

    async fn write_panes(&self, panes: &[PaneRecord]) -> anyhow::Result<()> {
        // One upsert per partial, sent concurrently; each is atomic with its own offset.
        let writes = panes.iter().map(|p| {
            let id = format!("{}|{}|{}", p.metric, p.pane_start, p.partition);
            let d = doc! {
                "_id": &id,
                "metric": &p.metric,
                "pane_start": p.pane_start,
                "partition": p.partition,
                "offset": p.offset,
                // JSON text, because group keys are user data and need not be valid BSON field names.
                "state": p.state.to_string(),
                "updated_at": bson::DateTime::now(),
            };
            // Never replace a partial that already includes later offsets (written by the consumer
            // that owns the partition now): the filter fails, the upsert collides on _id, and the
            // stale write is dropped.
            let write = self.panes.replace_one(doc! {"_id": id, "offset": {"$lte": p.offset}}, d).upsert(true).into_future();
            async move {
                match write.await {
                    Ok(_) => Ok(()),
                    Err(e) if is_duplicate(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        });
        futures::future::try_join_all(writes).await.context("MongoDB metric state write failed")?;
        Ok(())
    }

    async fn load_panes(&self, metric: &str, from: i64, to: i64, partition: Option<i32>) -> anyhow::Result<Vec<PaneRecord>> {
        let mut filter = doc! {"metric": metric, "pane_start": {"$gte": from, "$lt": to}};
        if let Some(p) = partition {
            filter.insert("partition", p);
        }
        let docs: Vec<Document> = self.panes.find(filter).await.context("MongoDB metric state read failed")?.try_collect().await?;
        docs.into_iter()
            .map(|d| {
                Ok(PaneRecord {
                    metric: d.get_str("metric")?.to_string(),
                    pane_start: d.get_i64("pane_start")?,
                    partition: d.get_i32("partition")?,
                    offset: d.get_i64("offset")?,
                    state: serde_json::from_str(d.get_str("state")?)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored metric state is malformed")
    }

    async fn save_alert_state(&self, rule: &str, state: &serde_json::Value) -> anyhow::Result<()> {
        // JSON text: instance labels are user data and need not be valid BSON field names.
        let d = doc! {"_id": rule, "state": state.to_string(), "updated_at": bson::DateTime::now()};
        self.alert_state.replace_one(doc! {"_id": rule}, d).upsert(true).await.context("MongoDB alert state write failed")?;
        Ok(())
    }

    async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let docs: Vec<Document> = self.alert_state.find(doc! {}).await.context("MongoDB alert state read failed")?.try_collect().await?;
        docs.into_iter()
            .map(|d| Ok((d.get_str("_id")?.to_string(), serde_json::from_str(d.get_str("state")?)?)))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored alert state is malformed")
    }

    async fn record_alert(&self, n: &Notification) -> anyhow::Result<()> {
        let d = doc! {
            "_id": &n.id,
            "alert": &n.alert,
            "status": &n.status,
            "severity": &n.severity,
            "at": bson::DateTime::from_millis(n.at.timestamp_millis()),
            "notification": serde_json::to_string(n)?,
        };
        match self.alerts.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("MongoDB alert history write failed")),
        }
    }

    async fn recent_alerts(&self, limit: usize) -> anyhow::Result<Vec<Notification>> {
        newest(&self.alerts, "notification", limit).await.context("MongoDB alert history read failed")
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let docs = letters
            .iter()
            .map(|d| {
                Ok(doc! {
                    "_id": &d.id,
                    "reason": d.reason.as_str(),
                    "detail": &d.detail,
                    "partition": d.partition,
                    "offset": d.offset,
                    "at": bson::DateTime::from_millis(d.at.timestamp_millis()),
                    // The whole letter as JSON text too: the payload is arbitrary bytes made text.
                    "letter": serde_json::to_string(d)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        match self.dead_letters.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => match *e.kind {
                ErrorKind::InsertMany(ref f)
                    if f.write_concern_error.is_none() && f.write_errors.as_deref().unwrap_or(&[]).iter().all(|w| w.code == DUPLICATE_KEY) =>
                {
                    Ok(())
                }
                _ => Err(anyhow::Error::new(e).context("MongoDB dead letter write failed")),
            },
        }
    }

    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        newest(&self.dead_letters, "letter", limit).await.context("MongoDB dead letter read failed")
    }

    async fn count_dead_letters(&self) -> anyhow::Result<u64> {
        Ok(self.dead_letters.count_documents(doc! {}).await.context("MongoDB count failed")?)
    }
}

/// Raw document layout: the event's fields, with timestamp as a BSON date (TTL indexes and
/// range queries need a date, not a string).
pub fn to_document(e: &Event) -> Document {
    let mut d = doc! {
        "event_id": &e.event_id,
        "user_id": &e.user_id,
        "item_id": &e.item_id,
        "interaction_type": &e.interaction_type,
        "timestamp": bson::DateTime::from_millis(e.timestamp.timestamp_millis()),
        "session_id": &e.session_id,
        "value": e.value,
    };
    if let Some(p) = e.price {
        d.insert("price", p);
    }
    if let Some(v) = e.view_duration {
        d.insert("view_duration", v);
    }
    if !e.attributes.is_empty() {
        let attrs = Bson::try_from(serde_json::Value::Object(e.attributes.clone())).unwrap_or(Bson::Null);
        d.insert("attributes", attrs);
    }
    d
}

fn from_document(mut d: Document) -> anyhow::Result<Event> {
    let millis = d.get_datetime("timestamp").context("raw document without a date timestamp")?.timestamp_millis();
    let ts = chrono::DateTime::from_timestamp_millis(millis).context("raw document timestamp out of range")?;
    d.remove("_id");
    d.insert("timestamp", ts.to_rfc3339());
    let json: serde_json::Value = Bson::Document(d).into_relaxed_extjson();
    serde_json::from_value(json).context("raw document is not an event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("mongodb://bob:s3cret@h:27017/db"), "mongodb://bob:***@h:27017/db");
        assert_eq!(redact("mongodb://h:27017"), "mongodb://h:27017");
    }

    #[tokio::test]
    async fn writes_are_journaled_unless_the_uri_says_otherwise() {
        let journal = |o: ClientOptions| o.write_concern.and_then(|w| w.journal);
        assert_eq!(journal(client_options("mongodb://h:27017").await.unwrap()), Some(true));
        assert_eq!(journal(client_options("mongodb://h:27017/?w=majority").await.unwrap()), Some(true));
        assert_eq!(journal(client_options("mongodb://h:27017/?journal=false").await.unwrap()), Some(false));
    }
}
