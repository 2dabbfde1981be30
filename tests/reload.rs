//! Hot reload with real files on disk, while events flow.

mod common;
use common::Fields;

use runner::config::Pipeline;
use runner::pipeline::{self, Components, RunOptions, Running};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn load(path: &Path, env: &[(&str, &str)]) -> Pipeline {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Pipeline::load_with_env(path, move |n| env.get(n).cloned()).unwrap()
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !check() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

/// Events generated per second over the next `secs` seconds.
async fn generated_per_s(running: &Running, secs: f64) -> f64 {
    let a = running.stats.snapshot().generated;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    (running.stats.snapshot().generated - a) as f64 / secs
}

/// Metric `name`'s current window, read from the running pipeline's store.
async fn current_value(running: &Running, name: &str) -> serde_json::Value {
    let set = running.metrics.borrow().clone();
    let m = set
        .metrics()
        .iter()
        .find(|m| m.name() == name)
        .unwrap()
        .clone();
    let now = chrono::Utc::now().timestamp_millis();
    let store = running.store.clone().unwrap();
    runner::aggregate::read(&m, &*store, now)
        .await
        .unwrap()
        .value
}

/// The shipped catalogue `shipped` (CSV) with every item's category set to `relabelled`.
fn relabelled(shipped: &str) -> String {
    shipped
        .lines()
        .enumerate()
        .map(|(i, l)| match i {
            0 => format!("{l}\n"),
            _ => {
                let cols: Vec<&str> = l.split(',').collect();
                format!("{},relabelled,{}\n", cols[0], cols[2])
            }
        })
        .collect()
}

/// Waits (at most `limit`) until revenue is counted under the `relabelled` category, and checks
/// that the window keeps what was counted under the old categories.
async fn relabelled_revenue(running: &Running, limit: Duration) {
    let t = Instant::now();
    loop {
        let v = current_value(running, "revenue_by_category").await;
        let o = v.as_object().unwrap();
        if o.contains_key("relabelled") {
            assert!(
                o.len() > 1,
                "the window keeps what was counted under the old categories: {v}"
            );
            return;
        }
        assert!(
            t.elapsed() < limit,
            "never relabelled: {v}; reload status {:?}",
            reloads(running)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reloads(r: &Running) -> (u64, u64, Option<String>) {
    let s = r.reload_status.lock().unwrap();
    (s.reloads, s.failures, s.last_error.clone())
}

/// Replaces a file the way many editors save: write a temp file, then rename it over.
fn editor_save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn embedded_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "RUNNER_DATA_DIR",
            dir.join("data").to_string_lossy().to_string(),
        ),
        ("DEFAULT_GENERATION_RATE", "2000".into()),
    ]
}

async fn start_embedded(path: &Path, dir: &Path) -> (Running, CancellationToken) {
    let env = embedded_env(dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stop = CancellationToken::new();
    let running = pipeline::start(load(path, &env), RunOptions::default(), stop.clone())
        .await
        .unwrap();
    (running, stop)
}

const SELECTED: &str = r#"
[[metric]]
name = "selected"
script = "../scripts/metrics/selected.rhai"
reducer = "count"
window = "1h"
slide = "1h"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_metric_script_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    std::fs::write(
        dir.path().join("scripts/metrics/selected.rhai"),
        "#{ filter: field_is(\"interaction_type\", \"view\") }",
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap() + SELECTED;
    std::fs::write(&path, text).unwrap();
    let sp = common::service_pipeline("reload");
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", common::kafka()),
        ("MONGODB_CONNECTION_STRING", common::mongodb()),
        ("KAFKA_TOPIC", sp.topic.clone()),
        ("KAFKA_CONSUMER_GROUP", sp.group.clone()),
        ("MONGODB_DATABASE", sp.database.clone()),
        ("DEFAULT_GENERATION_RATE", "0".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stop = CancellationToken::new();
    let consumer = pipeline::start(
        load(&path, &env),
        RunOptions {
            components: Components::CONSUMER,
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let store = consumer.store.clone().unwrap();
    let produce = |n: u64| {
        let p = load(&path, &env);
        async move {
            let options = RunOptions {
                components: Components::GENERATOR,
                max_events: Some(n),
                ..Default::default()
            };
            pipeline::run(&p, options, CancellationToken::new())
                .await
                .unwrap();
        }
    };

    produce(5_000).await;
    let t = Instant::now();
    while store.count_events().await.unwrap() < 5_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "first phase not consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    editor_save(
        &dir.path().join("scripts/metrics/selected.rhai"),
        "#{ filter: field_is(\"interaction_type\", \"click\") }",
    );
    let took = wait_until("the edit is applied", Duration::from_secs(5), || {
        reloads(&consumer).0 == 1
    })
    .await;
    println!("file save to new logic in force: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    produce(5_000).await;
    let t = Instant::now();
    while store.count_events().await.unwrap() < 10_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "second phase not consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let summary = consumer.wait().await.unwrap();
    assert_eq!(
        summary.stats.stored, 10_000,
        "no event lost or doubled across the reload"
    );

    let events = store.all_events().await.unwrap();
    let first_prefix = events.iter().min_by_key(|e| e.time_ms()).unwrap().id()[..16].to_string();
    let expected = events
        .iter()
        .filter(|e| {
            let old = e.id().starts_with(&first_prefix);
            (old && e.s("interaction_type") == "view")
                || (!old && e.s("interaction_type") == "click")
        })
        .count() as u64;
    let p = load(&path, &env);
    let set = runner::aggregate::MetricSet::load(
        &p.config.metrics,
        &p.config.lookups,
        &p.config.schema().unwrap(),
    )
    .unwrap();
    let at = events.iter().map(|e| e.time_ms()).max().unwrap();
    let values = set.read_all(&*store, at).await.unwrap();
    let selected = values.iter().find(|v| v.name == "selected").unwrap();
    assert_eq!(
        selected.value.as_u64().unwrap(),
        expected,
        "views before the edit + clicks after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_script_keeps_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let (running, stop) = start_embedded(&path, dir.path()).await;
    let script = dir.path().join("scripts/metrics/revenue.rhai");
    let good = std::fs::read_to_string(&script).unwrap();
    editor_save(&script, "#{\n    filter: field_is(\"interaction_type\", \"purchase\"\n    value: field(\"price\"),\n}\n");
    wait_until(
        "the broken save is rejected",
        Duration::from_secs(5),
        || reloads(&running).1 == 1,
    )
    .await;
    let (ok, _, error) = reloads(&running);
    let error = error.unwrap();
    assert_eq!(ok, 0);
    assert!(
        error.contains(&format!("{}:3:", script.display())),
        "names file and line: {error}"
    );

    // The old version keeps running: events are still stored and aggregated.
    let before = running.stats.snapshot().stored;
    wait_until("events keep flowing", Duration::from_secs(5), || {
        running.stats.snapshot().stored > before + 1000
    })
    .await;
    assert_eq!(running.stats.snapshot().script_errors, 0);

    editor_save(&script, &good);
    wait_until("the fix applies", Duration::from_secs(5), || {
        reloads(&running).0 == 1
    })
    .await;
    assert_eq!(reloads(&running).2, None, "the error is cleared");
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_metric_file_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let (running, stop) = start_embedded(&path, dir.path()).await;
    let store = running.store.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let now = || chrono::Utc::now().timestamp_millis();
    let read = |name: &'static str| {
        let store = store.clone();
        let set = running.metrics.borrow().clone();
        async move {
            let values = set.read_all(&*store, now()).await.unwrap();
            values.into_iter().find(|v| v.name == name).map(|v| v.value)
        }
    };
    let types_before = read("interaction_types").await.unwrap();
    let total = |v: &serde_json::Value| {
        v.as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>()
    };

    std::fs::write(
        dir.path().join("scripts/metrics/selected.rhai"),
        "#{ filter: field_is(\"interaction_type\", \"view\") }",
    )
    .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, SELECTED.as_bytes()).unwrap();
    drop(f);
    let took = wait_until("the new metric appears", Duration::from_secs(5), || {
        running
            .metrics
            .borrow()
            .metrics()
            .iter()
            .any(|m| m.name() == "selected")
    })
    .await;
    println!("new metric in force after {took:?}");
    assert!(took < Duration::from_secs(1));
    wait_until("a batch after the reload", Duration::from_secs(5), || {
        running.stats.snapshot().stored > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let selected = read("selected").await.unwrap();
    assert!(
        selected.as_u64().unwrap() > 0,
        "the new metric counts: {selected}"
    );
    let types_after = read("interaction_types").await.unwrap();
    assert!(
        total(&types_after) >= total(&types_before),
        "other metrics keep their state: {types_before} -> {types_after}"
    );
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_rate_change_applies_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("rate = \"${DEFAULT_GENERATION_RATE:-1000}\"", "rate = 300"),
    )
    .unwrap();
    let (running, stop) = start_embedded(&path, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow = generated_per_s(&running, 2.0).await;
    let text = std::fs::read_to_string(&path).unwrap();
    editor_save(&path, &text.replace("rate = 300", "rate = 3000"));
    wait_until("the rate change applies", Duration::from_secs(3), || {
        reloads(&running).0 == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast = generated_per_s(&running, 2.0).await;
    println!("measured rate {slow:.0}/s before, {fast:.0}/s after");
    assert!((slow - 300.0).abs() < 60.0, "{slow}");
    assert!((fast - 3000.0).abs() < 450.0, "{fast}");
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_style_save_reloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let (running, stop) = start_embedded(&path, dir.path()).await;
    let script = dir.path().join("scripts/metrics/active_users.rhai");
    let text = std::fs::read_to_string(&script).unwrap();
    editor_save(&script, &format!("{text}\n// edited"));
    std::fs::write(&script, format!("{text}\n// edited again")).unwrap();
    std::fs::write(&script, format!("{text}\n// edited a third time")).unwrap();
    wait_until("the save reloads", Duration::from_secs(5), || {
        reloads(&running).0 >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        reloads(&running),
        (1, 0, None),
        "one burst of writes is one reload"
    );
    // Touching a file without changing it is not a reload.
    std::fs::write(&script, format!("{text}\n// edited a third time")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reloads(&running).0, 1);
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swap_reloads() {
    // A Kubernetes ConfigMap mount: files are symlinks through `..data`, swapped atomically.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let version = |name: &str, rate: u32| {
        let v = conf.join(name);
        common::copy_pipeline(&v);
        let p = v.join("pipelines/interactions.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(
            &p,
            text.replace(
                "rate = \"${DEFAULT_GENERATION_RATE:-1000}\"",
                &format!("rate = {rate}"),
            ),
        )
        .unwrap();
    };
    version("..2026_01", 300);
    std::os::unix::fs::symlink("..2026_01", conf.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/pipelines", conf.join("pipelines")).unwrap();
    std::os::unix::fs::symlink("..data/scripts", conf.join("scripts")).unwrap();
    std::os::unix::fs::symlink("..data/lookups", conf.join("lookups")).unwrap();
    let path = conf.join("pipelines/interactions.toml");
    let (running, stop) = start_embedded(&path, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = generated_per_s(&running, 2.0).await;

    // The new version also brings a script file the old one did not have, and a metric using it:
    // the whole scripts folder is swapped with the file.
    version("..2026_02", 1500);
    let v2 = conf.join("..2026_02");
    std::fs::write(
        v2.join("scripts/metrics/swapped_in.rhai"),
        "#{ key: field(\"item_id\") }",
    )
    .unwrap();
    let file = v2.join("pipelines/interactions.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n[[metric]]\nname = \"swapped_in\"\nscript = \"../scripts/metrics/swapped_in.rhai\"\nreducer = \"count\"\n")).unwrap();
    std::os::unix::fs::symlink("..2026_02", conf.join("..data_tmp")).unwrap();
    std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
    let took = wait_until("the swap is noticed", Duration::from_secs(5), || {
        reloads(&running).0 == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = generated_per_s(&running, 2.0).await;
    println!("symlink swap noticed after {took:?}; rate {before:.0}/s before, {after:.0}/s after");
    assert!((before - 300.0).abs() < 60.0, "{before}");
    assert!(
        (after - 1500.0).abs() < 250.0,
        "the swapped-in version's rate applies: {after}"
    );
    assert!(
        running
            .metrics
            .borrow()
            .metrics()
            .iter()
            .any(|m| m.name() == "swapped_in"),
        "the metric whose script came with the swap runs"
    );
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_edits_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let (running, stop) = start_embedded(&path, dir.path()).await;
    let script = dir.path().join("scripts/metrics/revenue.rhai");
    let text = std::fs::read_to_string(&script).unwrap();
    let mut took = Vec::new();
    for i in 1..=20u64 {
        editor_save(&script, &format!("{text}\n// edit {i}"));
        took.push(
            wait_until("the edit applies", Duration::from_secs(5), || {
                reloads(&running).0 == i
            })
            .await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let summary = running.wait().await.unwrap();
    took.sort();
    println!(
        "save -> applied over 20 edits: median {:?}, max {:?}",
        took[10], took[19]
    );
    assert!(took[19] < Duration::from_secs(1));
    assert_eq!(
        summary.stats.stored, summary.stats.generated,
        "nothing lost"
    );
    assert_eq!(summary.stats.duplicates, 0);
    let c = load(
        &path,
        &[("RUNNER_DATA_DIR", dir.path().join("data").to_str().unwrap())],
    )
    .config;
    let store = runner::store::open(&c.mongodb, &c.embedded, &c.retention, &c.schema().unwrap())
        .await
        .unwrap()
        .store;
    assert_eq!(store.count_events().await.unwrap(), summary.stats.generated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_edit_applies_to_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("interval = \"${ALERT_INTERVAL:-5s}\"", "interval = \"200ms\"")
        .replace("max_consumer_lag = 50000", "max_consumer_lag = 50000\nbusy_users = 1000000")
        + "\n[[alert]]\nname = \"busy\"\ncondition = \"metrics.active_users > thresholds.busy_users\"\n";
    std::fs::write(&path, &text).unwrap();
    let (running, stop) = start_embedded(&path, dir.path()).await;
    let store = running.store.clone().unwrap();
    let busy = || {
        let store = store.clone();
        async move {
            runner::alert::active_alerts(&*store)
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.alert == "busy")
                .count()
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(busy().await, 0, "a million users is not reached");

    editor_save(
        &path,
        &text.replace("busy_users = 1000000", "busy_users = 1"),
    );
    let t = Instant::now();
    while busy().await == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the edited threshold did not apply: {:?}",
            reloads(&running)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads(&running).0, 1);
    stop.cancel();
    running.wait().await.unwrap();
}

/// A reload that moves the pipeline to another topic and database: the generator keeps its
/// sequence, the consumer drains the old topic into the old database first, and no event is
/// lost or stored twice across the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_change_reconnects_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let (kafka, mongodb) = (common::kafka(), common::mongodb());
    let (topic_a, topic_b) = (common::unique("move_a"), common::unique("move_b"));
    let (db_a, db_b) = (common::unique("move_a"), common::unique("move_b"));
    let group = common::unique("move_group");
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.as_str()),
        ("MONGODB_CONNECTION_STRING", mongodb.as_str()),
        ("KAFKA_TOPIC", topic_a.as_str()),
        ("KAFKA_CONSUMER_GROUP", group.as_str()),
        ("MONGODB_DATABASE", db_a.as_str()),
        ("DEFAULT_GENERATION_RATE", "2000"),
    ];
    let p = load(&path, &env);
    let events = 16_000;
    let options = RunOptions {
        max_events: Some(events),
        idle_exit: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let running = pipeline::start(p.clone(), options, CancellationToken::new())
        .await
        .unwrap();
    let stats = running.stats.clone();
    wait_until(
        "events stored before the move",
        Duration::from_secs(30),
        || stats.snapshot().stored >= 3_000,
    )
    .await;

    let text = std::fs::read_to_string(&path).unwrap();
    let moved = text
        .replace(
            "\"${KAFKA_TOPIC:-user_interactions}\"",
            &format!("{topic_b:?}"),
        )
        .replace(
            "\"${MONGODB_DATABASE:-interactions}\"",
            &format!("{db_b:?}"),
        )
        .replace("batch_size = 2000", "batch_size = 500");
    assert_ne!(moved, text);
    editor_save(&path, &moved);
    wait_until("the reload", Duration::from_secs(10), || {
        reloads(&running).0 >= 1
    })
    .await;
    let status = running.reload_status.lock().unwrap().clone();
    let summary = running.wait().await.unwrap();
    assert!(
        status.needs_restart.is_empty() && status.last_error.is_none(),
        "{status:?}"
    );
    assert_eq!(summary.stats.generated, events);

    let mut stored_ids = HashSet::new();
    let mut per_db = Vec::new();
    for db in [&db_a, &db_b] {
        let mut c = p.config.clone();
        c.mongodb.database = db.to_string();
        let store =
            runner::store::open(&c.mongodb, &c.embedded, &c.retention, &c.schema().unwrap())
                .await
                .unwrap()
                .store;
        let ids: Vec<String> = store
            .all_events()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id().to_string())
            .collect();
        per_db.push(ids.len());
        stored_ids.extend(ids);
    }
    assert!(
        per_db[0] > 0 && per_db[1] > 0,
        "both databases got events: {per_db:?}"
    );
    assert_eq!(
        per_db.iter().sum::<usize>(),
        events as usize,
        "every event stored once, in one of the two: {per_db:?}"
    );
    assert_eq!(stored_ids.len(), events as usize, "no event in both");
    let in_topics =
        [&topic_a, &topic_b].map(|t| common::topic_messages(&kafka, t, p.config.kafka.partitions));
    assert!(
        in_topics[1] > 0,
        "the generator moved to the new topic: {in_topics:?}"
    );
    assert_eq!(in_topics.iter().sum::<u64>(), events);
    println!(
        "moved after {} events; topics {in_topics:?}, databases {per_db:?}",
        in_topics[0]
    );
}

/// Saving the lookup table is a hot reload like saving a script: records after it get the new
/// rows while the window keeps what was counted under the old ones, and a broken table (a key
/// twice) is refused with its file and line while the running version goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_lookup_table_relabels_new_records_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::copy_pipeline(dir.path());
    let (running, stop) = start_embedded(&path, dir.path()).await;
    let revenue_by_category = || current_value(&running, "revenue_by_category");
    let t = Instant::now();
    while revenue_by_category()
        .await
        .as_object()
        .is_none_or(|o| o.len() < 3)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no revenue by category"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = dir.path().join("lookups/items.csv");
    let shipped = std::fs::read_to_string(&table).unwrap();
    let broken = format!("{shipped}item_1,books,1.0\n");
    editor_save(&table, &broken);
    wait_until(
        "the broken table is refused",
        Duration::from_secs(5),
        || reloads(&running).1 == 1,
    )
    .await;
    let error = reloads(&running).2.unwrap();
    assert!(
        error.contains(&format!("{}:502", table.display())) && error.contains("item_1"),
        "names the file, the line and the key: {error}"
    );
    let relabelled = relabelled(&shipped);
    editor_save(&table, &relabelled);
    wait_until("the new table applies", Duration::from_secs(5), || {
        reloads(&running).0 == 1
    })
    .await;
    relabelled_revenue(&running, Duration::from_secs(10)).await;
    stop.cancel();
    running.wait().await.unwrap();
}

/// The shipped pipeline copied into `dir`, its item catalogue kept in the store instead of a
/// file (`collection = "items"`, read again every second).
fn with_catalogue_in_the_store(dir: &Path) -> std::path::PathBuf {
    let path = common::copy_pipeline(dir);
    let text = std::fs::read_to_string(&path).unwrap();
    let from = "from = \"../lookups/items.csv\"\n";
    assert!(text.contains(from), "the shipped [[lookup]] reads its file");
    std::fs::write(
        &path,
        text.replace(from, "collection = \"items\"\nrefresh = \"1s\"\n"),
    )
    .unwrap();
    path
}

/// `runner lookup load PIPELINE items FILE` with `env`.
fn lookup_load(path: &Path, file: &Path, env: &[(&str, &str)]) -> std::process::Output {
    common::runner()
        .args(["lookup", "load", path.to_str().unwrap(), "items"])
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A lookup table kept in the store, on `env`'s store: `runner lookup load` fills it from the
/// shipped catalogue (and refuses a file with a key twice, naming the key, leaving the
/// collection as it was); the pipeline reads it at start, so each category gets revenue; a
/// relabelled catalogue loaded while it runs is read at the next refresh, new records get the
/// new rows and the window keeps what it counted under the old ones.
async fn a_catalogue_in_the_store_is_read_at_start_and_again_every_refresh(
    dir: &Path,
    env: &[(&str, &str)],
) {
    let path = with_catalogue_in_the_store(dir);
    let table = dir.join("lookups/items.csv");
    let shipped = std::fs::read_to_string(&table).unwrap();
    let rows = shipped.lines().count() - 1;
    let loaded = lookup_load(&path, &table, env);
    let said = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success() && said.contains(&format!("items: {rows} rows")),
        "{said}{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let twice = dir.join("twice.csv");
    std::fs::write(&twice, format!("{shipped}item_1,books,1.0\n")).unwrap();
    let refused = lookup_load(&path, &twice, env);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && error.contains("twice.csv") && error.contains("item_1"),
        "{error}"
    );

    let stop = CancellationToken::new();
    let running = pipeline::start(load(&path, env), RunOptions::default(), stop.clone())
        .await
        .expect("starts with the catalogue read from the store");
    let revenue_by_category = || current_value(&running, "revenue_by_category");
    let categories: HashSet<String> = shipped
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    let t = Instant::now();
    loop {
        let v = revenue_by_category().await;
        let o = v.as_object().cloned().unwrap_or_default();
        if o.len() >= 3 {
            assert!(
                o.keys().all(|k| categories.contains(k)),
                "every purchase's category is the catalogue's: {v}"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no revenue by category: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let relabelled = relabelled(&shipped);
    let relabelled_file = dir.join("relabelled.csv");
    std::fs::write(&relabelled_file, relabelled).unwrap();
    assert!(lookup_load(&path, &relabelled_file, env).status.success());
    relabelled_revenue(&running, Duration::from_secs(30)).await;
    let changes = running.reload_status.lock().unwrap().last_changes.clone();
    assert!(
        changes
            .iter()
            .any(|c| c.contains("collection rows changed")),
        "{changes:?}"
    );
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_in_mongodb_is_read_at_start_and_again_every_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let sp = common::service_pipeline("lookup_collection");
    common::create_topic(&sp.pipeline.config.kafka).await;
    let (kafka, mongodb) = (common::kafka(), common::mongodb());
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.as_str()),
        ("MONGODB_CONNECTION_STRING", mongodb.as_str()),
        ("KAFKA_TOPIC", sp.topic.as_str()),
        ("KAFKA_CONSUMER_GROUP", sp.group.as_str()),
        ("MONGODB_DATABASE", sp.database.as_str()),
        ("DEFAULT_GENERATION_RATE", "2000"),
    ];
    a_catalogue_in_the_store_is_read_at_start_and_again_every_refresh(dir.path(), &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_in_the_embedded_store_is_read_at_start_and_again_every_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let env = embedded_env(dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a_catalogue_in_the_store_is_read_at_start_and_again_every_refresh(dir.path(), &env).await;
}
