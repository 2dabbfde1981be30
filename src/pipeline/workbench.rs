//! The metric workbench's work (the dashboard's `/workbench` and `runner try`): a draft metric
//! is checked by the compile step `runner validate` uses, tried over recent history by the
//! recomputation `runner backfill` uses (into a scratch store, so the running pipeline is
//! untouched), and saved into the pipeline's files, validated first and written atomically, for
//! hot reload to apply and backfill to fill.

use super::backends;
use crate::aggregate::{self, recompute, MetricConfig, MetricSet};
use crate::config::{normalize, Pipeline};
use crate::dashboard::workbench::{
    Change, Draft, NotSaved, Problem, Sample, Saved, Tried, Workbench,
};
use crate::script::ScriptError;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
use crate::store::Switchable;
use anyhow::Context;
use async_trait::async_trait;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a try may read history before it answers with what it has.
pub const TRY_BUDGET: Duration = Duration::from_secs(20);

/// The nice value of the thread a try runs on: under load the scheduler gives it a small share
/// of the CPU next to the running pipeline; on an idle machine it runs at full speed.
const TRY_NICENESS: i32 = 10;

/// Records shown with what the draft made of them, and how many are looked at to find them.
const SAMPLES: usize = 5;
const SAMPLE_SCAN: usize = 20_000;

/// Points of a try's chart.
const CHART_POINTS: usize = 60;

/// The workbench of a running pipeline: its file as loaded (reloads included), its compiled
/// metrics (for their lookup tables and derived fields) and its store (for history).
pub struct PipelineWorkbench {
    pipeline: watch::Receiver<Pipeline>,
    metrics: watch::Receiver<Arc<MetricSet>>,
    store: Option<Arc<Switchable>>,
    /// One save at a time: two editors saving at once would each rewrite the file they read.
    saving: tokio::sync::Mutex<()>,
}

impl PipelineWorkbench {
    pub fn new(
        pipeline: watch::Receiver<Pipeline>,
        metrics: watch::Receiver<Arc<MetricSet>>,
        store: Option<Arc<Switchable>>,
    ) -> PipelineWorkbench {
        PipelineWorkbench {
            pipeline,
            metrics,
            store,
            saving: Default::default(),
        }
    }

    fn current(&self) -> (Pipeline, Arc<MetricSet>) {
        (
            self.pipeline.borrow().clone(),
            self.metrics.borrow().clone(),
        )
    }
}

/// A draft read into a metric's settings: the config (script path resolved) and the script's
/// path as the pipeline file gives it.
struct Resolved {
    config: MetricConfig,
    script: String,
}

/// The draft's settings as a `[[metric]]` table and its config, the script resolved against the
/// pipeline's folder: `settings.script`, or the script of the metric of that name in
/// `pipeline`, or `<name>.rhai` beside the first metric's script (`scripts/<name>.rhai` without
/// one). Where a script may be written is [`save`]'s to check ([`writable_script`]).
fn resolve(draft: &Draft, pipeline: &Pipeline) -> Result<(toml::Table, Resolved), Vec<Problem>> {
    let file = relative(&pipeline.path, pipeline.base_dir());
    let problem = |message: String| {
        vec![Problem {
            file: file.clone(),
            line: None,
            column: None,
            message,
        }]
    };
    let name = match draft.settings.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(Value::String(n)) => return Err(problem(format!("metric name {n:?}: use letters, digits, _ and - only (it names the script file and the stored state)"))),
        _ => return Err(problem("the metric needs a `name`".into())),
    };
    let script = match draft.settings.get("script") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(problem(
                "`script` is the script file's path, a string".into(),
            ))
        }
        None => {
            let existing = pipeline.config.metrics.iter().find(|m| m.name == name);
            let beside = pipeline
                .config
                .metrics
                .first()
                .and_then(|m| m.script.parent());
            match (existing, beside) {
                (Some(m), _) => relative(&m.script, pipeline.base_dir()),
                (None, Some(folder)) => {
                    relative(&folder.join(format!("{name}.rhai")), pipeline.base_dir())
                }
                (None, None) => format!("scripts/{name}.rhai"),
            }
        }
    };
    let mut table = toml::Table::new();
    for (k, v) in &draft.settings {
        if v.is_null() {
            continue;
        }
        match toml::Value::try_from(v) {
            Ok(v) => {
                table.insert(k.clone(), v);
            }
            Err(e) => return Err(problem(format!("metric setting {k:?}: {e}"))),
        }
    }
    table.insert("script".into(), toml::Value::String(script.clone()));
    let mut config: MetricConfig = table
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| problem(format!("metric {name:?}: {}", e.message())))?;
    config.script = normalize(&pipeline.base_dir().join(&script));
    Ok((table, Resolved { config, script }))
}

