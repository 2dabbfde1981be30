//! [`EventStore`] on MongoDB: raw events with `insert_many` (unordered, so a replayed batch
//! writes only what is missing), partials with conditional upserts, and the history collections.

use super::document::{from_document, to_document};
use super::MongoStore;
use crate::dead_letter::DeadLetter;
use crate::event::Record;
use crate::store::{EventStore, InsertOutcome, Notification, PaneRecord};
use anyhow::{bail, Context};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::Collection;
use std::future::IntoFuture;

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

    async fn insert_events(&self, events: &[Record]) -> anyhow::Result<InsertOutcome> {
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

    async fn all_events(&self) -> anyhow::Result<Vec<Record>> {
        let docs: Vec<Document> = self
            .raw
            .find(doc! {})
            .sort(doc! {self.schema.time_name(): 1})
            .await
            .context("MongoDB find failed")?
            .try_collect()
            .await
            .context("MongoDB find failed")?;
        docs.into_iter().map(|d| from_document(&self.schema, d)).collect()
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
