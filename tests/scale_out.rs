//! Several runner processes on one pipeline (Tansu + SecantusDB): one alert evaluator among the
//! replicas, with takeover when it dies.

mod common;

use axum::extract::State;
use axum::http::StatusCode;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook receiver keeping every notification it was sent.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<serde_json::Value>>,
}

impl Receiver {
    async fn start() -> (Arc<Receiver>, String) {
        let r = Arc::new(Receiver::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    /// The statuses received for `alert`, in order.
    fn statuses(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|n| n["status"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

async fn hook(State(r): State<Arc<Receiver>>, body: String) -> StatusCode {
    r.got
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap_or_default());
    StatusCode::OK
}

/// The shipped pipeline and scripts copied into `dir`, with the alerting sections replaced by
/// one rule whose condition is `condition`, sent to the webhook at `url`.
fn write_pipeline(file: &Path, url: &str, condition: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let head = &text[..text.find("\n[alerting]").unwrap()];
    let alerting = format!(
        "\n[alerting]\ninterval = \"500ms\"\n[alerting.channels.hook]\ntype = \"webhook\"\nurl = \"{url}\"\n\
         [[alert]]\nname = \"always\"\ncondition = \"{condition}\"\nchannels = [\"hook\"]\nrepeat_interval = \"1h\"\n"
    );
    let tmp = file.with_extension("tmp~");
    std::fs::write(&tmp, format!("{head}{alerting}")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A consumer process (which evaluates alerts too) on the test services.
fn spawn_consumer(sp: &common::ServicePipeline, file: &Path, log: &Path) -> Child {
    common::runner_on_services(sp, file, "consumer")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The pid in the holder id (`host:pid:random`) of the pipeline's alert lease, if it is held.
async fn lease_holder(db: &mongodb::Database) -> Option<(u32, i64)> {
    let lease = db
        .collection::<mongodb::bson::Document>("leases")
        .find_one(mongodb::bson::doc! {"_id": "alerting:interactions"})
        .await
        .unwrap()?;
    let pid = lease
        .get_str("holder")
        .ok()?
        .split(':')
        .nth(1)?
        .parse()
        .ok()?;
    let until = lease.get_datetime("until").ok()?.timestamp_millis();
    Some((pid, until))
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let t = Instant::now();
    while !check() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three consumer processes evaluate one rule: exactly one notification per transition. The
/// evaluator is SIGKILLed; another process takes the lease within two intervals (1 s), resumes
/// the saved state without re-sending the firing notification, and sends the resolution once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_evaluator_among_replicas() {
    let sp = common::service_pipeline("replicas");
    let dir = tempfile::tempdir().unwrap();
    let file = common::copy_pipeline(dir.path());
    let (receiver, url) = Receiver::start().await;
    write_pipeline(&file, &url, "true");
    let mut children: Vec<Child> = (0..3)
        .map(|i| spawn_consumer(&sp, &file, &dir.path().join(format!("runner{i}.log"))))
        .collect();
    let logs = || {
        (0..3)
            .map(|i| {
                std::fs::read_to_string(dir.path().join(format!("runner{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    wait_for("the rule fires", Duration::from_secs(60), || {
        !receiver.statuses().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.statuses(),
        ["firing"],
        "three replicas, one notification\n{}",
        logs()
    );

    let client = mongodb::Client::with_uri_str(common::mongodb())
        .await
        .unwrap();
    let db = client.database(&sp.database);
    let (leader, _) = lease_holder(&db)
        .await
        .expect("one process holds the lease");
    let index = children
        .iter()
        .position(|c| c.id() == leader)
        .expect("the holder is one of the replicas");
    let mut dead = children.remove(index);
    dead.kill().unwrap();
    dead.wait().unwrap();
    let killed = Instant::now();
    let next = loop {
        if let Some((pid, until)) = lease_holder(&db).await {
            if pid != leader && until > chrono::Utc::now().timestamp_millis() {
                break pid;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "nobody took the lease over\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = killed.elapsed();
    println!("evaluator pid {leader} SIGKILLed; pid {next} took the lease after {took:?}");
    assert!(children.iter().any(|c| c.id() == next));
    // Two intervals of 500 ms, and some room for a busy 2-core machine.
    assert!(
        took < Duration::from_millis(1_800),
        "takeover within two intervals: {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.statuses(),
        ["firing"],
        "the new evaluator resumed the saved state and sent nothing again\n{}",
        logs()
    );

    // A transition after the takeover is sent once, by the new evaluator.
    write_pipeline(&file, &url, "false");
    wait_for("the rule resolves", Duration::from_secs(20), || {
        receiver.statuses().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.statuses(), ["firing", "resolved"], "\n{}", logs());
    for mut c in children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// Final window results through Tansu into SecantusDB and a results topic: two consumers in one
/// group write them while the stream runs, a third reads the topic again from the start (a
/// replay), and in the end every closed window has one result document per metric, typed, equal
/// to a recomputation from the raw events, and the results topic carries one distinct value per
/// window's key, for exactly the stored windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_results_written_once() {
    use runner::pipeline::{self, Components, RunOptions};
    use tokio_util::sync::CancellationToken;
    let mut sp = common::service_pipeline("results");
    // Short windows, so a 10 s stream closes several of them.
    for m in &mut sp.pipeline.config.metrics {
        (m.window, m.slide, m.lateness) = (
            Duration::from_secs(4),
            Some(Duration::from_secs(2)),
            Duration::from_secs(1),
        );
    }
    sp.pipeline.config.generator.rate = 2_000.0;
    let results_topic = format!("{}_results", sp.topic);
    sp.pipeline.config.results.topic = Some(results_topic.clone());
    let events = 20_000;
    let stop = CancellationToken::new();
    let consumers: Vec<_> = (0..2)
        .map(|_| common::spawn_consumer(&sp.pipeline, &stop))
        .collect();
    common::generate(&sp.pipeline, events).await;
    let store = runner::store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &Default::default(),
        &sp.pipeline.schema(),
    )
    .await
    .unwrap()
    .store;
    let t = Instant::now();
    while store.count_events().await.unwrap() < events {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the consumers store every event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for c in consumers {
        c.await.unwrap();
    }
    let client = mongodb::Client::with_uri_str(common::mongodb())
        .await
        .unwrap();
    let results = client
        .database(&sp.database)
        .collection::<mongodb::bson::Document>("metric_results");
    let before = results
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();

    // A replay of the whole topic by a consumer in another group writes nothing new.
    let mut replay = sp.pipeline.clone();
    replay.config.kafka.consumer_group = format!("{}_replay", sp.group);
    let options = RunOptions {
        components: Components::CONSUMER,
        idle_exit: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    pipeline::run(&replay, options, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        results
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        before,
        "the replay rewrote the same documents"
    );

    let raw = store.all_events().await.unwrap();
    let set = runner::aggregate::MetricSet::load(
        &sp.pipeline.config.metrics,
        &sp.pipeline.config.lookups,
        &sp.pipeline.schema(),
    )
    .unwrap();
    let mut checked = 0;
    let mut stored_keys = std::collections::BTreeSet::new();
    for m in set.metrics() {
        let rows = store.load_results(m.name(), 0, i64::MAX).await.unwrap();
        stored_keys.extend(
            rows.iter()
                .map(runner::aggregate::results::TopicResults::key),
        );
        assert!(
            rows.len() >= 2,
            "{}: several windows closed during the run: {rows:?}",
            m.name()
        );
        let ends: Vec<i64> = rows.iter().map(|r| r.window_end).collect();
        assert!(
            ends.windows(2).all(|w| w[1] == w[0] + 2_000),
            "{}: one result per closed window, none missed: {ends:?}",
            m.name()
        );
        let n = results
            .count_documents(mongodb::bson::doc! {"metric": m.name()})
            .await
            .unwrap();
        assert_eq!(n as usize, rows.len(), "one document per window");
        for r in &rows {
            // A window closed before the stream reached it has nothing to compare (its value is
            // the metric's empty value).
            if !raw
                .iter()
                .any(|e| (r.window_start..r.window_end).contains(&e.time_ms()))
            {
                continue;
            }
            let expected = common::recompute::recompute(&raw, r.window_start, r.window_end);
            assert!(
                common::recompute::matches(m.name(), &r.value, &expected[m.name()]),
                "{} [{}, {}): result {} but recomputation gives {}",
                m.name(),
                r.window_start,
                r.window_end,
                r.value,
                expected[m.name()]
            );
            checked += 1;
        }
    }
    // Typed for other readers: dates for the window, numbers and sub-documents for values.
    let doc = results
        .find_one(mongodb::bson::doc! {"metric": "interaction_types"})
        .await
        .unwrap()
        .unwrap();
    assert!(
        doc.get_datetime("window_end").is_ok() && doc.get_document("value").is_ok(),
        "{doc}"
    );
    let doc = results
        .find_one(mongodb::bson::doc! {"metric": "active_users"})
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(doc.get("value"), Some(mongodb::bson::Bson::Int64(_))),
        "{doc}"
    );
    println!("{checked} final results checked against the recomputation; e.g. {doc}");

    // The results topic: every message read back from the start, grouped by key.
    let published = read_topic(&results_topic, sp.pipeline.config.kafka.partitions);
    let mut values: std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<u8>>> =
        Default::default();
    for (key, value) in &published {
        values.entry(key.clone()).or_default().insert(value.clone());
    }
    let keys: std::collections::BTreeSet<String> = values.keys().cloned().collect();
    assert_eq!(
        keys, stored_keys,
        "the topic has a result for exactly the stored windows"
    );
    for (key, v) in &values {
        assert_eq!(
            v.len(),
            1,
            "{key}: one distinct value, however often it was sent"
        );
    }
    println!(
        "results topic: {} messages, {} keys, one value each; e.g. {} = {}",
        published.len(),
        keys.len(),
        published[0].0,
        String::from_utf8_lossy(&published[0].1)
    );
}

/// Every (key, value) of `topic`, read from the start until its end.
fn read_topic(topic: &str, partitions: i32) -> Vec<(String, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .set("group.id", common::unique("results_reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let total = common::topic_messages(&common::kafka(), topic, partitions);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    while (out.len() as u64) < total && t.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    assert_eq!(out.len() as u64, total, "every message of {topic} read");
    out
}
