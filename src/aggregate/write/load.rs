//! The read side of taking in a batch: what the batch's new partitions hold in the store
//! (partials, watermarks, seams), read before it is applied, and its installation into the
//! aggregator, so that [`Aggregator::ingest`] itself touches no store.

use super::{Aggregator, Cell, Loaded, PartitionLoad};
use crate::aggregate::backfill::{self, Job};
use crate::aggregate::keys::{
    quarantine_key, seam_key, sessions_key, watermark_key, SEAM_PANE, SESSIONS_PANE, WATERMARK_PANE,
};
use crate::aggregate::session::Table;
use crate::aggregate::{MetricSet, TimeMode};
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Record;
use crate::store::{PaneRecord, StateStore};
use crate::transport::{Batch, NO_PARTITION};

impl Aggregator {
    /// Reads what `batch` needs from the store before it can be applied: the stored partials,
    /// watermarks and seams of its partitions that are new to this aggregator (after start, a
    /// rebalance or a reload), and where a backfill of a metric new to one would end. Reads only:
    /// an error leaves everything as it was, so the call may simply be repeated. On the embedded
    /// queue the seam is the newest raw row, so this comes before the batch's raw events are
    /// stored.
    pub async fn load(&self, batch: &Batch, store: &dyn StateStore) -> anyhow::Result<Loaded> {
        let mut partitions: Vec<i32> = batch.sources.iter().map(|s| s.0).collect();
        if batch.sources.is_empty() && !batch.events.is_empty() {
            partitions.push(NO_PARTITION);
        }
        let mut loaded = Loaded::default();
        for partition in self.to_load(&partitions, &batch.revoked) {
            let (since, records) =
                Self::load_partition(&self.set, store, partition, &batch.events).await?;
            let seam = match (&self.backfill, partition) {
                (None, _) => None,
                // The embedded queue's seam: every raw row stored so far is history.
                (Some(b), NO_PARTITION) => {
                    Some(b.history.end(NO_PARTITION).await?).filter(|p| *p > 0)
                }
                // A Kafka partition's: the offset before this batch's first.
                (Some(_), p) => batch
                    .sources
                    .iter()
                    .filter(|s| s.0 == p)
                    .map(|s| s.1)
                    .min()
                    .map(|first| first - 1)
                    .filter(|at| *at >= 0),
            };
            loaded.partitions.push(PartitionLoad {
                partition,
                since,
                records,
                seam,
            });
        }
        Ok(loaded)
    }

