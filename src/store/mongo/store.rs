//! [`RawEvents`] and [`StateStore`] on MongoDB: raw events with `insert_many` (unordered, so a replayed batch
//! writes only what is missing), partials with conditional upserts, and the history collections.

use super::document::{from_document, to_raw};
use super::MongoStore;
use crate::dead_letter::DeadLetter;
use crate::event::Record;
use crate::store::{
    Encoded, InsertOutcome, Notification, PaneRecord, RawEvents, Rejected, ResultRow, Silence,
    StateJson, StateStore, TIMELESS_PANE,
};
use anyhow::Context;
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Document, RawDocumentBuf};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::Collection;
use std::future::IntoFuture;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// The largest document MongoDB stores (its `maxBsonObjectSize`, the same on every server).
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// A single-document write that failed only because the document is already there.
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(*e.kind, ErrorKind::Write(WriteFailure::WriteError(ref w)) if w.code == DUPLICATE_KEY)
}

/// The newest `limit` records of a history collection (sorted by `at`), each kept as JSON text
/// in `field`.
async fn newest<T: serde::de::DeserializeOwned>(
    c: &Collection<Document>,
    field: &str,
    limit: usize,
) -> anyhow::Result<Vec<T>> {
    let docs: Vec<Document> = c
        .find(doc! {})
        .sort(doc! {"at": -1})
        .limit(limit as i64)
        .await?
        .try_collect()
        .await?;
    docs.iter()
        .map(|d| Ok(serde_json::from_str(d.get_str(field)?)?))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("a stored record in {} is malformed", c.namespace()))
}

/// Why an `insert_many` failed as a whole.
enum Refusal {
    /// The driver would not send the batch: a document in it cannot be encoded or is too large.
    ClientSide(mongodb::error::Error),
    /// The server or the network failed; the same batch may succeed later.
    Transient(mongodb::error::Error),
}

/// Fewest documents worth a stream of their own: below this a batch is split no further
/// (each stream costs a round trip and a journal wait).
const MIN_PER_STREAM: usize = 250;

impl MongoStore {
    /// One unordered `insert_many`, its failures sorted: a duplicate id is a replay, a document
    /// the server refuses on its own (a per-document write error) is rejected for good, and
    /// everything else (network, write concern, no primary) is worth retrying.
    async fn insert_documents(&self, docs: &[RawDocumentBuf]) -> Result<InsertOutcome, Refusal> {
        let total = docs.len() as u64;
        if total == 0 {
            return Ok(InsertOutcome::default());
        }
        let e = match self.raw_insert.insert_many(docs).ordered(false).await {
            Ok(r) => {
                return Ok(InsertOutcome {
                    inserted: r.inserted_ids.len() as u64,
                    ..Default::default()
                })
            }
            Err(e) => e,
        };
        let (write_errors, concern) = match *e.kind {
            ErrorKind::InsertMany(ref failure) => (
                failure
                    .write_errors
                    .iter()
                    .flatten()
                    .map(|w| (w.index, w.code, w.message.clone()))
                    .collect::<Vec<_>>(),
                failure.write_concern_error.is_some(),
            ),
            ErrorKind::Write(WriteFailure::WriteError(ref w)) if total == 1 => {
                (vec![(0, w.code, w.message.clone())], false)
            }
            ErrorKind::BsonSerialization(_) | ErrorKind::InvalidArgument { .. } => {
                return Err(Refusal::ClientSide(e))
            }
            _ => return Err(Refusal::Transient(e)),
        };
        if concern {
            // Written but not confirmed as the write concern asks: sending again is safe (ids
            // are unique) and the only way to be sure.
            return Err(Refusal::Transient(e));
        }
        let duplicates: Vec<usize> = write_errors
            .iter()
            .filter(|w| w.1 == DUPLICATE_KEY)
            .map(|w| w.0)
            .collect();
        let rejected: Vec<Rejected> = write_errors
            .into_iter()
            .filter(|w| w.1 != DUPLICATE_KEY)
            .map(|(index, code, message)| Rejected {
                index,
                reason: format!("MongoDB refused the document: {message} (code {code})"),
            })
            .collect();
        Ok(InsertOutcome {
            inserted: total - duplicates.len() as u64 - rejected.len() as u64,
            duplicates,
            rejected,
        })
    }