/// A metric name that is safe as a file name and a state key.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `path` as a path relative to the folder `base` (with `..` where it is outside), both as the
/// pipeline resolved them (relative to the working folder, or absolute).
fn relative(path: &Path, base: &Path) -> String {
    let (path, base) = (normalize(path), normalize(base));
    if path.is_absolute() != base.is_absolute() {
        return path.to_string_lossy().into_owned();
    }
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out.to_string_lossy().replace('\\', "/")
}

/// Whether a save may write the script `path`: a `.rhai` file in a folder the pipeline already
/// takes metric scripts from, or in the pipeline file's own folder (an editor writes scripts,
/// not any file the runner may write).
fn writable_script(path: &Path, pipeline: &Pipeline) -> bool {
    let path = normalize(path);
    let folder = path.parent().map(normalize);
    let allowed = pipeline
        .config
        .metrics
        .iter()
        .filter_map(|m| m.script.parent())
        .chain([pipeline.base_dir()])
        .map(normalize);
    path.extension().is_some_and(|e| e == "rhai")
        && allowed.into_iter().any(|a| Some(&a) == folder.as_ref())
}

/// A script error as the editor shows it, its file relative to the pipeline's folder.
fn problem_of(e: &ScriptError, base: &Path) -> Problem {
    Problem {
        file: relative(&e.path, base),
        line: e.line,
        column: e.column,
        message: e.message.clone(),
    }
}

/// The draft compiled alone (with the running metrics' lookup tables and derived fields).
fn compile_draft(
    draft: &Draft,
    pipeline: &Pipeline,
    running: &MetricSet,
) -> Result<(toml::Table, Resolved, MetricSet), Vec<Problem>> {
    let (table, resolved) = resolve(draft, pipeline)?;
    let set = running
        .draft(&resolved.config, draft.script.clone(), &pipeline.schema())
        .map_err(|e| vec![problem_of(&e, pipeline.base_dir())])?;
    Ok((table, resolved, set))
}

#[async_trait]
impl Workbench for PipelineWorkbench {
    async fn drafts(&self) -> anyhow::Result<Vec<Draft>> {
        let (pipeline, _) = self.current();
        drafts_of(&pipeline)
    }

    async fn check(&self, draft: &Draft) -> Vec<Problem> {
        let (pipeline, running) = self.current();
        compile_draft(draft, &pipeline, &running)
            .err()
            .unwrap_or_default()
    }

    async fn try_draft(&self, draft: &Draft, since: Duration) -> anyhow::Result<Tried> {
        let (pipeline, running) = self.current();
        let store = self
            .store
            .as_ref()
            .context("this process has no store, so no history to try a draft on")?;
        try_draft(draft, since, &pipeline, &running, store).await
    }

    async fn save(&self, draft: &Draft, who: &str) -> Result<Saved, NotSaved> {
        let _one = self.saving.lock().await;
        let (pipeline, running) = self.current();
        save(draft, who, &pipeline, &running)
    }

    async fn changes(&self) -> anyhow::Result<Vec<Change>> {
        let (pipeline, _) = self.current();
        changes(&pipeline.path)
    }
}

