//! The embedded store: SQLite in a local data directory, used when no MongoDB is configured.
//! Same contract as MongoDB: a unique record id, durable on return, kept across restarts. Records
//! are kept as JSON with the id and time in columns of their own; each field `[mongodb] indexes`
//! names gets a generated column and an index, so it is queryable like a column. Its row
//! numbers keep the order of arrival, so it is also a [`crate::transport::History`] (history.rs).

mod history;
mod state;

use super::retention::RetentionConfig;
use super::{Encoded, InsertOutcome, RawEvents};

use crate::base::de;
use crate::event::{Record, Schema};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `[embedded]` section: where the embedded store lives and how deep the in-process queue is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Folder for the SQLite database (created if missing; relative to the working directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Batches the in-process queue holds before the generator has to wait.
    #[serde(default = "default_queue_capacity", deserialize_with = "de::number")]
    pub queue_capacity: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            data_dir: default_data_dir(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_queue_capacity() -> usize {
    16
}

/// Raw events in `<data_dir>/runner.db`.
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    /// A read-only connection of its own for reads (the dashboard, the API, the alert history):
    /// in WAL mode a reader sees the last commit and never waits for the writer, so a page
    /// reading a day of panes cannot hold back the consumer's inserts (it did when both
    /// queued for one connection).
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    schema: Arc<Schema>,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS raw_records (
        id TEXT PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS raw_records_time ON raw_records(time_ms);
    CREATE TABLE IF NOT EXISTS metric_panes (
        metric TEXT NOT NULL,
        pane_start INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (metric, pane_start, partition)
    );
    CREATE TABLE IF NOT EXISTS alert_state (
        rule TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS silences (
        id TEXT PRIMARY KEY,
        starts_ms INTEGER NOT NULL,
        ends_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS alerts (
        id TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        alert TEXT NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS alerts_at ON alerts(at_ms);
    CREATE TABLE IF NOT EXISTS dead_letters (
        id TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS dead_letters_at ON dead_letters(at_ms);
    CREATE TABLE IF NOT EXISTS metric_results (
        metric TEXT NOT NULL,
        window_end INTEGER NOT NULL,
        window_start INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (metric, window_end)
    );
    CREATE INDEX IF NOT EXISTS metric_results_end ON metric_results(window_end);
    CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS metric_panes_start ON metric_panes(pane_start);
    CREATE TABLE IF NOT EXISTS collections (
        name TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS collections_name ON collections(name);
";

/// Rows one sweep step deletes before letting writers in again.
const SWEEP_CHUNK: i64 = 5_000;

impl EmbeddedStore {
    /// Opens (creating if needed) the store for records of `schema`, with a queryable column per
    /// field of `indexes`; a background sweep deletes rows older than `retention` says.
    pub fn open(
        config: &EmbeddedConfig,
        retention: &RetentionConfig,
        schema: &Arc<Schema>,
        indexes: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let path = config.data_dir.join("runner.db");
        let conn =
            Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // WAL + NORMAL: a commit survives a process crash; only an OS crash may lose the last commits.
        // Incremental auto-vacuum (set before the first table exists) lets the sweep give deleted
        // pages back to the file system.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
            .and_then(|_| conn.execute_batch(SCHEMA))
            .and_then(|_| migrate_raw_events(&conn))
            .and_then(|_| index_fields(&conn, indexes))
            .and_then(|_| if retention.any() { enable_incremental_vacuum(&conn) } else { Ok(()) })
            .with_context(|| format!("cannot set up {}", path.display()))?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|r| r.execute_batch("PRAGMA busy_timeout = 5000;").map(|_| r))
        .with_context(|| format!("cannot open {} for reading", path.display()))?;
        let store = EmbeddedStore {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            path,
            schema: schema.clone(),
        };
        if let Some(every) = retention.sweep_every() {
            store.spawn_retention(retention.clone(), every);
        }
        Ok(store)
    }

    /// Sweeps now and then every `every`, for as long as the store is open.
    fn spawn_retention(&self, retention: RetentionConfig, every: Duration) {
        let conn = Arc::downgrade(&self.conn);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            loop {
                let Some(conn) = conn.upgrade() else { return };
                let now = chrono::Utc::now().timestamp_millis();
                let retention = retention.clone();
                match tokio::task::spawn_blocking(move || sweep(&conn, &retention, now)).await {
                    Ok(Ok(deleted)) if deleted.iter().any(|(_, n)| *n > 0) => {
                        let counts: Vec<String> = deleted
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(kind, n)| format!("{n} {kind}"))
                            .collect();
                        tracing::info!("retention: deleted {}", counts.join(", "));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "retention sweep failed; will try again")
                    }
                    _ => {}
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Runs `f` on the writing connection, off the async runtime.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.on(&self.conn, f).await
    }

    /// Runs a read on the read-only connection.
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.on(&self.reader, f).await
    }

    async fn on<T: Send + 'static>(
        &self,
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let conn = conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap()))
            .await?
            .with_context(|| format!("embedded store {} failed", path.display()))
    }
}

/// Moves the records of the table older versions kept (`raw_events`) into `raw_records`, once.
fn migrate_raw_events(conn: &Connection) -> rusqlite::Result<()> {
    let old: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'raw_events'",
        [],
        |r| r.get(0),
    )?;
    if old > 0 {
        conn.execute_batch(
            "BEGIN;
             INSERT OR IGNORE INTO raw_records (id, time_ms, body) SELECT event_id, timestamp_ms, body FROM raw_events;
             DROP TABLE raw_events;
             COMMIT;",
        )?;
        tracing::info!("embedded store: moved raw events into the raw_records table");
    }
    Ok(())
}

/// Turns on incremental auto-vacuum in a file made before it was set, rewriting the file once.
fn enable_incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    const INCREMENTAL: i64 = 2;
    if conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0))? != INCREMENTAL {
        tracing::info!("embedded store: enabling incremental vacuum (the file is rewritten once)");
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
    }
    Ok(())
}

