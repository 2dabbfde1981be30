//! The MongoDB store, through the official driver: `insert_many` in unordered batches against a
//! unique index on event_id, so a replayed batch writes only what is missing.

mod document;
mod store;

pub use document::to_raw;

use crate::base::{de, Backoff};
use crate::event::Schema;
use crate::store::retention::RetentionConfig;
use crate::store::StoreKind;
use anyhow::{bail, Context};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[mongodb]` section. `uri = "embedded"` selects the embedded store instead.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// A `mongodb://` or `mongodb+srv://` connection string, or `embedded` for the local SQLite
    /// store [default: env MONGODB_CONNECTION_STRING, else `embedded`].
    #[serde(default)]
    pub uri: String,
    /// Database holding the collections [default: the pipeline's name].
    #[serde(default)]
    pub database: String,
    /// Collection of raw events [default: the pipeline's name].
    #[serde(default)]
    pub raw_collection: String,
    /// Collection of aggregated metric state [default: the pipeline's name with `_metrics`].
    #[serde(default)]
    pub metrics_collection: String,
    /// Collection of alert notifications (the alert history).
    #[serde(default = "default_alerts")]
    pub alerts_collection: String,
    /// Collection of alert rule state (pending and firing instances), so a restart re-sends nothing.
    #[serde(default = "default_alert_state")]
    pub alert_state_collection: String,
    /// Collection of alert silences, so every replica and a restart see them.
    #[serde(default = "default_silences")]
    pub silence_collection: String,
    /// Collection of messages the pipeline could not use, with the reason.
    #[serde(default = "default_dead_letters")]
    pub dead_letter_collection: String,
    /// Collection of final window results, readable without the runner:
    /// `{metric, window_start, window_end, value}`.
    #[serde(default = "default_results")]
    pub results_collection: String,
    /// Collection of leases (the one alert evaluator among replicas).
    #[serde(default = "default_leases")]
    pub lease_collection: String,
    /// Fields of `[event]` to index (ascending) besides the unique id and the time, which always are.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// How long to keep retrying an unreachable server at start before giving up.
    #[serde(default = "default_connect_timeout", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    /// Concurrent `insert_many` streams a batch of raw events is split over. The server takes
    /// more from several writers than from one (each waits for its journal commit); a batch is
    /// acknowledged only once every stream of it is durable.
    #[serde(default = "default_insert_streams", deserialize_with = "de::number")]
    pub insert_streams: usize,
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
            .field("silence_collection", &self.silence_collection)
            .field("dead_letter_collection", &self.dead_letter_collection)
            .field("results_collection", &self.results_collection)
            .field("lease_collection", &self.lease_collection)
            .field("indexes", &self.indexes)
            .field("connect_timeout", &self.connect_timeout)
            .field("insert_streams", &self.insert_streams)
            .finish()
    }
}

