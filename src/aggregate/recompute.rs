//! Recomputing stored panes from history after the fact (`runner backfill`), for a metric
//! whose script was fixed: each pane of a partition is written once, complete, and the final
//! results of its windows again. Unlike a live backfill (backfill.rs) it runs to the end in the
//! caller and replaces what is stored.

use super::backfill::Screen;
use super::keys::{backfill_partition, rewrite_mark};
use super::{Aggregator, Metric, MetricSet, TimeMode};
use crate::store::{PaneRecord, StateStore};
use crate::telemetry::Stats;
use crate::transport::{Batch, History};
use std::collections::HashSet;
use std::sync::Arc;

/// What a [`recompute`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recomputed {
    /// Events read from history and counted.
    pub events: u64,
    /// Partials written (one per pane and partition).
    pub partials: usize,
    /// Final window results rewritten.
    pub results: usize,
}

/// Recomputes the panes of `set.metrics()[index]` in `[since, until)` from `history`, for the
/// given partitions, and replaces the stored ones: for a metric whose script was fixed after the
/// fact. `until` must be past every pane live traffic still changes (its end plus the lateness
/// behind the newest events): those panes the running pipeline no longer writes, and a write of
/// an older partial over a recomputed one is refused by the store (it includes fewer offsets).
///
/// Each pane of a partition is written once, complete, with its backfill partial (if any) emptied
/// in the same write; then the final results of the windows that had one are written again.
/// `progress` hears the events counted so far.
#[allow(clippy::too_many_arguments)] // each is one thing the caller chose; a struct would only rename them
pub async fn recompute(
    set: &MetricSet,
    index: usize,
    history: &dyn History,
    partitions: &[i32],
    (since, until): (i64, i64),
    store: &dyn StateStore,
    screen: &Screen,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Recomputed> {
    let one = Arc::new(set.only(index));
    let m = &one.metrics()[0];
    if m.config.time == TimeMode::Processing {
        anyhow::bail!("metric {:?} is on processing time: when its events were consumed is not in the history, so it cannot be recomputed", m.name());
    }
    let mut done = Recomputed::default();
    for &partition in partitions {
        let bf = backfill_partition(partition);
        // Backfill partials of the range, to empty with the pane they belong to.
        let backfilled: HashSet<i64> = store
            .load_panes(m.state_key(), since, until, Some(bf))
            .await?
            .iter()
            .map(|r| r.pane_start)
            .collect();
        let empty = m
            .encode(&m.empty().map_err(anyhow::Error::msg)?)
            .map_err(anyhow::Error::msg)?;
        let write = |closed: Vec<PaneRecord>| {
            let mut records = Vec::with_capacity(closed.len() * 2);
            for r in closed {
                if backfilled.contains(&r.pane_start) {
                    records.push(PaneRecord {
                        metric: r.metric.clone(),
                        pane_start: r.pane_start,
                        partition: bf,
                        offset: i64::MAX,
                        state: empty.clone(),
                    });
                }
                records.push(r);
            }
            records
        };
        let (start, _) = history.start(partition, since).await?;
        let end = history.end(partition).await?;
        let stats = Stats::new();
        let mut aggregator = Aggregator::new(one.clone(), stats.clone());
        let mut after = start - 1;
        let mut idle = 0;
        while after < end {
            let read = history
                .read(partition, after, end, DEFAULT_RECOMPUTE_CHUNK)
                .await?;
            if read.through <= after {
                idle += 1;
                anyhow::ensure!(idle < 10, "history of partition {partition} stopped at position {after} (of {end}): nothing arrived for 10 reads");
                continue;
            }
            idle = 0;
            after = read.through;
            let mut batch = Batch::default();
            for (at, e) in read
                .events
                .into_iter()
                .filter(|(_, e)| (since..until).contains(&e.time_ms()))
            {
                batch.events.push(e);
                batch.sources.push((partition, at));
            }
            screen(&mut batch);
            one.derive(&mut batch.events, &stats);
            aggregator.apply(&batch.events, &batch.sources);
            done.events += batch.events.len() as u64;
            let records = write(aggregator.take_closed(false));
            done.partials += records.len();
            store.write_panes(&records).await?;
            progress(done.events);
        }
        let records = write(aggregator.take_closed(true));
        done.partials += records.len();
        store.write_panes(&records).await?;
    }
    // Readers keep settled panes decoded: this tells them to read the rewritten ones.
    store
        .write_panes(&[rewrite_mark(m, chrono::Utc::now().timestamp_millis())])
        .await?;
    done.results = rewrite_results(m, store, since, until).await?;
    Ok(done)
}

/// Events read in one step of a recomputation.
const DEFAULT_RECOMPUTE_CHUNK: usize = 5_000;

/// Writes again the stored final results of `m` whose window has a pane in `[since, until)`.
async fn rewrite_results(
    m: &Metric,
    store: &dyn StateStore,
    since: i64,
    until: i64,
) -> anyhow::Result<usize> {
    let slide = m.window.slide_ms;
    let stored = store
        .load_results(m.name(), since + slide, until + m.window.size_ms)
        .await?;
    let ends: HashSet<i64> = stored.iter().map(|r| r.window_end).collect();
    let (Some(first), Some(last)) = (ends.iter().min().copied(), ends.iter().max().copied()) else {
        return Ok(0);
    };
    let mut written = 0;
    let mut from = first - slide;
    while from < last {
        let to = (from + slide * 500).min(last);
        let points = super::history(m, store, from, to - 1, 500).await?;
        let rows: Vec<crate::store::ResultRow> = points
            .into_iter()
            .filter(|p| ends.contains(&p.end))
            .map(|p| super::keys::result_row(m, p))
            .collect();
        written += rows.len();
        store.write_results(&rows).await?;
        from = to;
    }
    Ok(written)
}
