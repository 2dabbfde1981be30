//! Hot reload: notice that the pipeline file or a script it uses changed, compile and check the
//! new version completely, and only then hand it to the running components, which swap it in
//! between batches. A version that fails to load changes nothing; the error is kept in the
//! reload status for the dashboard and logs.
//!
//! Changes are noticed by content, not by event type: file-system events (or a poll tick, or
//! SIGHUP) only trigger a check of every watched file's contents. That makes editor saves
//! (temp file + rename, several writes) one reload, and catches Kubernetes-style `..data`
//! symlink swaps, because the watch is on the folders that hold the files.

use crate::aggregate::MetricSet;
use crate::alert::AlertSet;
use crate::config::Pipeline;
use crate::generator::GeneratorScript;
use chrono::{DateTime, Utc};
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How changes are noticed.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Watch files at all (`--no-watch` turns it off; SIGHUP still reloads).
    pub enabled: bool,
    /// Also check every this often, for file systems that send no events.
    pub poll: Option<Duration>,
    /// Quiet time after the last file-system event before checking (editors write in bursts).
    pub debounce: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { enabled: true, poll: None, debounce: Duration::from_millis(150) }
    }
}

/// What the dashboard and logs say about reloads.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReloadStatus {
    /// Reloads applied.
    pub reloads: u64,
    /// Reload attempts rejected (the running version stayed).
    pub failures: u64,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// The error of the last attempt, if it failed (file:line:column and message).
    pub last_error: Option<String>,
    /// Settings that changed but need a restart to apply, from the last reload.
    pub needs_restart: Vec<String>,
}

/// What the generator takes from a reload, between batches.
#[derive(Clone)]
pub struct GeneratorLive {
    pub script: GeneratorScript,
    pub rate: f64,
    pub batch_size: usize,
}

/// The channels a reload publishes on; components watch the receiving ends.
pub struct Live {
    /// The whole new version: components that hold connections compare their sections.
    pub pipeline: watch::Sender<Pipeline>,
    pub generator: watch::Sender<GeneratorLive>,
    pub metrics: watch::Sender<Arc<MetricSet>>,
    pub alerts: watch::Sender<Arc<AlertSet>>,
    pub status: Arc<Mutex<ReloadStatus>>,
}

/// The files a pipeline depends on.
fn watched_files(p: &Pipeline) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::from([p.path.clone(), p.config.generator.script.clone()]);
    files.extend(p.config.metrics.iter().map(|m| m.script.clone()));
    files.extend(p.config.alerts.iter().filter_map(|a| a.script.clone()));
    files
}

/// The contents of every file (following symlinks), to tell a real change from noise.
fn fingerprint(files: &BTreeSet<PathBuf>) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    files.iter().map(|f| (f.clone(), std::fs::read(f).ok())).collect()
}

/// The folders to watch: each file's folder, and the folder holding any symlink on the way to
/// it (a ConfigMap swap renames `..data` there, not in the file's own folder).
fn folders(files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let parent = f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        out.insert(parent.to_path_buf());
        for ancestor in f.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            let is_link = std::fs::symlink_metadata(ancestor).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            if is_link {
                if let Some(holder) = ancestor.parent().filter(|p| !p.as_os_str().is_empty()) {
                    out.insert(holder.to_path_buf());
                }
            }
        }
        if std::fs::symlink_metadata(f).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
            // The link's target folder changes on a swap; the link's own folder is watched above.
            if let Ok(target) = std::fs::canonicalize(f) {
                if let Some(t) = target.parent() {
                    out.insert(t.to_path_buf());
                }
            }
        }
    }
    out
}

/// A compiled version of the pipeline, ready to hand to the components.
struct Compiled {
    pipeline: Pipeline,
    generator: GeneratorLive,
    metrics: Arc<MetricSet>,
    alerts: Arc<AlertSet>,
}

/// Loads and compiles everything a new version needs; nothing is applied here.
fn compile(current: &Pipeline) -> Result<Compiled, String> {
    let next = current.reload().map_err(|e| e.to_string())?;
    let script = GeneratorScript::load(&next.config.generator).map_err(|e| e.to_string())?;
    let metrics = MetricSet::load(&next.config.metrics).map_err(|e| e.to_string())?;
    let alerts = AlertSet::load(&next.config.alerting, &next.config.alerts, &next.path).map_err(|e| e.to_string())?;
    let g = &next.config.generator;
    let generator = GeneratorLive { script, rate: g.rate, batch_size: g.batch_size };
    Ok(Compiled { pipeline: next, generator, metrics: Arc::new(metrics), alerts: Arc::new(alerts) })
}

