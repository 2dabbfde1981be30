//! Records of any shape: the shipped sensors pipeline end to end on the real services, the
//! schema's checks sending bad records to the dead letters on both transports, and undeclared
//! fields kept or rejected as `[event] extra` says.

mod common;

use common::{Fields, ServicePipeline};
use mongodb::bson::{Bson, Document};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use runner::dead_letter::Reason;
use runner::event::{Extra, Record};
use runner::pipeline::{self, Components, RunOptions};
use runner::store::{self, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn sensors_file() -> PathBuf {
    common::repo_root().join("pipelines/sensors.toml")
}

async fn store_of(p: &runner::config::Pipeline) -> Arc<dyn Store> {
    store::open(
        &p.config.mongodb,
        &p.config.embedded,
        &p.config.retention,
        &p.schema(),
    )
    .await
    .unwrap()
    .store
}

/// The sensors metrics recomputed from stored readings in `[start, end)`.
fn recompute(readings: &[Record], start: i64, end: i64) -> BTreeMap<String, Value> {
    let window: Vec<&Record> = readings
        .iter()
        .filter(|r| (start..end).contains(&r.time_ms()))
        .collect();
    let mut temps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &window {
        temps
            .entry(r.s("site"))
            .or_default()
            .push(r.n("temperature").unwrap());
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let humidity: Vec<f64> = window.iter().filter_map(|r| r.n("humidity")).collect();
    let low: HashSet<&str> = window
        .iter()
        .filter(|r| r.n("battery").is_some_and(|b| b < 20.0))
        .map(|r| r.s("device_id"))
        .collect();
    BTreeMap::from([
        (
            "avg_temperature_by_site".into(),
            json!(temps
                .iter()
                .map(|(s, v)| (s.to_string(), avg(v)))
                .collect::<BTreeMap<_, _>>()),
        ),
        (
            "max_temperature_by_site".into(),
            json!(temps
                .iter()
                .map(|(s, v)| (s.to_string(), v.iter().cloned().fold(f64::MIN, f64::max)))
                .collect::<BTreeMap<_, _>>()),
        ),
        (
            "readings_by_site".into(),
            json!(temps
                .iter()
                .map(|(s, v)| (s.to_string(), v.len()))
                .collect::<BTreeMap<_, _>>()),
        ),
        (
            "active_devices".into(),
            json!(window
                .iter()
                .map(|r| r.s("device_id"))
                .collect::<HashSet<_>>()
                .len()),
        ),
        (
            // Nearest rank: the smallest reading with 95 % of the site's at or below it.
            "temperature_p95_by_site".into(),
            json!(temps
                .iter()
                .map(|(s, v)| {
                    let mut v = v.clone();
                    v.sort_by(f64::total_cmp);
                    (
                        s.to_string(),
                        v[runner::aggregate::nearest_rank(0.95, v.len())],
                    )
                })
                .collect::<BTreeMap<_, _>>()),
        ),
        ("avg_humidity".into(), json!(avg(&humidity))),
        ("low_battery_devices".into(), json!(low.len())),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_pipeline_end_to_end() {
    let sp = common::service_pipeline_of(&sensors_file(), "sensors");
    let n = 5_000;
    let summary =
        common::run_pipeline(&sp, Components::ALL, Some(n), CancellationToken::new()).await;
    assert_eq!(
        (
            summary.stats.generated,
            summary.stats.stored,
            summary.stats.rejected
        ),
        (n, n, 0),
        "{:?}",
        summary.stats
    );

    // The documents carry the declared BSON types.
    let client = mongodb::Client::with_uri_str(common::mongodb())
        .await
        .unwrap();
    let raw = client
        .database(&sp.database)
        .collection::<Document>("readings");
    let docs: Vec<Document> = futures::TryStreamExt::try_collect(
        raw.find(mongodb::bson::doc! {}).limit(200).await.unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(docs.len(), 200);
    for d in &docs {
        assert!(matches!(d.get("reading_id"), Some(Bson::String(_))), "{d}");
        assert!(matches!(d.get("device_id"), Some(Bson::String(_))), "{d}");
        assert!(matches!(d.get("temperature"), Some(Bson::Double(_))), "{d}");
        assert!(matches!(d.get("battery"), Some(Bson::Int64(_))), "{d}");
        assert!(matches!(d.get("ts"), Some(Bson::DateTime(_))), "{d}");
        match d.get_str("site").unwrap() {
            "roof" => assert!(
                !d.contains_key("humidity"),
                "humidity only where measured: {d}"
            ),
            _ => assert!(matches!(d.get("humidity"), Some(Bson::Double(_))), "{d}"),
        }
    }
    let indexes = raw.list_index_names().await.unwrap();
    for wanted in ["reading_id_unique", "ts_ttl", "device_id_1", "site_1"] {
        assert!(
            indexes.contains(&wanted.to_string()),
            "{wanted} in {indexes:?}"
        );
    }

    // Its metrics equal a recomputation from the stored readings.
    let store = store_of(&sp.pipeline).await;
    let readings = store.all_events().await.unwrap();
    assert_eq!(readings.len() as u64, n);
    let at = readings.iter().map(Record::time_ms).max().unwrap();
    let values = runner::cli::commands::metrics(&sp.pipeline, at)
        .await
        .unwrap();
    let expected = recompute(&readings, values[0].window_start, values[0].window_end);
    assert_eq!(values.len(), expected.len());
    // A quantile is within its sketch's 1 % of the exact one, per site.
    let within_a_percent = |read: &Value, exact: &Value| {
        let (Some(read), Some(exact)) = (read.as_object(), exact.as_object()) else {
            return false;
        };
        read.len() == exact.len()
            && exact.iter().all(|(site, e)| {
                let (r, e) = (read[site].as_f64().unwrap(), e.as_f64().unwrap());
                (r - e).abs() <= 0.01 * e.abs()
            })
    };
    for v in &values {
        let close = match v.name.as_str() {
            "temperature_p95_by_site" => within_a_percent(&v.value, &expected[&v.name]),
            _ => runner::cli::testing::same_value(&v.value, &expected[&v.name]),
        };
        assert!(
            close,
            "{}: read {} but recomputation gives {}",
            v.name, v.value, expected[&v.name]
        );
    }
    let roof = values
        .iter()
        .find(|v| v.name == "avg_temperature_by_site")
        .unwrap()
        .value["roof"]
        .as_f64()
        .unwrap();
    assert!(
        roof > 27.0,
        "the roof runs hot (on_event adds 8 °C): {roof}"
    );
    let mut table = Vec::new();
    runner::cli::commands::print_metrics(&values, &mut table).unwrap();
    println!(
        "runner metrics pipelines/sensors.toml:\n{}",
        String::from_utf8_lossy(&table)
    );
    client.database(&sp.database).drop().await.unwrap();
}

/// One bad reading of each kind, and the field its dead letter must name.
const BAD_READINGS: [(&str, &str, &str, Reason); 4] = [
    (
        "missing",
        r#"{"device_id":"d1","temperature":20.5,"ts":"NOW"}"#,
        "\"site\" is missing",
        Reason::InvalidEvent,
    ),
    (
        "wrong_type",
        r#"{"device_id":"d1","site":"lab","temperature":"hot","ts":"NOW"}"#,
        "\"temperature\" must be float",
        Reason::InvalidEvent,
    ),
    (
        "outside_values",
        r#"{"device_id":"d1","site":"moon","temperature":20.5,"ts":"NOW"}"#,
        "\"site\": \"moon\" is not one of",
        Reason::FailedValidation,
    ),
    (
        "outside_range",
        r#"{"device_id":"d1","site":"lab","temperature":150.0,"ts":"NOW"}"#,
        "\"temperature\": 150 is outside [-50, 100]",
        Reason::FailedValidation,
    ),
];

fn produce(sp: &ServicePipeline, payloads: &[String]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .create()
        .unwrap();
    for (i, p) in payloads.iter().enumerate() {
        producer
            .send(BaseRecord::to(&sp.topic).key(&format!("k{i}")).payload(p))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_checks_send_to_dead_letters() {
    // On Kafka: messages from another producer.
    let sp = common::service_pipeline_of(&sensors_file(), "schema_checks");
    common::create_topic(&sp.pipeline.config.kafka).await;
    let now = chrono::Utc::now().to_rfc3339();
    let good: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"device_id":"d{i}","site":"lab","temperature":20.5,"ts":"{now}"}}"#))
        .collect();
    let bad: Vec<String> = BAD_READINGS
        .iter()
        .map(|b| b.1.replace("NOW", &now))
        .collect();
    produce(&sp, &[good.clone(), bad].concat());
    let summary =
        common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()).await;
    assert_eq!(
        (summary.stats.stored, summary.stats.rejected),
        (20, 4),
        "{:?}",
        summary.stats
    );
    let store = store_of(&sp.pipeline).await;
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 4);
    for (case, _, field, reason) in BAD_READINGS {
        let d = letters
            .iter()
            .find(|d| d.detail.contains(field))
            .unwrap_or_else(|| panic!("{case}: no dead letter naming {field} in {letters:#?}"));
        assert_eq!(d.reason, reason, "{case}: {d:?}");
        assert!(
            d.id.starts_with(&sp.topic) && d.offset >= 0,
            "{case}: where it came from: {d:?}"
        );
    }

    // On the embedded queue: the generator's hook makes the same mistakes.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("gen.rhai");
    std::fs::write(
        &script,
        r#"fn on_event(e) {
    switch e.fault {
        "missing" => { e.remove("site"); }
        "wrong_type" => { e.temperature = "hot"; }
        "outside_values" => { e.site = "moon"; }
        "outside_range" => { e.temperature = 150.0; }
    }
    e
}
#{ device_id: zipf("d", 10, 1.0), site: "lab", temperature: 20.5, fault: weighted(#{ ok: 0.6, missing: 0.1, wrong_type: 0.1, outside_values: 0.1, outside_range: 0.1 }) }"#,
    )
    .unwrap();
    let mut p = common::load_pipeline_file(
        &sensors_file(),
        &[
            ("RUNNER_DATA_DIR", dir.path().to_str().unwrap()),
            ("DEFAULT_GENERATION_RATE", "0"),
        ],
    );
    p.config.generator.script = Some(script);
    let n = 2_000;
    let summary = pipeline::run(
        &p,
        RunOptions {
            max_events: Some(n),
            ..RunOptions::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let s = summary.stats;
    assert!(s.rejected > 200 && s.stored + s.rejected == n, "{s:?}");
    let store = store_of(&p).await;
    assert_eq!(store.count_dead_letters().await.unwrap(), s.rejected);
    let letters = store.dead_letters(n as usize).await.unwrap();
    for (case, _, field, reason) in BAD_READINGS {
        let of_case: Vec<_> = letters
            .iter()
            .filter(|d| d.payload.contains(&format!("\"fault\":\"{case}\"")))
            .collect();
        assert!(!of_case.is_empty(), "{case}: no dead letter");
        assert!(
            of_case
                .iter()
                .all(|d| d.detail.contains(field) && d.reason == reason),
            "{case}: {:?}",
            of_case[0]
        );
    }
    assert!(
        store
            .all_events()
            .await
            .unwrap()
            .iter()
            .all(|r| r.extra()["fault"] == "ok"),
        "only good readings are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_fields_kept_or_rejected() {
    let now = chrono::Utc::now().to_rfc3339();
    let payload = format!(
        r#"{{"device_id":"d1","site":"lab","temperature":20.5,"ts":"{now}","firmware":{{"version":"1.2","build":7}}}}"#
    );
    for extra in [Extra::Keep, Extra::Reject] {
        let mut sp = common::service_pipeline_of(&sensors_file(), "undeclared");
        sp.pipeline.config.event.extra = extra;
        common::create_topic(&sp.pipeline.config.kafka).await;
        produce(&sp, std::slice::from_ref(&payload));
        let summary =
            common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()).await;
        let store = store_of(&sp.pipeline).await;
        let client = mongodb::Client::with_uri_str(common::mongodb())
            .await
            .unwrap();
        let raw = client
            .database(&sp.database)
            .collection::<Document>("readings");
        match extra {
            Extra::Keep => {
                assert_eq!(summary.stats.stored, 1);
                let doc = raw.find_one(mongodb::bson::doc! {}).await.unwrap().unwrap();
                assert_eq!(
                    doc.get_document("firmware")
                        .unwrap()
                        .get_str("version")
                        .unwrap(),
                    "1.2",
                    "{doc}"
                );
                let back = store.all_events().await.unwrap();
                assert_eq!(
                    back[0].extra()["firmware"],
                    json!({"version": "1.2", "build": 7})
                );
            }
            Extra::Reject => {
                assert_eq!((summary.stats.stored, summary.stats.rejected), (0, 1));
                let d = &store.dead_letters(1).await.unwrap()[0];
                assert!(
                    d.reason == Reason::InvalidEvent
                        && d.detail.contains("\"firmware\" is not declared"),
                    "{d:?}"
                );
            }
        }
        client.database(&sp.database).drop().await.unwrap();
    }
}

/// `runner init --from-topic` learns from the messages on a topic as `--from-file` does from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_from_topic_writes_a_pipeline_that_validates() {
    let sp = common::service_pipeline_of(&sensors_file(), "init_topic");
    common::create_topic(&sp.pipeline.config.kafka).await;
    let mut sample = Vec::new();
    runner::cli::commands::generate(&sp.pipeline, 200, false, &mut sample).unwrap();
    let lines: Vec<String> = String::from_utf8(sample)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    produce(&sp, &lines);
    let dir = tempfile::tempdir().unwrap();
    let out = common::runner()
        .args([
            "init",
            "readings",
            "--from-topic",
            &sp.topic,
            "--kafka",
            &common::kafka(),
            "--sample",
            "150",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("learned from 150 records"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("id = \"reading_id\", time = \"ts\", key = \"device_id\""),
        "{text}"
    );
    let validate = common::runner()
        .arg("validate")
        .arg(dir.path().join("readings.toml"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&validate.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
}