/// The metrics of the pipeline file as it is on disk, each with its table's own keys (not the
/// defaults filled in) and its script's text.
pub fn drafts_of(pipeline: &Pipeline) -> anyhow::Result<Vec<Draft>> {
    let text = std::fs::read_to_string(&pipeline.path)
        .with_context(|| format!("cannot read {}", pipeline.path.display()))?;
    let doc: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} does not parse", pipeline.path.display()))?;
    let tables = match doc.get("metric") {
        Some(toml::Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let mut drafts = Vec::new();
    for t in tables {
        let Ok(Value::Object(settings)) = serde_json::to_value(&t) else {
            continue;
        };
        let script = settings
            .get("script")
            .and_then(Value::as_str)
            .map(|s| pipeline.base_dir().join(s));
        let script = script
            .map(|p| std::fs::read_to_string(&p).unwrap_or_default())
            .unwrap_or_default();
        drafts.push(Draft { settings, script });
    }
    Ok(drafts)
}

/// Compiles a draft and runs [`try_on`] on a thread of its own at a lower priority, with its own
/// runtime, and waits for it: the pipeline's runtime threads keep their CPU. A draft that does
/// not compile comes back with its problems.
pub async fn try_draft(
    draft: &Draft,
    since: Duration,
    pipeline: &Pipeline,
    running: &Arc<MetricSet>,
    store: &Arc<Switchable>,
) -> anyhow::Result<Tried> {
    let started = Instant::now();
    let (set, resolved) = match compile_draft(draft, pipeline, running) {
        Ok((_, resolved, set)) => (set, resolved),
        Err(problems) => {
            return Ok(Tried {
                problems,
                ..Tried::default()
            })
        }
    };
    let (pipeline, running, store) = (pipeline.clone(), running.clone(), store.clone());
    let name = resolved.config.name.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("workbench-try".into())
        .spawn(move || {
            lower_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let tried = match runtime {
                Ok(rt) => rt.block_on(try_on(set, &name, since, &pipeline, &running, &store)),
                Err(e) => Err(anyhow::Error::new(e).context("cannot start the try's runtime")),
            };
            let _ = tx.send(tried);
        })
        .context("cannot start a thread for the try")?;
    let mut tried = rx.await.context("the try stopped without an answer")??;
    tried.seconds = started.elapsed().as_secs_f64();
    Ok(tried)
}

/// Lowers the calling thread's priority (Linux's nice is per thread); threads it starts inherit it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's id changes only its scheduling weight.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, TRY_NICENESS);
    }
}

