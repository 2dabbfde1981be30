//! The live dashboard: an axum server rendering minijinja templates from `templates/`, pushing
//! re-rendered panels over server-sent events, with a JSON API and Prometheus metrics beside it.

mod chart;
mod templates;

use crate::aggregate::{self, MetricSet};
use crate::config::{de, Secret};
use crate::reload::ReloadStatus;
use crate::store::EventStore;
use crate::telemetry::{Snapshot, Stats};
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use templates::Templates;

/// `[dashboard]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// Address to serve on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How often the page gets new values.
    #[serde(default = "default_refresh", deserialize_with = "de::duration")]
    pub refresh: Duration,
    /// Folder of the page templates (relative to the pipeline file).
    #[serde(default = "default_templates")]
    pub templates: PathBuf,
    /// When set, every route needs `Authorization: Bearer <token>` or `?token=<token>`.
    #[serde(default)]
    pub token: Secret,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { listen: default_listen(), refresh: default_refresh(), templates: default_templates(), token: Secret::default() }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8050".into()
}
fn default_refresh() -> Duration {
    Duration::from_secs(2)
}
fn default_templates() -> PathBuf {
    PathBuf::from("../templates")
}

/// What the dashboard reads from the running pipeline.
pub struct Sources {
    pub pipeline: String,
    pub store: Arc<dyn EventStore>,
    pub metrics: watch::Receiver<Arc<MetricSet>>,
    pub stats: Arc<Stats>,
    pub reload: Arc<Mutex<ReloadStatus>>,
}

struct AppState {
    sources: Sources,
    templates: Templates,
    refresh: Duration,
    token: String,
    /// The last snapshot and when, for rates.
    last: Mutex<(Instant, Snapshot, f64, f64)>,
}

type Shared = Arc<AppState>;

/// Binds the address and serves until `stop`.
pub async fn serve(config: DashboardConfig, sources: Sources, stop: CancellationToken) -> anyhow::Result<()> {
    let templates = Templates::load(&config.templates)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot serve the dashboard on {} (dashboard.listen)", config.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && config.token.is_empty() {
        tracing::warn!(%addr, "the dashboard is reachable beyond this machine without a token; set dashboard.token");
    }
    tracing::info!("dashboard on http://{addr}/");
    let state = Arc::new(AppState {
        sources,
        templates,
        refresh: config.refresh,
        token: config.token.expose().to_string(),
        last: Mutex::new((Instant::now(), Snapshot::default(), 0.0, 0.0)),
    });
    let app = router(state);
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    Ok(())
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/panels", get(panels))
        .route("/events", get(events))
        .route("/assets/{name}", get(asset))
        .route("/api/metrics", get(api_metrics))
        .route("/api/metrics/{name}/history", get(api_history))
        .route("/api/health", get(api_health))
        .route("/api/alerts", get(api_alerts))
        .route("/metrics", get(prometheus))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.token.is_empty() {
        return next.run(req).await;
    }
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let query = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("token="));
    if bearer == Some(state.token.as_str()) || query == Some(state.token.as_str()) {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "a dashboard token is required (Authorization: Bearer <token> or ?token=)").into_response()
    }
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
    metric: Option<String>,
}

fn range_ms(range: Option<&str>) -> (i64, &'static str) {
    match range {
        Some("1h") => (3_600_000, "1h"),
        Some("24h") => (86_400_000, "24h"),
        _ => (300_000, "5m"),
    }
}

