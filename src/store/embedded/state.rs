//! The embedded store's [`StateStore`] role: metric partials, alert state and history, dead
//! letters, final results and the lease, each a table of the same SQLite file.

use super::EmbeddedStore;
use crate::dead_letter::DeadLetter;
use crate::store::{
    Collections, Document, Notification, PaneRecord, ResultRow, Silence, StateJson, StateStore,
};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::params;

#[async_trait]
impl StateStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded SQLite store {}", self.path.display())
    }

    async fn write_panes(&self, panes: &[PaneRecord]) -> anyhow::Result<()> {
        let rows: Vec<(String, i64, i32, i64, String)> = panes
            .iter()
            .map(|p| {
                (
                    p.metric.clone(),
                    p.pane_start,
                    p.partition,
                    p.offset,
                    p.state.as_str().to_string(),
                )
            })
            .collect();
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    // A partial that already includes later offsets is never replaced by an older one.
                    "INSERT INTO metric_panes (metric, pane_start, partition, offset, state) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (metric, pane_start, partition) DO UPDATE SET offset = excluded.offset, state = excluded.state
                     WHERE excluded.offset >= metric_panes.offset",
                )?;
                for r in &rows {
                    stmt.execute(params![r.0, r.1, r.2, r.3, r.4])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn load_panes(
        &self,
        metric: &str,
        from: i64,
        to: i64,
        partition: Option<i32>,
    ) -> anyhow::Result<Vec<PaneRecord>> {
        let metric = metric.to_string();
        let rows = self
            .with_reader(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT pane_start, partition, offset, state FROM metric_panes
                     WHERE metric = ?1 AND pane_start >= ?2 AND pane_start < ?3 AND (?4 IS NULL OR partition = ?4)",
                )?;
                let rows = stmt.query_map(params![metric, from, to, partition], |r| {
                    Ok((metric.clone(), r.get::<_, i64>(0)?, r.get::<_, i32>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(metric, pane_start, partition, offset, state)| {
                Ok(PaneRecord {
                    metric,
                    pane_start,
                    partition,
                    offset,
                    state: StateJson::stored(state),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored metric state is malformed")
    }

    async fn save_alert_state(&self, rule: &str, state: &serde_json::Value) -> anyhow::Result<()> {
        let (rule, state) = (rule.to_string(), state.to_string());
        let now = chrono::Utc::now().timestamp_millis();
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO alert_state (rule, state, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (rule) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
                params![rule, state, now],
            )
            .map(|_| ())
        })
        .await
    }

    async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let rows = self
            .with_reader(|c| {
                let mut stmt = c.prepare("SELECT rule, state FROM alert_state ORDER BY rule")?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(rule, state)| Ok((rule, serde_json::from_str(&state)?)))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored alert state is malformed")
    }

    async fn save_silence(&self, silence: &Silence) -> anyhow::Result<()> {
        let row = (
            silence.id.clone(),
            silence.starts_at.timestamp_millis(),
            silence.ends_at.timestamp_millis(),
            serde_json::to_string(silence)?,
        );
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO silences (id, starts_ms, ends_ms, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms, body = excluded.body",
                params![row.0, row.1, row.2, row.3],
            )
            .map(|_| ())
        })
        .await
    }

    async fn silences(&self, ended_after_ms: i64) -> anyhow::Result<Vec<Silence>> {
        let rows = self
            .with_reader(move |c| {
                let mut stmt = c.prepare(
                    "SELECT body FROM silences WHERE ends_ms > ?1 ORDER BY starts_ms, id",
                )?;
                let rows = stmt.query_map([ended_after_ms], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.iter()
            .map(|body| Ok(serde_json::from_str(body)?))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored silence is malformed")
    }

    async fn record_alert(&self, n: &Notification) -> anyhow::Result<()> {
        let row = (
            n.id.clone(),
            n.at.timestamp_millis(),
            n.alert.clone(),
            n.status.clone(),
            serde_json::to_string(n)?,
        );
        self.with_conn(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO alerts (id, at_ms, alert, status, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.0, row.1, row.2, row.3, row.4],
            )
            .map(|_| ())
        })
        .await
    }

    async fn recent_alerts(&self, limit: usize) -> anyhow::Result<Vec<Notification>> {
        self.newest("alerts", limit).await
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let rows = letters
            .iter()
            .map(|d| {
                Ok((
                    d.id.clone(),
                    d.at.timestamp_millis(),
                    d.reason.as_str(),
                    serde_json::to_string(d)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("INSERT OR IGNORE INTO dead_letters (id, at_ms, reason, body) VALUES (?1, ?2, ?3, ?4)")?;
                for r in &rows {
                    stmt.execute(params![r.0, r.1, r.2, r.3])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        self.newest("dead_letters", limit).await
    }

    async fn count_dead_letters(&self) -> anyhow::Result<u64> {
        self.count_rows("dead_letters").await
    }

    async fn write_results(&self, rows: &[ResultRow]) -> anyhow::Result<()> {
        let rows: Vec<(String, i64, i64, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.metric.clone(),
                    r.window_end,
                    r.window_start,
                    r.value.to_string(),
                )
            })
            .collect();
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO metric_results (metric, window_end, window_start, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (metric, window_end) DO UPDATE SET window_start = excluded.window_start, value = excluded.value",
                )?;
                for r in &rows {
                    stmt.execute(params![r.0, r.1, r.2, r.3])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn load_results(
        &self,
        metric: &str,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<ResultRow>> {
        let name = metric.to_string();
        let rows = self
            .with_reader(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT window_start, window_end, value FROM metric_results WHERE metric = ?1 AND window_end >= ?2 AND window_end < ?3 ORDER BY window_end",
                )?;
                let rows = stmt.query_map(params![name, from, to], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(window_start, window_end, value)| {
                Ok(ResultRow {
                    metric: metric.to_string(),
                    window_start,
                    window_end,
                    value: serde_json::from_str(&value).context("a stored result is malformed")?,
                })
            })
            .collect()
    }

    async fn latest_result(&self, metric: &str) -> anyhow::Result<Option<i64>> {
        let metric = metric.to_string();
        self.with_reader(move |c| {
            c.query_row(
                "SELECT MAX(window_end) FROM metric_results WHERE metric = ?1",
                [metric],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> anyhow::Result<bool> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.with_conn(move |c| {
            // Inserted, or updated where the lease is free: one changed row means it is ours.
            // "Now" is SQLite's clock (the one machine every process of this file runs on).
            c.execute(
                "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                 WHERE leases.holder = excluded.holder OR leases.until_ms < CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
                params![name, holder, ttl_ms],
            )
            .map(|changed| changed == 1)
        })
        .await
    }
}

/// A collection is its rows of one table, each document as JSON text: replacing one is a
/// transaction, so a refresh reads the old documents or the new ones, never a mix.
#[async_trait]
impl Collections for EmbeddedStore {
    async fn documents(&self, name: &str, limit: usize) -> anyhow::Result<Vec<Document>> {
        let name = name.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, collection) = (
            self.with_reader({
                let name = name.clone();
                move |c| {
                    let mut stmt = c.prepare(
                        "SELECT doc FROM collections WHERE name = ?1 ORDER BY rowid LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![name, limit], |r| r.get::<_, String>(0))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                }
            })
            .await?,
            name,
        );
        rows.iter()
            .map(|d| Ok(serde_json::from_str(d)?))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("a stored document of collection {collection:?} is malformed"))
    }

    async fn replace_documents(&self, name: &str, documents: &[Document]) -> anyhow::Result<()> {
        let name = name.to_string();
        let docs = documents
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM collections WHERE name = ?1", [&name])?;
            {
                let mut insert =
                    tx.prepare("INSERT INTO collections (name, doc) VALUES (?1, ?2)")?;
                for d in &docs {
                    insert.execute(params![name, d])?;
                }
            }
            tx.commit()
        })
        .await
    }
}