fn default_results() -> String {
    "metric_results".into()
}
fn default_leases() -> String {
    "leases".into()
}
fn default_alerts() -> String {
    "alerts".into()
}
fn default_alert_state() -> String {
    "alert_state".into()
}
fn default_silences() -> String {
    "silences".into()
}
fn default_dead_letters() -> String {
    "dead_letters".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_insert_streams() -> usize {
    4
}

impl MongoConfig {
    /// Fills the keys the file left out from the pipeline's name and the environment.
    pub fn fill_defaults(&mut self, name: &str, env: &dyn Fn(&str) -> Option<String>) {
        if self.uri.is_empty() {
            self.uri = env("MONGODB_CONNECTION_STRING")
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "embedded".into());
        }
        if self.database.is_empty() {
            self.database = name.to_string();
        }
        if self.raw_collection.is_empty() {
            self.raw_collection = name.to_string();
        }
        if self.metrics_collection.is_empty() {
            self.metrics_collection = format!("{name}_metrics");
        }
    }

    /// The store this section chooses: the one place the word `embedded` is read, so
    /// everything after it matches on a [`StoreKind`] rather than asking about a string.
    pub fn kind(&self) -> StoreKind {
        match self.uri.trim().eq_ignore_ascii_case("embedded") {
            true => StoreKind::Sqlite,
            false => StoreKind::MongoDb,
        }
    }

    /// Problems a parse cannot catch (the uri's form is checked without connecting).
    pub fn check(&self) -> Option<String> {
        let mut p = Vec::new();
        let scheme_ok =
            self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://");
        if self.kind() == StoreKind::MongoDb && !scheme_ok {
            p.push(format!(
                "mongodb.uri must start with mongodb:// or mongodb+srv:// (or be \"embedded\"), got {:?}",
                redact(&self.uri)
            ));
        }
        if self.insert_streams == 0 {
            p.push("mongodb.insert_streams must be at least 1".to_string());
        }
        if self.database.is_empty()
            || self.raw_collection.is_empty()
            || self.metrics_collection.is_empty()
        {
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
    let mut options = ClientOptions::parse(uri).await.with_context(|| {
        format!(
            "mongodb.uri {:?} is not a valid connection string",
            redact(uri)
        )
    })?;
    options.app_name.get_or_insert_with(|| "runner".to_string());
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(3));
    // Kafka offsets are committed once the store acknowledges a batch, so an acknowledgment
    // must mean the write survives the server being killed: journaled, unless the connection
    // string says otherwise (`journal=false`).
    options
        .write_concern
        .get_or_insert_with(Default::default)
        .journal
        .get_or_insert(true);
    Ok(options)
}

/// Raw events in a MongoDB collection.
pub struct MongoStore {
    raw: Collection<Document>,
    /// The raw collection for inserts, which send documents already encoded.
    raw_insert: Collection<RawDocumentBuf>,
    insert_streams: usize,
    panes: Collection<Document>,
    alerts: Collection<Document>,
    alert_state: Collection<Document>,
    silences: Collection<Document>,
    dead_letters: Collection<Document>,
    results: Collection<Document>,
    leases: Collection<Document>,
    /// The database, whose other collections are reference data ([`crate::store::Collections`]).
    db: mongodb::Database,
    described: String,
    schema: Arc<Schema>,
}

impl MongoStore {
    /// Connects (retrying with backoff up to `connect_timeout`, never falling back) and creates
    /// the indexes.
    pub async fn connect(
        config: &MongoConfig,
        retention: &RetentionConfig,
        schema: &Arc<Schema>,
    ) -> anyhow::Result<Self> {
        let shown = redact(&config.uri);
        let client = Client::with_options(client_options(&config.uri).await?)
            .context("cannot create the MongoDB client")?;
        let db = client.database(&config.database);
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5), None);
        while let Err(e) = db.run_command(doc! {"ping": 1}).await {
            match backoff.next_wait().filter(|wait| started.elapsed() + *wait < config.connect_timeout) {
                Some(wait) => {
                    tracing::warn!(uri = %shown, attempt = backoff.retries(), error = %e, retry_in = ?wait,
                        "cannot reach mongodb; retrying (connect_timeout = {:?})", config.connect_timeout);
                    tokio::time::sleep(wait).await;
                }
                None => bail!(
                    "cannot reach MongoDB at {shown} after {:?} ({e}); check that the server runs and \
                     mongodb.uri / MONGODB_CONNECTION_STRING / --mongodb point at it",
                    started.elapsed()
                ),
            }
        }
        let raw = db.collection::<Document>(&config.raw_collection);
        create_indexes(&raw, retention.raw, schema, &config.indexes).await?;
        let panes = db.collection::<Document>(&config.metrics_collection);
        panes
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"metric": 1, "pane_start": 1})
                    .build(),
            )
            .await
            .with_context(|| format!("cannot create indexes on {}", panes.namespace()))?;
        time_index(&panes, PANE_TIME, retention.panes).await?;
        let alerts = db.collection::<Document>(&config.alerts_collection);
        time_index(&alerts, "at", retention.alerts).await?;
        let dead_letters = db.collection::<Document>(&config.dead_letter_collection);
        time_index(&dead_letters, "at", retention.dead_letters).await?;
        let results = db.collection::<Document>(&config.results_collection);
        results
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"metric": 1, "window_end": 1})
                    .build(),
            )
            .await
            .with_context(|| format!("cannot create indexes on {}", results.namespace()))?;
        time_index(&results, "window_end", retention.results).await?;
        Ok(MongoStore {
            raw_insert: raw.clone_with_type(),
            insert_streams: config.insert_streams,
            raw,
            panes,
            alerts,
            alert_state: db.collection::<Document>(&config.alert_state_collection),
            silences: db.collection::<Document>(&config.silence_collection),
            dead_letters,
            results,
            leases: db.collection::<Document>(&config.lease_collection),
            db,
            described: format!(
                "MongoDB {shown} database {:?} collection {:?}",
                config.database, config.raw_collection
            ),
            schema: schema.clone(),
        })
    }
}

