//! A short run of `runner bench` against the real services: every figure is produced.

mod common;

#[test]
fn bench_smoke_run_prints_every_figure() {
    let out = common::runner()
        .args(["bench", common::shipped_pipeline().to_str().unwrap(), "--events", "3000", "--runs", "1", "--json"])
        .args(["--kafka", &common::kafka(), "--mongodb", &common::mongodb(), "--log", "warn"])
        .env("KAFKA_CONNECT_TIMEOUT", "15s")
        .env("MONGODB_CONNECT_TIMEOUT", "15s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = figures.iter().map(|f| f["name"].as_str().unwrap()).collect();
    let shipped = common::load_pipeline(&[]).config.metrics.len();
    let aggregate = format!("aggregate: {shipped} shipped metrics");
    for wanted in ["generator: plain Rust", aggregate.as_str(), "kafka produce: raw", "kafka consume: raw", "mongodb insert_many", "end to end: kafka", "peak RSS", "end to end, embedded"] {
        assert!(names.iter().any(|n| n.starts_with(wanted)), "missing {wanted:?} in {names:?}");
    }
    for f in &figures {
        assert!(f["median"].as_f64().unwrap() > 0.0, "{f}");
    }
}
