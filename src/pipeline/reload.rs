//! Hot reload: notice that the pipeline file or a script it uses changed, compile and check the
//! new version completely, and only then hand it to the running components, which swap it in
//! between batches. A version that fails to load changes nothing; the error is kept in the
//! reload status for the dashboard and logs.
//!
//! Changes are noticed by content, not by event type: file-system events (or a poll tick, or
//! SIGHUP) only trigger a check of every watched file's contents. That makes editor saves
//! (temp file + rename, several writes) one reload, and catches Kubernetes-style `..data`
//! symlink swaps, because the watch is on the folders that hold the files.

use super::compile::{compile_with, Compiled};
use super::diff::Diff;
use crate::aggregate::{Fetched, MetricSet};
use crate::alert::AlertSet;
use crate::config::Pipeline;
use crate::config::PipelineConfig;
use crate::dashboard::DashboardConfig;
use crate::event::EventConfig;
use crate::generator::Settings as GeneratorSettings;
use crate::telemetry::ReloadStatus;
use chrono::Utc;
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
        WatchOptions {
            enabled: true,
            poll: None,
            debounce: Duration::from_millis(150),
        }
    }
}

/// The channels a reload publishes on; components watch the receiving ends.
pub struct Live {
    /// The whole new version: components that hold connections compare their sections.
    pub pipeline: watch::Sender<Pipeline>,
    /// None when the pipeline started without a generator.
    pub generator: Option<watch::Sender<GeneratorSettings>>,
    pub metrics: watch::Sender<Arc<MetricSet>>,
    pub alerts: watch::Sender<Arc<AlertSet>>,
    /// The dashboard's settings (token and refresh apply live).
    pub dashboard: watch::Sender<DashboardConfig>,
    pub status: Arc<Mutex<ReloadStatus>>,
}

/// The files a pipeline depends on.
fn watched_files(p: &Pipeline) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::from([p.path.clone()]);
    files.extend(p.config.generator.script.clone());
    files.extend(p.config.metrics.iter().map(|m| m.script.clone()));
    files.extend(p.config.lookups.iter().filter_map(|l| l.from.clone()));
    files.extend(p.config.derive.iter().map(|d| d.script.clone()));
    files.extend(p.config.alerts.iter().filter_map(|a| a.script.clone()));
    files
}

/// The contents of every file (following symlinks), to tell a real change from noise.
fn fingerprint(files: &BTreeSet<PathBuf>) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).ok()))
        .collect()
}

/// How many times [`settled`] looks again before it takes what it has.
const SETTLE_TRIES: usize = 40;

/// The files' contents once they have stopped changing: read, wait `quiet`, read again, until
/// two reads agree (at most [`SETTLE_TRIES`] times). An editor or `cp` still writing the file
/// when the change was noticed would otherwise hand the reload half a file, which may parse
/// (cut at the end of a metric) and drop the rest.
async fn settled(files: &BTreeSet<PathBuf>, quiet: Duration) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut last = fingerprint(files);
    for _ in 0..SETTLE_TRIES {
        tokio::time::sleep(quiet).await;
        let now = fingerprint(files);
        if now == last {
            return now;
        }
        last = now;
    }
    tracing::warn!(
        tries = SETTLE_TRIES,
        "the pipeline's files kept changing; reloading what they hold now"
    );
    last
}

/// The folders to watch: each file's folder, and the folder holding any symlink on the way to
/// it (a ConfigMap swap renames `..data` there, not in the file's own folder).
fn folders(files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let parent = f
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        out.insert(parent.to_path_buf());
        for ancestor in f.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            let is_link = std::fs::symlink_metadata(ancestor)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if is_link {
                if let Some(holder) = ancestor.parent().filter(|p| !p.as_os_str().is_empty()) {
                    out.insert(holder.to_path_buf());
                }
            }
        }
        if std::fs::symlink_metadata(f)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
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

