//! Record formats and sources end to end, with records written by the real clients (Python's
//! fastavro, protoc-generated protobuf classes, confluent-kafka; tests/clients/produce.py) into
//! the real broker, or into a file read by `runner run --source`.

mod common;

use common::{free_port, kafka, service_pipeline_of, ServicePipeline};
use mongodb::bson::Document;
use runner::pipeline::Components;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The Python with the clients (scripts/services.sh installs them in its venv).
fn python() -> PathBuf {
    std::env::var("RUNNER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::repo_root().join(".services/venv/bin/python"))
}

/// `runner generate` of the shipped pipeline: `n` records as JSON lines, seeded.
fn records(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("records.jsonl");
    let out = common::runner()
        .args(["generate", common::shipped_pipeline().to_str().unwrap()])
        .args(["-n", &n.to_string(), "--seed", "11"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// The newest event time of a JSON lines file of records: metrics are read at it, so every
/// reading sees the same window.
fn newest(input: &Path) -> i64 {
    std::fs::read_to_string(input)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            runner::event::parse_time(v["timestamp"].as_str()?, Default::default())
        })
        .max()
        .unwrap()
}

/// The Python classes protoc (Debian's protobuf-compiler) generates from the shipped .proto.
fn protoc_module(dir: &Path) -> PathBuf {
    let out = dir.join("pb");
    std::fs::create_dir_all(&out).unwrap();
    let schemas = common::repo_root().join("schemas");
    let status = Command::new("protoc")
        .arg(format!("--proto_path={}", schemas.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(schemas.join("interaction.proto"))
        .status()
        .expect("protoc (Debian's protobuf-compiler) is installed by scripts/services.sh install");
    assert!(status.success());
    out
}

/// Runs tests/clients/produce.py: `format` records of `input` to `to` (`--kafka ... --topic ...`
/// or `--file ...`).
fn produce(format: &str, input: &Path, module: &Path, to: &[&str], extra: &[&str]) {
    let root = common::repo_root();
    let out = Command::new(python())
        .arg(root.join("tests/clients/produce.py"))
        .args([format, input.to_str().unwrap()])
        .args(to)
        .args([
            "--avsc",
            root.join("schemas/interaction.avsc").to_str().unwrap(),
        ])
        .args(["--proto-module", module.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("the Python clients are installed by scripts/services.sh install");
    assert!(
        out.status.success(),
        "produce.py {format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The raw documents of a pipeline's database, by event id, without the store's own keys.
async fn stored_documents(sp: &ServicePipeline) -> BTreeMap<String, Document> {
    let client = mongodb::Client::with_uri_str(common::mongodb())
        .await
        .unwrap();
    let raw = client
        .database(&sp.database)
        .collection::<Document>(&sp.pipeline.config.mongodb.raw_collection);
    let docs: Vec<Document> =
        futures::TryStreamExt::try_collect(raw.find(mongodb::bson::doc! {}).await.unwrap())
            .await
            .unwrap();
    docs.into_iter()
        .map(|mut d| {
            d.remove("_id");
            (d.get_str("event_id").unwrap().to_string(), d)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_from_real_avro_and_protobuf_clients_store_and_count_as_their_json() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3000;
    let input = records(dir.path(), n);
    let module = protoc_module(dir.path());
    let last_ms = newest(&input);
    let root = common::repo_root();
    let mut seen = Vec::new();
    for (format, file) in [
        ("json", "pipelines/interactions.toml"),
        ("avro", "pipelines/interactions-avro.toml"),
        ("protobuf", "pipelines/interactions-protobuf.toml"),
    ] {
        let sp = service_pipeline_of(&root.join(file), &format!("formats_{format}"));
        common::create_topic(&sp.pipeline.config.kafka).await;
        produce(
            format,
            &input,
            &module,
            &["--kafka", &kafka(), "--topic", &sp.topic],
            &[],
        );
        let summary = common::run_pipeline(
            &sp,
            Components::CONSUMER,
            None,
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
        assert_eq!(
            (summary.stats.stored, summary.stats.rejected),
            (n, 0),
            "{format}: every record a real client wrote is stored: {:?}",
            summary.stats
        );
        let mut docs = stored_documents(&sp).await;
        // Derived fields stored with the records (the JSON pipeline's `category`) are the
        // pipeline's reading of them, not what the client wrote: compared without them.
        for d in sp.pipeline.config.derive.iter().filter(|d| d.store) {
            for doc in docs.values_mut() {
                assert!(doc.remove(&d.name).is_some(), "{format}: {} stored", d.name);
            }
        }
        let metrics = runner::cli::commands::metrics(&sp.pipeline, last_ms)
            .await
            .unwrap();
        let metrics: BTreeMap<String, serde_json::Value> = metrics
            .into_iter()
            .map(|m| (m.name.clone(), serde_json::to_value(&m.value).unwrap()))
            .collect();
        seen.push((format, docs, metrics));
    }
    let (_, json_docs, json_metrics) = &seen[0];
    assert_eq!(json_docs.len() as u64, n);
    let first = json_docs.keys().next().unwrap();
    for (format, docs, metrics) in &seen {
        eprintln!("{format:>8}: {}", docs[first]);
        assert_eq!(
            docs, json_docs,
            "{format}: the stored documents equal those of the same records sent as JSON"
        );
        assert!(metrics.len() >= 4, "{format}: {metrics:?}");
        for (name, value) in metrics {
            assert_eq!(
                Some(value),
                json_metrics.get(name),
                "{format}: metric {name} equals its value over the JSON records"
            );
        }
    }
}

/// A schema registry's REST answers, as Confluent's gives them: `GET /schemas/ids/7` the given
/// schema, `POST /subjects/{subject}/versions` id 21 (the posted schema kept), 404 otherwise.
struct Registry {
    url: String,
    /// Requests answered.
    asked: Arc<AtomicUsize>,
    /// The subjects and schemas posted, in order.
    posted: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

fn registry(schema: String) -> Registry {
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let posted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, kept) = (asked.clone(), posted.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (head, body) = read_request(&mut s);
            count.fetch_add(1, Ordering::SeqCst);
            let subject = head
                .strip_prefix("POST /subjects/")
                .and_then(|rest| rest.split_once("/versions "))
                .map(|(subject, _)| subject.to_string());
            let (status, answer) = match (head.starts_with("GET /schemas/ids/7 "), subject) {
                (true, _) => (
                    "200 OK",
                    serde_json::json!({ "schema": schema }).to_string(),
                ),
                (false, Some(subject)) => {
                    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let text = request["schema"].as_str().unwrap().to_string();
                    kept.lock().unwrap().push((subject, text));
                    ("200 OK", r#"{"id":21}"#.to_string())
                }
                (false, None) => (
                    "404 Not Found",
                    r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                ),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Registry {
        url: format!("http://127.0.0.1:{port}"),
        asked,
        posted,
    }
}

/// An HTTP request's head (request line and headers) and its body, read to its content-length.
fn read_request(s: &mut std::net::TcpStream) -> (String, String) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length || n == 0 {
                return (head.to_string(), body.to_string());
            }
        } else if n == 0 {
            return (text, String::new());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_of_avro_records_with_a_registry_schema_id_is_read_asking_the_registry_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 500;
    let input = records(dir.path(), n);
    let module = protoc_module(dir.path());
    let root = common::repo_root();
    let schema = std::fs::read_to_string(root.join("schemas/interaction.avsc")).unwrap();
    let registry = registry(schema);
    // fastavro's records framed with id 7, which the pipeline file does not list, then two
    // framed with id 9, which the registry does not know.
    let known = dir.path().join("known.bin");
    produce(
        "avro",
        &input,
        &module,
        &["--file", known.to_str().unwrap()],
        &["--schema-id", "7"],
    );
    let two = dir.path().join("two.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .take(2)
        .map(|l| l.replace("\"event_id\":\"", "\"event_id\":\"unknown-"))
        .collect();
    std::fs::write(&two, lines.join("\n")).unwrap();
    let unknown = dir.path().join("unknown.bin");
    produce(
        "avro",
        &two,
        &module,
        &["--file", unknown.to_str().unwrap()],
        &["--schema-id", "9"],
    );
    let both = dir.path().join("both.bin");
    let mut bytes = std::fs::read(&known).unwrap();
    bytes.extend(std::fs::read(&unknown).unwrap());
    std::fs::write(&both, bytes).unwrap();

    let data = dir.path().join("data");
    let mut pipeline = common::load_pipeline_file(
        &root.join("pipelines/interactions-avro.toml"),
        &[("RUNNER_DATA_DIR", data.to_str().unwrap())],
    );
    let url = registry.url.clone();
    pipeline
        .add_override(move |c| {
            c.event.schemas.clear();
            c.event.registry = Some(url.clone());
            c.source.file = Some(both.clone());
        })
        .unwrap();
    let options = runner::pipeline::RunOptions {
        components: Components::CONSUMER,
        idle_exit: Some(std::time::Duration::from_secs(1)),
        ..Default::default()
    };
    let summary = runner::pipeline::run(&pipeline, options, Default::default())
        .await
        .unwrap();
    assert_eq!(summary.stats.stored, n, "{:?}", summary.stats);
    assert_eq!(
        registry.asked.load(Ordering::SeqCst),
        2,
        "id 7 asked once for {n} records, id 9 once for two"
    );
    let store = runner::pipeline::open_store(&pipeline.config)
        .await
        .unwrap()
        .store;
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d.reason.as_str(), "not_avro");
        assert!(
            d.detail.contains("schema id 9 is not in [event] schemas")
                && d.detail.contains("404")
                && d.detail.contains("first bytes: 0000000009"),
            "{}",
            d.detail
        );
    }
}

/// The final results of the Avro pipeline go to its results topic as Confluent-framed Avro of
/// `schemas/result.avsc`, registered at the registry under `<topic>-value`; the real clients
/// (confluent-kafka, fastavro; tests/clients/read_results.py) read every stored result from it,
/// each with the registered id and the stored fields and value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn avro_results_on_the_topic_read_by_fastavro_equal_the_stored_results() {
    use tokio_util::sync::CancellationToken;
    let root = common::repo_root();
    let registry = registry(String::new());
    let mut sp = service_pipeline_of(
        &root.join("pipelines/interactions-avro.toml"),
        "avro_results",
    );
    // Short windows, so a few seconds of stream close several of them.
    for m in &mut sp.pipeline.config.metrics {
        (m.window, m.slide, m.lateness) = (
            std::time::Duration::from_secs(4),
            Some(std::time::Duration::from_secs(2)),
            std::time::Duration::from_secs(1),
        );
    }
    sp.pipeline.config.generator.rate = 2_000.0;
    let results_topic = format!("{}_results", sp.topic);
    sp.pipeline.config.results.topic = Some(results_topic.clone());
    sp.pipeline.config.event.registry = Some(registry.url.clone());
    common::create_topic(&sp.pipeline.config.kafka).await;
    let stop = CancellationToken::new();
    let consumer = common::spawn_consumer(&sp.pipeline, &stop);
    let events = 12_000;
    common::generate(&sp.pipeline, events).await;
    let store = runner::pipeline::open_store(&sp.pipeline.config)
        .await
        .unwrap()
        .store;
    let t = std::time::Instant::now();
    while store.count_events().await.unwrap() < events {
        assert!(
            t.elapsed().as_secs() < 60,
            "the consumer stores every event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    stop.cancel();
    consumer.await.unwrap();

    let posted = registry.posted.lock().unwrap().clone();
    assert_eq!(
        posted,
        vec![(
            format!("{results_topic}-value"),
            runner::codec::RESULT_SCHEMA.to_string()
        )],
        "the results schema is registered once, under the topic's value subject"
    );
    let avsc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(avsc.path(), &posted[0].1).unwrap();
    let out = Command::new(python())
        .arg(root.join("tests/clients/read_results.py"))
        .args(["--kafka", &kafka(), "--topic", &results_topic])
        .args(["--avsc", avsc.path().to_str().unwrap(), "--idle", "5"])
        .output()
        .expect("the Python clients are installed by scripts/services.sh install");
    assert!(
        out.status.success(),
        "read_results.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: BTreeMap<String, serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["key"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let mut checked = 0;
    for m in &sp.pipeline.config.metrics {
        for row in store.load_results(&m.name, 0, i64::MAX).await.unwrap() {
            let key = runner::aggregate::results::TopicResults::key(&row);
            let message = read
                .get(&key)
                .unwrap_or_else(|| panic!("{key}: a stored result missing from the topic"));
            assert_eq!(
                message,
                &serde_json::json!({
                    "key": key,
                    "schema_id": 21,
                    "metric": row.metric,
                    "window_start": row.window_start,
                    "window_end": row.window_end,
                    "value": row.value,
                }),
                "fastavro reads the stored result"
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        read.len(),
        "every message on the topic is a stored result"
    );
    assert!(
        checked >= 2 * sp.pipeline.config.metrics.len(),
        "several windows of every metric closed: {checked}"
    );
    let example = read
        .values()
        .find(|v| v["value"].as_object().is_some_and(|o| !o.is_empty()));
    eprintln!("{checked} results read by fastavro; e.g. {example:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_read_twice_stores_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2000;
    let input = records(dir.path(), n);
    let data = dir.path().join("data");
    let pipeline = common::shipped_pipeline();
    let run = || {
        let out = common::runner()
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--components",
                "consumer",
            ])
            .args(["--source", input.to_str().unwrap()])
            .env("RUNNER_DATA_DIR", &data)
            .env("RUNNER_LOG", "info")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let loaded = common::load_pipeline(&[("RUNNER_DATA_DIR", data.to_str().unwrap())]);
    let at = newest(&input);
    let metrics = || async {
        let values = runner::cli::commands::metrics(&loaded, at).await.unwrap();
        serde_json::to_string(&values).unwrap()
    };
    let first = run();
    assert!(first.contains(&format!("stored={n} ")), "{first}");
    let counted = metrics().await;
    let second = run();
    assert!(
        second.contains(&format!("stored=0 duplicates={n} ")),
        "{second}"
    );
    assert!(counted.contains("\"count\""), "{counted}");
    assert_eq!(
        metrics().await,
        counted,
        "the metrics count each record once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_from_a_topic_of_confluent_framed_avro_says_what_it_saw_and_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let input = records(dir.path(), 50);
    let module = protoc_module(dir.path());
    let topic = common::unique("formats_init");
    let config = runner::transport::kafka::KafkaConfig::reader_of(&kafka(), &topic);
    common::create_topic(&config).await;
    produce(
        "avro",
        &input,
        &module,
        &["--kafka", &kafka(), "--topic", &topic],
        &["--schema-id", "3"],
    );
    let out = common::runner()
        .args([
            "init",
            "shop",
            "--from-topic",
            &topic,
            "--kafka",
            &kafka(),
            "--sample",
            "50",
            "--dir",
        ])
        .arg(dir.path().join("init"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("carries Confluent-framed records")
            && text.contains("schema ids seen: 3")
            && text.contains("format = \"avro\""),
        "{text}"
    );
}

#[test]
fn a_declared_field_the_avro_schema_lacks_or_types_otherwise_is_a_load_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let schema = common::repo_root().join("schemas/interaction.avsc");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"p\"\n\n[event]\nid = \"event_id\"\ntime = \"timestamp\"\nformat = \"avro\"\nschema = {:?}\n\n[event.fields]\nprice = \"int\"\nbasket = \"float?\"\n",
            schema.display()
        ),
    )
    .unwrap();
    let out = common::runner()
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "{text}");
    let shown = file.display();
    assert!(
        text.contains(&format!(
            "{shown}:10: event.fields.price: declared int, but {} has it as float",
            schema.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{shown}:11: event.fields.basket: declared, but {} has no field \"basket\"",
            schema.display()
        )),
        "{text}"
    );
}