/// Everything a page render needs.
async fn view(state: &AppState, q: &RangeQuery) -> Value {
    let (span, range) = range_ms(q.range.as_deref());
    let set = state.sources.metrics.borrow().clone();
    let now = chrono::Utc::now().timestamp_millis();
    let store = &*state.sources.store;
    let mut metrics = Vec::new();
    let mut by_name = HashMap::new();
    for m in set.metrics() {
        let current = aggregate::read(m, store, now).await.map(|v| v.value).unwrap_or(Value::Null);
        let history = aggregate::history(m, store, now - span, now, 60).await.unwrap_or_default();
        let numeric: Vec<(i64, f64)> = history.iter().filter_map(|p| headline_number(&p.value).map(|v| (p.end, v))).collect();
        by_name.insert(m.name().to_string(), current.clone());
        metrics.push(json!({
            "name": m.name(),
            "description": m.config.description,
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
    json!({
        "pipeline": state.sources.pipeline,
        // Only an authorised page gets here, so it may carry the token for its own requests.
        "token_query": if state.token.is_empty() { String::new() } else { format!("?token={}", state.token) },
        "refresh_ms": state.refresh.as_millis() as u64,
        "range": range,
        "selected": q.metric.clone().unwrap_or_default(),
        "updated": chrono::Utc::now().format("%H:%M:%S").to_string(),
        "headline": {
            "events_in_per_s": chart::short(rate_in.round()),
            "events_stored_per_s": chart::short(rate_stored.round()),
            "active_users": num("active_users"),
            "active_items": num("active_items"),
            "avg_per_user": num("avg_interactions_per_user"),
        },
        "metrics": metrics,
        "alerts": alerts_json(store).await,
        "health": health_json(&state.sources.stats, &reload),
    })
}

/// Pending and firing alerts, and the latest notifications; an unreadable store shows as an error.
async fn alerts_json(store: &dyn EventStore) -> Value {
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
fn headline_number(v: &Value) -> Option<f64> {
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

fn health_json(stats: &Stats, r: &ReloadStatus) -> Value {
    let (latency, lag) = (stats.visible_latency_ms(), stats.lag());
    let dead: serde_json::Map<String, Value> = stats.dead_letters().into_iter().filter(|d| d.1 > 0).map(|(r, n)| (r.as_str().to_string(), json!(n))).collect();
    stats.snapshot().json_with(json!({
        "store_failing_since": stats.store_failing_since().map(|t| t.to_rfc3339()),
        "dead_letters": dead,
        "consumer_lag": lag.iter().map(|(p, l)| json!({"partition": p, "lag": l})).collect::<Vec<_>>(),
        "visible_latency_p50_ms": latency.map(|l| l.0), "visible_latency_p99_ms": latency.map(|l| l.1),
        "reloads": r.reloads, "reload_failures": r.failures,
        "last_reload": r.last_success.map(|t| t.to_rfc3339()),
        "last_reload_error": r.last_error, "needs_restart": r.needs_restart,
    }))
}

fn render(state: &AppState, name: &str, ctx: Value) -> Response {
    let (html, _) = state.templates.render(name, minijinja::Value::from(minijinja::value::Serde(&ctx)));
    Html(html).into_response()
}

async fn page(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> Response {
    let ctx = view(&state, &q).await;
    render(&state, "dashboard.html", ctx)
}

async fn panels(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> Response {
    let ctx = view(&state, &q).await;
    render(&state, "panels.html", ctx)
}

/// Pushes freshly rendered panels every refresh interval.
async fn events(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> impl IntoResponse {
    let stream = futures::stream::unfold((state, q, true), |(state, q, first)| async move {
        if !first {
            tokio::time::sleep(state.refresh).await;
        }
        let ctx = view(&state, &q).await;
        let (html, _) = state.templates.render("panels.html", minijinja::Value::from(minijinja::value::Serde(&ctx)));
        let event = SseEvent::default().event("panels").data(html);
        Some((Ok::<_, std::convert::Infallible>(event), (state, q, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn asset(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let kind = if name.ends_with(".js") { "text/javascript" } else if name.ends_with(".css") { "text/css" } else { return StatusCode::NOT_FOUND.into_response() };
    match state.templates.asset(&name) {
        Some(body) => ([(header::CONTENT_TYPE, kind)], body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn api_error(code: StatusCode, error: impl ToString) -> Response {
    (code, Json(ApiError { error: error.to_string() })).into_response()
}

async fn api_metrics(State(state): State<Shared>) -> Response {
    let set = state.sources.metrics.borrow().clone();
    match set.read_all(&*state.sources.store, chrono::Utc::now().timestamp_millis()).await {
        Ok(values) => Json(values).into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn api_history(State(state): State<Shared>, UrlPath(name): UrlPath<String>, Query(q): Query<RangeQuery>) -> Response {
    let set = state.sources.metrics.borrow().clone();
    let Some(m) = set.metrics().iter().find(|m| m.name() == name) else {
        return api_error(StatusCode::NOT_FOUND, format!("no metric named {name:?}"));
    };
    let (span, _) = range_ms(q.range.as_deref());
    let now = chrono::Utc::now().timestamp_millis();
    match aggregate::history(m, &*state.sources.store, now - span, now, 120).await {
        Ok(points) => Json(points).into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn api_health(State(state): State<Shared>) -> Response {
    let reload = state.sources.reload.lock().unwrap().clone();
    let stats = &state.sources.stats;
    Json(health_json(stats, &reload)).into_response()
}

async fn api_alerts(State(state): State<Shared>) -> Response {
    let v = alerts_json(&*state.sources.store).await;
    match v["error"].as_str() {
        Some(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e),
        None => Json(v).into_response(),
    }
}

/// Prometheus text format: the pipeline's counters and every numeric metric value.
async fn prometheus(State(state): State<Shared>) -> Response {
    let s = state.sources.stats.snapshot();
    let r = state.sources.reload.lock().unwrap().clone();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        out.push_str(&format!("# HELP runner_{name} {help}\n# TYPE runner_{name} counter\nrunner_{name} {v}\n"));
    };
    counter("events_generated_total", "Events the generator produced.", s.generated);
    counter("events_delivered_total", "Events the transport acknowledged.", s.delivered);
    counter("events_delivery_failed_total", "Events the broker refused after retries.", s.delivery_failed);
    counter("messages_consumed_total", "Messages the consumer received.", s.consumed);
    counter("events_stored_total", "Events newly written to the store.", s.stored);
    counter("events_duplicate_total", "Replayed events the store already had.", s.duplicates);
    counter("messages_rejected_total", "Messages that were not usable events (dead-lettered).", s.rejected);
    counter("script_errors_total", "Events a metric script failed on.", s.script_errors);
    counter("late_events_total", "Events later than a metric's allowed lateness.", s.late_events);
    counter("store_retries_total", "Store writes retried.", s.store_retries);
    counter("alert_notifications_sent_total", "Alert notifications a channel accepted.", s.notifications_sent);
    counter("alert_notifications_failed_total", "Alert notifications given up after retries.", s.notifications_failed);
    counter("alert_errors_total", "Alert rule evaluations that failed.", s.alert_errors);
    counter("reloads_total", "Reloads applied.", r.reloads);
    counter("reload_failures_total", "Reloads rejected.", r.failures);
    out.push_str("# HELP runner_dead_letters_total Messages stored as dead letters, by reason.\n# TYPE runner_dead_letters_total counter\n");
    for (reason, n) in state.sources.stats.dead_letters() {
        out.push_str(&format!("runner_dead_letters_total{{reason=\"{}\"}} {n}\n", reason.as_str()));
    }
    let lag = state.sources.stats.lag();
    if !lag.is_empty() {
        out.push_str("# HELP runner_consumer_lag Messages behind the end of each assigned partition.\n# TYPE runner_consumer_lag gauge\n");
        for (p, l) in lag {
            out.push_str(&format!("runner_consumer_lag{{partition=\"{p}\"}} {l}\n"));
        }
    }
    if let Ok(active) = crate::alert::active_alerts(&*state.sources.store).await {
        out.push_str("# HELP runner_alerts Alert instances by rule and state.\n# TYPE runner_alerts gauge\n");
        let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for a in active {
            *counts.entry((a.alert, format!("{:?}", a.status).to_lowercase())).or_default() += 1;
        }
        for ((alert, st), n) in counts {
            out.push_str(&format!("runner_alerts{{alertname=\"{}\",state=\"{st}\"}} {n}\n", label_value(&alert)));
        }
    }
    let set = state.sources.metrics.borrow().clone();
    if let Ok(values) = set.read_all(&*state.sources.store, chrono::Utc::now().timestamp_millis()).await {
        out.push_str("# HELP runner_metric Current window value of each numeric pipeline metric.\n# TYPE runner_metric gauge\n");
        for v in values {
            if let Some(n) = headline_number(&v.value) {
                out.push_str(&format!("runner_metric{{name=\"{}\"}} {n}\n", label_value(&v.name)));
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// A Prometheus label value, escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