/// The draft (the only metric of `set`) recomputed over the last `since` of history into a
/// scratch store, for at most [`TRY_BUDGET`]; its value now, its chart, and the running metric
/// `name`'s chart beside it.
pub async fn try_on(
    set: MetricSet,
    name: &str,
    since: Duration,
    pipeline: &Pipeline,
    running: &MetricSet,
    store: &Switchable,
) -> anyhow::Result<Tried> {
    let config = &pipeline.config;
    let opened = store.opened();
    let history = backends::history(config, &opened).map_err(anyhow::Error::msg)?;
    let partitions = backends::partitions(config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let from = now - since.as_millis() as i64;
    let m = &set.metrics()[0];
    // Records stamped ahead of this clock still count: a try shows what the history holds.
    let until = now + m.window.size_ms + 24 * 3600 * 1000;
    let scratch_dir = Scratch::new();
    let scratch = EmbeddedStore::open(
        &EmbeddedConfig {
            data_dir: scratch_dir.0.clone(),
            ..Default::default()
        },
        &Default::default(),
        &pipeline.schema(),
        &[],
    )?;
    let events = std::sync::atomic::AtomicU64::new(0);
    let progress = |n: u64| events.store(n, std::sync::atomic::Ordering::Relaxed);
    let screen = config.consumer.validation.screen();
    // Read from the start of the first charted window, so every window shown is whole.
    let read_from = m.window.pane_of(from) - m.window.size_ms;
    let run = recompute::recompute(
        &set,
        0,
        &*history,
        &partitions,
        (read_from, until),
        &scratch,
        &screen,
        &progress,
    );
    let complete = match tokio::time::timeout(TRY_BUDGET, run).await {
        Ok(done) => {
            let done = done?;
            events.store(done.events, std::sync::atomic::Ordering::Relaxed);
            true
        }
        Err(_) => false,
    };
    let value = aggregate::read(m, &scratch, now).await?;
    let series = aggregate::history(m, &scratch, from, now, CHART_POINTS).await?;
    let current = match running.metrics().iter().find(|r| r.name() == name) {
        Some(r) => Some(aggregate::history(r, &*store.current(), from, now, CHART_POINTS).await?),
        None => None,
    };
    let samples = samples(&set, &*history, &partitions, read_from).await?;
    Ok(Tried {
        problems: Vec::new(),
        events: events.into_inner(),
        complete,
        seconds: 0.0,
        value: Some(value),
        series,
        current,
        samples,
    })
}

/// A scratch folder for a try's store, removed when the try is done.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        Scratch(std::env::temp_dir().join(format!(
            "runner-try-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A few of the first records of the range, each with what the draft made of it: those that
/// pass its filter first, and one that does not (so both sides of the filter show).
async fn samples(
    set: &MetricSet,
    history: &dyn crate::transport::History,
    partitions: &[i32],
    from: i64,
) -> anyhow::Result<Vec<Sample>> {
    let m = &set.metrics()[0];
    let stats = crate::telemetry::Stats::new();
    let (mut passed, mut other) = (Vec::new(), Vec::new());
    for &p in partitions {
        let (start, _) = history.start(p, from).await?;
        let end = history.end(p).await?;
        if end < start {
            continue;
        }
        // In steps, up to SAMPLE_SCAN records, until there are enough of both kinds.
        let (mut after, mut scanned) = (start - 1, 0);
        let enough = |passed: &Vec<Sample>, other: &Vec<Sample>| {
            passed.len() == SAMPLES && !other.is_empty()
        };
        while after < end && scanned < SAMPLE_SCAN && !enough(&passed, &other) {
            let read = history.read(p, after, end, 500).await?;
            if read.through <= after {
                break;
            }
            after = read.through;
            scanned += read.events.len();
            for (_, mut e) in read.events.into_iter().filter(|(_, e)| e.time_ms() >= from) {
                set.derive(std::slice::from_mut(&mut e), &stats);
                let gave = m.explain(&e);
                let kept = match gave.get("passes") == Some(&Value::Bool(true)) {
                    true if passed.len() < SAMPLES => &mut passed,
                    false if other.is_empty() => &mut other,
                    _ => continue,
                };
                kept.push(Sample {
                    record: serde_json::from_str(&e.to_json()).unwrap_or(Value::Null),
                    gave,
                });
            }
        }
    }
    passed.truncate(SAMPLES - other.len().min(1));
    passed.extend(other);
    Ok(passed)
}

/// The file where saves are recorded, beside the pipeline file: one JSON object per line.
fn changes_file(pipeline: &Path) -> PathBuf {
    let mut name = pipeline.file_name().unwrap_or_default().to_os_string();
    name.push(".changes.jsonl");
    pipeline.with_file_name(name)
}

/// Every recorded save, newest first; a line that does not read is skipped.
pub fn changes(pipeline: &Path) -> anyhow::Result<Vec<Change>> {
    let path = changes_file(pipeline);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut all: Vec<Change> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    all.reverse();
    Ok(all)
}

/// The pipeline file's text with the draft's `[[metric]]` table in place of the one of the same
/// name, or appended; the rest of the file (comments, order, `${VAR}`s) as it was.
fn edited_pipeline(text: &str, table: &toml::Table) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let name = table
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    // The draft's table as toml_edit items, in the draft's key order.
    let fresh: toml_edit::DocumentMut = toml::to_string(table)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|e| format!("{e}"))?;
    // The keys a reader looks for first, then the rest as the draft gives them.
    let first = ["name", "script", "reducer"];
    let mut new_table = toml_edit::Table::new();
    let items = fresh.as_table();
    for k in first {
        if let Some(v) = items.get(k) {
            new_table.insert(k, v.clone());
        }
    }
    for (k, v) in items.iter().filter(|(k, _)| !first.contains(k)) {
        new_table.insert(k, v.clone());
    }
    let metrics = doc
        .entry("metric")
        .or_insert(toml_edit::Item::ArrayOfTables(Default::default()))
        .as_array_of_tables_mut()
        .ok_or("`metric` in the pipeline file is not a list of [[metric]] tables")?;
    let at = metrics
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name));
    match at.and_then(|i| metrics.get_mut(i)) {
        Some(existing) => {
            // Keep the table's place and its leading comment; replace its keys.
            let decor = existing.decor().clone();
            *existing = new_table;
            *existing.decor_mut() = decor;
        }
        None => metrics.push(new_table),
    }
    Ok(doc.to_string())
}

