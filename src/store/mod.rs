//! Where raw events and computed state land, split by the role callers use: [`RawEvents`] (the
//! consumer's raw-record sink), [`StateStore`] (partials, results, alerts, dead letters, the
//! lease) and, where the store keeps arrival order, [`History`] replay. MongoDB and the embedded
//! SQLite store implement them, and one contract suite per role (`tests/store_contract.rs`) runs
//! against both so they cannot drift apart. A new store is a folder here, one [`StoreKind`]
//! variant and its arm in [`open`].

pub mod embedded;
pub mod mongo;
pub mod retention;
mod rows;

pub use rows::{
    Change, Labels, Matcher, Notification, PaneRecord, ResultRow, Silence, StateJson,
    MAX_STATE_BYTES, TIMELESS_PANE,
};

use crate::dead_letter::DeadLetter;
use crate::event::{Record, Schema};
use crate::transport::History;
use async_trait::async_trait;
use std::sync::Arc;

/// The outcome of writing one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Events written for the first time.
    pub inserted: u64,
    /// Positions in the batch of events whose id was already stored: skipped, not an error. A
    /// replay, usually; the consumer reads those ids back to tell a replay from another record
    /// that reuses an id (see [`RawEvents::stored_events`]).
    pub duplicates: Vec<usize>,
    /// Events the store refused for good (a document the server can never hold); the rest of the
    /// batch is stored. The consumer dead-letters these rather than retrying them forever.
    pub rejected: Vec<Rejected>,
}

/// One event of a batch the store refused, and the store's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its position in the batch.
    pub index: usize,
    pub reason: String,
}

/// A batch of raw events in the form a store writes them, made by [`RawEvents::encode`].
pub enum Encoded {
    /// Embedded rows: (id, time in ms, the record's JSON).
    Rows(Vec<(String, i64, String)>),
    /// MongoDB documents as BSON bytes, or why the record can never be one.
    Documents(Vec<Result<mongodb::bson::RawDocumentBuf, String>>),
    /// The store encodes as it writes.
    Nothing,
}

impl Encoded {
    /// Bytes of the encoded records (BSON documents or the embedded rows' id, time and JSON);
    /// 0 when the store encodes as it writes.
    pub fn bytes(&self) -> u64 {
        let bytes: usize = match self {
            Encoded::Rows(rows) => rows.iter().map(|r| r.0.len() + 8 + r.2.len()).sum(),
            Encoded::Documents(docs) => docs.iter().flatten().map(|d| d.as_bytes().len()).sum(),
            Encoded::Nothing => 0,
        };
        bytes as u64
    }

    /// `self` followed by `next`, for a batch encoded in parts; parts of different kinds give
    /// [`Encoded::Nothing`], and the store encodes the batch as it writes.
    pub fn then(self, next: Encoded) -> Encoded {
        match (self, next) {
            (Encoded::Rows(mut a), Encoded::Rows(b)) => {
                a.extend(b);
                Encoded::Rows(a)
            }
            (Encoded::Documents(mut a), Encoded::Documents(b)) => {
                a.extend(b);
                Encoded::Documents(a)
            }
            _ => Encoded::Nothing,
        }
    }

    /// `store`'s [`RawEvents::encode`] of `events` cut into `parts` run side by side on the
    /// caller's rayon pool, joined in order; one part is encoded on this thread.
    pub fn in_parts(store: &dyn RawEvents, events: &[Record], parts: usize) -> Encoded {
        use rayon::prelude::*;
        if parts <= 1 {
            return store.encode(events);
        }
        let size = events.len().div_ceil(parts).max(1);
        let encoded: Vec<Encoded> = events.par_chunks(size).map(|c| store.encode(c)).collect();
        encoded
            .into_iter()
            .reduce(Encoded::then)
            .unwrap_or(Encoded::Nothing)
    }
}

/// Which store keeps a pipeline's records, as `mongodb.uri` chose it ([`mongo::MongoConfig::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A MongoDB server (any MongoDB-wire server).
    MongoDb,
    /// The embedded SQLite store in `[embedded] data_dir`.
    Sqlite,
}