/// Reads the file again; nothing is compiled or applied here. The records in flight are of the
/// running `[event]`, so the scripts are compiled against it; a changed `[event]` (returned
/// beside, for the diff) applies at the next start.
fn reread(current: &Pipeline) -> Result<(Pipeline, Shape), String> {
    let mut next = current.reload().map_err(|e| e.to_string())?;
    let event = std::mem::replace(&mut next.config.event, current.config.event.clone());
    // So are the derived fields' names, types and storage; with those unchanged, their
    // scripts reload like a metric's.
    let fields = |c: &PipelineConfig| c.derive.iter().map(|d| d.field()).collect::<Vec<_>>();
    let derive = match fields(&next.config) == fields(&current.config) {
        true => next.config.derive.clone(),
        false => std::mem::replace(&mut next.config.derive, current.config.derive.clone()),
    };
    Ok((next, Shape { event, derive }))
}

/// Compiles `p` with `fetched`, off the async runtime (compiling reads files and may build
/// large tables: Zipf, lookups).
async fn compile_blocking(p: Pipeline, fetched: Fetched) -> Result<Compiled, String> {
    tokio::task::spawn_blocking(move || compile_with(p, &fetched).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(format!("reload failed: {e}")))
}

/// The lookup collections of the running version: the store they are read from (none in a
/// process without one), and their documents as last read.
pub struct LookupRows {
    pub store: Option<Arc<dyn crate::store::Collections>>,
    pub fetched: Fetched,
}

impl LookupRows {
    /// The documents of `config`'s lookup collections, read now.
    async fn read(&self, config: &PipelineConfig) -> Result<Fetched, String> {
        match &self.store {
            Some(store) if super::has_collections(config) => {
                super::fetch_collections(config, &**store)
                    .await
                    .map_err(|e| format!("{e:#}"))
            }
            _ => Ok(Fetched::default()),
        }
    }

    /// How often `config`'s collections are read again: the shortest `refresh` of them.
    fn every(&self, config: &PipelineConfig) -> Option<Duration> {
        self.store.as_ref()?;
        config
            .lookups
            .iter()
            .filter(|l| matches!(l.source(), crate::aggregate::lookup::Source::Collection(_)))
            .map(|l| l.refresh.max(Duration::from_secs(1)))
            .min()
    }
}

/// What a new version of the file asks of the record (`[event]` and the `[[derive]]` list):
/// it applies at the next start, and is compared for the reload status.
struct Shape {
    event: EventConfig,
    derive: Vec<crate::aggregate::DeriveConfig>,
}

/// What the generator takes from a compiled version.
pub(super) fn generator_settings(compiled: &Compiled) -> Option<GeneratorSettings> {
    let g = &compiled.pipeline.config.generator;
    compiled.generator.clone().map(|script| GeneratorSettings {
        script,
        rate: g.rate,
        batch_size: g.batch_size,
    })
}

/// The contents of the files `p` runs from, taken before they are compiled: the watch starts
/// from this, so an edit made while the pipeline starts is noticed (taken after the compile, it
/// would be mistaken for the running version).
pub struct Snapshot(Vec<(PathBuf, Option<Vec<u8>>)>);

pub fn snapshot(p: &Pipeline) -> Snapshot {
    Snapshot(fingerprint(&watched_files(p)))
}

/// Starts watching the pipeline's files now (an edit since `seen` was taken is applied at the
/// first check) and returns the task that applies every good new version until `stop`.
pub fn spawn(
    current: Pipeline,
    seen: Snapshot,
    live: Live,
    rows: LookupRows,
    options: WatchOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel::<()>(64);
    let files = watched_files(&current);
    let seen = seen.0;
    let watcher = make_watcher(&options, &tx, &folders(&files));
    let reloader = Reloader {
        current,
        live,
        rows,
        options,
        changes: (tx, rx),
        files,
        seen,
        watcher,
    };
    tokio::spawn(reloader.run(stop))
}

