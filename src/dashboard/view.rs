//! The view model: what a page render, a pushed panel update and the health API show, built from
//! the store, the metric set and the counters.

use super::api::{Alerts, Health, PartitionLag};
use super::{chart, topology, AppState};
use crate::aggregate::{self, Metric, MetricSet, MetricValue, Point};
use crate::store::StateStore;
use crate::telemetry::{ReloadStatus, Stats};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
pub(super) struct RangeQuery {
    pub range: Option<String>,
    pub metric: Option<String>,
}

pub(super) fn range_ms(range: Option<&str>) -> (i64, &'static str) {
    match range {
        Some("1h") => (3_600_000, "1h"),
        Some("24h") => (86_400_000, "24h"),
        _ => (300_000, "5m"),
    }
}

/// A metric's history over `range`, computed at most once per refresh per (metric, range)
/// however many pages, feeds and API calls ask; a long range at most once per chart point (a
/// point of a day's chart spans about three minutes).
pub(super) async fn history(
    state: &AppState,
    set: &Arc<MetricSet>,
    metric: &Metric,
    range: Option<&str>,
) -> Arc<Vec<Point>> {
    let (span, label) = range_ms(range);
    let ttl = state.refresh().max(Duration::from_millis(
        (span / chart::MAX_POINTS as i64) as u64,
    ));
    // The set's address tells one loaded set from the next: a reload starts afresh.
    state
        .histories
        .get(
            Arc::as_ptr(set) as usize,
            metric,
            &*state.sources.store,
            span,
            label,
            ttl,
        )
        .await
}

/// How old the current values the dashboard serves may be. Callers within it share one read:
/// many API clients and the panel render cost the store one read of every metric, not one
/// each (the windows slide every few seconds, so half a second is not a visible delay).
const VALUES_TTL: Duration = Duration::from_millis(500);

/// Values up to this old are served at once while newer ones are read (see [`super::hub::Memo::get_or_stale`]).
const VALUES_STALE: Duration = Duration::from_secs(5);

/// Every metric's current window value (or why it could not be read), in the set's order.
pub(super) async fn current_values(state: &AppState) -> Arc<Vec<Result<MetricValue, String>>> {
    let set = state.sources.metrics.borrow().clone();
    let store = state.sources.store.clone();
    state
        .values
        .get_or_stale(
            Arc::as_ptr(&set) as usize,
            VALUES_TTL,
            VALUES_STALE,
            || async move {
                let now = chrono::Utc::now().timestamp_millis();
                let mut out = Vec::with_capacity(set.metrics().len());
                for m in set.metrics() {
                    out.push(
                        aggregate::read(m, &*store, now)
                            .await
                            .map_err(|e| format!("{e:#}")),
                    );
                }
                Arc::new(out)
            },
        )
        .await
}

/// The first error when every metric failed to read (the store is away, not one metric's state):
/// readers answer 503 then; otherwise they show the metrics that read and name the others.
pub(super) fn all_failed(values: &[Result<MetricValue, String>]) -> Option<&str> {
    match values.iter().all(Result::is_err) {
        true => values
            .first()
            .and_then(|v| v.as_ref().err())
            .map(String::as_str),
        false => None,
    }
}

/// Everything a page render needs, built at most once per refresh per range; `metric` only
/// picks which panels the template shows.
pub(super) async fn view(state: &AppState, q: &RangeQuery) -> Value {
    let (_, range) = range_ms(q.range.as_deref());
    let mut ctx = state
        .views
        .get(range, state.refresh(), || build_view(state, range))
        .await
        .as_ref()
        .clone();
    ctx["selected"] = json!(q.metric.clone().unwrap_or_default());
    ctx
}

