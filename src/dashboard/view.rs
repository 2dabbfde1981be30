//! The view model: what a page render, a pushed panel update and the health API show, built from
//! the store, the metric set and the counters.

use super::{chart, AppState};
use crate::aggregate;
use crate::store::EventStore;
use crate::telemetry::{ReloadStatus, Stats};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

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

/// Everything a page render needs.
pub(super) async fn view(state: &AppState, q: &RangeQuery) -> Value {
    let (span, range) = range_ms(q.range.as_deref());
    let set = state.sources.metrics.borrow().clone();
    let now = chrono::Utc::now().timestamp_millis();
    let store = &*state.sources.store;
    let mut metrics = Vec::new();
    let mut by_name = HashMap::new();
    for m in set.metrics() {
        let read = aggregate::read(m, store, now).await.ok();
        let backfilling = read.as_ref().and_then(|v| v.backfilling).map(|b| b.done);
        let current = read.map(|v| v.value).unwrap_or(Value::Null);
        let history = aggregate::history(m, store, now - span, now, 60).await.unwrap_or_default();
        let numeric: Vec<(i64, f64)> = history.iter().filter_map(|p| headline_number(&p.value).map(|v| (p.end, v))).collect();
        by_name.insert(m.name().to_string(), current.clone());
        metrics.push(json!({
            "name": m.name(),
            "description": m.config.description,
            // While set, the value is partial: the panel says so instead of showing it as final.
            "backfilling": backfilling,
            "kind": kind(&current),
            "value": current,
            "text": headline_number(&current).map(chart::short),
            "bars": bars(&current),
            // Our own SVG (numbers and times only); the template marks it safe.
            "chart": chart::line(&numeric, 480, 120),
        }));
    }
    let stats = state.sources.stats.snapshot();
    let (rate_in, rate_stored) = {
        let mut last = state.last.lock().unwrap();
        let secs = last.0.elapsed().as_secs_f64();
        if secs >= 0.5 {
            last.2 = (stats.generated.max(stats.consumed) - last.1.generated.max(last.1.consumed)) as f64 / secs;
            last.3 = (stats.stored - last.1.stored) as f64 / secs;
            *last = (Instant::now(), stats, last.2, last.3);
        }
        (last.2, last.3)
    };
    let reload = state.sources.reload.lock().unwrap().clone();
    let num = |name: &str| by_name.get(name).and_then(headline_number).map(chart::short).unwrap_or_else(|| "–".into());
    // The tiles the file chose (`[dashboard] headline`), else the first three metrics.
    let chosen = state.headline();
    let names: Vec<&str> = match chosen.is_empty() {
        true => set.metrics().iter().take(3).map(|m| m.name()).collect(),
        false => chosen.iter().map(String::as_str).collect(),
    };
    let tiles: Vec<Value> = names
        .iter()
        .map(|name| {
            let label = set.metrics().iter().find(|m| m.name() == *name).map(|m| m.config.description.as_str()).filter(|d| !d.is_empty()).unwrap_or(name);
            json!({ "name": name, "label": label, "text": num(name) })
        })
        .collect();
    json!({
        "pipeline": state.sources.pipeline,
        "refresh_ms": state.refresh().as_millis() as u64,
        "range": range,
        "selected": q.metric.clone().unwrap_or_default(),
        "updated": chrono::Utc::now().format("%H:%M:%S").to_string(),
        "headline": {
            "events_in_per_s": chart::short(rate_in.round()),
            "events_stored_per_s": chart::short(rate_stored.round()),
            "tiles": tiles,
        },
        "metrics": metrics,
        "alerts": alerts_json(store).await,
        "health": health_json(&state.sources.stats, &reload),
    })
}

/// Pending and firing alerts, and the latest notifications; an unreadable store shows as an error.
pub(super) async fn alerts_json(store: &dyn EventStore) -> Value {
    let active = crate::alert::active_alerts(store).await;
    let recent = store.recent_alerts(20).await;
    let error = active.as_ref().err().or(recent.as_ref().err()).map(|e| format!("{e:#}"));
    let active = active.unwrap_or_default();
    let firing = active.iter().filter(|a| a.status == crate::alert::state::Status::Firing).count();
    json!({
        "firing": firing,
        "pending": active.len() - firing,
        "active": active,
        "recent": recent.unwrap_or_default(),
        "error": error,
    })
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
        Value::Array(a) => a.first().and_then(|e| e.get("count")).and_then(|c| c.as_f64()),
        _ => None,
    }
}

fn bars(v: &Value) -> Vec<Value> {
    let entries: Vec<(String, f64)> = match v {
        Value::Object(m) => m.iter().filter_map(|(k, v)| v.as_f64().map(|n| (k.clone(), n))).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|e| Some((e.get("key")?.as_str()?.to_string(), e.get("count")?.as_f64()?)))
            .collect(),
        _ => Vec::new(),
    };
    let max = entries.iter().map(|e| e.1).fold(0.0, f64::max).max(1e-9);
    entries.into_iter().map(|(label, n)| json!({"label": label, "value": chart::short(n), "pct": (n / max * 100.0).round()})).collect()
}

pub(super) fn health_json(stats: &Stats, r: &ReloadStatus) -> Value {
    let (latency, lag) = (stats.visible_latency_ms(), stats.lag());
    let dead: serde_json::Map<String, Value> = stats.dead_letters().into_iter().filter(|d| d.1 > 0).map(|(r, n)| (r.as_str().to_string(), json!(n))).collect();
    stats.snapshot().json_with(json!({
        "store_failing_since": stats.store_failing_since().map(|t| t.to_rfc3339()),
        "dead_letters": dead,
        "consumer_lag": lag.iter().map(|(p, l)| json!({"partition": p, "lag": l})).collect::<Vec<_>>(),
        "visible_latency_p50_ms": latency.map(|l| l.0), "visible_latency_p99_ms": latency.map(|l| l.1),
        "reloads": r.reloads, "reload_failures": r.failures,
        "last_reload": r.last_success.map(|t| t.to_rfc3339()),
        "last_reload_error": r.last_error, "needs_restart": r.needs_restart, "last_reload_changes": r.last_changes,
    }))
}