/// The raw-record sink: where the consumer lands every event, keyed by a unique event_id.
#[async_trait]
pub trait RawEvents: Send + Sync {
    /// Encodes a batch for [`Self::insert_encoded`]: CPU work only, so the consumer's reader
    /// does it for the next batch while the current one is written.
    fn encode(&self, _events: &[Record]) -> Encoded {
        Encoded::Nothing
    }
    /// [`Self::insert_events`] with `events` already encoded by [`Self::encode`] of this store.
    async fn insert_encoded(
        &self,
        events: &[Record],
        _encoded: Encoded,
    ) -> anyhow::Result<InsertOutcome> {
        self.insert_events(events).await
    }
    /// Writes a batch; an event already stored is counted as a duplicate, never written twice.
    /// Returns only once the write is durable (acknowledged by the server or committed locally).
    /// An error means "try again" (the store is unreachable or failing as a whole); an event the
    /// store can never hold is reported in [`InsertOutcome::rejected`] instead, so one poison
    /// record cannot stall its partition.
    async fn insert_events(&self, events: &[Record]) -> anyhow::Result<InsertOutcome>;
    /// How many raw events are stored.
    async fn count_events(&self) -> anyhow::Result<u64>;
    /// The stored raw events with these ids (those that are stored; any order).
    async fn stored_events(&self, ids: &[&str]) -> anyhow::Result<Vec<Record>>;
    /// Every stored raw event, oldest first (for recomputation and checks; not for the hot path).
    async fn all_events(&self) -> anyhow::Result<Vec<Record>>;
}

/// The state store: what the pipeline computes and decides, as opposed to the raw events it
/// reads — metric partials with their watermarks and seams, final results, alert state and
/// history, dead letters, and the alerting lease.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// One line for the start-up log: what kind of store and where (no credentials).
    fn describe(&self) -> String;
    /// Writes metric partial states, replacing the stored ones with the same (metric, pane,
    /// partition) unless the stored one includes a later offset; durable on return. Records at
    /// [`TIMELESS_PANE`] (watermarks) become visible only after the others of the call, so a
    /// reader that sees a watermark sees every partial written with it.
    async fn write_panes(&self, panes: &[PaneRecord]) -> anyhow::Result<()>;
    /// Partial states of `metric` with pane start in `[from, to)`, optionally of one partition.
    async fn load_panes(
        &self,
        metric: &str,
        from: i64,
        to: i64,
        partition: Option<i32>,
    ) -> anyhow::Result<Vec<PaneRecord>>;
    /// Replaces the stored state of alert rule `rule` (its instances, and when each was notified).
    async fn save_alert_state(&self, rule: &str, state: &serde_json::Value) -> anyhow::Result<()>;
    /// Every rule's stored alert state.
    async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, serde_json::Value)>>;
    /// Stores a silence, replacing the one with the same id (to expire it early).
    async fn save_silence(&self, silence: &Silence) -> anyhow::Result<()>;
    /// The silences that end after `ended_after_ms` (active, pending, and those expired since
    /// then), oldest start first.
    async fn silences(&self, ended_after_ms: i64) -> anyhow::Result<Vec<Silence>>;
    /// Appends a notification to the alert history; storing the same id again changes nothing.
    async fn record_alert(&self, notification: &Notification) -> anyhow::Result<()>;
    /// The latest `limit` notifications, newest first.
    async fn recent_alerts(&self, limit: usize) -> anyhow::Result<Vec<Notification>>;
    /// Stores messages the pipeline could not use; one already stored (same id) is kept once.
    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> anyhow::Result<()>;
    /// The latest `limit` dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>>;
    /// How many dead letters are stored.
    async fn count_dead_letters(&self) -> anyhow::Result<u64>;
    /// Whether the store answers, at the least cost (a readiness probe asks it every few
    /// seconds): by default a read of an empty range, which any index answers at once.
    async fn ping(&self) -> anyhow::Result<()> {
        self.load_panes("", 0, 0, None).await.map(drop)
    }
    /// Writes final window results; writing one again (same metric and window end) stores the
    /// same row once.
    async fn write_results(&self, rows: &[ResultRow]) -> anyhow::Result<()>;
    /// The results of `metric` whose window ends in `[from, to)`, oldest first.
    async fn load_results(
        &self,
        metric: &str,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<ResultRow>>;
    /// The window end of the newest stored result of `metric`.
    async fn latest_result(&self, metric: &str) -> anyhow::Result<Option<i64>>;
    /// Takes lease `name` for `holder` for `ttl_ms` if it is free, expired or `holder`'s already;
    /// true when `holder` holds it afterwards (`ttl_ms = 0` gives it up). One atomic step, so of
    /// several processes asking at once exactly one gets it. Expiry is judged by the store's own
    /// clock, never the caller's: a replica whose clock runs minutes ahead would otherwise see
    /// every lease as expired and notify beside the holder.
    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> anyhow::Result<bool>;
}