    /// [`Self::insert_documents`] over up to `insert_streams` concurrent streams, each a
    /// contiguous slice of the batch. Succeeds only once every stream is durable, so the batch
    /// is acknowledged whole or replayed whole (the unique id absorbs what a failed attempt
    /// already wrote).
    async fn insert_streams(&self, docs: &[RawDocumentBuf]) -> Result<InsertOutcome, Refusal> {
        let streams = self.insert_streams.min(docs.len() / MIN_PER_STREAM).max(1);
        if streams == 1 {
            return self.insert_documents(docs).await;
        }
        let size = docs.len().div_ceil(streams);
        let outcomes =
            futures::future::join_all(docs.chunks(size).map(|chunk| self.insert_documents(chunk)))
                .await;
        let mut total = InsertOutcome::default();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let o = outcome?;
            total.inserted += o.inserted;
            total
                .duplicates
                .extend(o.duplicates.into_iter().map(|d| d + i * size));
            total
                .rejected
                .extend(o.rejected.into_iter().map(|r| Rejected {
                    index: r.index + i * size,
                    ..r
                }));
        }
        Ok(total)
    }
}

#[async_trait]
impl RawEvents for MongoStore {
    fn encode(&self, events: &[Record]) -> Encoded {
        Encoded::Documents(
            events
                .iter()
                .map(|e| to_raw(e, MAX_DOCUMENT_BYTES))
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
        let Encoded::Documents(encoded) = encoded else {
            return self.insert_events(events).await;
        };
        // A record MongoDB can never hold (a key BSON cannot hold, a document over the size
        // limit) is kept aside, and the rest sent: a poison record must not stall its partition.
        let (mut docs, mut sent, mut rejected) = (
            Vec::with_capacity(events.len()),
            Vec::with_capacity(events.len()),
            Vec::new(),
        );
        for (index, doc) in encoded.into_iter().enumerate() {
            match doc {
                Ok(d) => {
                    docs.push(d);
                    sent.push(index);
                }
                Err(reason) => rejected.push(Rejected { index, reason }),
            }
        }
        let mut outcome = match self.insert_streams(&docs).await {
            Ok(o) => o,
            Err(Refusal::ClientSide(e)) => {
                return Err(anyhow::Error::new(e).context(
                    "MongoDB refused the batch, but no single document in it is at fault",
                ))
            }
            Err(Refusal::Transient(e)) => {
                return Err(anyhow::Error::new(e).context("MongoDB insert_many failed"))
            }
        };
        if !rejected.is_empty() {
            // Positions among the documents sent back to positions in `events`.
            for r in &mut outcome.rejected {
                r.index = sent[r.index];
            }
            outcome.rejected.extend(rejected);
            outcome.rejected.sort_by_key(|r| r.index);
        }
        Ok(outcome)
    }

    async fn count_events(&self) -> anyhow::Result<u64> {
        Ok(self
            .raw
            .count_documents(doc! {})
            .await
            .context("MongoDB count failed")?)
    }

    async fn stored_events(&self, ids: &[&str]) -> anyhow::Result<Vec<Record>> {
        let docs: Vec<Document> = self
            .raw
            .find(doc! {self.schema.id_name(): {"$in": ids}})
            .await
            .context("MongoDB find failed")?
            .try_collect()
            .await
            .context("MongoDB find failed")?;
        docs.into_iter()
            .map(|d| from_document(&self.schema, d))
            .collect()
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
        docs.into_iter()
            .map(|d| from_document(&self.schema, d))
            .collect()
    }
}

#[async_trait]
impl StateStore for MongoStore {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn write_panes(&self, panes: &[PaneRecord]) -> anyhow::Result<()> {
        // Watermarks after the partials they cover: a reader deciding from a watermark that a
        // window is final must find all of its partials.
        let (marks, partials): (Vec<&PaneRecord>, Vec<&PaneRecord>) =
            panes.iter().partition(|p| p.pane_start == TIMELESS_PANE);
        self.upsert_panes(&partials).await?;
        self.upsert_panes(&marks).await
    }