async fn build_view(state: &AppState, range: &'static str) -> Arc<Value> {
    let (span, _) = range_ms(Some(range));
    let set = state.sources.metrics.borrow().clone();
    let now = chrono::Utc::now().timestamp_millis();
    let store = &*state.sources.store;
    let mut metrics = Vec::new();
    let mut by_name = HashMap::new();
    let values = current_values(state).await;
    for (m, read) in set.metrics().iter().zip(values.iter()) {
        let read = read.as_ref().ok();
        let backfilling = read.as_ref().and_then(|v| v.backfilling).map(|b| b.done);
        let other = read.as_ref().and_then(|v| v.other);
        let current = read.map(|v| v.value.clone()).unwrap_or(Value::Null);
        let history = history(state, &set, m, Some(range)).await;
        let (series, hidden) = series_of(m.name(), &history);
        let band = quantile_band(m);
        let frame = chart::Frame {
            from: now - span,
            to: now,
            unit: &m.config.unit,
            hidden,
            band: band.as_ref().map(|(lo, hi)| (lo.as_str(), hi.as_str())),
        };
        by_name.insert(m.name().to_string(), current.clone());
        metrics.push(json!({
            "name": m.name(),
            "description": m.config.description,
            "unit": m.config.unit,
            // While set, the value is partial: the panel says so instead of showing it as final.
            "backfilling": backfilling,
            // Keys past max_groups were counted together: the panel says how many records.
            "other": other,
            "max_groups": m.config.max_groups,
            "kind": kind(&current),
            // A session metric says how its sessions end; it shows as a tile of its own too.
            "session": session_note(m),
            "value": current,
            "text": headline_number(&current).map(chart::short),
            "bars": bars(&current),
            // Our own SVG (numbers, times and escaped names); the template marks it safe.
            "chart": chart::lines(&series, &frame),
        }));
    }
    let rates = state.rates.read();
    let rate = |k: &str| rates.get(k).copied().unwrap_or(0.0);
    let (rate_in, rate_stored) = (rate("generated").max(rate("consumed")), rate("stored"));
    let reload = state.sources.reload.lock().unwrap().clone();
    let num = |name: &str| {
        by_name
            .get(name)
            .and_then(headline_number)
            .map(chart::short)
            .unwrap_or_else(|| "–".into())
    };
    // The tiles the file chose (`[dashboard] headline`), else the first three metrics.
    let chosen = state.headline();
    let names: Vec<&str> = match chosen.is_empty() {
        true => set.metrics().iter().take(3).map(|m| m.name()).collect(),
        false => chosen.iter().map(String::as_str).collect(),
    };
    let tiles: Vec<Value> = names
        .iter()
        .map(|name| {
            let label = set
                .metrics()
                .iter()
                .find(|m| m.name() == *name)
                .map(|m| m.config.description.as_str())
                .filter(|d| !d.is_empty())
                .unwrap_or(name);
            json!({ "name": name, "label": label, "text": num(name) })
        })
        .collect();
    // Session metrics get a row of tiles of their own (sessions ended, their length).
    let sessions: Vec<Value> = set
        .metrics()
        .iter()
        .filter(|m| m.config.session.is_some())
        .map(|m| {
            let label = Some(m.config.description.as_str())
                .filter(|d| !d.is_empty())
                .unwrap_or(m.name());
            let text = by_name
                .get(m.name())
                .and_then(headline_number)
                .map(chart::short)
                .unwrap_or_else(|| "none ended yet".into());
            json!({ "name": m.name(), "label": label, "text": text, "unit": m.config.unit, "note": session_note(m) })
        })
        .collect();
    Arc::new(json!({
        "pipeline": state.sources.pipeline,
        "refresh_ms": state.refresh().as_millis() as u64,
        "range": range,
        "updated": chrono::Utc::now().format("%H:%M:%S").to_string(),
        "headline": {
            "events_in_per_s": chart::short(rate_in.round()),
            "events_stored_per_s": chart::short(rate_stored.round()),
            "tiles": tiles,
            "sessions": sessions,
        },
        "metrics": metrics,
        "alerts": alerts(store).await,
        "health": health(&state.sources.stats, &reload),
        "topology": topology::topology(state).await,
    }))
}

/// How a session metric's sessions end, for its panel and tile (none for other metrics).
fn session_note(m: &crate::aggregate::Metric) -> Option<String> {
    let c = m.config.session.as_ref()?;
    Some(format!(
        "session window: a session ends {} after its last record (at most {} long)",
        humantime::format_duration(c.gap),
        humantime::format_duration(c.max_length)
    ))
}

/// A quantile metric of several quantiles is drawn as its lines within the area from its lowest
/// quantile to its highest: the labels of those two.
fn quantile_band(m: &crate::aggregate::Metric) -> Option<(String, String)> {
    let qs = &m.config.quantiles;
    if m.config.reducer != crate::aggregate::ReducerKind::Quantile || qs.len() < 2 {
        return None;
    }
    let lo = qs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = qs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((
        crate::aggregate::quantile_label(lo),
        crate::aggregate::quantile_label(hi),
    ))
}

/// Series shown at most in one chart; a grouped metric shows its biggest keys.
const TOP_SERIES: usize = 5;

