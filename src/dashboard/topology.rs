//! The pipeline's own flow, for `/api/topology`, its panel and `runner top`: generator → topic
//! (per partition: end offset, lag, rate in) → consumer group members → store, metrics and
//! alerts, with the live rate on each edge and where events leave the flow (rejected into dead
//! letters, late for a metric, refused by the broker), so an operator sees where it is stuck.

use super::api::{Drop, Edge, Member, Node, PartitionRow, ReasonRow, Topology};
use super::AppState;
use crate::telemetry::{Snapshot, Stats};
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

/// The flow: nodes, the edges between them with their rates, and the drops.
pub(super) async fn topology(state: &AppState) -> Topology {
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
    let partitions: Vec<PartitionRow> = stats
        .partitions()
        .iter()
        .map(|p| PartitionRow {
            partition: p.partition,
            end_offset: p.end,
            lag: p.lag,
            rate_in: rate(&format!("partition:{}", p.partition)),
        })
        .collect();
    let mut members: Vec<Member> = stats
        .group()
        .iter()
        .map(|m| Member {
            id: m.id.clone(),
            client_id: m.client_id.clone(),
            host: m.host.clone(),
            partitions: m.partitions.clone(),
        })
        .collect();
    // A broker that does not describe its groups (Tansu 0.6): this process, with the
    // partitions it measures, is the member we know of.
    if members.is_empty() && !stats.partitions().is_empty() {
        members.push(Member {
            client_id: "this runner".into(),
            partitions: stats.partitions().iter().map(|p| p.partition).collect(),
            ..Member::default()
        });
    }
    let reasons: Vec<ReasonRow> = stats
        .dead_letters()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| ReasonRow {
            reason: r.as_str().to_string(),
            total: n,
            rate: rate(&format!("dead_letters:{}", r.as_str())),
        })
        .collect();
    let total_lag: i64 = stats.lag().iter().map(|l| l.1).sum();
    let node = |id: &str, label: String| Node {
        id: id.into(),
        label,
        ..Node::default()
    };
    let counted = rate("consumed") - rate("rejected");
    let edge = |from: &str, to: &str, rate: f64| Edge {
        from: from.into(),
        to: to.into(),
        rate,
    };
    let drop = |at: &str, what: &str, total: u64, key: &str| Drop {
        at: at.into(),
        what: what.into(),
        total,
        rate: rate(key),
        reasons: None,
    };
    Topology {
        nodes: vec![
            Node {
                running: Some(state.sources.generator),
                total: Some(snap.generated),
                rate: Some(rate("generated")),
                ..node("generator", "generator".into())
            },
            Node {
                partitions: Some(partitions),
                lag: Some(total_lag),
                ..node("transport", state.sources.transport.clone())
            },
            Node {
                members: Some(members),
                total: Some(snap.consumed),
                rate: Some(rate("consumed")),
                ..node("consumer", "consumer group".into())
            },
            Node {
                total: Some(snap.stored),
                rate: Some(rate("stored")),
                failing_since: Some(stats.store_failing_since().map(|t| t.to_rfc3339())),
                ..node("store", state.sources.store.describe())
            },
            Node {
                count: Some(set.metrics().len()),
                rate: Some(counted),
                ..node("metrics", "metrics".into())
            },
            Node {
                firing: Some(firing),
                rate: Some(rate("notifications_sent")),
                ..node("alerts", "alerts".into())
            },
        ],
        edges: vec![
            edge("generator", "transport", rate("delivered")),
            edge("transport", "consumer", rate("consumed")),
            edge("consumer", "store", rate("stored")),
            edge("consumer", "metrics", counted),
            edge("metrics", "alerts", rate("notifications_sent")),
        ],
        drops: vec![
            drop(
                "generator",
                "refused by the broker",
                snap.delivery_failed,
                "delivery_failed",
            ),
            Drop {
                reasons: Some(reasons),
                ..drop(
                    "consumer",
                    "rejected into dead letters",
                    snap.rejected,
                    "rejected",
                )
            },
            drop("store", "duplicates skipped", snap.duplicates, "duplicates"),
            drop(
                "metrics",
                "late for a metric",
                snap.late_events,
                "late_events",
            ),
            drop(
                "metrics",
                "script errors",
                snap.script_errors,
                "script_errors",
            ),
        ],
    }
}
