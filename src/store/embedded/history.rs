//! The embedded store's raw rows read back in order of arrival, for a backfill behind the
//! embedded queue: positions are SQLite row numbers, one sequence for the whole store (the
//! embedded queue has no partitions).

use super::EmbeddedStore;
use crate::event::Record;
use crate::transport::{History, HistoryRead, NO_PARTITION};
use async_trait::async_trait;
use rusqlite::params;

impl EmbeddedStore {
    /// The row number of the newest raw event (0: none yet).
    async fn newest_row(&self) -> anyhow::Result<i64> {
        // Rows are never updated and only the oldest are deleted, so the largest rowid only grows.
        self.with_reader(|c| {
            c.query_row("SELECT COALESCE(MAX(rowid), 0) FROM raw_records", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
    }

    /// Raw events at row numbers in `(after, upto]`, in order, at most `limit`.
    async fn rows_after(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<(i64, Record)>> {
        let rows = self
            .with_reader(move |c| {
                let mut stmt = c.prepare_cached("SELECT rowid, body FROM raw_records WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid LIMIT ?3")?;
                let rows = stmt.query_map(params![after, upto, limit as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(at, body)| Ok((at, self.record_of(&body)?)))
            .collect()
    }
}

#[async_trait]
impl History for EmbeddedStore {
    async fn start(&self, _partition: i32, since_ms: i64) -> anyhow::Result<(i64, bool)> {
        let sql = "SELECT COALESCE((SELECT MIN(rowid) FROM raw_records WHERE time_ms >= ?1), (SELECT COALESCE(MAX(rowid), 0) + 1 FROM raw_records))";
        let start = self
            .with_reader(move |c| c.query_row(sql, params![since_ms], |r| r.get::<_, i64>(0)))
            .await?;
        // Row numbers start at 1: a first row after it, with none before, means rows were swept.
        let lost = start > 1 && self.rows_after(0, start - 1, 1).await?.is_empty();
        Ok((start, lost))
    }

    async fn end(&self, _partition: i32) -> anyhow::Result<i64> {
        self.newest_row().await
    }

    async fn read(
        &self,
        partition: i32,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> anyhow::Result<HistoryRead> {
        debug_assert_eq!(
            partition, NO_PARTITION,
            "the embedded store has one sequence"
        );
        let events = self.rows_after(after, upto, limit).await?;
        // Fewer rows than asked for: the rest of the range is read (row numbers may skip).
        let through = if events.len() < limit {
            upto
        } else {
            events.last().map_or(upto, |(at, _)| *at)
        };
        Ok(HistoryRead { events, through })
    }
}