/// Settings that apply only at start. (Connection sections reconnect live: see
/// `pipeline::reconnect`.)
fn restart_needed(old: &Pipeline, new: &Pipeline) -> Vec<String> {
    let (a, b) = (&old.config, &new.config);
    let mut out = Vec::new();
    // users/items feed the script (USERS/ITEMS) and apply live; the seed only matters at start.
    if a.generator.seed != b.generator.seed {
        out.push("generator.seed".to_string());
    }
    out
}

/// Starts watching the pipeline's files now (so no edit made after this call is missed) and
/// returns the task that applies every good new version until `stop`.
pub fn spawn(current: Pipeline, live: Live, options: WatchOptions, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel::<()>(64);
    let files = watched_files(&current);
    let seen = fingerprint(&files);
    let watcher = make_watcher(&options, &tx, &folders(&files));
    tokio::spawn(run(current, live, options, stop, (tx, rx), files, seen, watcher))
}

fn make_watcher(options: &WatchOptions, tx: &mpsc::Sender<()>, dirs: &BTreeSet<PathBuf>) -> Option<notify::RecommendedWatcher> {
    if !options.enabled {
        return None;
    }
    let tx = tx.clone();
    let mut w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch files; use --watch-poll, or SIGHUP to reload"))
    .ok()?;
    for d in dirs {
        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %d.display(), error = %e, "cannot watch folder; its changes need SIGHUP or --watch-poll");
        }
    }
    Some(w)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut current: Pipeline,
    live: Live,
    options: WatchOptions,
    stop: CancellationToken,
    (tx, mut rx): (mpsc::Sender<()>, mpsc::Receiver<()>),
    mut files: BTreeSet<PathBuf>,
    mut seen: Vec<(PathBuf, Option<Vec<u8>>)>,
    mut watcher: Option<notify::RecommendedWatcher>,
) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut poll = options.poll.map(tokio::time::interval);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = rx.recv() => {
                // Let a burst of writes settle into one check.
                while let Ok(Some(())) = tokio::time::timeout(options.debounce, rx.recv()).await {}
                false
            }
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading");
                true
            }
            _ = async { match poll.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending().await } } => false,
        };
        let now = fingerprint(&files);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let attempted = Utc::now();
        match compile(&current) {
            Ok(Compiled { pipeline: next, generator, metrics, alerts }) => {
                let needs_restart = restart_needed(&current, &next);
                if !needs_restart.is_empty() {
                    tracing::warn!(sections = ?needs_restart, "these settings changed but apply only after a restart");
                }
                let _ = live.generator.send(generator);
                let _ = live.metrics.send(metrics);
                let _ = live.alerts.send(alerts);
                let _ = live.pipeline.send(next.clone());
                {
                    let mut s = live.status.lock().unwrap();
                    s.reloads += 1;
                    s.last_attempt = Some(attempted);
                    s.last_success = Some(attempted);
                    s.last_error = None;
                    s.needs_restart = needs_restart;
                }
                tracing::info!(pipeline = %next.path.display(), "reloaded");
                let new_files = watched_files(&next);
                if new_files != files {
                    files = new_files;
                    seen = fingerprint(&files);
                    drop(watcher.take());
                    watcher = make_watcher(&options, &tx, &folders(&files));
                }
                current = next;
            }
            Err(error) => {
                tracing::error!(%error, "reload rejected; the running version stays");
                // A new version may name scripts that do not exist yet: watch them too, so
                // creating them triggers the next attempt.
                if let Ok(next) = current.reload() {
                    let wanted: BTreeSet<PathBuf> = files.union(&watched_files(&next)).cloned().collect();
                    if wanted != files {
                        files = wanted;
                        seen = fingerprint(&files);
                        drop(watcher.take());
                        watcher = make_watcher(&options, &tx, &folders(&files));
                    }
                }
                let mut s = live.status.lock().unwrap();
                s.failures += 1;
                s.last_attempt = Some(attempted);
                s.last_error = Some(error);
            }
        }
    }
}