    async fn load_panes(
        &self,
        metric: &str,
        from: i64,
        to: i64,
        partition: Option<i32>,
    ) -> anyhow::Result<Vec<PaneRecord>> {
        let mut filter = doc! {"metric": metric, "pane_start": {"$gte": from, "$lt": to}};
        if let Some(p) = partition {
            filter.insert("partition", p);
        }
        let docs: Vec<Document> = self
            .panes
            .find(filter)
            .await
            .context("MongoDB metric state read failed")?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| {
                Ok(PaneRecord {
                    metric: d.get_str("metric")?.to_string(),
                    pane_start: d.get_i64("pane_start")?,
                    partition: d.get_i32("partition")?,
                    offset: d.get_i64("offset")?,
                    state: StateJson::stored(d.get_str("state")?.to_string()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored metric state is malformed")
    }

    async fn save_alert_state(&self, rule: &str, state: &serde_json::Value) -> anyhow::Result<()> {
        // JSON text: instance labels are user data and need not be valid BSON field names.
        let d = doc! {"_id": rule, "state": state.to_string(), "updated_at": bson::DateTime::now()};
        self.alert_state
            .replace_one(doc! {"_id": rule}, d)
            .upsert(true)
            .await
            .context("MongoDB alert state write failed")?;
        Ok(())
    }

    async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let docs: Vec<Document> = self
            .alert_state
            .find(doc! {})
            .await
            .context("MongoDB alert state read failed")?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| {
                Ok((
                    d.get_str("_id")?.to_string(),
                    serde_json::from_str(d.get_str("state")?)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored alert state is malformed")
    }

    async fn save_silence(&self, silence: &Silence) -> anyhow::Result<()> {
        // JSON text, as alert state: matchers name labels, which need not be BSON field names.
        let d = doc! {
            "_id": &silence.id,
            "starts_at": bson::DateTime::from_millis(silence.starts_at.timestamp_millis()),
            "ends_at": bson::DateTime::from_millis(silence.ends_at.timestamp_millis()),
            "silence": serde_json::to_string(silence)?,
        };
        self.silences
            .replace_one(doc! {"_id": &silence.id}, d)
            .upsert(true)
            .await
            .context("MongoDB silence write failed")?;
        Ok(())
    }

    async fn silences(&self, ended_after_ms: i64) -> anyhow::Result<Vec<Silence>> {
        let docs: Vec<Document> = self
            .silences
            .find(doc! {"ends_at": {"$gt": bson::DateTime::from_millis(ended_after_ms)}})
            .sort(doc! {"starts_at": 1, "_id": 1})
            .await
            .context("MongoDB silence read failed")?
            .try_collect()
            .await?;
        docs.iter()
            .map(|d| Ok(serde_json::from_str(d.get_str("silence")?)?))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored silence is malformed")
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
        newest(&self.alerts, "notification", limit)
            .await
            .context("MongoDB alert history read failed")
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
                    if f.write_concern_error.is_none()
                        && f.write_errors
                            .as_deref()
                            .unwrap_or(&[])
                            .iter()
                            .all(|w| w.code == DUPLICATE_KEY) =>
                {
                    Ok(())
                }
                _ => Err(anyhow::Error::new(e).context("MongoDB dead letter write failed")),
            },
        }
    }

    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        newest(&self.dead_letters, "letter", limit)
            .await
            .context("MongoDB dead letter read failed")
    }

    async fn count_dead_letters(&self) -> anyhow::Result<u64> {
        Ok(self
            .dead_letters
            .count_documents(doc! {})
            .await
            .context("MongoDB count failed")?)
    }

    async fn write_results(&self, rows: &[ResultRow]) -> anyhow::Result<()> {
        // Typed documents a person or a BI tool reads as they are: dates for the window, the value
        // as BSON (numbers, sub-documents for grouped values, arrays for ranked ones). The same
        // row always makes the same document, so a rewrite changes nothing.
        let writes = rows
            .iter()
            .map(|r| {
                let id = format!("{}|{}", r.metric, r.window_end);
                let value = bson::to_bson(&r.value)
                    .with_context(|| format!("result of {} cannot be stored as BSON", r.metric))?;
                let d = doc! {
                    "_id": &id,
                    "metric": &r.metric,
                    "window_start": bson::DateTime::from_millis(r.window_start),
                    "window_end": bson::DateTime::from_millis(r.window_end),
                    "value": value,
                };
                Ok(self
                    .results
                    .replace_one(doc! {"_id": id}, d)
                    .upsert(true)
                    .into_future())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        futures::future::try_join_all(writes)
            .await
            .context("MongoDB result write failed")?;
        Ok(())
    }

    async fn load_results(
        &self,
        metric: &str,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<ResultRow>> {
        let filter = doc! {"metric": metric, "window_end": {"$gte": bson::DateTime::from_millis(from), "$lt": bson::DateTime::from_millis(to)}};
        let docs: Vec<Document> = self
            .results
            .find(filter)
            .sort(doc! {"window_end": 1})
            .await
            .context("MongoDB result read failed")?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| {
                Ok(ResultRow {
                    metric: d.get_str("metric")?.to_string(),
                    window_start: d.get_datetime("window_start")?.timestamp_millis(),
                    window_end: d.get_datetime("window_end")?.timestamp_millis(),
                    value: d
                        .get("value")
                        .cloned()
                        .unwrap_or(bson::Bson::Null)
                        .into_relaxed_extjson(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("a stored result is malformed")
    }

    async fn latest_result(&self, metric: &str) -> anyhow::Result<Option<i64>> {
        let newest = self
            .results
            .find_one(doc! {"metric": metric})
            .sort(doc! {"window_end": -1})
            .await
            .context("MongoDB result read failed")?;
        newest
            .map(|d| Ok(d.get_datetime("window_end")?.timestamp_millis()))
            .transpose()
    }

    async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> anyhow::Result<bool> {
        // Expiry by the server's clock (`hello` tells its local time): every replica judges the
        // lease by the same clock, whatever its own says.
        let now_ms = self.server_time().await?;
        // Matches only a lease that is ours or expired; where another holds it, the upsert's
        // insert collides on _id, and the lease is not ours.
        let filter = doc! {"_id": name, "$or": [{"holder": holder}, {"until": {"$lt": bson::DateTime::from_millis(now_ms)}}]};
        let update = doc! {"$set": {"holder": holder, "until": bson::DateTime::from_millis(now_ms.saturating_add(ttl_ms))}};
        match self.leases.update_one(filter, update).upsert(true).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("MongoDB lease write failed")),
        }
    }
}

impl MongoStore {
    /// The server's clock, ms since the epoch (`localTime` of the `hello` command).
    async fn server_time(&self) -> anyhow::Result<i64> {
        let hello = self
            .leases
            .client()
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .context("MongoDB hello failed")?;
        match hello.get("localTime") {
            Some(bson::Bson::DateTime(t)) => Ok(t.timestamp_millis()),
            _ => anyhow::bail!("the MongoDB server's hello answer has no localTime, so the alert lease cannot use the server's clock"),
        }
    }

    /// One upsert per partial, sent concurrently; each is atomic with its own offset.
    async fn upsert_panes(&self, panes: &[&PaneRecord]) -> anyhow::Result<()> {
        let writes = panes.iter().map(|p| {
            let id = format!("{}|{}|{}", p.metric, p.pane_start, p.partition);
            let d = doc! {
                "_id": &id,
                "metric": &p.metric,
                "pane_start": p.pane_start,
                "partition": p.partition,
                "offset": p.offset,
                // JSON text, because group keys are user data and need not be valid BSON field names.
                "state": p.state.as_str(),
                super::PANE_TIME: bson::DateTime::from_millis(p.pane_start),
                "updated_at": bson::DateTime::now(),
            };
            // Never replace a partial that already includes later offsets (written by the consumer
            // that owns the partition now): the filter fails, the upsert collides on _id, and the
            // stale write is dropped.
            let write = self
                .panes
                .replace_one(doc! {"_id": id, "offset": {"$lte": p.offset}}, d)
                .upsert(true)
                .into_future();
            async move {
                match write.await {
                    Ok(_) => Ok(()),
                    Err(e) if is_duplicate(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        });
        futures::future::try_join_all(writes)
            .await
            .context("MongoDB metric state write failed")?;
        Ok(())
    }
}

/// Reference collections are collections of the pipeline's database, read as relaxed extended
/// JSON (numbers stay numbers, dates are `{"$date": ...}`); the `_id` MongoDB gave a document
/// is left out (it is not the user's data), one the user set is kept.
#[async_trait]
impl crate::store::Collections for MongoStore {
    async fn documents(
        &self,
        name: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::store::Document>> {
        let failed = || format!("MongoDB read of collection {name:?} failed");
        let cursor = self
            .db
            .collection::<Document>(name)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .with_context(failed)?;
        let docs: Vec<Document> = cursor.try_collect().await.with_context(failed)?;
        Ok(docs
            .into_iter()
            .map(|mut d| {
                if matches!(d.get("_id"), Some(bson::Bson::ObjectId(_))) {
                    d.remove("_id");
                }
                match bson::Bson::Document(d).into_relaxed_extjson() {
                    serde_json::Value::Object(m) => m,
                    _ => unreachable!("a document is a JSON object"),
                }
            })
            .collect())
    }

    /// Not atomic on MongoDB: a pipeline refreshing meanwhile may read part of the new documents
    /// (its next refresh reads them all).
    async fn replace_documents(
        &self,
        name: &str,
        documents: &[crate::store::Document],
    ) -> anyhow::Result<()> {
        let collection = self.db.collection::<Document>(name);
        let docs = documents
            .iter()
            .map(bson::to_document)
            .collect::<Result<Vec<_>, _>>()
            .context("a document cannot be written as BSON")?;
        collection
            .delete_many(doc! {})
            .await
            .with_context(|| format!("cannot empty MongoDB collection {name:?}"))?;
        for chunk in docs.chunks(10_000) {
            collection
                .insert_many(chunk)
                .await
                .with_context(|| format!("cannot write to MongoDB collection {name:?}"))?;
        }
        Ok(())
    }
}