/// A unified diff of one file's change.
fn diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

/// Writes `text` beside `path` and renames it over `path` (a reader sees the old file or the
/// new, never part of one), keeping the old as `path.bak`.
fn replace_file(path: &Path, temp: &Path) -> std::io::Result<()> {
    if path.exists() {
        let mut bak = path.as_os_str().to_os_string();
        bak.push(".bak");
        std::fs::copy(path, PathBuf::from(bak))?;
    }
    std::fs::rename(temp, path)
}

/// The hidden temporary name of `path` while a save is checked.
fn temp_of(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".workbench-tmp");
    path.with_file_name(name)
}

/// Saves a draft: compiled alone, then the whole pipeline validated with it (from temporary
/// files beside the real ones), then the script and the pipeline file renamed into place, the
/// previous versions kept as `.bak`, and the change recorded.
pub fn save(
    draft: &Draft,
    who: &str,
    pipeline: &Pipeline,
    running: &MetricSet,
) -> Result<Saved, NotSaved> {
    let (table, resolved, _) =
        compile_draft(draft, pipeline, running).map_err(NotSaved::Problems)?;
    let base = pipeline.base_dir();
    let pipeline_shown = relative(&pipeline.path, base);
    if !writable_script(&resolved.config.script, pipeline) {
        return Err(NotSaved::Problems(vec![Problem {
            file: pipeline_shown,
            line: None,
            column: None,
            message: format!("script {:?}: a saved script goes in the pipeline file's folder or one its metric scripts are in, and ends in .rhai", resolved.script),
        }]));
    }
    let old_text = std::fs::read_to_string(&pipeline.path)
        .map_err(|e| NotSaved::Failed(format!("cannot read {}: {e}", pipeline.path.display())))?;
    let script_path = resolved.config.script.clone();
    let old_script = std::fs::read_to_string(&script_path).unwrap_or_default();
    let in_file = |problem: String| {
        NotSaved::Problems(vec![Problem {
            file: pipeline_shown.clone(),
            line: None,
            column: None,
            message: problem,
        }])
    };
    // A metric the pipeline has but this file's [[metric]] tables do not would be added twice.
    let name = &resolved.config.name;
    let new_text = edited_pipeline(&old_text, &table).map_err(in_file)?;
    let diffs = format!(
        "{}{}",
        diff(&resolved.script, &old_script, &draft.script),
        diff(&pipeline_shown, &old_text, &new_text)
    );
    let (temp_script, temp_pipeline) = (temp_of(&script_path), temp_of(&pipeline.path));
    let cleanup = || {
        let _ = std::fs::remove_file(&temp_script);
        let _ = std::fs::remove_file(&temp_pipeline);
    };
    if let Some(dir) = script_path.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Err(unwritable(&e, dir, diffs));
        }
    }
    if let Err(e) = std::fs::write(&temp_script, &draft.script) {
        return Err(unwritable(&e, &temp_script, diffs));
    }
    // The pipeline to validate names the temporary script; the one saved names the real one.
    let mut check_table = table.clone();
    check_table.insert(
        "script".into(),
        toml::Value::String(relative(&temp_script, base)),
    );
    let check_text = edited_pipeline(&old_text, &check_table).map_err(in_file)?;
    if let Err(e) = std::fs::write(&temp_pipeline, &check_text) {
        cleanup();
        return Err(unwritable(&e, &temp_pipeline, diffs));
    }
    let validated = super::compile::validate(&temp_pipeline);
    let written = match validated {
        Err(problems) => Err(NotSaved::Problems(
            problems
                .0
                .iter()
                .map(|p| Problem {
                    file: pipeline_shown.clone(),
                    line: None,
                    column: None,
                    message: p.replace(&temp_pipeline.display().to_string(), &pipeline_shown),
                })
                .collect(),
        )),
        Ok(c) if c.metrics.metrics().iter().filter(|m| m.name() == name).count() != 1 => {
            Err(in_file(format!("metric {name:?} is defined outside this file's [[metric]] tables; edit it where it is defined")))
        }
        Ok(_) => std::fs::write(&temp_pipeline, &new_text)
            .and_then(|_| replace_file(&script_path, &temp_script))
            .and_then(|_| replace_file(&pipeline.path, &temp_pipeline))
            .map_err(|e| NotSaved::Failed(format!("cannot write the pipeline's files: {e}"))),
    };
    cleanup();
    written?;
    let change = Change {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        who: who.to_string(),
        metric: name.clone(),
        diff: diffs.clone(),
    };
    record(&pipeline.path, &change);
    tracing::info!(metric = %name, who, "the workbench saved a metric");
    Ok(Saved {
        pipeline: pipeline_shown,
        script: resolved.script,
        diff: diffs,
    })
}