/// The reload task's state: the version in force, what it watches, and where it publishes.
struct Reloader {
    current: Pipeline,
    live: Live,
    rows: LookupRows,
    options: WatchOptions,
    /// File-system events arrive here (the sender goes to each new watcher).
    changes: (mpsc::Sender<()>, mpsc::Receiver<()>),
    files: BTreeSet<PathBuf>,
    /// The contents of `files` when last checked.
    seen: Vec<(PathBuf, Option<Vec<u8>>)>,
    watcher: Option<notify::RecommendedWatcher>,
}

fn make_watcher(
    options: &WatchOptions,
    tx: &mpsc::Sender<()>,
    dirs: &BTreeSet<PathBuf>,
) -> Option<notify::RecommendedWatcher> {
    if !options.enabled {
        return None;
    }
    let tx = tx.clone();
    let mut w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .map_err(
        |e| tracing::warn!(error = %e, "cannot watch files; use --watch-poll, or SIGHUP to reload"),
    )
    .ok()?;
    for d in dirs {
        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %d.display(), error = %e, "cannot watch folder; its changes need SIGHUP or --watch-poll");
        }
    }
    Some(w)
}

impl Reloader {
    /// Watches the files, applying each good new version, until `stop`.
    async fn run(mut self, stop: CancellationToken) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = self.options.poll.map(tokio::time::interval);
        let mut refresh = self.refresh_ticker();
        let debounce = self.options.debounce;
        // When watching, the first check runs at once: the files may have changed while the
        // pipeline started, before any watcher could see it (`--no-watch` reloads on SIGHUP only).
        let mut first = self.options.enabled || self.options.poll.is_some();
        loop {
            let forced = if std::mem::take(&mut first) {
                // A burst of writes already under way settles first, as any burst does (checking
                // at once saw its first write, and its last one made a second reload).
                while let Ok(Some(())) = tokio::time::timeout(debounce, self.changes.1.recv()).await
                {
                }
                false
            } else {
                tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = self.changes.1.recv() => {
                    // Let a burst of writes settle into one check.
                    while let Ok(Some(())) = tokio::time::timeout(debounce, self.changes.1.recv()).await {}
                    false
                }
                Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                    true
                }
                _ = async { match poll.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending().await } } => false,
                _ = async { match refresh.as_mut() { Some(r) => { r.tick().await; } None => std::future::pending().await } } => {
                    self.refresh().await;
                    continue;
                }
                }
            };
            let now = settled(&self.files, debounce).await;
            if !forced && now == self.seen {
                continue;
            }
            self.seen = now;
            let attempted = Utc::now();
            match self.recompile().await {
                Ok((compiled, shape, fetched)) => {
                    self.rows.fetched = fetched;
                    self.apply(compiled, shape, attempted);
                    refresh = self.refresh_ticker();
                }
                Err(error) => self.reject(error, attempted),
            }
        }
    }

    /// Reads the file again, and its lookup collections, and compiles everything it names.
    async fn recompile(&self) -> Result<(Compiled, Shape, Fetched), String> {
        let current = self.current.clone();
        let (next, shape) = tokio::task::spawn_blocking(move || reread(&current))
            .await
            .unwrap_or_else(|e| Err(format!("reload failed: {e}")))?;
        let fetched = self.rows.read(&next.config).await?;
        let compiled = compile_blocking(next, fetched.clone()).await?;
        Ok((compiled, shape, fetched))
    }

    fn refresh_ticker(&self) -> Option<tokio::time::Interval> {
        let every = self.rows.every(&self.current.config)?;
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(t)
    }

    /// Reads the lookup collections again; when their documents changed, the metrics are
    /// compiled with the new rows and swapped in (window state kept). A collection that cannot
    /// be read, or whose new rows do not load, leaves the tables in use as they are.
    async fn refresh(&mut self) {
        let fetched = match self.rows.read(&self.current.config).await {
            Ok(f) if f == self.rows.fetched => return,
            Ok(f) => f,
            Err(error) => {
                tracing::warn!(%error, "lookup collections not read again; the tables in use stay");
                return;
            }
        };
        let attempted = Utc::now();
        match compile_blocking(self.current.clone(), fetched.clone()).await {
            Ok(compiled) => {
                self.rows.fetched = fetched;
                let _ = self.live.metrics.send(compiled.metrics);
                let mut s = self.live.status.lock().unwrap();
                s.reloads += 1;
                s.last_attempt = Some(attempted);
                s.last_success = Some(attempted);
                s.last_error = None;
                s.last_changes = vec!["lookup: collection rows changed (live)".to_string()];
                tracing::info!("lookup collections changed: their tables are swapped in");
            }
            Err(error) => {
                let error = format!("lookup collections changed but do not load: {error}");
                self.reject(error, attempted)
            }
        }
    }

    /// Hands a good new version to every component and records what changed.
    fn apply(&mut self, compiled: Compiled, shape: Shape, attempted: chrono::DateTime<Utc>) {
        let diff = Diff::of(
            &self.current.config,
            &PipelineConfig {
                event: shape.event,
                derive: shape.derive,
                ..compiled.pipeline.config.clone()
            },
        );
        let mut needs_restart = diff.needs_restart();
        // A generator added to a pipeline that runs without one (or removed from one that runs
        // it) starts or stops only with the process.
        if self.live.generator.is_some() != compiled.generator.is_some() {
            needs_restart.push("generator.script".to_string());
        }
        if !needs_restart.is_empty() {
            tracing::warn!(settings = ?needs_restart, "these settings changed but apply only after a restart");
        }
        let next = compiled.pipeline.clone();
        let live = &self.live;
        if let (Some(tx), Some(settings)) = (&live.generator, generator_settings(&compiled)) {
            let _ = tx.send(settings);
        }
        let _ = live.metrics.send(compiled.metrics);
        let _ = live.alerts.send(compiled.alerts);
        let _ = live.dashboard.send(next.config.dashboard.clone());
        let _ = live.pipeline.send(next.clone());
        {
            let mut s = live.status.lock().unwrap();
            s.reloads += 1;
            s.last_attempt = Some(attempted);
            s.last_success = Some(attempted);
            s.last_error = None;
            s.needs_restart = needs_restart;
            s.last_changes = diff.describe();
        }
        tracing::info!(pipeline = %next.path.display(), changes = ?diff.describe(), "reloaded");
        self.watch(watched_files(&next));
        self.current = next;
    }

    /// Keeps the running version and records why the new one was refused.
    fn reject(&mut self, error: String, attempted: chrono::DateTime<Utc>) {
        tracing::error!(%error, "reload rejected; the running version stays");
        // A new version may name scripts that do not exist yet: watch them too, so creating them
        // triggers the next attempt.
        if let Ok(next) = self.current.reload() {
            let wanted: BTreeSet<PathBuf> =
                self.files.union(&watched_files(&next)).cloned().collect();
            self.watch(wanted);
        }
        let mut s = self.live.status.lock().unwrap();
        s.failures += 1;
        s.last_attempt = Some(attempted);
        s.last_error = Some(error);
    }

    /// Watches `files` (and their folders) from now on, if they differ from the current set.
    fn watch(&mut self, files: BTreeSet<PathBuf>) {
        if files == self.files {
            return;
        }
        self.files = files;
        self.seen = fingerprint(&self.files);
        drop(self.watcher.take());
        self.watcher = make_watcher(&self.options, &self.changes.0, &folders(&self.files));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file still being written when the change is noticed is read only once it stops
    /// changing: the reload never compiles half of it.
    #[tokio::test]
    async fn a_file_still_being_written_is_read_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "name = \"p\"\n").unwrap();
        let writing = file.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..8 {
                std::thread::sleep(Duration::from_millis(40));
                let mut text = std::fs::read_to_string(&writing).unwrap();
                text.push_str(&format!("[[metric]]\nname = \"m{i}\"\n"));
                std::fs::write(&writing, text).unwrap();
            }
        });
        let files = BTreeSet::from([file.clone()]);
        let read = settled(&files, Duration::from_millis(150)).await;
        writer.join().unwrap();
        assert_eq!(
            read[0].1.as_deref(),
            Some(std::fs::read(&file).unwrap().as_slice()),
            "the whole file, after the last write"
        );
    }
}
