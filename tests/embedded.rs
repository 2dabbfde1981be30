//! The embedded default: no Kafka, no MongoDB, the shipped pipeline file as it is.

mod common;
use common::Fields;

use runner::pipeline::{self, RunOptions};
use runner::store;
use std::collections::HashSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

async fn run_embedded(data_dir: &std::path::Path, events: u64) -> pipeline::RunSummary {
    let p = common::embedded_pipeline(data_dir);
    assert_eq!(
        (p.config.kafka.kind(), p.config.mongodb.kind()),
        (
            runner::transport::TransportKind::EmbeddedQueue,
            runner::store::StoreKind::Sqlite
        )
    );
    let options = RunOptions {
        max_events: Some(events),
        ..RunOptions::default()
    };
    pipeline::run(&p, options, CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let summary = run_embedded(dir.path(), n).await;
    assert_eq!(summary.stats.stored, n);
    let c = common::embedded_pipeline(dir.path()).config;
    let store = store::open(&c.mongodb, &c.embedded, &c.retention, &c.schema().unwrap())
        .await
        .unwrap()
        .store;
    let events = store.all_events().await.unwrap();
    assert_eq!(events.len() as u64, n);
    assert_eq!(
        events.iter().map(|e| e.id()).collect::<HashSet<_>>().len() as u64,
        n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    run_embedded(dir.path(), 2_000).await;
    run_embedded(dir.path(), 3_000).await;
    let c = common::embedded_pipeline(dir.path()).config;
    let store = store::open(&c.mongodb, &c.embedded, &c.retention, &c.schema().unwrap())
        .await
        .unwrap()
        .store;
    assert_eq!(store.count_events().await.unwrap(), 5_000);
}

/// The `[event]` checks run in the consumer, so the embedded queue applies them as Kafka does
/// (validation used to run only inside the Kafka transport).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_applies_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config
        .event
        .fields
        .get_mut("interaction_type")
        .unwrap()
        .values = vec!["view".to_string()];
    let n = 2_000;
    let options = RunOptions {
        max_events: Some(n),
        ..RunOptions::default()
    };
    let summary = pipeline::run(&p, options, CancellationToken::new())
        .await
        .unwrap();
    let s = summary.stats;
    assert!(
        s.rejected > 0 && s.stored > 0,
        "the shipped mix has views and other types: {s:?}"
    );
    assert_eq!(
        s.stored + s.rejected,
        n,
        "every event is stored or dead-lettered: {s:?}"
    );
    let store = store::open(
        &p.config.mongodb,
        &p.config.embedded,
        &p.config.retention,
        &p.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    assert!(store
        .all_events()
        .await
        .unwrap()
        .iter()
        .all(|e| e.s("interaction_type") == "view"));
    let letters = store.dead_letters(10).await.unwrap();
    assert!(
        !letters.is_empty()
            && letters.iter().all(
                |d| d.reason == runner::dead_letter::Reason::FailedValidation
                    && d.detail.contains("is not one of view")
            ),
        "{letters:#?}"
    );
    assert_eq!(store.count_dead_letters().await.unwrap(), s.rejected);
}

#[test]
fn configured_but_unreachable_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = common::runner()
        .args([
            "run",
            common::shipped_pipeline().to_str().unwrap(),
            "--kafka",
            "127.0.0.1:1",
            "--events",
            "10",
        ])
        .env("KAFKA_CONNECT_TIMEOUT", "3s")
        .env("RUNNER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail, not fall back: {err}");
    assert!(
        err.contains("cannot reach kafka"),
        "retries are reported: {err}"
    );
    assert!(
        err.contains("cannot reach Kafka at 127.0.0.1:1"),
        "the final error names the broker: {err}"
    );
    assert!(!err.contains("transport: embedded"), "{err}");
    assert!(
        started.elapsed().as_secs() < 30,
        "gave up after the configured timeout"
    );
}

#[test]
fn secrets_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::runner()
        .args([
            "run",
            common::shipped_pipeline().to_str().unwrap(),
            "--components",
            "generator,consumer",
        ])
        .args([
            "--mongodb",
            "mongodb://bob:hunter2-secret@127.0.0.1:1/",
            "--log",
            "trace",
            "--events",
            "10",
        ])
        .env("MONGODB_CONNECT_TIMEOUT", "2s")
        .env("RUNNER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("mongodb://bob:***@127.0.0.1:1/"),
        "the uri is shown redacted: {err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the password never appears, at any log level"
    );
}

