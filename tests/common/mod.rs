//! Helpers shared by the end-to-end tests: the real services' addresses, unique names per test,
//! and the shipped pipeline file loaded with test-specific settings.
#![allow(dead_code)]

pub mod recompute;
pub mod services;

use runner::config::Pipeline;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The Kafka-protocol broker the tests use (started by scripts/services.sh).
pub fn kafka() -> String {
    std::env::var("RUNNER_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The MongoDB-wire server the tests use (started by scripts/services.sh).
pub fn mongodb() -> String {
    std::env::var("RUNNER_TEST_MONGODB").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "{prefix}_{}_{stamp}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `runner` binary with an empty environment, so only what a test sets reaches it.
pub fn runner() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.env_clear();
    cmd
}

/// `runner run FILE --components COMPONENTS` on the test services, with `sp`'s topic, group and
/// database, logging at info; the caller adds what else it needs and spawns it.
pub fn runner_on_services(
    sp: &ServicePipeline,
    file: &Path,
    components: &str,
) -> std::process::Command {
    let mut cmd = runner();
    cmd.args(["run", file.to_str().unwrap(), "--components", components])
        .env("KAFKA_BOOTSTRAP_SERVERS", kafka())
        .env("MONGODB_CONNECTION_STRING", mongodb())
        .env("KAFKA_TOPIC", &sp.topic)
        .env("KAFKA_CONSUMER_GROUP", &sp.group)
        .env("MONGODB_DATABASE", &sp.database)
        .env("RUNNER_LOG", "info");
    cmd
}

/// The shipped pipeline file.
pub fn shipped_pipeline() -> PathBuf {
    repo_root().join("pipelines/interactions.toml")
}

/// Loads the shipped pipeline with exactly these environment variables (and no others).
pub fn load_pipeline(env: &[(&str, &str)]) -> Pipeline {
    load_pipeline_file(&shipped_pipeline(), env)
}

/// Loads a pipeline file with exactly these environment variables (and no others).
pub fn load_pipeline_file(path: &Path, env: &[(&str, &str)]) -> Pipeline {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Pipeline::load_with_env(path, move |name| env.get(name).cloned()).expect("the pipeline loads")
}

/// The shipped pipeline on the real broker and server, with a fresh topic, group and database.
pub struct ServicePipeline {
    pub pipeline: Pipeline,
    pub topic: String,
    pub group: String,
    pub database: String,
}

pub fn service_pipeline(name: &str) -> ServicePipeline {
    service_pipeline_of(&shipped_pipeline(), name)
}

/// [`service_pipeline`] for another pipeline file that reads the same environment variables.
pub fn service_pipeline_of(file: &Path, name: &str) -> ServicePipeline {
    let topic = unique(name);
    let group = format!("{topic}_group");
    let database = unique(name);
    let kafka = kafka();
    let mongodb = mongodb();
    let pipeline = load_pipeline_file(
        file,
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", &kafka),
            ("MONGODB_CONNECTION_STRING", &mongodb),
            ("KAFKA_TOPIC", &topic),
            ("KAFKA_CONSUMER_GROUP", &group),
            ("MONGODB_DATABASE", &database),
            ("DEFAULT_GENERATION_RATE", "0"),
            // A missing service fails the test quickly rather than after the shipped 60 s.
            ("KAFKA_CONNECT_TIMEOUT", "15s"),
            ("MONGODB_CONNECT_TIMEOUT", "15s"),
        ],
    );
    ServicePipeline {
        pipeline,
        topic,
        group,
        database,
    }
}

/// The shipped pipeline on the embedded default, storing under `data_dir`.
pub fn embedded_pipeline(data_dir: &Path) -> Pipeline {
    load_pipeline(&[
        ("RUNNER_DATA_DIR", data_dir.to_str().unwrap()),
        ("DEFAULT_GENERATION_RATE", "0"),
    ])
}

/// Runs the pipeline in this process until the generator has made `events` (if it runs) and
/// nothing arrived for 3 s, or `stop` fires; a run past 120 s is stopped so a hang fails the test.
pub async fn run_pipeline(
    sp: &ServicePipeline,
    components: runner::pipeline::Components,
    events: Option<u64>,
    stop: tokio_util::sync::CancellationToken,
) -> runner::pipeline::RunSummary {
    let options = runner::pipeline::RunOptions {
        components,
        max_events: events,
        idle_exit: Some(std::time::Duration::from_secs(3)),
        ..Default::default()
    };
    let guard = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
        guard.cancel();
    });
    runner::pipeline::run(&sp.pipeline, options, stop)
        .await
        .expect("pipeline run")
}

