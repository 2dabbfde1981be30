//! The live dashboard: an axum server rendering minijinja templates from `templates/`, pushing
//! re-rendered panels over server-sent events, with a JSON API and Prometheus metrics beside it.

mod auth;
mod chart;
mod prometheus;
mod templates;
mod view;

use crate::aggregate::{self, MetricSet};
use crate::base::{de, Secret};
use crate::telemetry::ReloadStatus;
use crate::store::EventStore;
use crate::telemetry::{Snapshot, Stats};
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use templates::Templates;
use view::{alerts_json, health_json, range_ms, view, RangeQuery};

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
    /// Metrics shown as headline tiles, by name, e.g. `["active_users", "avg_interactions_per_user"]`
    /// [default: the first three metrics].
    #[serde(default)]
    pub headline: Vec<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { listen: default_listen(), refresh: default_refresh(), templates: default_templates(), token: Secret::default(), headline: Vec::new() }
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
    /// The settings in force: a reload changes the token and refresh interval live.
    config: watch::Receiver<DashboardConfig>,
    /// Fires at shutdown: open event streams end, so the graceful shutdown can finish.
    stop: CancellationToken,
    /// The last snapshot and when, for rates.
    last: Mutex<(Instant, Snapshot, f64, f64)>,
}

type Shared = Arc<AppState>;

impl AppState {
    fn token(&self) -> String {
        self.config.borrow().token.expose().to_string()
    }

    fn refresh(&self) -> Duration {
        self.config.borrow().refresh
    }

    fn headline(&self) -> Vec<String> {
        self.config.borrow().headline.clone()
    }
}

/// How long requests under way may take to finish once the dashboard is stopped.
const GRACEFUL_WAIT: Duration = Duration::from_secs(3);

/// Binds the address and serves until `stop`. `settings` is watched: a new token or refresh
/// interval applies at once; the address and template folder are those at start.
pub async fn serve(settings: watch::Receiver<DashboardConfig>, sources: Sources, stop: CancellationToken) -> anyhow::Result<()> {
    let config = settings.borrow().clone();
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
        config: settings,
        stop: stop.clone(),
        last: Mutex::new((Instant::now(), Snapshot::default(), 0.0, 0.0)),
    });
    let app = router(state);
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::select! {
        served = server => served?,
        // Requests still running (a slow store read) get a moment; then the server closes.
        _ = async { stop.cancelled().await; tokio::time::sleep(GRACEFUL_WAIT).await } => {
            tracing::warn!(wait = ?GRACEFUL_WAIT, "dashboard requests still open at shutdown; closing them");
        }
    }
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
        .route("/metrics", get(prometheus::scrape))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        // Probes answer without the token (they say nothing but up / ready, and an orchestrator's
        // probe should not need a secret).
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Renders a template off the async runtime: a render first checks the template folder for
/// edits, which reads files.
async fn render_html(state: &Shared, name: &'static str, ctx: Value) -> String {
    let state = state.clone();
    let rendered = tokio::task::spawn_blocking(move || state.templates.render(name, minijinja::Value::from(minijinja::value::Serde(&ctx))).0).await;
    rendered.unwrap_or_else(|e| format!("<!doctype html><title>runner</title><p>render failed: {e}</p>"))
}

async fn render(state: &Shared, name: &'static str, ctx: Value) -> Response {
    Html(render_html(state, name, ctx).await).into_response()
}

async fn page(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> Response {
    let ctx = view(&state, &q).await;
    render(&state, "dashboard.html", ctx).await
}

async fn panels(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> Response {
    let ctx = view(&state, &q).await;
    render(&state, "panels.html", ctx).await
}

/// Pushes freshly rendered panels every refresh interval, until the dashboard stops (a stream
/// that never ended kept the graceful shutdown waiting for ever).
async fn events(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> impl IntoResponse {
    let stream = futures::stream::unfold((state, q, true), |(state, q, first)| async move {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(state.refresh()) => {}
                _ = state.stop.cancelled() => return None,
            }
        }
        if state.stop.is_cancelled() {
            return None;
        }
        let ctx = view(&state, &q).await;
        let html = render_html(&state, "panels.html", ctx).await;
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

/// Liveness: the process serves requests.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers and its writes are not failing; otherwise 503 with the reason.
async fn readyz(State(state): State<Shared>) -> Response {
    if let Some(since) = state.sources.stats.store_failing_since() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: store writes failing since {}\n", since.to_rfc3339())).into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.sources.store.count_dead_letters()).await {
        Ok(Ok(_)) => "ready\n".into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: the store does not answer: {e:#}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the store did not answer within 2 s\n").into_response(),
    }
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
