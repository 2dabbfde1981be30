//! The aggregate's stored layout, in one place. A metric's partials are rows of the pane table
//! (`PaneRecord`: metric key, pane start, partition, offset, state); four other kinds of row
//! share the table, told apart by a suffix of the metric's state key and a reserved pane:
//!
//! | row | key | pane | partition | offset | state |
//! | --- | --- | --- | --- | --- | --- |
//! | partial | `state_key` | pane start | Kafka partition, or [`backfill_partition`] | newest offset included | the reducer's state |
//! | watermark | [`watermark_key`] | [`WATERMARK_PANE`] | Kafka partition | newest offset | newest event time |
//! | seam | [`seam_key`] | [`SEAM_PANE`] | Kafka partition | first offset counted live | the backfill's progress |
//! | open sessions | [`sessions_key`] | [`SESSIONS_PANE`] | Kafka partition | newest offset included | a session metric's open sessions and watermark |
//! | rewrite mark | [`rewrite_key`] | [`REWRITE_PANE`] | 0 | when | when |
//! | quarantined | [`quarantine_key`] | the damaged partial's | its | its | the undecodable state, kept whole |
//!
//! Reserved panes are timeless (`TIMELESS_PANE` and just below), so pane retention never
//! deletes them. Every module of `aggregate` reads and writes these rows through this file.

use super::{Metric, Point};
use crate::store::{PaneRecord, ResultRow, StateStore, TIMELESS_PANE};

/// Watermarks are stored at the timeless pane, so pane retention never deletes them; the store
/// makes rows at this pane visible only after the others of the same write.
pub(super) const WATERMARK_PANE: i64 = TIMELESS_PANE;

/// Seam records are timeless, but written with the partials of their batch, not after them (the
/// watermarks' pane): a seam must be durable before anything counted after it is.
pub(super) const SEAM_PANE: i64 = TIMELESS_PANE - 1;

/// A session metric's open sessions sit at the timeless pane, so the store makes them visible
/// only after the partials written with them: a stored table's sessions closed into partials
/// that are stored too.
pub(super) const SESSIONS_PANE: i64 = TIMELESS_PANE;

/// Rewrite marks sit at the timeless pane too (their key sets them apart from watermarks).
pub(super) const REWRITE_PANE: i64 = TIMELESS_PANE;

/// Partition ids from here on belong to backfills (Kafka partitions stay far below).
const BACKFILL_PARTITIONS: i32 = 1 << 24;

/// The store key of a metric's watermark records; readers of the metric's own key never see
/// them.
pub(super) fn watermark_key(m: &Metric) -> String {
    format!("{}#watermark", m.state_key())
}

/// The store key under which a metric's undecodable partials are kept (same pane and partition).
pub(super) fn quarantine_key(m: &Metric) -> String {
    format!("{}#quarantined", m.state_key())
}

/// The store key of a session metric's tables of open sessions (one per partition).
pub(super) fn sessions_key(m: &Metric) -> String {
    format!("{}#sessions", m.state_key())
}

/// The store key of a metric's seam records (one per partition).
pub(super) fn seam_key(m: &Metric) -> String {
    format!("{}#seam", m.state_key())
}

/// The store key of a metric's rewrite mark.
pub(super) fn rewrite_key(m: &Metric) -> String {
    format!("{}#rewritten", m.state_key())
}

/// The partition id a backfill's partials of `partition` are stored under: apart from the live
/// ones of the same pane, so neither replaces the other, and readers merge both.
pub fn backfill_partition(partition: i32) -> i32 {
    BACKFILL_PARTITIONS + partition + 1
}

/// The record that tells readers `m`'s settled panes were rewritten at `now_ms` (by
/// `runner backfill`), so they drop what they kept.
pub(super) fn rewrite_mark(m: &Metric, now_ms: i64) -> PaneRecord {
    PaneRecord {
        metric: rewrite_key(m),
        pane_start: REWRITE_PANE,
        partition: 0,
        offset: now_ms,
        state: now_ms.into(),
    }
}

/// The final result of the window of `m` ending at `p.end`, as it is stored and published.
pub(super) fn result_row(m: &Metric, p: Point) -> ResultRow {
    ResultRow {
        metric: m.name().to_string(),
        window_start: p.end - m.window.size_ms,
        window_end: p.end,
        value: p.value,
    }
}

/// Every partition's stored watermark of `m`: (partition, newest event time).
pub(super) async fn stored_watermarks(
    m: &Metric,
    store: &dyn StateStore,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let records = store
        .load_panes(&watermark_key(m), WATERMARK_PANE, WATERMARK_PANE + 1, None)
        .await?;
    records
        .iter()
        .map(|r| {
            r.state.as_i64().map(|t| (r.partition, t)).ok_or_else(|| {
                anyhow::anyhow!(
                    "metric {}: a stored watermark is not a time: {}",
                    m.name(),
                    r.state
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::NO_PARTITION;

    #[test]
    fn backfill_partitions_stay_apart_from_live_ones() {
        assert_ne!(backfill_partition(NO_PARTITION), NO_PARTITION);
        assert!((0..1000)
            .all(|p| backfill_partition(p) > 1000
                && backfill_partition(p) != backfill_partition(p + 1)));
    }
}