/// A document of a [`Collections`] collection.
pub type Document = serde_json::Map<String, serde_json::Value>;

/// Reference data kept in the store and read, never written, by the running pipeline: the
/// documents of a named collection (a lookup table such as an item catalogue, `[[lookup]]
/// collection = "items"`). `runner lookup load` fills one; a MongoDB user may use any client.
#[async_trait]
pub trait Collections: Send + Sync {
    /// Up to `limit` documents of collection `name`, in the same order on every read (so a
    /// refresh can tell whether they changed); none when it does not exist.
    async fn documents(&self, name: &str, limit: usize) -> anyhow::Result<Vec<Document>>;
    /// Replaces every document of collection `name` with `documents`.
    async fn replace_documents(&self, name: &str, documents: &[Document]) -> anyhow::Result<()>;
}

/// A store of both roles: what the consumer writes to (raw events, then the partials and dead
/// letters of the same batch). Every type with both roles is one.
pub trait Store: RawEvents + StateStore {}

impl<T: RawEvents + StateStore + ?Sized> Store for T {}

/// A store as [`open`] built it: both roles, and the history replay when the store keeps raw
/// events in order of arrival (the embedded store: its row numbers; MongoDB keeps no such order,
/// and a backfill there reads the Kafka log instead).
#[derive(Clone)]
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub history: Option<Arc<dyn History>>,
    /// Its reference collections (lookup tables).
    pub collections: Arc<dyn Collections>,
}

/// Opens the store `mongodb` chooses for records of `schema`: MongoDB, or the embedded store (in
/// `embedded`'s folder); either expires rows as `retention` says.
pub async fn open(
    mongodb: &mongo::MongoConfig,
    embedded: &embedded::EmbeddedConfig,
    retention: &retention::RetentionConfig,
    schema: &Arc<Schema>,
) -> anyhow::Result<Opened> {
    match mongodb.kind() {
        StoreKind::Sqlite => {
            // Opening SQLite creates files and tables: blocking work, off the async runtime.
            let (config, retention, schema, indexes) = (
                embedded.clone(),
                retention.clone(),
                schema.clone(),
                mongodb.indexes.clone(),
            );
            let store = Arc::new(
                tokio::task::spawn_blocking(move || {
                    embedded::EmbeddedStore::open(&config, &retention, &schema, &indexes)
                })
                .await??,
            );
            Ok(Opened {
                store: store.clone(),
                history: Some(store.clone()),
                collections: store,
            })
        }
        StoreKind::MongoDb => {
            let store = Arc::new(mongo::MongoStore::connect(mongodb, retention, schema).await?);
            Ok(Opened {
                store: store.clone(),
                history: None,
                collections: store,
            })
        }
    }
}

/// The store in use, replaceable while the pipeline runs: when a reload changes `[mongodb]` or
/// `[embedded]`, the consumer is drained and restarted on the new store, and everyone holding
/// this handle (dashboard, alerting) reads from the new one from then on.
pub struct Switchable {
    inner: std::sync::RwLock<Opened>,
}

impl Switchable {
    pub fn new(opened: Opened) -> Arc<Switchable> {
        Arc::new(Switchable {
            inner: std::sync::RwLock::new(opened),
        })
    }

    /// The store in use now.
    pub fn current(&self) -> Arc<dyn Store> {
        self.inner.read().unwrap().store.clone()
    }

    /// The store in use now, with its history replay.
    pub fn opened(&self) -> Opened {
        self.inner.read().unwrap().clone()
    }

    /// Makes `opened` the one in use.
    pub fn replace(&self, opened: Opened) {
        *self.inner.write().unwrap() = opened;
    }
}

#[async_trait]
impl Collections for Switchable {
    async fn documents(&self, name: &str, limit: usize) -> anyhow::Result<Vec<Document>> {
        let collections = self.opened().collections;
        collections.documents(name, limit).await
    }
    async fn replace_documents(&self, name: &str, documents: &[Document]) -> anyhow::Result<()> {
        let collections = self.opened().collections;
        collections.replace_documents(name, documents).await
    }
}

