//! A short run of `runner bench` against the real services: every figure is produced, and the
//! bench leaves no database behind.

mod common;

#[test]
fn bench_smoke_run_prints_every_figure() {
    let out = common::runner()
        .args([
            "bench",
            common::shipped_pipeline().to_str().unwrap(),
            "--events",
            "3000",
            "--runs",
            "1",
            "--json",
        ])
        .args([
            "--kafka",
            &common::kafka(),
            "--mongodb",
            &common::mongodb(),
            "--log",
            "warn",
        ])
        .env("KAFKA_CONNECT_TIMEOUT", "15s")
        .env("MONGODB_CONNECT_TIMEOUT", "15s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap().trim())
        .collect();
    let shipped = common::load_pipeline(&[]).config.metrics.len();
    let aggregate = format!("aggregate: {shipped} shipped metrics");
    let wanted = [
        "generator: plain Rust",
        aggregate.as_str(),
        "kafka produce: raw",
        "kafka consume: raw",
        "end to end, store not the limit",
        "consuming path, writes discarded, 1 worker thread",
        "consuming path, writes discarded, 2 worker threads",
        "mongodb insert_many",
        "end to end: kafka -> decode -> MongoDB",
        "mongodb.insert_streams = 1: end to end",
        "mongodb.insert_streams = 4: end to end",
        "peak RSS",
        "latency p99",
        "(of which event -> read by the consumer, p99)",
        "end to end, embedded: generate",
        "end to end, embedded, queue filled first",
        "consuming path cpu, store discarded",
        "nexmark q5-like cpu",
        "runner cpu of it (fetch + decode",
        "runner cpu of it (MongoDB",
        "events/s per core at that cpu",
        "active keys in the last 60 s",
        "peak RSS of a runner process holding them",
        "bytes sent to MongoDB per event: raw records",
        "bytes sent to MongoDB per event: metric partials",
        "the consumer alone, the same records read from a file",
        "the consumer alone, per 100,000 active keys",
    ];
    for wanted in wanted {
        assert!(
            names.iter().any(|n| n.starts_with(wanted)),
            "missing {wanted:?} in {names:?}"
        );
    }
    for f in &figures {
        assert!(f["median"].as_f64().unwrap() > 0.0, "{f}");
        // The runner's CPU per event: named "cpu", in µs per event (#21's judging form).
        if f["name"].as_str().unwrap().contains(" cpu")
            && !f["name"].as_str().unwrap().contains("per core")
        {
            assert_eq!(f["unit"], "us/event", "{f}");
        }
    }
    // The memory figure is meant for 100,000+ keys (users) in one window; the run must really hold them.
    let active = figures
        .iter()
        .find(|f| f["name"].as_str().unwrap().starts_with("active keys"))
        .unwrap();
    assert!(active["median"].as_f64().unwrap() > 100_000.0, "{active}");

    let leftover_databases: Vec<String> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = mongodb::Client::with_uri_str(common::mongodb())
            .await
            .unwrap();
        client
            .list_database_names()
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.starts_with("bench_"))
            .collect()
    });
    assert!(
        leftover_databases.is_empty(),
        "the bench left databases behind: {leftover_databases:?}"
    );
}