/// Starts a consumer-only run of `p` in the background, until `stop`.
pub fn spawn_consumer(
    p: &Pipeline,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<runner::pipeline::RunSummary> {
    let (p, stop) = (p.clone(), stop.clone());
    tokio::spawn(async move {
        let options = runner::pipeline::RunOptions {
            components: runner::pipeline::Components::CONSUMER,
            ..Default::default()
        };
        runner::pipeline::run(&p, options, stop)
            .await
            .expect("consumer run")
    })
}

/// Runs only the generator of `p` until it has written `events` events to the topic.
pub async fn generate(p: &Pipeline, events: u64) {
    let options = runner::pipeline::RunOptions {
        components: runner::pipeline::Components::GENERATOR,
        max_events: Some(events),
        ..Default::default()
    };
    let generated = runner::pipeline::run(p, options, tokio_util::sync::CancellationToken::new())
        .await
        .expect("generator run");
    assert_eq!(generated.stats.generated, events);
}

/// Sets the group's committed offsets back to the start of every partition, as an operator
/// resetting offsets would.
pub fn reset_group_offsets(sp: &ServicePipeline) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", &sp.group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..sp.pipeline.config.kafka.partitions {
        tpl.add_partition_offset(&sp.topic, p, Offset::Offset(0))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    let committed = c
        .committed_offsets(tpl.clone(), std::time::Duration::from_secs(10))
        .unwrap();
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(0),
            "the group's offset of partition {} was reset",
            e.partition()
        );
    }
}

/// Replaces the pipeline's `[alerting]` and `[[alert]]` sections with those in `toml_text`.
pub fn set_alerts(p: &mut Pipeline, toml_text: &str) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sections {
        #[serde(default)]
        alerting: runner::alert::AlertingConfig,
        #[serde(default)]
        alert: Vec<runner::alert::AlertConfig>,
    }
    let s: Sections = toml::from_str(toml_text).expect("test alert sections parse");
    p.config.alerting = s.alerting;
    p.config.alerts = s.alert;
    // As loading the file does.
    let listen = p.config.dashboard.listen.clone();
    p.config.alerting.link_dashboard(&listen);
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; returns (status, body).
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    status_and_body(&get_raw(port, path, headers))
}

/// A whole HTTP response's status code and body.
fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The whole response, headers included.
pub fn get_raw(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Waits until something accepts connections on `port` (at most 20 s).
pub async fn wait_for_port(port: u16) {
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "nothing listens on port {port}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Creates the topic `config` names on the test broker (brokers may not auto-create topics).
pub async fn create_topic(config: &runner::transport::kafka::KafkaConfig) {
    let admin = runner::transport::kafka::connect(config).await.unwrap();
    runner::transport::kafka::ensure_topic(&admin, config)
        .await
        .unwrap();
}

/// Messages in a topic: the sum of its partitions' high watermarks.
pub fn topic_messages(bootstrap: &str, topic: &str, partitions: i32) -> u64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, std::time::Duration::from_secs(10))
                .unwrap()
                .1 as u64
        })
        .sum()
}

/// Raw events in the store: (rows, distinct event ids).
pub async fn stored_ids(store: &dyn runner::store::Store) -> (usize, usize) {
    let events = store.all_events().await.unwrap();
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id()).collect();
    (events.len(), ids.len())
}

/// Copies the shipped pipeline, its scripts and lookup tables into `dir` (same layout, so
/// relative paths hold).
pub fn copy_pipeline(dir: &Path) -> PathBuf {
    let root = repo_root();
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    for f in ["pipelines/interactions.toml", "scripts/generator.rhai"] {
        std::fs::copy(root.join(f), dir.join(f)).unwrap();
    }
    for folder in [
        "scripts/metrics",
        "scripts/derive",
        "scripts/alerts",
        "lookups",
    ] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        for e in std::fs::read_dir(root.join(folder)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(folder).join(e.file_name())).unwrap();
        }
    }
    dir.join("pipelines/interactions.toml")
}

/// A record's fields by name, for checks written against one pipeline's fields.
pub trait Fields {
    /// A text field ("" when missing or not text).
    fn s(&self, name: &str) -> &str;
    /// A numeric field.
    fn n(&self, name: &str) -> Option<f64>;
}

impl Fields for runner::event::Record {
    fn s(&self, name: &str) -> &str {
        match self.field(name) {
            Some(runner::event::Value::Text(t)) => t,
            _ => "",
        }
    }
    fn n(&self, name: &str) -> Option<f64> {
        self.field(name).and_then(|v| v.as_f64())
    }
}

/// The shipped interactions pipeline's `[event]` section and its `[event.fields]`, as text to
/// put in a test's own pipeline file.
pub fn shipped_event_section() -> String {
    let text = std::fs::read_to_string(shipped_pipeline()).unwrap();
    let start = text.find("[event]").unwrap();
    let rest = &text[start..];
    let end = rest.find("\n[kafka]").unwrap();
    format!("{}\n", &rest[..end])
}

/// A headless Chromium session through chromedriver on `driver_port`.
pub async fn browser(
    driver_port: u16,
    profile: &std::path::Path,
    extra: &[&str],
) -> fantoccini::Client {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1300",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    fantoccini::ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("connect to chromedriver")
}

/// A plain HTTP/1.0 POST of a JSON body; returns (status, body).
pub fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    status_and_body(&String::from_utf8_lossy(&out))
}

/// chromedriver (Debian's chromium-driver) on a free port, and the port once it answers.
pub async fn chromedriver() -> (std::process::Child, u16) {
    let port = free_port();
    let driver = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver) must be installed");
    wait_for_port(port).await;
    (driver, port)
}
