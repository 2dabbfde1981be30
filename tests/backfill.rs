//! Backfill: a metric added or redefined while the pipeline runs is filled from history (the
//! Kafka log, or the embedded store's raw rows) at once, exactly, and a crash during the
//! backfill neither loses nor doubles anything. Real Tansu and SecantusDB, real files.

mod common;

use runner::aggregate::{MetricSet, MetricValue};
use runner::config::Pipeline;
use runner::pipeline::{self, RunOptions, Running};
use runner::store::Store;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A count of every interaction over the same window as `interaction_types`.
const ALL_INTERACTIONS: &str = r#"
[[metric]]
name = "all_interactions"
description = "Every interaction"
script = "../scripts/metrics/all.rhai"
reducer = "count"
window = "60s"
slide = "5s"
"#;

fn load(path: &Path, env: &[(&str, String)]) -> Pipeline {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Pipeline::load_with_env(path, move |n| env.get(n).cloned()).unwrap()
}

/// The environment of a pipeline on the test services with its own topic, group and database.
fn services_env(name: &str, rate: u32) -> Vec<(&'static str, String)> {
    let topic = common::unique(name);
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS", common::kafka()),
        ("MONGODB_CONNECTION_STRING", common::mongodb()),
        ("KAFKA_CONSUMER_GROUP", format!("{topic}_group")),
        ("MONGODB_DATABASE", common::unique(name)),
        ("KAFKA_TOPIC", topic),
        ("DEFAULT_GENERATION_RATE", rate.to_string()),
        ("KAFKA_CONNECT_TIMEOUT", "15s".into()),
        ("MONGODB_CONNECT_TIMEOUT", "15s".into()),
    ]
}

