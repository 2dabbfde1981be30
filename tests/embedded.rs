//! The embedded default: no Kafka, no MongoDB, the shipped pipeline file as it is.

mod common;
use common::Fields;

use runner::pipeline::{self, RunOptions};
use runner::store;
use std::collections::HashSet;
use tokio_util::sync::CancellationToken;

async fn run_embedded(data_dir: &std::path::Path, events: u64) -> pipeline::RunSummary {
    let p = common::embedded_pipeline(data_dir);
    assert!(p.config.kafka.is_embedded() && p.config.mongodb.is_embedded());
    let options = RunOptions { max_events: Some(events), ..RunOptions::default() };
    pipeline::run(&p, options, CancellationToken::new()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let summary = run_embedded(dir.path(), n).await;
    assert_eq!(summary.stats.stored, n);
    let c = common::embedded_pipeline(dir.path()).config;
    let store = store::open(&c.mongodb, &c.embedded, &c.schema().unwrap()).await.unwrap();
    let events = store.all_events().await.unwrap();
    assert_eq!(events.len() as u64, n);
    assert_eq!(events.iter().map(|e| e.id()).collect::<HashSet<_>>().len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    run_embedded(dir.path(), 2_000).await;
    run_embedded(dir.path(), 3_000).await;
    let c = common::embedded_pipeline(dir.path()).config;
    let store = store::open(&c.mongodb, &c.embedded, &c.schema().unwrap()).await.unwrap();
    assert_eq!(store.count_events().await.unwrap(), 5_000);
}

/// The `[event]` checks run in the consumer, so the embedded queue applies them as Kafka does
/// (validation used to run only inside the Kafka transport).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_applies_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = common::embedded_pipeline(dir.path());
    p.config.event.fields.get_mut("interaction_type").unwrap().values = vec!["view".to_string()];
    let n = 2_000;
    let options = RunOptions { max_events: Some(n), ..RunOptions::default() };
    let summary = pipeline::run(&p, options, CancellationToken::new()).await.unwrap();
    let s = summary.stats;
    assert!(s.rejected > 0 && s.stored > 0, "the shipped mix has views and other types: {s:?}");
    assert_eq!(s.stored + s.rejected, n, "every event is stored or dead-lettered: {s:?}");
    let store = store::open(&p.config.mongodb, &p.config.embedded, &p.config.schema().unwrap()).await.unwrap();
    assert!(store.all_events().await.unwrap().iter().all(|e| e.s("interaction_type") == "view"));
    let letters = store.dead_letters(10).await.unwrap();
    assert!(!letters.is_empty() && letters.iter().all(|d| d.reason == runner::dead_letter::Reason::FailedValidation && d.detail.contains("is not one of view")), "{letters:#?}");
    assert_eq!(store.count_dead_letters().await.unwrap(), s.rejected);
}

#[test]
fn configured_but_unreachable_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = common::runner()
        .args(["run", common::shipped_pipeline().to_str().unwrap(), "--kafka", "127.0.0.1:1", "--events", "10"])
        .env("KAFKA_CONNECT_TIMEOUT", "3s")
        .env("RUNNER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail, not fall back: {err}");
    assert!(err.contains("cannot reach kafka"), "retries are reported: {err}");
    assert!(err.contains("cannot reach Kafka at 127.0.0.1:1"), "the final error names the broker: {err}");
    assert!(!err.contains("transport: embedded"), "{err}");
    assert!(started.elapsed().as_secs() < 30, "gave up after the configured timeout");
}

#[test]
fn secrets_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::runner()
        .args(["run", common::shipped_pipeline().to_str().unwrap(), "--components", "generator,consumer"])
        .args(["--mongodb", "mongodb://bob:hunter2-secret@127.0.0.1:1/", "--log", "trace", "--events", "10"])
        .env("MONGODB_CONNECT_TIMEOUT", "2s")
        .env("RUNNER_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("mongodb://bob:***@127.0.0.1:1/"), "the uri is shown redacted: {err}");
    assert!(!err.contains("hunter2"), "the password never appears, at any log level");
}

/// Logs into a pipe or file carry no colour codes; `--log-format json` gives one JSON object per
/// line; an invalid `--log` filter is an error, not a silent `info`.
#[test]
fn logs_are_plain_in_a_pipe_json_on_request_and_a_bad_filter_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        common::runner()
            .args(["run", common::shipped_pipeline().to_str().unwrap(), "--components", "generator,consumer", "--events", "300"])
            .args(extra)
            .env("RUNNER_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let text = run(&[]);
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(text.status.success(), "{err}");
    assert!(err.contains("progress") && !err.contains('\u{1b}'), "plain text, no ANSI codes: {err:?}");

    let json = run(&["--log-format", "json"]);
    let err = String::from_utf8_lossy(&json.stderr);
    assert!(json.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"progress\"")), "{err}");

    let bad = run(&["--log", "runner=loud"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid log filter \"runner=loud\""), "{err}");
}