/// The date field of a pane document its retention expires it by: the pane start as a date.
pub(super) const PANE_TIME: &str = "pane_at";

/// The raw collection's indexes: the unique id, the time (TTL with `retention`), and each field
/// of `indexes`.
pub async fn create_indexes(
    raw: &Collection<Document>,
    retention: Option<Duration>,
    schema: &Schema,
    indexes: &[String],
) -> anyhow::Result<()> {
    let (id, time) = (schema.id_name(), schema.time_name());
    let unique = IndexOptions::builder()
        .unique(true)
        .name(format!("{id}_unique"))
        .build();
    let mut models = vec![IndexModel::builder()
        .keys(doc! {id: 1})
        .options(unique)
        .build()];
    models.extend(
        indexes
            .iter()
            .filter(|f| *f != id && *f != time)
            .map(|f| IndexModel::builder().keys(doc! {f: 1}).build()),
    );
    raw.create_indexes(models)
        .await
        .with_context(|| format!("cannot create indexes on {}", raw.namespace()))?;
    time_index(raw, time, retention).await
}

/// Makes the index on `field` a TTL index expiring documents `keep` after that date, or a plain
/// index when `keep` is unset. An index on the field with another expiry (the retention changed)
/// is dropped and built again, so changing `[retention]` needs no manual step.
async fn time_index(
    coll: &Collection<Document>,
    field: &str,
    keep: Option<Duration>,
) -> anyhow::Result<()> {
    // MongoDB keeps whole seconds.
    let keep = keep.map(|k| Duration::from_secs(k.as_secs().max(1)));
    let existing: Vec<IndexModel> = match coll.list_indexes().await {
        Ok(cursor) => cursor
            .try_collect()
            .await
            .with_context(|| format!("cannot list the indexes of {}", coll.namespace()))?,
        // A collection not created yet has no indexes.
        Err(e) if matches!(*e.kind, ErrorKind::Command(ref c) if c.code == NAMESPACE_NOT_FOUND) => {
            Vec::new()
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot list the indexes of {}", coll.namespace())))
        }
    };
    for index in existing
        .iter()
        .filter(|i| i.keys.len() == 1 && i.keys.contains_key(field))
    {
        let options = index.options.as_ref();
        if options.and_then(|o| o.expire_after).map(|e| e.as_secs()) == keep.map(|k| k.as_secs()) {
            return Ok(());
        }
        let name = options.and_then(|o| o.name.clone()).unwrap_or_default();
        coll.drop_index(&name).await.with_context(|| {
            format!(
                "cannot drop index {name:?} of {} to change its retention",
                coll.namespace()
            )
        })?;
        tracing::info!(collection = %coll.namespace(), index = %name, "retention changed: rebuilding the {field} index");
    }
    let options = IndexOptions::builder()
        .name(keep.map(|_| format!("{field}_ttl")))
        .expire_after(keep)
        .build();
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {field: 1})
            .options(options)
            .build(),
    )
    .await
    .with_context(|| format!("cannot create the {field} index on {}", coll.namespace()))?;
    Ok(())
}

/// MongoDB's error code for a database or collection that does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("mongodb://bob:s3cret@h:27017/db"),
            "mongodb://bob:***@h:27017/db"
        );
        assert_eq!(redact("mongodb://h:27017"), "mongodb://h:27017");
    }

    #[tokio::test]
    async fn writes_are_journaled_unless_the_uri_says_otherwise() {
        let journal = |o: ClientOptions| o.write_concern.and_then(|w| w.journal);
        assert_eq!(
            journal(client_options("mongodb://h:27017").await.unwrap()),
            Some(true)
        );
        assert_eq!(
            journal(
                client_options("mongodb://h:27017/?w=majority")
                    .await
                    .unwrap()
            ),
            Some(true)
        );
        assert_eq!(
            journal(
                client_options("mongodb://h:27017/?journal=false")
                    .await
                    .unwrap()
            ),
            Some(false)
        );
    }
}
