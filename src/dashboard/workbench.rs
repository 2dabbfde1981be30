//! The metric workbench's HTTP side: `/workbench` (the page), `POST /api/workbench/check|try|save`,
//! `GET /api/workbench/metrics` and `GET /api/changes`. What a check, a try or a save does is the
//! running pipeline's business ([`Workbench`], built by the pipeline layer, which owns the compile
//! step, the history and the files); this module says who may ask and carries the answers.
//!
//! Who may: a token with the `editor` role; with no token configured, anyone on a loopback
//! dashboard whose `[dashboard] workbench = true`. Reading `/api/changes` is a viewer's right
//! (it is the record of what was changed, by whom).

use super::{Caller, Role, Shared};
use crate::aggregate::{MetricValue, Point};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// A metric as the workbench edits it: its `[[metric]]` settings and its script's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The `[[metric]]` table's keys (`name`, `reducer`, `window`, `slide`, `k`, `lateness`, …)
    /// as JSON. `script` is the script file relative to the pipeline file [default: the edited
    /// metric's, or `scripts/<name>.rhai` for a new one].
    pub settings: serde_json::Map<String, Value>,
    /// The script's text.
    pub script: String,
}

/// One problem of a draft, placed where the editor can underline it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The file (the script, or the pipeline file for a setting), relative to the pipeline's folder.
    pub file: String,
    /// 1-based line and column, where known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// What a draft gives over recent history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tried {
    /// Why the draft could not run (it does not compile); nothing else is set then.
    pub problems: Vec<Problem>,
    /// Records read from history.
    pub events: u64,
    /// False when the time budget ended the read before the end of the history.
    pub complete: bool,
    /// How long the try took.
    pub seconds: f64,
    /// The draft's value for the window holding the newest record read.
    pub value: Option<MetricValue>,
    /// The draft's value for the windows over the range read.
    pub series: Vec<Point>,
    /// The running metric of the same name over the same windows, when there is one (old vs new).
    pub current: Option<Vec<Point>>,
    /// The first records read, each with what the draft's script made of it.
    pub samples: Vec<Sample>,
}

/// A record and what the draft's selectors gave for it (`passes`, `key`, `value`, or `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub record: Value,
    pub gave: Value,
}

/// What a save wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub pipeline: String,
    pub script: String,
    /// The change as a unified diff of both files.
    pub diff: String,
}

/// Why a save wrote nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum NotSaved {
    /// The draft, or the pipeline with it, does not validate.
    Problems(Vec<Problem>),
    /// The files cannot be written here (a Kubernetes ConfigMap): the change to apply elsewhere.
    ReadOnly { why: String, diff: String },
    /// Writing failed midway; what is on disk is the previous version.
    Failed(String),
}

/// One recorded save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// RFC 3339.
    pub at: String,
    /// The name of the token that saved it (`anonymous` on an open loopback dashboard).
    pub who: String,
    pub metric: String,
    pub diff: String,
}

/// What the running pipeline does for the workbench.
#[async_trait]
pub trait Workbench: Send + Sync {
    /// The pipeline file's metrics now, each as a draft, in file order.
    async fn drafts(&self) -> anyhow::Result<Vec<Draft>>;
    /// The compile step of `runner validate` on the draft alone; empty when it compiles.
    async fn check(&self, draft: &Draft) -> Vec<Problem>;
    /// Runs the draft over the history of the last `since`, bounded in time and CPU, beside the
    /// running pipeline, which it leaves untouched.
    async fn try_draft(&self, draft: &Draft, since: Duration) -> anyhow::Result<Tried>;
    /// Writes the draft into the script and pipeline files (validated first, atomically, the
    /// previous versions kept), and records the change under `who`.
    async fn save(&self, draft: &Draft, who: &str) -> Result<Saved, NotSaved>;
    /// Every recorded save, newest first.
    async fn changes(&self) -> anyhow::Result<Vec<Change>>;
}

/// `POST /api/workbench/try`: a draft and how far back to read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TryRequest {
    draft: Draft,
    /// `10m`, `1h` [default: 10m].
    #[serde(default)]
    since: Option<String>,
}

/// The history a try reads when the request names none.
const DEFAULT_SINCE: Duration = Duration::from_secs(600);