/// The answer for a file that cannot be written: read-only (a ConfigMap) gets the diff to apply
/// elsewhere; anything else is a failure.
fn unwritable(e: &std::io::Error, path: &Path, diff: String) -> NotSaved {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            NotSaved::ReadOnly {
                why: format!(
                    "{} cannot be written here ({e}); apply the diff where the pipeline's files are kept",
                    path.display()
                ),
                diff,
            }
        }
        _ => NotSaved::Failed(format!("cannot write {}: {e}", path.display())),
    }
}

/// Appends a save to the changes file (a failure is logged: the files are saved already).
fn record(pipeline: &Path, change: &Change) {
    use std::io::Write;
    let path = changes_file(pipeline);
    let line = serde_json::to_string(change).unwrap_or_default() + "\n";
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot record the workbench's change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline in a temporary folder: one count metric whose script is in `scripts/`, a
    /// comment above it, and the minimal sections.
    fn pipeline(dir: &Path) -> Pipeline {
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::write(dir.join("pipelines/gen.rhai"), "#{ user: \"a\" }").unwrap();
        std::fs::write(
            dir.join("scripts/views.rhai"),
            "#{ filter: field_is(\"user\", \"a\") }",
        )
        .unwrap();
        let text = format!(
            "{}\n# Views of user a.\n[[metric]]\nname = \"views\"\nscript = \"../scripts/views.rhai\"\nreducer = \"count\"\nwindow = \"60s\"\n",
            crate::config::tests::MINIMAL
        );
        let path = dir.join("pipelines/p.toml");
        std::fs::write(&path, text).unwrap();
        Pipeline::load_with_env(&path, |_| None).unwrap()
    }

    fn running(p: &Pipeline) -> MetricSet {
        p.metric_set(&Default::default()).unwrap()
    }

    fn draft(settings: Value, script: &str) -> Draft {
        Draft {
            settings: settings.as_object().unwrap().clone(),
            script: script.into(),
        }
    }

    #[test]
    fn a_draft_with_a_typo_is_reported_at_its_line_and_column_in_the_file_it_will_be_saved_as() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        let d = draft(
            serde_json::json!({"name": "per_user", "reducer": "count"}),
            "#{\n    key: field(\"user\"),\n    filter: field_is(\"user\" \"a\"),\n}",
        );
        let problems = compile_draft(&d, &p, &running(&p)).err().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].file, "../scripts/per_user.rhai",
            "beside the other scripts"
        );
        assert_eq!(
            (problems[0].line, problems[0].column),
            (Some(3), Some(29)),
            "{problems:?}"
        );
        let fixed = draft(d.settings.clone().into(), "#{ key: field(\"user\") }");
        assert!(compile_draft(&fixed, &p, &running(&p)).is_ok());
        let bad_setting = draft(
            serde_json::json!({"name": "x", "reducer": "count", "windw": "1m"}),
            "#{}",
        );
        let problems = compile_draft(&bad_setting, &p, &running(&p)).err().unwrap();
        assert!(problems[0].message.contains("windw"), "{problems:?}");
    }

    #[test]
    fn a_save_replaces_the_metric_s_table_keeps_the_rest_and_records_who_changed_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        let before = std::fs::read_to_string(&p.path).unwrap();
        let edit = draft(
            serde_json::json!({"name": "views", "script": "../scripts/views.rhai", "reducer": "count", "window": "30s"}),
            "#{ filter: field_is(\"user\", \"b\") }",
        );
        let saved = save(&edit, "alice", &p, &running(&p)).unwrap();
        let after = std::fs::read_to_string(&p.path).unwrap();
        assert!(
            after.contains("# Views of user a.\n[[metric]]"),
            "comment kept: {after}"
        );
        assert!(after.contains("window = \"30s\""), "{after}");
        assert_eq!(
            after.matches("[[metric]]").count(),
            1,
            "replaced, not added: {after}"
        );
        assert!(
            after.starts_with(&before[..before.find("# Views").unwrap()]),
            "the rest as written"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("scripts/views.rhai")).unwrap(),
            edit.script
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pipelines/p.toml.bak")).unwrap(),
            before
        );
        assert!(
            saved.diff.contains("-window = \"60s\"") && saved.diff.contains("+window = \"30s\""),
            "{}",
            saved.diff
        );
        // A new metric is appended, its script beside the others; both validate.
        let p = Pipeline::load_with_env(&p.path, |_| None).unwrap();
        let new = draft(
            serde_json::json!({"name": "all", "reducer": "count"}),
            "#{}",
        );
        save(&new, "bob", &p, &running(&p)).unwrap();
        assert!(dir.path().join("scripts/all.rhai").exists());
        let validated = crate::pipeline::validate(&p.path).unwrap();
        assert_eq!(validated.metrics.metrics().len(), 2);
        let changes = changes(&p.path).unwrap();
        let who: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| (c.who.as_str(), c.metric.as_str()))
            .collect();
        assert_eq!(who, [("bob", "all"), ("alice", "views")], "newest first");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("pipelines"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("workbench-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_save_that_breaks_the_pipeline_or_writes_outside_its_script_folders_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        let before = std::fs::read_to_string(&p.path).unwrap();
        let outside = draft(
            serde_json::json!({"name": "x", "script": "../../x.rhai", "reducer": "count"}),
            "#{}",
        );
        let Err(NotSaved::Problems(p1)) = save(&outside, "eve", &p, &running(&p)) else {
            panic!("a script outside the pipeline's script folders is refused")
        };
        assert!(p1[0].message.contains("folder"), "{p1:?}");
        let not_rhai = draft(
            serde_json::json!({"name": "x", "script": "p.toml", "reducer": "count"}),
            "#{}",
        );
        assert!(matches!(
            save(&not_rhai, "eve", &p, &running(&p)),
            Err(NotSaved::Problems(_))
        ));
        // top_k needs a key the script does not give.
        let broken = draft(serde_json::json!({"name": "x", "reducer": "top_k"}), "#{}");
        assert!(matches!(
            save(&broken, "eve", &p, &running(&p)),
            Err(NotSaved::Problems(_))
        ));
        assert_eq!(std::fs::read_to_string(&p.path).unwrap(), before);
        assert!(!dir.path().join("scripts/x.rhai").exists());
        assert!(changes(&p.path).unwrap().is_empty());
    }

    #[test]
    fn a_read_only_folder_is_answered_with_the_diff_to_apply_elsewhere() {
        let e = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let NotSaved::ReadOnly { why, diff } =
            unwritable(&e, Path::new("/etc/p/x.rhai"), "+a".into())
        else {
            panic!("read-only is not a failure")
        };
        assert!(why.contains("/etc/p/x.rhai") && diff == "+a", "{why}");
        let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(matches!(
            unwritable(&e, Path::new("x"), String::new()),
            NotSaved::Failed(_)
        ));
    }

    #[test]
    fn paths_are_shown_relative_to_the_pipeline_file_s_folder() {
        assert_eq!(
            relative(Path::new("scripts/a.rhai"), Path::new("pipelines")),
            "../scripts/a.rhai"
        );
        assert_eq!(
            relative(Path::new("pipelines/a.rhai"), Path::new("pipelines")),
            "a.rhai"
        );
        assert_eq!(relative(Path::new("a.rhai"), Path::new("")), "a.rhai");
        assert_eq!(
            relative(Path::new("/x/a.rhai"), Path::new("p")),
            "/x/a.rhai"
        );
    }
}