fn embedded_env(dir: &Path, rate: u32) -> Vec<(&'static str, String)> {
    vec![
        (
            "RUNNER_DATA_DIR",
            dir.join("data").to_string_lossy().to_string(),
        ),
        ("DEFAULT_GENERATION_RATE", rate.to_string()),
    ]
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

async fn values(running: &Running, at: i64) -> Vec<MetricValue> {
    let set = running.metrics.borrow().clone();
    set.read_all(&**running.store.as_ref().unwrap(), at)
        .await
        .unwrap()
}

fn value<'a>(values: &'a [MetricValue], name: &str) -> &'a MetricValue {
    values
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn sum(v: &Value) -> u64 {
    v.as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// Waits until `name` is in force and no longer backfilling; returns how long that took.
async fn wait_backfilled(running: &Running, name: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut seen_backfilling = false;
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let vs = values(running, now).await;
        if let Some(v) = vs.iter().find(|v| v.name == name) {
            match v.backfilling {
                Some(b) => {
                    seen_backfilling = true;
                    assert!((0.0..=1.0).contains(&b.done), "progress is a share: {b:?}");
                }
                // The seam is made by the first batch after the reload: until then there is
                // nothing to report, so a backfill never seen must have had 3 s to show.
                None if seen_backfilling || t.elapsed() > Duration::from_secs(3) => {
                    println!(
                        "{name}: backfilled after {:?} (progress was reported: {seen_backfilling})",
                        t.elapsed()
                    );
                    return t.elapsed();
                }
                None => {}
            }
        }
        assert!(
            t.elapsed() < limit,
            "{name} still backfilling after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Past panes only: every event of the window read is stored by now.
fn settled_at() -> i64 {
    chrono::Utc::now().timestamp_millis() - 6_000
}

/// Runs `path` for `warm`, adds `all_interactions`, and checks that soon after the reload it
/// equals the sum of the by-type counts of the same window, which were counted all along, and
/// stays equal.
async fn added_metric_is_full(path: &Path, env: &[(&str, String)], warm: Duration) {
    let dir = path.parent().unwrap().parent().unwrap();
    std::fs::write(dir.join("scripts/metrics/all.rhai"), "#{}").unwrap();
    let stop = CancellationToken::new();
    let running = pipeline::start(load(path, env), RunOptions::default(), stop.clone())
        .await
        .unwrap();
    tokio::time::sleep(warm).await;
    let stored_before = running.stats.snapshot().stored;
    assert!(
        stored_before > 1_000,
        "events flow before the reload: {stored_before}"
    );
    append(path, ALL_INTERACTIONS);
    let t = Instant::now();
    while !running
        .metrics
        .borrow()
        .metrics()
        .iter()
        .any(|m| m.name() == "all_interactions")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the added metric is not in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = wait_backfilled(&running, "all_interactions", Duration::from_secs(20)).await;
    assert!(took < Duration::from_secs(15), "backfill took {took:?}");
    for round in 0..2 {
        // A pane at least one second past the reload, so the window holds events from both sides.
        tokio::time::sleep(Duration::from_secs(if round == 0 { 1 } else { 6 })).await;
        // On a loaded machine the consumer may still be writing a batch of this window (its
        // partials land together but not at one instant): a mismatch must persist to count.
        let at = settled_at();
        let mut vs = values(&running, at).await;
        for _ in 0..3 {
            let (all, types) = (
                value(&vs, "all_interactions"),
                value(&vs, "interaction_types"),
            );
            if all.value.as_u64() == Some(sum(&types.value)) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            vs = values(&running, at).await;
        }
        let (all, types) = (
            value(&vs, "all_interactions"),
            value(&vs, "interaction_types"),
        );
        assert_eq!(
            (all.window_start, all.window_end),
            (types.window_start, types.window_end)
        );
        assert!(all.backfilling.is_none(), "{all:?}");
        let expected = sum(&types.value);
        assert!(
            expected > 1_000,
            "the window holds events from before the reload: {expected}"
        );
        assert_eq!(
            all.value.as_u64().unwrap(),
            expected,
            "round {round}: the added metric equals the by-type counts of window {}..{}",
            all.window_start,
            all.window_end
        );
        println!(
            "round {round}: all_interactions = {expected} over {}..{}",
            all.window_start, all.window_end
        );
    }
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_metric_is_full_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    added_metric_is_full(
        &path,
        &services_env("bf_added", 1000),
        Duration::from_secs(40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_metric_is_full_at_once_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    added_metric_is_full(
        &path,
        &embedded_env(dir.path(), 2000),
        Duration::from_secs(15),
    )
    .await;
}

/// Every shipped metric read at `at`, against a recomputation from the raw events.
async fn assert_matches_raw(store: &dyn Store, set: &MetricSet, at: i64, names: &[&str]) {
    let events = store.all_events().await.unwrap();
    let vs = set.read_all(store, at).await.unwrap();
    for name in names {
        let v = value(&vs, name);
        assert!(v.backfilling.is_none(), "{v:?}");
        let expected = common::recompute::recompute(&events, v.window_start, v.window_end);
        let want = &expected[if *name == "all_interactions" {
            "interaction_types"
        } else {
            name
        }];
        let want = if *name == "all_interactions" {
            Value::from(sum(want))
        } else {
            want.clone()
        };
        assert!(
            common::recompute::matches(name, &v.value, &want),
            "{name} over {}..{}: read {} but the raw events give {}",
            v.window_start,
            v.window_end,
            v.value,
            want
        );
        println!(
            "{name} over {}..{} = {} (raw events agree)",
            v.window_start, v.window_end, v.value
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_window_backfills_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let env = services_env("bf_window", 1000);
    let stop = CancellationToken::new();
    let running = pipeline::start(load(&path, &env), RunOptions::default(), stop.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    // interaction_types and active_users from a 60 s window to 120 s: both redefined.
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replace("script = \"../scripts/metrics/interaction_types.rhai\"\nreducer = \"count\"\nwindow = \"60s\"", "script = \"../scripts/metrics/interaction_types.rhai\"\nreducer = \"count\"\nwindow = \"120s\"")
        .replace("script = \"../scripts/metrics/active_users.rhai\"\nreducer = \"distinct\"\nwindow = \"60s\"", "script = \"../scripts/metrics/active_users.rhai\"\nreducer = \"distinct\"\nwindow = \"120s\"");
    assert_ne!(text, changed, "the test edits the shipped windows");
    std::fs::write(&path, changed).unwrap();
    let t = Instant::now();
    while running
        .metrics
        .borrow()
        .metrics()
        .iter()
        .find(|m| m.name() == "interaction_types")
        .unwrap()
        .window
        .size_ms
        != 120_000
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new window is not in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_backfilled(&running, "interaction_types", Duration::from_secs(20)).await;
    wait_backfilled(&running, "active_users", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let set = running.metrics.borrow().clone();
    let store = running.store.clone().unwrap();
    // Stopped, every batch read is stored: raw events and partials agree however loaded the
    // machine is.
    stop.cancel();
    running.wait().await.unwrap();
    let at = settled_at();
    assert_matches_raw(&*store, &set, at, &["interaction_types", "active_users"]).await;
    let vs = set.read_all(&*store, at).await.unwrap();
    assert_eq!(
        value(&vs, "interaction_types").window_end - value(&vs, "interaction_types").window_start,
        120_000
    );
}

/// The `runner` binary on `path` with `env`, logging to `log`.
fn spawn_runner(path: &Path, env: &[(&str, String)], log: &Path) -> std::process::Child {
    let mut cmd = common::runner();
    cmd.args([
        "run",
        path.to_str().unwrap(),
        "--components",
        "generator,consumer",
    ])
    .env("RUNNER_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    std::fs::write(dir.path().join("scripts/metrics/all.rhai"), "#{}").unwrap();
    let env = services_env("bf_crash", 1000);
    // A slow backfill, so the kill lands in the middle of it.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("share = 0.5\nchunk = 5000"),
        "the shipped [backfill] section"
    );
    std::fs::write(
        &path,
        text.replace("share = 0.5\nchunk = 5000", "share = 0.02\nchunk = 200"),
    )
    .unwrap();
    let log = dir.path().join("run1.log");
    let mut first = spawn_runner(&path, &env, &log);
    let p = load(&path, &env);
    let store: Arc<dyn Store> = runner::store::open(
        &p.config.mongodb,
        &p.config.embedded,
        &p.config.retention,
        &p.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    tokio::time::sleep(Duration::from_secs(15)).await;
    append(&path, ALL_INTERACTIONS);
    let p = load(&path, &env);
    let set = MetricSet::load(
        &p.config.metrics,
        &p.config.lookups,
        &p.config.schema().unwrap(),
    )
    .unwrap();
    // Kill it once the backfill has written some of its progress, and not all.
    let t = Instant::now();
    let done = loop {
        let vs = set
            .read_all(&*store, chrono::Utc::now().timestamp_millis())
            .await
            .unwrap();
        if let Some(b) = value(&vs, "all_interactions")
            .backfilling
            .filter(|b| b.done > 0.05)
        {
            break b.done;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no backfill progress: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    common::services::kill9(&mut first);
    println!("killed with the backfill {:.0}% done", done * 100.0);
    assert!(
        done < 0.9,
        "the kill came too late to test a resume: {done}"
    );

    // Restart at full speed: the backfill resumes from its stored progress.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("share = 0.02\nchunk = 200", "share = 1\nchunk = 5000");
    std::fs::write(&path, text).unwrap();
    let log2 = dir.path().join("run2.log");
    let mut second = spawn_runner(&path, &env, &log2);
    let t = Instant::now();
    loop {
        let vs = set
            .read_all(&*store, chrono::Utc::now().timestamp_millis())
            .await
            .unwrap();
        if value(&vs, "all_interactions").backfilling.is_none() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the backfill did not finish after the restart: {}",
            std::fs::read_to_string(&log2).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A graceful stop stores and commits what was read: raw events and partials agree then,
    // however far behind a loaded machine left the consumer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    common::services::terminate(&mut second, Duration::from_secs(60));
    assert_matches_raw(
        &*store,
        &set,
        settled_at(),
        &["all_interactions", "interaction_types"],
    )
    .await;
    let resumed = std::fs::read_to_string(&log2).unwrap();
    assert!(
        resumed.contains("backfill starts"),
        "the second run resumed the backfill: {resumed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_command_recomputes_after_a_script_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let script = dir.path().join("scripts/metrics/views.rhai");
    // The bug: it counts clicks.
    std::fs::write(
        &script,
        "#{ filter: field_is(\"interaction_type\", \"click\") }",
    )
    .unwrap();
    append(&path, "\n[[metric]]\nname = \"views\"\nscript = \"../scripts/metrics/views.rhai\"\nreducer = \"count\"\nwindow = \"60s\"\nslide = \"5s\"\nlateness = \"1s\"\n");
    let env = services_env("bf_command", 1000);
    let mut running = spawn_runner(&path, &env, &dir.path().join("run.log"));
    tokio::time::sleep(Duration::from_secs(25)).await;
    // The fix keeps the metric's shape: its state is kept and new events count views.
    std::fs::write(
        &script,
        "#{ filter: field_is(\"interaction_type\", \"view\") }",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let p = load(&path, &env);
    let store: Arc<dyn Store> = runner::store::open(
        &p.config.mongodb,
        &p.config.embedded,
        &p.config.retention,
        &p.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let set = MetricSet::load(
        &p.config.metrics,
        &p.config.lookups,
        &p.config.schema().unwrap(),
    )
    .unwrap();
    // A window that ends before the panes live traffic still changes (lateness 1 s + slide 5 s).
    let at = chrono::Utc::now().timestamp_millis() - 12_000;
    let views_in = |events: &[runner::event::Record], v: &MetricValue| {
        events
            .iter()
            .filter(|e: &&runner::event::Record| {
                (v.window_start..v.window_end).contains(&e.time_ms())
                    && common::Fields::s(*e, "interaction_type") == "view"
            })
            .count() as u64
    };
    let before = set.read_all(&*store, at).await.unwrap();
    let events = store.all_events().await.unwrap();
    let wrong = value(&before, "views");
    assert_ne!(
        wrong.value.as_u64().unwrap(),
        views_in(&events, wrong),
        "before the backfill the past still counts clicks"
    );

    let mut cmd = common::runner();
    cmd.args([
        "backfill",
        path.to_str().unwrap(),
        "--metric",
        "views",
        "--since",
        "10m",
    ]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", stdout.trim());
    assert!(stdout.contains("events recomputed"), "{stdout}");

    // The pipeline ran on through the backfill; stopped gracefully, all it read is stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::services::terminate(&mut running, Duration::from_secs(60));
    let events = store.all_events().await.unwrap();
    let after = set.read_all(&*store, at).await.unwrap();
    let fixed = value(&after, "views");
    let expected = views_in(&events, fixed);
    assert!(expected > 1_000, "{expected}");
    assert_eq!(
        fixed.value.as_u64().unwrap(),
        expected,
        "after the backfill the window counts views, from the raw events"
    );
    assert_eq!(
        expected,
        value(&after, "interaction_types").value["view"]
            .as_u64()
            .unwrap(),
        "and agrees with the by-type counts"
    );
}
