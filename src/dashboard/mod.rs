//! The live dashboard: an axum server rendering minijinja templates from `templates/`, pushing
//! re-rendered panels over server-sent events, with a JSON API and Prometheus metrics beside it.

pub mod api;
mod auth;
mod chart;
mod history;
mod hub;
mod prometheus;
mod silences;
mod templates;
mod topology;
mod view;
pub mod workbench;

use crate::aggregate::{self, MetricSet};
use crate::base::{de, Secret};
use crate::store::StateStore;
use crate::telemetry::ReloadStatus;
use crate::telemetry::Stats;
use anyhow::Context;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use auth::{Caller, Role, TokenConfig};
use hub::{Feed, FeedKey, Frame, Hub, Memo};
pub use templates::Templates;
use view::{alerts, health, range_ms, view, RangeQuery};

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
    /// A folder whose files override the built-in page templates, script and style file by file
    /// (relative to the pipeline file; re-read on change), e.g. one holding only
    /// `_headline.html` [default: none, the built-in templates].
    #[serde(default)]
    pub templates: Option<PathBuf>,
    /// When set, every route needs `Authorization: Bearer <token>` (or the cookie that opening
    /// the page once with `?token=<token>` sets). Required when `listen` is beyond loopback
    /// (or `tokens`). It is an operator token, recorded as `operator` on the silences it makes.
    #[serde(default)]
    pub token: Secret,
    /// Named tokens with a role each, `viewer` (read pages and APIs), `operator` (also make
    /// and expire silences) or `editor` (also change metrics in the workbench):
    /// `ops = { secret = "${OPS_TOKEN}", role = "operator" }`. The name is recorded as who made
    /// a silence or a change. With any token set, every route needs one.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
    /// Serve beyond loopback without a token. Off: a dashboard on `0.0.0.0` without a token
    /// refuses to start, since anyone who can reach the port would read every metric and alert.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Host names (with or without a port) the dashboard answers besides loopback ones, when
    /// it listens on loopback: a reverse proxy's public name. Other `Host` headers get 421, so
    /// a web page cannot reach the local dashboard through DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Metrics shown as headline tiles, by name, e.g. `["active_users", "avg_interactions_per_user"]`
    /// [default: the first three metrics].
    #[serde(default)]
    pub headline: Vec<String>,
    /// Live viewers (open event streams) served at once; one more is answered 503 with
    /// Retry-After. Every viewer of a view shares one render, so a viewer costs a connection.
    #[serde(default = "default_max_clients", deserialize_with = "de::number")]
    pub max_clients: usize,
    /// Opens the metric workbench (`/workbench`: edit, try and save metrics, which writes the
    /// pipeline's files) to anyone who reaches a dashboard that has no token and listens on
    /// loopback. With tokens, the workbench is for tokens of the `editor` role whatever this says.
    #[serde(default)]
    pub workbench: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: default_listen(),
            refresh: default_refresh(),
            templates: None,
            token: Secret::default(),
            tokens: BTreeMap::new(),
            allow_anonymous: false,
            allowed_hosts: Vec::new(),
            headline: Vec::new(),
            max_clients: default_max_clients(),
            workbench: false,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8050".into()
}
fn default_refresh() -> Duration {
    Duration::from_secs(2)
}
fn default_max_clients() -> usize {
    500
}

/// What the dashboard reads from the running pipeline.
pub struct Sources {
    pub pipeline: String,
    pub store: Arc<dyn StateStore>,
    pub metrics: watch::Receiver<Arc<MetricSet>>,
    pub stats: Arc<Stats>,
    pub reload: Arc<Mutex<ReloadStatus>>,
    /// What carries the events (`Kafka topic …`, `embedded queue`), for the topology.
    pub transport: String,
    /// Whether this process runs the generator.
    pub generator: bool,
    /// The metric workbench, where this process has the pipeline's files and history.
    pub workbench: Option<Arc<dyn workbench::Workbench>>,
}

struct AppState {
    sources: Sources,
    /// Whether the dashboard listens on a loopback address (the host check applies then).
    loopback: bool,
    templates: Templates,
    /// The settings in force: a reload changes the token and refresh interval live.
    config: watch::Receiver<DashboardConfig>,
    /// Fires at shutdown: open event streams end, so the graceful shutdown can finish.
    stop: CancellationToken,
    /// Counter rates, shared by every view built in one instant.
    rates: topology::Rates,
    /// The open live feeds and their viewers.
    hub: Arc<Hub>,
    /// Page contexts per range, built once per refresh.
    views: Memo<&'static str, Arc<Value>>,
    /// Every metric's current value, per metric set.
    values: Memo<usize, Arc<Vec<Result<aggregate::MetricValue, String>>>>,
    /// Metric histories per (metric set, metric, range), kept between refreshes.
    histories: history::Histories,
}

