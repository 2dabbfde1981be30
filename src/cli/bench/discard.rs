//! A store that keeps nothing, for the one bench figure that asks what the consuming path costs
//! when no store limits it (Vector's `blackhole` sink plays the same part). Never used outside
//! `runner bench`, and its figure says so in its name.

use crate::dead_letter::DeadLetter;
use crate::event::Record;
use crate::store::Notification;
use crate::store::PaneRecord;
use crate::store::{Encoded, InsertOutcome, RawEvents, ResultRow, StateStore};
use async_trait::async_trait;

pub struct Discard;

#[async_trait]
impl RawEvents for Discard {
    /// Encodes as the MongoDB store does (BSON bytes), so the runner's work is all there.
    fn encode(&self, events: &[Record]) -> Encoded {
        Encoded::Documents(
            events
                .iter()
                .map(|e| crate::store::mongo::to_raw(e, usize::MAX))
                .collect(),
        )
    }

    async fn insert_events(&self, events: &[Record]) -> anyhow::Result<InsertOutcome> {
        Ok(InsertOutcome {
            inserted: events.len() as u64,
            ..Default::default()
        })
    }

    async fn count_events(&self) -> anyhow::Result<u64> {
        Ok(0)
    }

    /// It keeps nothing, so nothing is a duplicate to look up.
    async fn stored_events(&self, _: &[&str]) -> anyhow::Result<Vec<Record>> {
        Ok(Vec::new())
    }

    async fn all_events(&self) -> anyhow::Result<Vec<Record>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl StateStore for Discard {
    fn describe(&self) -> String {
        "nothing (bench: writes are discarded)".into()
    }

    async fn write_panes(&self, _: &[PaneRecord]) -> anyhow::Result<()> {
        Ok(())
    }

    async fn load_panes(
        &self,
        _: &str,
        _: i64,
        _: i64,
        _: Option<i32>,
    ) -> anyhow::Result<Vec<PaneRecord>> {
        Ok(Vec::new())
    }

    async fn save_alert_state(&self, _: &str, _: &serde_json::Value) -> anyhow::Result<()> {
        Ok(())
    }

    async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        Ok(Vec::new())
    }

    async fn save_silence(&self, _: &crate::store::Silence) -> anyhow::Result<()> {
        Ok(())
    }

    async fn silences(&self, _: i64) -> anyhow::Result<Vec<crate::store::Silence>> {
        Ok(Vec::new())
    }

    async fn record_alert(&self, _: &Notification) -> anyhow::Result<()> {
        Ok(())
    }

    async fn recent_alerts(&self, _: usize) -> anyhow::Result<Vec<Notification>> {
        Ok(Vec::new())
    }

    async fn write_dead_letters(&self, _: &[DeadLetter]) -> anyhow::Result<()> {
        Ok(())
    }

    async fn dead_letters(&self, _: usize) -> anyhow::Result<Vec<DeadLetter>> {
        Ok(Vec::new())
    }

    async fn count_dead_letters(&self) -> anyhow::Result<u64> {
        Ok(0)
    }

    async fn write_results(&self, _: &[ResultRow]) -> anyhow::Result<()> {
        Ok(())
    }

    async fn load_results(&self, _: &str, _: i64, _: i64) -> anyhow::Result<Vec<ResultRow>> {
        Ok(Vec::new())
    }

    async fn latest_result(&self, _: &str) -> anyhow::Result<Option<i64>> {
        Ok(None)
    }

    /// The only process using this store: the lease is always its own.
    async fn take_lease(&self, _: &str, _: &str, _: i64) -> anyhow::Result<bool> {
        Ok(true)
    }
}
