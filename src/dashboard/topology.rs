//! The pipeline's own flow, for `/api/topology`, its panel and `runner top`: generator → topic
//! (per partition: end offset, lag, rate in) → consumer group members → store, metrics and
//! alerts, with the live rate on each edge and where events leave the flow (rejected into dead
//! letters, late for a metric, refused by the broker), so an operator sees where it is stuck.

use super::AppState;
use crate::telemetry::{Snapshot, Stats};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Per-second rates of every counter (and of each partition's end offset), measured by
/// [`Rates::sample`] every [`Rates::EVERY`] in the background, so every reader (the first page
/// load too) sees a rate over a whole interval and many readers share one measurement.
#[derive(Default)]
pub(super) struct Rates(Mutex<Option<Reading>>);

struct Reading {
    at: Instant,
    counters: HashMap<&'static str, u64>,
    /// Each partition's end offset, when it was first seen at that value, and the rate
    /// measured when it last moved: the consumer measures ends only every couple of seconds,
    /// so a rate between two readings a second apart would be 0 or double by turns.
    ends: HashMap<i32, (i64, Instant, f64)>,
    dead: HashMap<&'static str, u64>,
    rates: HashMap<String, f64>,
}

impl Rates {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// The latest rates, by counter field (`stored`, `consumed`, …), `partition:N` and
    /// `dead_letters:<reason>`.
    pub fn read(&self) -> HashMap<String, f64> {
        self.0
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.rates.clone())
            .unwrap_or_default()
    }

    /// Takes a reading and the rates since the last one.
    pub fn sample(&self, stats: &Stats) {
        let snap: Snapshot = stats.snapshot();
        let counters: HashMap<&'static str, u64> =
            snap.counters().iter().map(|c| (c.field, c.value)).collect();
        let now = Instant::now();
        let mut ends: HashMap<i32, (i64, Instant, f64)> = stats
            .partitions()
            .iter()
            .map(|p| (p.partition, (p.end, now, 0.0)))
            .collect();
        let dead: HashMap<&'static str, u64> = stats
            .dead_letters()
            .into_iter()
            .map(|(r, n)| (r.as_str(), n))
            .collect();
        let mut last = self.0.lock().unwrap();
        let mut rates = HashMap::new();
        if let Some(prev) = last.as_ref() {
            let secs = prev.at.elapsed().as_secs_f64().max(1e-3);
            for (k, v) in &counters {
                rates.insert(
                    k.to_string(),
                    v.saturating_sub(*prev.counters.get(k).unwrap_or(v)) as f64 / secs,
                );
            }
            for (p, (end, seen, rate)) in ends.iter_mut() {
                if let Some(&(before, before_seen, before_rate)) = prev.ends.get(p) {
                    if *end == before {
                        // Not measured again yet: the last rate stands, for a while.
                        (*seen, *rate) = (
                            before_seen,
                            if before_seen.elapsed() < STALE_END {
                                before_rate
                            } else {
                                0.0
                            },
                        );
                    } else {
                        *rate = (*end - before).max(0) as f64
                            / now.duration_since(before_seen).as_secs_f64().max(1e-3);
                    }
                }
                rates.insert(format!("partition:{p}"), *rate);
            }
            for (k, v) in &dead {
                rates.insert(
                    format!("dead_letters:{k}"),
                    v.saturating_sub(*prev.dead.get(k).unwrap_or(v)) as f64 / secs,
                );
            }
        }
        *last = Some(Reading {
            at: now,
            counters,
            ends,
            dead,
            rates,
        });
    }
}

/// An end offset unchanged this long means nothing is written to the partition.
const STALE_END: std::time::Duration = std::time::Duration::from_secs(6);

/// The flow as JSON: nodes, the edges between them with their rates, and the drops.
pub(super) async fn json(state: &AppState) -> Value {
    let rates = state.rates.read();
    let rate = |k: &str| (rates.get(k).copied().unwrap_or(0.0) * 10.0).round() / 10.0;
    let stats = &state.sources.stats;
    let snap = stats.snapshot();
    let set = state.sources.metrics.borrow().clone();
    let firing = crate::alert::active_alerts(&*state.sources.store)
        .await
        .map(|a| {
            a.iter()
                .filter(|a| a.status == crate::alert::state::Status::Firing)
                .count()
        })
        .ok();
    let partitions: Vec<Value> = stats
        .partitions()
        .iter()
        .map(|p| json!({ "partition": p.partition, "end_offset": p.end, "lag": p.lag, "rate_in": rate(&format!("partition:{}", p.partition)) }))
        .collect();
    let mut members: Vec<Value> = stats.group().iter().map(|m| json!({ "id": m.id, "client_id": m.client_id, "host": m.host, "partitions": m.partitions })).collect();
    // A broker that does not describe its groups (Tansu 0.6): this process, with the
    // partitions it measures, is the member we know of.
    if members.is_empty() && !stats.partitions().is_empty() {
        let mine: Vec<i32> = stats.partitions().iter().map(|p| p.partition).collect();
        members
            .push(json!({ "id": "", "client_id": "this runner", "host": "", "partitions": mine }));
    }
    let dead: Vec<Value> = stats
        .dead_letters()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| json!({ "reason": r.as_str(), "total": n, "rate": rate(&format!("dead_letters:{}", r.as_str())) }))
        .collect();
    let total_lag: i64 = stats.lag().iter().map(|l| l.1).sum();
    json!({
        "nodes": [
            { "id": "generator", "label": "generator", "running": state.sources.generator, "total": snap.generated, "rate": rate("generated") },
            { "id": "transport", "label": state.sources.transport, "partitions": partitions, "lag": total_lag },
            { "id": "consumer", "label": "consumer group", "members": members, "total": snap.consumed, "rate": rate("consumed") },
            { "id": "store", "label": state.sources.store.describe(), "total": snap.stored, "rate": rate("stored"),
              "failing_since": stats.store_failing_since().map(|t| t.to_rfc3339()) },
            { "id": "metrics", "label": "metrics", "count": set.metrics().len(), "rate": rate("consumed") - rate("rejected") },
            { "id": "alerts", "label": "alerts", "firing": firing, "rate": rate("notifications_sent") },
        ],
        "edges": [
            { "from": "generator", "to": "transport", "rate": rate("delivered") },
            { "from": "transport", "to": "consumer", "rate": rate("consumed") },
            { "from": "consumer", "to": "store", "rate": rate("stored") },
            { "from": "consumer", "to": "metrics", "rate": rate("consumed") - rate("rejected") },
            { "from": "metrics", "to": "alerts", "rate": rate("notifications_sent") },
        ],
        "drops": [
            { "at": "generator", "what": "refused by the broker", "total": snap.delivery_failed, "rate": rate("delivery_failed") },
            { "at": "consumer", "what": "rejected into dead letters", "total": snap.rejected, "rate": rate("rejected"), "reasons": dead },
            { "at": "store", "what": "duplicates skipped", "total": snap.duplicates, "rate": rate("duplicates") },
            { "at": "metrics", "what": "late for a metric", "total": snap.late_events, "rate": rate("late_events") },
            { "at": "metrics", "what": "script errors", "total": snap.script_errors, "rate": rate("script_errors") },
        ],
    })
}