/// Deletes the rows `retention` no longer keeps as of `now_ms` (in chunks, releasing the lock
/// between them so writers are not held up), then returns the freed pages to the file system.
/// Returns how many rows of each kind went. Watermark records sit at [`super::TIMELESS_PANE`],
/// past every cutoff, so they stay.
pub fn sweep(
    conn: &Mutex<Connection>,
    retention: &RetentionConfig,
    now_ms: i64,
) -> rusqlite::Result<Vec<(&'static str, u64)>> {
    // Each kind: its table, the time column it expires by, and its `[retention]` key.
    let kinds = [
        ("raw_records", "time_ms", "raw", retention.raw),
        ("metric_panes", "pane_start", "panes", retention.panes),
        ("alerts", "at_ms", "alerts", retention.alerts),
        (
            "dead_letters",
            "at_ms",
            "dead_letters",
            retention.dead_letters,
        ),
        ("metric_results", "window_end", "results", retention.results),
    ];
    let mut deleted = Vec::new();
    for (table, column, kind, keep) in kinds {
        let Some(keep) = keep else { continue };
        let cutoff = now_ms.saturating_sub(keep.as_millis() as i64);
        let sql = format!("DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ?1 LIMIT ?2)");
        let mut total = 0;
        loop {
            let n = conn
                .lock()
                .unwrap()
                .prepare_cached(&sql)?
                .execute(params![cutoff, SWEEP_CHUNK])? as u64;
            total += n;
            if n < SWEEP_CHUNK as u64 {
                break;
            }
        }
        deleted.push((kind, total));
    }
    if deleted.iter().any(|(_, n)| *n > 0) {
        // Free pages go back to the file; the checkpoint moves that from the WAL into the file.
        // The vacuum frees one page per step, so it is stepped to the end (`execute_batch`
        // would take only the first step).
        let conn = conn.lock().unwrap();
        let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut steps = vacuum.query([])?;
        while steps.next()?.is_some() {}
        drop(steps);
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    }
    Ok(deleted)
}

/// A generated column `f_<field>` (read from the JSON body) and an index on it, per field.
fn index_fields(conn: &Connection, fields: &[String]) -> rusqlite::Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_xinfo('raw_records')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for field in fields {
        // Field names are checked to be plain names (letters, digits, _) when the config loads.
        let column = format!("f_{field}");
        if !columns.contains(&column) {
            conn.execute_batch(&format!("ALTER TABLE raw_records ADD COLUMN \"{column}\" GENERATED ALWAYS AS (json_extract(body, '$.{field}')) VIRTUAL"))?;
        }
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS \"raw_records_{field}\" ON raw_records(\"{column}\")"
        ))?;
    }
    Ok(())
}

impl EmbeddedStore {
    /// A stored raw row's record again.
    fn record_of(&self, body: &str) -> anyhow::Result<Record> {
        Record::from_json(&self.schema, body.as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "embedded store holds a row that is not a record: {}",
                e.message
            )
        })
    }

    /// How many rows `table` holds.
    async fn count_rows(&self, table: &'static str) -> anyhow::Result<u64> {
        self.with_reader(move |c| {
            c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .map(|n| n as u64)
    }

    /// The newest `limit` rows of a history table (alerts, dead letters), decoded from `body`.
    async fn newest<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        limit: usize,
    ) -> anyhow::Result<Vec<T>> {
        let bodies = self
            .with_reader(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT body FROM {table} ORDER BY at_ms DESC, rowid DESC LIMIT ?1"
                ))?;
                let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await?;
        bodies
            .iter()
            .map(|b| {
                serde_json::from_str(b)
                    .with_context(|| format!("a stored row of {table} is malformed"))
            })
            .collect()
    }
}