    /// Partitions of this batch whose stored partials are not loaded yet (after start or a
    /// rebalance; a partition revoked by this batch is forgotten before it is applied).
    fn to_load(&self, partitions: &[i32], revoked: &[i32]) -> Vec<i32> {
        let mut new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.loaded.contains_key(p) || revoked.contains(p))
            .collect();
        new.sort_unstable();
        new.dedup();
        new
    }

    /// The stored partials of one partition that the batch's `events` can touch, for
    /// [`Self::install`], with the earliest pane start loaded. Each metric's watermark is read
    /// first: an event older than it less the lateness is late and touches no pane, so one
    /// record dated year 1 no longer loads every retained pane of the partition into memory.
    async fn load_partition(
        set: &MetricSet,
        store: &dyn StateStore,
        partition: i32,
        events: &[Record],
    ) -> anyhow::Result<(i64, Vec<PaneRecord>)> {
        let min_ts = events.iter().map(Record::time_ms).min().unwrap_or(0);
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::new();
        let mut earliest = i64::MAX;
        for m in &set.metrics {
            let marks = store
                .load_panes(
                    &watermark_key(m),
                    WATERMARK_PANE,
                    WATERMARK_PANE + 1,
                    Some(partition),
                )
                .await?;
            // A session metric closes sessions into panes from its table's watermark less
            // the lateness, and that watermark may be behind the partition's record.
            let tables = match m.session() {
                Some(_) => {
                    store
                        .load_panes(
                            &sessions_key(m),
                            SESSIONS_PANE,
                            SESSIONS_PANE + 1,
                            Some(partition),
                        )
                        .await?
                }
                None => Vec::new(),
            };
            let table_mark = tables
                .iter()
                .filter_map(|r| Table::watermark_of(&r.state))
                .min();
            let reach = m.config.lateness.as_millis() as i64 + m.window.slide_ms;
            let t = match m.config.time {
                // Without a stored watermark the batch's events set the reach.
                TimeMode::Event => marks
                    .iter()
                    .filter_map(|r| r.state.as_i64())
                    .map(|w| w.min(now))
                    .max()
                    .map_or(min_ts, |w| w.max(min_ts)),
                TimeMode::Processing => now,
            };
            // No table stored yet: the replay starts where the partition does, with this batch.
            let t = match (m.session(), table_mark) {
                (None, _) => t,
                (Some(_), Some(w)) => t.min(w),
                (Some(_), None) => t.min(min_ts),
            };
            let since = t.saturating_sub(reach);
            earliest = earliest.min(since);
            out.extend(
                store
                    .load_panes(m.state_key(), since, i64::MAX, Some(partition))
                    .await?,
            );
            out.extend(marks);
            out.extend(tables);
            out.extend(
                store
                    .load_panes(&seam_key(m), SEAM_PANE, SEAM_PANE + 1, Some(partition))
                    .await?,
            );
        }
        Ok((if earliest == i64::MAX { 0 } else { earliest }, out))
    }

    /// Installs loaded partials, so new events add to them instead of replacing them, and
    /// restarts the backfills a seam says are unfinished. Returns the metrics that have no state
    /// on the partition at all (no watermark, no seam): new to it.
    pub(super) fn install(
        &mut self,
        partition: i32,
        since: i64,
        records: Vec<PaneRecord>,
    ) -> anyhow::Result<Vec<usize>> {
        let mut known = vec![false; self.set.metrics.len()];
        for r in records {
            if let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| seam_key(m) == r.metric)
            {
                known[i] = true;
                self.states[i].watermarks.entry(partition).or_default().seam = r.offset;
                if self.backfill.is_some() {
                    self.jobs.extend(Job::of(&self.set, i, &r)?);
                }
                continue;
            }
            if let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| watermark_key(m) == r.metric)
            {
                known[i] = true;
                let time = r.state.as_i64().ok_or_else(|| {
                    anyhow::anyhow!(
                        "metric {}: a stored watermark is not a time: {}",
                        self.set.metrics[i].name(),
                        r.state
                    )
                })?;
                let mark = self.states[i].watermarks.entry(partition).or_default();
                // A watermark stored ahead of the clock (by an earlier version) is held to it.
                let time = time.min(chrono::Utc::now().timestamp_millis());
                if time > mark.time {
                    mark.time = time;
                }
                mark.offset = mark.offset.max(r.offset);
                continue;
            }
            if let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| m.session().is_some() && sessions_key(m) == r.metric)
            {
                known[i] = true;
                let Some((spec, _)) = self.set.metrics[i].session() else {
                    continue;
                };
                match Table::decode(r.state.as_str(), r.offset, &spec) {
                    Ok(table) => {
                        self.states[i].sessions.insert(partition, table);
                    }
                    Err(e) => self.quarantine(i, r, &e),
                }
                continue;
            }
            let Some(i) = self
                .set
                .metrics
                .iter()
                .position(|m| m.state_key() == r.metric)
            else {
                continue;
            };
            let m = &self.set.metrics[i];
            match m.decode(&r.state) {
                Ok(partial) => {
                    self.states[i].cells.insert(
                        (r.pane_start, partition),
                        Cell {
                            partial,
                            offset: r.offset,
                            dirty: false,
                        },
                    );
                }
                // Retrying cannot help a state that does not decode: it is quarantined, and the
                // pane starts again (see `quarantine`).
                Err(e) => self.quarantine(i, r, &e),
            }
        }
        self.loaded.insert(partition, since);
        Ok(known
            .iter()
            .enumerate()
            .filter(|(_, k)| !**k)
            .map(|(i, _)| i)
            .collect())
    }

    /// Keeps a stored partial that cannot be decoded whole under the metric's `#quarantined`
    /// key (written with this batch), reports it as a `corrupt_state` dead letter, and lets its
    /// pane start again empty: one damaged pane costs that pane's count, not the consumer.
    fn quarantine(&mut self, metric: usize, record: PaneRecord, error: &str) {
        let m = &self.set.metrics[metric];
        let detail = format!("metric {:?}: the stored state of pane {} (partition {}) cannot be read: {error}; kept whole under {:?}", m.name(), crate::event::iso(record.pane_start), record.partition, quarantine_key(m));
        tracing::error!(metric = m.name(), pane_start = record.pane_start, partition = record.partition, %error, "stored metric state cannot be read; quarantined, and its pane starts again");
        let id = format!(
            "state:{}:{}:{}",
            m.state_key(),
            record.pane_start,
            record.partition
        );
        self.late.push(DeadLetter::new(
            id,
            Reason::CorruptState,
            detail,
            (record.partition, record.offset),
            record.state.as_str().as_bytes(),
        ));
        self.seams.push(PaneRecord {
            metric: quarantine_key(m),
            ..record
        });
    }

    /// Makes a seam at position `at` of `partition` for each of `metrics` (none: nothing came
    /// before), to be stored with this batch's partials; their backfills start once it is.
    pub(super) fn make_seams(
        &mut self,
        partition: i32,
        metrics: Vec<usize>,
        at: Option<i64>,
    ) -> anyhow::Result<()> {
        let Some(at) = at else { return Ok(()) };
        let now = chrono::Utc::now().timestamp_millis();
        for i in metrics {
            let Some(record) = backfill::new_seam(&self.set.metrics[i], partition, at, now) else {
                continue;
            };
            if partition != NO_PARTITION {
                self.states[i].watermarks.entry(partition).or_default().seam = at;
            }
            self.jobs.extend(Job::of(&self.set, i, &record)?);
            self.seams.push(record);
        }
        Ok(())
    }
}