type Shared = Arc<AppState>;

impl DashboardConfig {
    /// Every token with its name and role: the named ones, and the single `token` as an operator.
    pub fn credentials(&self) -> Vec<(String, Secret, Role)> {
        let single = (!self.token.is_empty()).then(|| {
            (
                auth::SINGLE_TOKEN_NAME.to_string(),
                self.token.clone(),
                Role::Operator,
            )
        });
        single
            .into_iter()
            .chain(
                self.tokens
                    .iter()
                    .map(|(name, t)| (name.clone(), t.secret.clone(), t.role)),
            )
            .collect()
    }

    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        let mut p = Vec::new();
        for (name, t) in &self.tokens {
            if t.secret.is_empty() {
                p.push(format!(
                    "dashboard.tokens.{name}: the secret is empty (is the variable it names set?)"
                ));
            }
        }
        if !self.token.is_empty() && self.tokens.contains_key(auth::SINGLE_TOKEN_NAME) {
            p.push(format!(
                "dashboard.tokens.{}: the name is taken by dashboard.token; choose another",
                auth::SINGLE_TOKEN_NAME
            ));
        }
        let secrets = self.credentials();
        for (i, (a, s, _)) in secrets.iter().enumerate() {
            if let Some((b, _, _)) = secrets[..i]
                .iter()
                .find(|(_, t, _)| t == s && !s.is_empty())
            {
                p.push(format!("dashboard.tokens.{a}: the same secret as {b}; each token needs its own, or the name recorded for a silence is a guess"));
            }
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

impl AppState {
    fn refresh(&self) -> Duration {
        self.config.borrow().refresh
    }

    fn headline(&self) -> Vec<String> {
        self.config.borrow().headline.clone()
    }

    fn max_clients(&self) -> usize {
        self.config.borrow().max_clients
    }
}

/// How long requests under way may take to finish once the dashboard is stopped.
const GRACEFUL_WAIT: Duration = Duration::from_secs(3);

/// A dashboard ready to serve: its templates loaded and its address bound. Both happen before
/// the pipeline starts, so a port in use or a broken template is an error at start, not a page
/// that silently never comes up.
pub struct Bound {
    listener: tokio::net::TcpListener,
    templates: Templates,
}

impl Bound {
    /// The address it serves (the port the system chose for `:0`).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Loads the templates and binds `dashboard.listen`; refuses an address beyond loopback without
/// a token (unless `allow_anonymous`).
pub async fn bind(config: &DashboardConfig) -> anyhow::Result<Bound> {
    let templates = Templates::load(config.templates.as_deref())?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await.with_context(|| {
        format!("cannot serve the dashboard on {} (dashboard.listen, or --dashboard-listen; another process may hold the port)", config.listen)
    })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && config.credentials().is_empty() {
        if !config.allow_anonymous {
            anyhow::bail!(
                "the dashboard would serve {addr}, beyond this machine, without a token: set dashboard.token (env DASHBOARD_TOKEN in the shipped pipeline), \
                 listen on 127.0.0.1, or set dashboard.allow_anonymous = true to serve it to anyone who can reach the port"
            );
        }
        tracing::warn!(%addr, "the dashboard is reachable beyond this machine without a token (dashboard.allow_anonymous = true)");
    }
    Ok(Bound {
        listener,
        templates,
    })
}

/// Serves a bound dashboard until `stop`. `settings` is watched: a new token or refresh interval
/// applies at once; the address and template folder are those at start.
pub async fn serve(
    bound: Bound,
    settings: watch::Receiver<DashboardConfig>,
    sources: Sources,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Bound {
        listener,
        templates,
    } = bound;
    let addr = listener.local_addr()?;
    tracing::info!("dashboard on http://{addr}/");
    let state = Arc::new(AppState {
        sources,
        loopback: addr.ip().is_loopback(),
        templates,
        config: settings,
        stop: stop.clone(),
        rates: Default::default(),
        hub: Default::default(),
        views: Default::default(),
        values: Default::default(),
        histories: Default::default(),
    });
    // Rates are measured once a second whoever reads them.
    let sampler = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(topology::Rates::EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => sampler.rates.sample(&sampler.sources.stats),
                _ = sampler.stop.cancelled() => return,
            }
        }
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
        .route("/assets/vendor/editor.js", get(editor_js))
        .route("/api/metrics", get(api_metrics))
        .route("/api/metrics/{name}/history", get(api_history))
        .route("/api/health", get(api_health))
        .route("/api/alerts", get(api_alerts))
        .route("/api/silences", get(silences::list).post(silences::create))
        .route(
            "/api/silences/{id}",
            axum::routing::delete(silences::expire),
        )
        .route("/api/topology", get(api_topology))
        .route("/workbench", get(workbench::page))
        .route("/api/workbench/metrics", get(workbench::metrics))
        .route(
            "/api/workbench/check",
            axum::routing::post(workbench::check),
        )
        .route(
            "/api/workbench/try",
            axum::routing::post(workbench::try_draft),
        )
        .route("/api/workbench/save", axum::routing::post(workbench::save))
        .route("/api/changes", get(workbench::changes))
        .route("/metrics", get(prometheus::scrape))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Probes answer without the token (they say nothing but up / ready, and an orchestrator's
        // probe should not need a secret).
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Request bodies are a silence (a few hundred bytes) or a workbench draft (a script):
        // a larger one is refused unread.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(time_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::check_host,
        ))
        .with_state(state)
}

/// The largest request body taken.
const BODY_LIMIT: usize = 256 << 10;

/// How long a request may take to get its answer started (a stream's body may go on after).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers 503 to a request whose response has not started within [`REQUEST_TIMEOUT`] (a store
/// that hangs), so a slow read cannot pile up connections.
async fn time_limit(req: axum::extract::Request, next: middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than 30 s (the store may be slow); try again\n",
        )
            .into_response(),
    }
}