/// Logs into a pipe or file carry no colour codes; `--log-format json` gives one JSON object per
/// line; an invalid `--log` filter is an error, not a silent `info`.
#[test]
fn logs_are_plain_in_a_pipe_json_on_request_and_a_bad_filter_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        common::runner()
            .args([
                "run",
                common::shipped_pipeline().to_str().unwrap(),
                "--components",
                "generator,consumer",
                "--events",
                "300",
            ])
            .args(extra)
            .env("RUNNER_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let text = run(&[]);
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(text.status.success(), "{err}");
    assert!(
        err.contains("progress") && !err.contains('\u{1b}'),
        "plain text, no ANSI codes: {err:?}"
    );

    let json = run(&["--log-format", "json"]);
    let err = String::from_utf8_lossy(&json.stderr);
    assert!(json.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"progress\"")), "{err}");

    let bad = run(&["--log", "runner=loud"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid log filter \"runner=loud\""), "{err}");
}

/// Rows of `table` in the embedded store at `dir` (read beside the running store; WAL readers
/// do not block it).
fn rows(dir: &std::path::Path, sql: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.join("runner.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// `[retention]` on the embedded store: raw records, panes, alert history and dead letters older
/// than their retention are swept while the pipeline runs, the file gives the space back, and the
/// current window (whose panes and raw records are younger than any retention) stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_every_kind_and_keeps_the_current_window_exact() {
    use runner::store::retention::RetentionConfig;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = common::load_pipeline(&[
        ("RUNNER_DATA_DIR", data.to_str().unwrap()),
        ("DEFAULT_GENERATION_RATE", "2000"),
    ]);
    // Short windows, so a short pane retention is still long enough for them (2 s + 1 s + 1 s).
    for m in &mut p.config.metrics {
        (m.window, m.slide, m.lateness) = (
            Duration::from_secs(2),
            Some(Duration::from_secs(1)),
            Duration::from_secs(1),
        );
    }
    let keep = RetentionConfig {
        raw: Some(Duration::from_secs(3)),
        panes: Some(Duration::from_secs(5)),
        alerts: Some(Duration::from_secs(3)),
        dead_letters: Some(Duration::from_secs(3)),
        results: None,
    };
    p.config.retention = keep.clone();
    // Shares are dead letters (a steady stream of them), and one rule notifies every second.
    p.config
        .event
        .fields
        .get_mut("interaction_type")
        .unwrap()
        .values = ["view", "click", "add_to_cart", "purchase"]
        .map(String::from)
        .to_vec();
    common::set_alerts(&mut p, "[alerting]\ninterval = \"250ms\"\n[[alert]]\nname = \"always\"\ncondition = \"true\"\nrepeat_interval = \"1s\"\n");
    let n = 24_000; // 12 s at 2,000 events/s
    let options = RunOptions {
        max_events: Some(n),
        idle_exit: Some(Duration::from_millis(500)),
        ..RunOptions::default()
    };
    let summary = pipeline::run(&p, options, CancellationToken::new())
        .await
        .unwrap();
    let ended = chrono::Utc::now().timestamp_millis();
    let s = summary.stats;
    assert_eq!(s.stored + s.rejected, n, "{s:?}");

    // While it ran, the sweep kept each kind to about its retention (a sweep runs every second).
    let slack = 1_500;
    let raw = rows(&data, "SELECT COUNT(*) FROM raw_records");
    let oldest_raw = rows(&data, "SELECT MIN(time_ms) FROM raw_records");
    assert!(
        raw > 0 && (raw as u64) < s.stored / 2,
        "raw records fell below what was stored: {raw} of {}",
        s.stored
    );
    assert!(
        oldest_raw >= ended - 3_000 - slack,
        "no raw record is much older than 3 s: {} ms old",
        ended - oldest_raw
    );
    let letters = rows(&data, "SELECT COUNT(*) FROM dead_letters");
    assert!(
        (letters as u64) < s.rejected / 2,
        "dead letters fell: {letters} of {}",
        s.rejected
    );
    assert!(rows(&data, "SELECT MIN(at_ms) FROM dead_letters") >= ended - 3_000 - slack);
    let alerts = rows(&data, "SELECT COUNT(*) FROM alerts");
    assert!(
        rows(&data, "SELECT MIN(at_ms) FROM alerts") >= ended - 3_000 - slack,
        "alert history older than 3 s is gone ({alerts} rows left)"
    );
    println!("fault: retention raw 3s, panes 5s, alerts 3s, dead letters 3s | produced {n} | stored {} | duplicates skipped {} | dead letters {} | left after the run: raw {raw}, dead letters {letters}, alerts {alerts}", s.stored, s.duplicates, s.rejected);
    let timeless = runner::store::TIMELESS_PANE;
    let oldest_pane = rows(
        &data,
        &format!("SELECT MIN(pane_start) FROM metric_panes WHERE pane_start <> {timeless}"),
    );
    assert!(
        oldest_pane >= ended - 5_000 - slack,
        "no pane is much older than 5 s: {} ms old",
        ended - oldest_pane
    );
    let watermarks = rows(
        &data,
        &format!("SELECT COUNT(*) FROM metric_panes WHERE pane_start = {timeless}"),
    );
    assert!(watermarks > 0, "watermarks are never expired");

    // The current window is exact: every metric equals a recomputation from the raw records
    // still stored (all of its window is younger than the raw retention). Read with no retention,
    // so nothing is swept meanwhile.
    let store = store::open(
        &p.config.mongodb,
        &p.config.embedded,
        &RetentionConfig::default(),
        &p.schema(),
    )
    .await
    .unwrap()
    .store;
    let events = store.all_events().await.unwrap();
    let at = events.iter().map(|e| e.time_ms()).max().unwrap();
    let set = runner::aggregate::MetricSet::load(&p.config.metrics, &p.config.lookups, &p.schema())
        .unwrap();
    let values = set.read_all(&*store, at).await.unwrap();
    let (start, end) = (values[0].window_start, values[0].window_end);
    assert!(
        events.iter().any(|e| e.time_ms() < start),
        "records before the window are stored, so the window is not all that is left"
    );
    let expected = common::recompute::recompute(&events, start, end);
    for v in &values {
        assert!(
            common::recompute::matches(&v.name, &v.value, &expected[&v.name]),
            "{}: read {} but recomputation gives {}",
            v.name,
            v.value,
            expected[&v.name]
        );
    }
    drop(store);

    // With nothing arriving, the next sweeps empty every kind but the watermarks, and the file
    // shrinks (incremental vacuum).
    let pages_before = rows(&data, "SELECT page_count FROM pragma_page_count");
    let store = store::open(&p.config.mongodb, &p.config.embedded, &keep, &p.schema())
        .await
        .unwrap()
        .store;
    let t = std::time::Instant::now();
    loop {
        let left = rows(&data, &format!(
            "SELECT (SELECT COUNT(*) FROM raw_records) + (SELECT COUNT(*) FROM dead_letters) + (SELECT COUNT(*) FROM alerts) \
             + (SELECT COUNT(*) FROM metric_panes WHERE pane_start <> {timeless})"
        ));
        if left == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{left} expired rows are still stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rows(
            &data,
            &format!("SELECT COUNT(*) FROM metric_panes WHERE pane_start = {timeless}")
        ),
        watermarks
    );
    let pages_after = rows(&data, "SELECT page_count FROM pragma_page_count");
    assert!(
        pages_after < pages_before / 2,
        "the file gave the space back: {pages_before} pages before, {pages_after} after"
    );
    assert!(
        rows(&data, "SELECT freelist_count FROM pragma_freelist_count") < 16,
        "no large free list is left in the file"
    );
    drop(store);
}

/// One consumer over a queue already holding `batches` batches of 100 events (a backlog), with
/// partials checkpointed at most every `interval`, its work on `workers` threads: the
/// checkpoints written, the events stored, and every metric's current value.
async fn drain_backlog(
    interval: std::time::Duration,
    batches: usize,
    workers: usize,
) -> (u64, u64, Vec<serde_json::Value>) {
    use runner::aggregate::{Aggregator, MetricSet};
    use runner::transport::Publisher;
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.consumer.batch_size = 100;
    p.config.consumer.checkpoint_interval = interval;
    p.config.consumer.workers = workers;
    let stats = runner::telemetry::Stats::new();
    let store = store::open(
        &p.config.mongodb,
        &p.config.embedded,
        &p.config.retention,
        &p.schema(),
    )
    .await
    .unwrap()
    .store;
    let (mut publisher, subscriber) =
        runner::transport::embedded::channel(batches, 100, stats.clone());
    let script =
        runner::generator::GeneratorScript::load(&p.config.generator, &p.schema()).unwrap();
    let mut generator = runner::generator::Generator::new(script, Some(7));
    for _ in 0..batches {
        let mut events = Vec::new();
        generator.fill(100, &mut events);
        publisher.publish(events).await.unwrap();
    }
    drop(publisher);
    let set = Arc::new(MetricSet::load(&p.config.metrics, &p.config.lookups, &p.schema()).unwrap());
    let until = runner::consumer::StopWhen {
        stop: CancellationToken::new(),
        idle: None,
        producers_done: CancellationToken::new(),
        drain: CancellationToken::new(),
    };
    let aggregator = Aggregator::new(set.clone(), stats.clone());
    runner::consumer::run(
        Box::new(subscriber),
        store.clone(),
        Some(aggregator),
        None,
        stats.clone(),
        &p.config.consumer,
        until,
    )
    .await
    .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut values = Vec::new();
    for m in set.metrics() {
        values.push(
            runner::aggregate::read(m, &*store, now)
                .await
                .unwrap()
                .value,
        );
    }
    let snap = stats.snapshot();
    (snap.checkpoints, snap.stored, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_behind_writes_partials_once_per_checkpoint_interval_and_counts_the_same() {
    let (every_batch, stored, exact) = drain_backlog(std::time::Duration::ZERO, 30, 1).await;
    assert_eq!(
        (every_batch, stored),
        (30, 3000),
        "interval 0: a checkpoint per batch"
    );
    let (behind, stored, values) = drain_backlog(std::time::Duration::from_secs(3600), 30, 1).await;
    assert_eq!(stored, 3000);
    // The reader keeps the next batch waiting while one is written, so only the last batch
    // (nothing waiting after it) checkpoints; a scheduling hiccup may add one or two.
    assert!(behind <= 3, "{behind} checkpoints for 30 batches behind");
    assert_eq!(
        values, exact,
        "the same values whether partials are written per batch or per checkpoint"
    );
}

/// Batches encoded in parts and metrics applied side by side on worker threads store every
/// event once and give every shipped metric the value one thread gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_worker_threads_stores_and_counts_what_one_thread_does() {
    let (_, stored_one, one) = drain_backlog(std::time::Duration::ZERO, 20, 1).await;
    let (_, stored_three, three) = drain_backlog(std::time::Duration::ZERO, 20, 3).await;
    assert_eq!((stored_one, stored_three), (2000, 2000));
    assert!(
        one.iter().any(|v| !v.is_null()),
        "the metrics have values: {one:?}"
    );
    assert_eq!(three, one, "three worker threads, the values of one");
}
