//! Aggregations on real services: metrics read from MongoDB equal a straightforward
//! recomputation from the raw collection, whatever the restarts, replays and consumer count.

mod common;
use common::Fields;

use common::recompute::assert_metrics_match;
use runner::aggregate::MetricSet;
use runner::pipeline::Components;
use runner::store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CONSUMER: Components = Components::CONSUMER;
const GENERATOR: Components = Components::GENERATOR;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_metrics_match_recomputation() {
    let sp = common::service_pipeline("metrics");
    let n = 50_000;
    let summary =
        common::run_pipeline(&sp, Components::ALL, Some(n), CancellationToken::new()).await;
    assert_eq!(summary.stats.stored, n);
    assert_eq!(summary.stats.script_errors, 0);
    let values = assert_metrics_match(&sp, n).await;
    println!("{}", serde_json::to_string_pretty(&values).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_does_not_double_count() {
    let sp = common::service_pipeline("restart");
    let n = 30_000;
    common::run_pipeline(&sp, GENERATOR, Some(n), CancellationToken::new()).await;

    // Stop the consumer gracefully part way through the topic.
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let store = store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let watcher = tokio::spawn(async move {
        while store.count_events().await.unwrap() < 8_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        trigger.cancel();
    });
    let first = common::run_pipeline(&sp, CONSUMER, None, stop).await;
    watcher.await.unwrap();
    assert!(
        first.stats.stored < n,
        "stopped mid-stream ({} stored)",
        first.stats.stored
    );

    let second = common::run_pipeline(&sp, CONSUMER, None, CancellationToken::new()).await;
    assert_eq!(first.stats.stored + second.stats.stored, n);
    let before = assert_metrics_match(&sp, n).await;

    // Replaying the whole topic changes nothing.
    common::reset_group_offsets(&sp);
    let replay = common::run_pipeline(&sp, CONSUMER, None, CancellationToken::new()).await;
    assert_eq!(replay.stats.duplicates, n);
    let after = assert_metrics_match(&sp, n).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_merge_exactly() {
    let sp = common::service_pipeline("scaleout");
    let n = 30_000;
    common::run_pipeline(&sp, GENERATOR, Some(n), CancellationToken::new()).await;
    let spawn = || {
        common::runner()
            .args([
                "run",
                common::shipped_pipeline().to_str().unwrap(),
                "--components",
                "consumer",
                "--exit-when-idle",
                "4s",
            ])
            .env("KAFKA_BOOTSTRAP_SERVERS", common::kafka())
            .env("MONGODB_CONNECTION_STRING", common::mongodb())
            .env("KAFKA_TOPIC", &sp.topic)
            .env("KAFKA_CONSUMER_GROUP", &sp.group)
            .env("MONGODB_DATABASE", &sp.database)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let logs = [a.stderr, b.stderr].map(|e| String::from_utf8_lossy(&e).to_string());
    assert!(a.status.success() && b.status.success(), "{logs:?}");
    assert!(
        logs.iter().all(|l| l.contains("kafka partitions assigned")),
        "both joined the group: {logs:?}"
    );
    assert_metrics_match(&sp, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_error_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fragile.rhai");
    // Throws on every event of item_1 (the busiest item).
    std::fs::write(&script, "fn key(e) { if e.item_id == \"item_1\" { throw \"no item_1 here\"; } e.item_id }\n#{ key: Fn(\"key\") }").unwrap();
    let mut pipeline = common::embedded_pipeline(dir.path());
    let mut fragile = pipeline
        .config
        .metrics
        .iter()
        .find(|m| m.name == "interaction_types")
        .unwrap()
        .clone();
    fragile.name = "fragile".into();
    fragile.script = script;
    pipeline.config.metrics.push(fragile);
    pipeline.config.generator.seed = Some(3);
    let n = 20_000;
    let options = runner::pipeline::RunOptions {
        max_events: Some(n),
        ..Default::default()
    };
    let summary = runner::pipeline::run(&pipeline, options, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(summary.stats.stored, n, "raw store unaffected");
    assert!(summary.stats.script_errors > 0, "errors are counted");

    let store = store::open(
        &pipeline.config.mongodb,
        &pipeline.config.embedded,
        &pipeline.config.retention,
        &pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let events = store.all_events().await.unwrap();
    let item_1 = events.iter().filter(|e| e.s("item_id") == "item_1").count() as u64;
    assert_eq!(
        summary.stats.script_errors, item_1,
        "exactly the item_1 events failed"
    );
    let set = MetricSet::load(
        &pipeline.config.metrics,
        &pipeline.config.lookups,
        &pipeline.config.schema().unwrap(),
    )
    .unwrap();
    let at = events.iter().map(|e| e.time_ms()).max().unwrap();
    let values = set.read_all(&*store, at).await.unwrap();
    let types = &values
        .iter()
        .find(|v| v.name == "interaction_types")
        .unwrap()
        .value;
    let total: u64 = types
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let in_window = events
        .iter()
        .filter(|e| (values[0].window_start..values[0].window_end).contains(&e.time_ms()))
        .count();
    assert_eq!(total, in_window as u64, "other metrics count every event");
    let fragile = values
        .iter()
        .find(|v| v.name == "fragile")
        .unwrap()
        .value
        .as_object()
        .unwrap()
        .clone();
    assert!(!fragile.contains_key("item_1") && !fragile.is_empty());
}
