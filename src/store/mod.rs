//! Where raw events land. MongoDB and the embedded SQLite store implement one interface, and one
//! contract test suite (`tests/store_contract.rs`) runs against both so they cannot drift apart.

pub mod embedded;
pub mod mongo;
pub mod retention;
mod rows;

pub use rows::{
    Change, Labels, Notification, PaneRecord, ResultRow, StateJson, MAX_STATE_BYTES, TIMELESS_PANE,
};

use crate::dead_letter::DeadLetter;
use crate::event::{Record, Schema};
use async_trait::async_trait;
use std::sync::Arc;

/// The outcome of writing one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Events written for the first time.
    pub inserted: u64,
    /// Positions in the batch of events whose id was already stored: skipped, not an error. A
    /// replay, usually; the consumer reads those ids back to tell a replay from another record
    /// that reuses an id (see [`EventStore::stored_events`]).
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

/// A batch of raw events in the form a store writes them, made by [`EventStore::encode`].
pub enum Encoded {
    /// Embedded rows: (id, time in ms, the record's JSON).
    Rows(Vec<(String, i64, String)>),
    /// MongoDB documents as BSON bytes, or why the record can never be one.
    Documents(Vec<Result<mongodb::bson::RawDocumentBuf, String>>),
    /// The store encodes as it writes.
    Nothing,
}

impl Encoded {
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

    /// `store`'s [`EventStore::encode`] of `events` cut into `parts` run side by side on the
    /// caller's rayon pool, joined in order; one part is encoded on this thread.
    pub fn in_parts(store: &dyn EventStore, events: &[Record], parts: usize) -> Encoded {
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

/// A durable home for raw events, keyed by a unique event_id.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// One line for the start-up log: what kind of store and where (no credentials).
    fn describe(&self) -> String;
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
    /// The position of the newest raw event, for a backfill from the store (the embedded store:
    /// its row number, which grows with every insert); `None` when this store keeps no order of
    /// arrival (MongoDB: a backfill there reads the Kafka log instead).
    async fn raw_position(&self) -> anyhow::Result<Option<i64>> {
        Ok(None)
    }
    /// The position of the first raw event whose time is at or after `since_ms` (past the newest
    /// when there is none).
    async fn raw_start(&self, _since_ms: i64) -> anyhow::Result<i64> {
        anyhow::bail!(
            "{} cannot read raw events back in arrival order",
            self.describe()
        )
    }
    /// Raw events at positions in `(after, upto]`, in position order, at most `limit`, each with
    /// its position.
    async fn raw_after(
        &self,
        _after: i64,
        _upto: i64,
        _limit: usize,
    ) -> anyhow::Result<Vec<(i64, Record)>> {
        anyhow::bail!(
            "{} cannot read raw events back in arrival order",
            self.describe()
        )
    }
}

/// Opens the store `mongodb` names for records of `schema`: MongoDB, or the embedded store (in
/// `embedded`'s folder) when the uri is `embedded`; either expires rows as `retention` says.
pub async fn open(
    mongodb: &mongo::MongoConfig,
    embedded: &embedded::EmbeddedConfig,
    retention: &retention::RetentionConfig,
    schema: &Arc<Schema>,
) -> anyhow::Result<Arc<dyn EventStore>> {
    if mongodb.is_embedded() {
        // Opening SQLite creates files and tables: blocking work, off the async runtime.
        let (config, retention, schema, indexes) = (
            embedded.clone(),
            retention.clone(),
            schema.clone(),
            mongodb.indexes.clone(),
        );
        Ok(Arc::new(
            tokio::task::spawn_blocking(move || {
                embedded::EmbeddedStore::open(&config, &retention, &schema, &indexes)
            })
            .await??,
        ))
    } else {
        Ok(Arc::new(
            mongo::MongoStore::connect(mongodb, retention, schema).await?,
        ))
    }
}

/// The store in use, replaceable while the pipeline runs: when a reload changes `[mongodb]` or
/// `[embedded]`, the consumer is drained and restarted on the new store, and everyone holding
/// this handle (dashboard, alerting) reads from the new one from then on.
pub struct Switchable {
    inner: std::sync::RwLock<Arc<dyn EventStore>>,
}

impl Switchable {
    pub fn new(store: Arc<dyn EventStore>) -> Arc<Switchable> {
        Arc::new(Switchable {
            inner: std::sync::RwLock::new(store),
        })
    }

    /// The store in use now.
    pub fn current(&self) -> Arc<dyn EventStore> {
        self.inner.read().unwrap().clone()
    }

    /// Makes `store` the one in use.
    pub fn replace(&self, store: Arc<dyn EventStore>) {
        *self.inner.write().unwrap() = store;
    }
}

#[async_trait]
impl EventStore for Switchable {
    fn describe(&self) -> String {
        self.current().describe()
    }
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
    async fn raw_position(&self) -> anyhow::Result<Option<i64>> {
        self.current().raw_position().await
    }
    async fn raw_start(&self, since_ms: i64) -> anyhow::Result<i64> {
        self.current().raw_start(since_ms).await
    }
    async fn raw_after(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<(i64, Record)>> {
        self.current().raw_after(after, upto, limit).await
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