/// The longest history a try may read: a day of a busy topic is already more than a page should
/// wait for.
const MAX_SINCE: Duration = Duration::from_secs(24 * 3600);

/// The workbench, or the answer that says why this caller cannot have it.
fn open(state: &Shared, caller: &Caller) -> Result<std::sync::Arc<dyn Workbench>, Box<Response>> {
    let Some(workbench) = state.sources.workbench.clone() else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            "this process serves no workbench (it runs no dashboard with the pipeline)",
        )));
    };
    // "No token configured" is read from the settings, not from the caller's name: a token may
    // be named "anonymous".
    let config = state.config.borrow();
    if config.credentials().is_empty() {
        return match (state.loopback, config.workbench) {
            (true, true) => Ok(workbench),
            (false, _) => Err(Box::new(text(StatusCode::FORBIDDEN, "the workbench edits the pipeline's files: beyond loopback it needs a token with the editor role ([dashboard.tokens] name = { secret = ..., role = \"editor\" })"))),
            (true, false) => Err(Box::new(text(StatusCode::FORBIDDEN, "the workbench is off: set [dashboard] workbench = true (loopback only), or give an editor a token ([dashboard.tokens] name = { secret = ..., role = \"editor\" })"))),
        };
    }
    match caller.refused(Role::Editor, "the workbench") {
        Some(refused) => Err(Box::new(refused)),
        None => Ok(workbench),
    }
}

fn text(status: StatusCode, why: impl std::fmt::Display) -> Response {
    (status, format!("{why}\n")).into_response()
}

pub(super) async fn page(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if let Err(refused) = open(&state, &caller) {
        return *refused;
    }
    let ctx = serde_json::json!({
        "pipeline": state.sources.pipeline,
        "who": caller.name,
    });
    super::render(&state, "workbench.html", ctx).await
}

pub(super) async fn metrics(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let workbench = match open(&state, &caller) {
        Ok(w) => w,
        Err(refused) => return *refused,
    };
    match workbench.drafts().await {
        Ok(drafts) => Json(drafts).into_response(),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the pipeline's metrics: {e:#}"),
        ),
    }
}

pub(super) async fn check(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Json(draft): Json<Draft>,
) -> Response {
    match open(&state, &caller) {
        Ok(w) => Json(serde_json::json!({ "problems": w.check(&draft).await })).into_response(),
        Err(refused) => *refused,
    }
}

pub(super) async fn try_draft(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<TryRequest>,
) -> Response {
    let workbench = match open(&state, &caller) {
        Ok(w) => w,
        Err(refused) => return *refused,
    };
    let since = match request.since.as_deref().map(humantime::parse_duration) {
        None => DEFAULT_SINCE,
        Some(Ok(d)) if d > Duration::ZERO && d <= MAX_SINCE => d,
        Some(Ok(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "since: give a duration above zero and at most 24h",
            )
        }
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("since: {e} (e.g. 10m)")),
    };
    match workbench.try_draft(&request.draft, since).await {
        Ok(tried) => Json(tried).into_response(),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the try failed: {e:#}"),
        ),
    }
}

pub(super) async fn save(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Json(draft): Json<Draft>,
) -> Response {
    let workbench = match open(&state, &caller) {
        Ok(w) => w,
        Err(refused) => return *refused,
    };
    match workbench.save(&draft, &caller.name).await {
        Ok(saved) => Json(saved).into_response(),
        Err(NotSaved::Problems(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "problems": problems })),
        )
            .into_response(),
        Err(NotSaved::ReadOnly { why, diff }) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "read_only": why, "diff": diff })),
        )
            .into_response(),
        Err(NotSaved::Failed(why)) => text(StatusCode::INTERNAL_SERVER_ERROR, why),
    }
}

/// `GET /api/changes`: every save made from the workbench, newest first.
pub(super) async fn changes(State(state): State<Shared>) -> Response {
    let Some(workbench) = state.sources.workbench.clone() else {
        return Json(Vec::<Change>::new()).into_response();
    };
    match workbench.changes().await {
        Ok(changes) => Json(changes).into_response(),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the changes: {e:#}"),
        ),
    }
}