/// Renders a template off the async runtime: a render first checks the template folder for
/// edits, which reads files.
async fn render_html(state: &Shared, name: &'static str, ctx: Value) -> String {
    let state = state.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        state
            .templates
            .render(name, minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .0
    })
    .await;
    rendered.unwrap_or_else(|e| {
        format!("<!doctype html><title>runner</title><p>render failed: {e}</p>")
    })
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

/// Pushes the panels of the viewer's range and metric each refresh, from the one feed every
/// viewer of that view shares, until the viewer leaves or the dashboard stops (a stream that
/// never ended kept the graceful shutdown waiting for ever). Beyond `max_clients`: 503.
async fn events(State(state): State<Shared>, Query(q): Query<RangeQuery>) -> Response {
    let seat = match state.hub.seat(state.max_clients()) {
        Ok(seat) => seat,
        Err(full) => {
            let msg = format!("the dashboard serves {} live viewers at most (dashboard.max_clients); try again later\n", full.limit);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                msg,
            )
                .into_response();
        }
    };
    let key = FeedKey {
        range: range_ms(q.range.as_deref()).1,
        metric: q.metric.clone().unwrap_or_default(),
    };
    let viewer = state.hub.subscribe(key.clone(), |feed| {
        tokio::spawn(run_feed(state.clone(), key, q, feed));
    });
    let stream = futures::stream::unfold(
        (state, viewer, seat),
        |(state, mut viewer, seat)| async move {
            let chunk = tokio::select! {
                frame = viewer.next() => frame?.event,
                _ = state.stop.cancelled() => return None,
                // A comment line now and then keeps proxies from closing a quiet stream.
                _ = tokio::time::sleep(SSE_KEEP_ALIVE) => Bytes::from_static(b":\n\n"),
            };
            Some((
                Ok::<_, std::convert::Infallible>(chunk),
                (state, viewer, seat),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// How long an event stream may go without a byte before it gets a keep-alive comment.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Renders one view's panels each refresh for all its viewers; ends with the last of them.
async fn run_feed(state: Shared, key: FeedKey, q: RangeQuery, feed: Arc<Feed>) {
    let mut seq = 0;
    // Refreshes on a fixed beat (a slow render does not stretch the interval); a beat missed
    // while rendering is skipped, not sent late in a burst.
    let beat_of = |period: Duration| {
        let mut beat = tokio::time::interval(period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat
    };
    let mut beat = beat_of(state.refresh());
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            _ = state.stop.cancelled() => return,
        }
        let ctx = view(&state, &q).await;
        let html = render_html(&state, "panels.html", ctx).await;
        seq += 1;
        feed.publish(Frame::new(seq, &html));
        if state.hub.retire_if_unwatched(&key, &feed) {
            return;
        }
        if beat.period() != state.refresh() {
            beat = beat_of(state.refresh());
            beat.reset();
        }
    }
}

async fn asset(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let kind = if name.ends_with(".js") {
        "text/javascript"
    } else if name.ends_with(".css") {
        "text/css"
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match state.templates.asset(&name) {
        Some(body) => ([(header::CONTENT_TYPE, kind)], body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The workbench's editor bundle; it changes only with the binary, so browsers may keep it a day.
async fn editor_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        templates::EDITOR_JS,
    )
        .into_response()
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn api_error(code: StatusCode, error: impl ToString) -> Response {
    (
        code,
        Json(ApiError {
            error: error.to_string(),
        }),
    )
        .into_response()
}

/// Liveness: the process serves requests.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers and its writes are not failing; otherwise 503. The probe needs
/// no token, so it says only that much (the store's own error, which may name hosts and users,
/// goes to the log), and it asks the store the cheapest question there is.
async fn readyz(State(state): State<Shared>) -> Response {
    if let Some(since) = state.sources.stats.store_failing_since() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: store writes failing since {}\n",
                since.to_rfc3339()
            ),
        )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.sources.store.ping()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "readiness probe: the store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: store unreachable\n",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: store unreachable (no answer within 2 s)\n",
        )
            .into_response(),
    }
}

/// Every metric's current value. A metric that cannot be read is listed with its `error`, and
/// the others answer as usual: one damaged metric must not hide the rest. Only when no metric
/// can be read (the store is away) is the answer 503.
async fn api_metrics(State(state): State<Shared>) -> Response {
    let values = view::current_values(&state).await;
    if let Some(e) = view::all_failed(&values) {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    let set = state.sources.metrics.borrow().clone();
    let out: Vec<Value> = set
        .metrics()
        .iter()
        .zip(values.iter())
        .map(|(m, v)| match v {
            Ok(v) => serde_json::to_value(v).unwrap_or(Value::Null),
            Err(e) => serde_json::json!({ "name": m.name(), "error": e }),
        })
        .collect();
    Json(out).into_response()
}

async fn api_history(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    let set = state.sources.metrics.borrow().clone();
    let Some(m) = set.metrics().iter().find(|m| m.name() == name) else {
        return api_error(StatusCode::NOT_FOUND, format!("no metric named {name:?}"));
    };
    let points = view::history(&state, &set, m, q.range.as_deref()).await;
    Json(downsample(&points, chart::MAX_POINTS)).into_response()
}

/// At most about `n` of a history's points as JSON, a window with no data as `null` (never a
/// zero): numbers by largest-triangle-three-buckets between the gaps (peaks stay), other values
/// (rankings, groups) evenly spaced. Kept points keep their values as stored (a count stays an
/// integer).
fn downsample(points: &[aggregate::Point], n: usize) -> Vec<Value> {
    let point = |p: &aggregate::Point| serde_json::json!({ "end": p.end, "value": if p.filled { p.value.clone() } else { Value::Null } });
    let numbers: Option<Vec<(i64, Option<f64>)>> = points
        .iter()
        .map(|p| {
            Some((
                p.end,
                if p.filled {
                    Some(p.value.as_f64()?)
                } else {
                    None
                },
            ))
        })
        .collect();
    match numbers {
        Some(series) => {
            let by_end: std::collections::HashMap<i64, &aggregate::Point> =
                points.iter().map(|p| (p.end, p)).collect();
            chart::reduce(&series, n)
                .into_iter()
                .filter_map(|(t, _)| by_end.get(&t).map(|p| point(p)))
                .collect()
        }
        None => {
            let every = points.len().div_ceil(n.max(1)).max(1);
            let kept: Vec<&aggregate::Point> = points.iter().rev().step_by(every).collect();
            kept.into_iter().rev().map(point).collect()
        }
    }
}

async fn api_topology(State(state): State<Shared>) -> Response {
    Json(topology::topology(&state).await).into_response()
}

async fn api_health(State(state): State<Shared>) -> Response {
    let reload = state.sources.reload.lock().unwrap().clone();
    let stats = &state.sources.stats;
    Json(health(stats, &reload)).into_response()
}

async fn api_alerts(State(state): State<Shared>) -> Response {
    let v = alerts(&*state.sources.store).await;
    match &v.error {
        Some(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e),
        None => Json(v).into_response(),
    }
}