#[async_trait]
impl RawEvents for EmbeddedStore {
    fn encode(&self, events: &[Record]) -> Encoded {
        Encoded::Rows(
            events
                .iter()
                .map(|e| (e.id().to_string(), e.time_ms(), e.to_json()))
                .collect(),
        )
    }

    async fn insert_events(&self, events: &[Record]) -> anyhow::Result<InsertOutcome> {
        self.insert_encoded(events, self.encode(events)).await
    }

    async fn insert_encoded(
        &self,
        events: &[Record],
        encoded: Encoded,
    ) -> anyhow::Result<InsertOutcome> {
        let rows = match encoded {
            Encoded::Rows(rows) => rows,
            _ => return self.insert_events(events).await,
        };
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let mut inserted = 0;
            let mut duplicates = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO raw_records (id, time_ms, body) VALUES (?1, ?2, ?3)",
                )?;
                for (i, r) in rows.iter().enumerate() {
                    match stmt.execute(params![r.0, r.1, r.2])? {
                        0 => duplicates.push(i),
                        n => inserted += n as u64,
                    }
                }
            }
            tx.commit()?;
            Ok(InsertOutcome {
                inserted,
                duplicates,
                rejected: Vec::new(),
            })
        })
        .await
    }

    async fn count_events(&self) -> anyhow::Result<u64> {
        self.count_rows("raw_records").await
    }

    async fn stored_events(&self, ids: &[&str]) -> anyhow::Result<Vec<Record>> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let bodies = self
            .with_reader(move |c| {
                let mut out = Vec::new();
                // Within SQLite's limit of bound parameters per statement.
                for chunk in ids.chunks(500) {
                    let marks = vec!["?"; chunk.len()].join(",");
                    let mut stmt = c.prepare(&format!(
                        "SELECT body FROM raw_records WHERE id IN ({marks})"
                    ))?;
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(chunk), |r| r.get::<_, String>(0))?;
                    out.extend(rows.collect::<rusqlite::Result<Vec<String>>>()?);
                }
                Ok(out)
            })
            .await?;
        bodies.iter().map(|b| self.record_of(b)).collect()
    }

    async fn all_events(&self) -> anyhow::Result<Vec<Record>> {
        let bodies = self
            .with_reader(|c| {
                let mut stmt = c.prepare("SELECT body FROM raw_records ORDER BY time_ms")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await?;
        bodies.iter().map(|b| self.record_of(b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data folder written by an older version (a `raw_events` table with the interaction
    /// columns) opens with its records moved into `raw_records`, readable under the schema.
    #[tokio::test]
    async fn records_of_the_older_table_are_moved_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("runner.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE raw_events (event_id TEXT PRIMARY KEY, timestamp_ms INTEGER NOT NULL, user_id TEXT NOT NULL,
                 item_id TEXT NOT NULL, interaction_type TEXT NOT NULL, body TEXT NOT NULL);
                 INSERT INTO raw_events VALUES ('e1', 1767225600000, 'u', 'i', 'view',
                 '{\"event_id\":\"e1\",\"user_id\":\"u\",\"item_id\":\"i\",\"interaction_type\":\"view\",\"timestamp\":\"2026-01-01T00:00:00.000Z\"}');",
            )
            .unwrap();
        }
        let schema = crate::event::schema_of(
            "fields = { event_id = \"string\", user_id = \"string\", item_id = \"string\", interaction_type = \"string\", timestamp = \"timestamp\" }\nid = \"event_id\"\ntime = \"timestamp\"",
        );
        let config = EmbeddedConfig {
            data_dir: dir.path().to_path_buf(),
            ..EmbeddedConfig::default()
        };
        let store = EmbeddedStore::open(
            &config,
            &Default::default(),
            &schema,
            &["user_id".to_string()],
        )
        .unwrap();
        let records = store.all_events().await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].id(), records[0].time_ms()),
            ("e1", 1_767_225_600_000)
        );
        drop(store);
        // Opening again finds nothing more to move.
        let store = EmbeddedStore::open(
            &config,
            &Default::default(),
            &schema,
            &["user_id".to_string()],
        )
        .unwrap();
        assert_eq!(store.count_events().await.unwrap(), 1);
    }
}