#[async_trait]
impl RawEvents for Switchable {
    fn encode(&self, events: &[Record]) -> Encoded {
        self.current().encode(events)
    }
    async fn insert_events(&self, events: &[Record]) -> anyhow::Result<InsertOutcome> {
        self.current().insert_events(events).await
    }
    async fn insert_encoded(
        &self,
        events: &[Record],
        encoded: Encoded,
    ) -> anyhow::Result<InsertOutcome> {
        // Encoded for a store since replaced: that store's kind of encoding is re-done by the new one.
        self.current().insert_encoded(events, encoded).await
    }
    async fn stored_events(&self, ids: &[&str]) -> anyhow::Result<Vec<Record>> {
        self.current().stored_events(ids).await
    }
    async fn count_events(&self) -> anyhow::Result<u64> {
        self.current().count_events().await
    }
    async fn all_events(&self) -> anyhow::Result<Vec<Record>> {
        self.current().all_events().await
    }
}

#[async_trait]
impl StateStore for Switchable {
    fn describe(&self) -> String {
        self.current().describe()
    }
    async fn write_panes(&self, panes: &[PaneRecord]) -> anyhow::Result<()> {
        self.current().write_panes(panes).await
    }
    async fn load_panes(
        &self,
        metric: &str,
        from: i64,
        to: i64,
        partition: Option<i32>,
    ) -> anyhow::Result<Vec<PaneRecord>> {
        self.current().load_panes(metric, from, to, partition).await
    }
    async fn save_alert_state(&self, rule: &str, state: &serde_json::Value) -> anyhow::Result<()> {
        self.current().save_alert_state(rule, state).await
    }
    async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        self.current().load_alert_states().await
    }
    async fn save_silence(&self, silence: &Silence) -> anyhow::Result<()> {
        self.current().save_silence(silence).await
    }
    async fn silences(&self, ended_after_ms: i64) -> anyhow::Result<Vec<Silence>> {
        self.current().silences(ended_after_ms).await
    }
    async fn record_alert(&self, notification: &Notification) -> anyhow::Result<()> {
        self.current().record_alert(notification).await
    }
    async fn recent_alerts(&self, limit: usize) -> anyhow::Result<Vec<Notification>> {
        self.current().recent_alerts(limit).await
    }
    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        self.current().write_dead_letters(letters).await
    }
    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        self.current().dead_letters(limit).await
    }
    async fn count_dead_letters(&self) -> anyhow::Result<u64> {
        self.current().count_dead_letters().await
    }
    async fn ping(&self) -> anyhow::Result<()> {
        self.current().ping().await
    }
    async fn write_results(&self, rows: &[ResultRow]) -> anyhow::Result<()> {
        self.current().write_results(rows).await
    }
    async fn load_results(
        &self,
        metric: &str,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<ResultRow>> {
        self.current().load_results(metric, from, to).await
    }
    async fn latest_result(&self, metric: &str) -> anyhow::Result<Option<i64>> {
        self.current().latest_result(metric).await
    }
    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> anyhow::Result<bool> {
        self.current().take_lease(name, holder, ttl_ms).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader's encoding in parts on worker threads joins to the whole batch's, in order.
    #[test]
    fn a_batch_encoded_in_parts_is_the_batch_encoded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let schema = crate::event::schema_of(
            "fields = { id = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"",
        );
        let config = embedded::EmbeddedConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let store =
            embedded::EmbeddedStore::open(&config, &Default::default(), &schema, &[]).unwrap();
        let events: Vec<Record> = (0..10)
            .map(|i| {
                Record::from_json(
                    &schema,
                    format!(r#"{{"id":"e{i}","t":"2026-01-01T00:00:0{i}Z"}}"#).as_bytes(),
                )
                .unwrap()
            })
            .collect();
        let rows = |e: Encoded| match e {
            Encoded::Rows(rows) => rows,
            _ => panic!("not rows"),
        };
        let whole = rows(store.encode(&events));
        let parts =
            rows(crate::base::Workers::new(3).run(|_| Encoded::in_parts(&store, &events, 3)));
        assert_eq!(parts, whole);
        assert_eq!(whole.len(), 10);
        assert!(
            matches!(
                Encoded::Rows(Vec::new()).then(Encoded::Nothing),
                Encoded::Nothing
            ),
            "parts of different kinds: encode again"
        );
    }
}