/// The lines of a metric's chart, and how many keys were left out: a number is one line; a
/// grouped value (`{key: n}`) a line per key, its biggest keys by total (a key missing from a
/// window with data counted 0 there); a ranking a line per key, its highest peaks (a key off
/// the ranking in a window is unknown there: a gap). A window with no data is a gap in all.
pub(super) fn series_of(name: &str, history: &[Point]) -> (Vec<chart::Series>, usize) {
    fn value(p: &Point) -> Option<&Value> {
        p.filled.then_some(&p.value)
    }
    if history
        .iter()
        .filter_map(value)
        .all(|v| matches!(v, Value::Number(_)))
    {
        let points = history
            .iter()
            .map(|p| (p.end, value(p).and_then(Value::as_f64)))
            .collect();
        return (
            vec![chart::Series {
                name: name.to_string(),
                points,
            }],
            0,
        );
    }
    // Per key: its weight (total for groups, peak for rankings) and whether absence means zero.
    let mut keys: HashMap<String, f64> = HashMap::new();
    let mut grouped = true;
    let entries = |v: &Value| -> Vec<(String, f64)> {
        match v {
            Value::Object(m) => m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|e| {
                    Some((
                        e.get("key")?.as_str()?.to_string(),
                        e.get("count")?.as_f64()?,
                    ))
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    for v in history.iter().filter_map(value) {
        grouped &= !v.is_array();
        for (k, n) in entries(v) {
            let w = keys.entry(k).or_insert(0.0);
            *w = if v.is_array() { w.max(n) } else { *w + n };
        }
    }
    let mut ranked: Vec<(String, f64)> = keys.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let hidden = ranked.len().saturating_sub(TOP_SERIES);
    ranked.truncate(TOP_SERIES);
    let series = ranked
        .into_iter()
        .map(|(key, _)| {
            let points = history
                .iter()
                .map(|p| {
                    let at =
                        value(p).map(|v| entries(v).into_iter().find(|e| e.0 == key).map(|e| e.1));
                    (
                        p.end,
                        match at {
                            Some(Some(n)) => Some(n),
                            Some(None) if grouped => Some(0.0),
                            _ => None,
                        },
                    )
                })
                .collect();
            chart::Series { name: key, points }
        })
        .collect();
    (series, hidden)
}

/// Pending and firing alerts, and the latest notifications; an unreadable store shows as an error.
pub(super) async fn alerts(store: &dyn StateStore) -> Alerts {
    let active = crate::alert::active_alerts(store).await;
    let recent = store.recent_alerts(20).await;
    let error = active
        .as_ref()
        .err()
        .or(recent.as_ref().err())
        .map(|e| format!("{e:#}"));
    let active = active.unwrap_or_default();
    let firing = active
        .iter()
        .filter(|a| a.status == crate::alert::state::Status::Firing)
        .count();
    Alerts {
        firing,
        pending: active.len() - firing,
        active,
        recent: recent.unwrap_or_default(),
        error,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Number(_) => "number",
        Value::Array(_) => "ranking",
        Value::Object(_) => "groups",
        _ => "empty",
    }
}

/// The number a chart plots: the value itself, or the count of a ranking's first entry.
pub(super) fn headline_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Array(a) => a
            .first()
            .and_then(|e| e.get("count"))
            .and_then(|c| c.as_f64()),
        _ => None,
    }
}

fn bars(v: &Value) -> Vec<Value> {
    let entries: Vec<(String, f64)> = match v {
        Value::Object(m) => m
            .iter()
            .filter_map(|(k, v)| v.as_f64().map(|n| (k.clone(), n)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|e| {
                Some((
                    e.get("key")?.as_str()?.to_string(),
                    e.get("count")?.as_f64()?,
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    let max = entries.iter().map(|e| e.1).fold(0.0, f64::max).max(1e-9);
    entries.into_iter().map(|(label, n)| json!({"label": label, "value": chart::short(n), "pct": (n / max * 100.0).round()})).collect()
}

pub(super) fn health(stats: &Stats, r: &ReloadStatus) -> Health {
    let (latency, lag) = (stats.visible_latency_ms(), stats.lag());
    Health {
        counters: stats
            .snapshot()
            .counters()
            .iter()
            .map(|c| (c.field.to_string(), c.value))
            .collect(),
        store_failing_since: stats.store_failing_since().map(|t| t.to_rfc3339()),
        dead_letters: stats
            .dead_letters()
            .into_iter()
            .filter(|d| d.1 > 0)
            .map(|(r, n)| (r.as_str().to_string(), n))
            .collect(),
        consumer_lag: lag
            .iter()
            .map(|(partition, lag)| PartitionLag {
                partition: *partition,
                lag: *lag,
            })
            .collect(),
        visible_latency_p50_ms: latency.map(|l| l.0),
        visible_latency_p99_ms: latency.map(|l| l.1),
        reloads: r.reloads,
        reload_failures: r.failures,
        last_reload: r.last_success.map(|t| t.to_rfc3339()),
        last_reload_error: r.last_error.clone(),
        needs_restart: r.needs_restart.clone(),
        last_reload_changes: r.last_changes.clone(),
    }
}
