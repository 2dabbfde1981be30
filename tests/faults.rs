//! Faults and bad input on real services: garbage on the topic, runaway scripts, and SIGKILL of
//! the runner, the broker and the database mid-stream. Nothing accepted may be lost or stored
//! twice. Each test prints one `fault:` line (produced, stored, duplicates, dead letters,
//! recovery time) for the performance and fault report.

mod common;

use common::services::{kill9, Service};
use common::{recompute::assert_metrics_match, ServicePipeline};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use runner::dead_letter::Reason;
use runner::pipeline::{self, Components, RunOptions};
use runner::store;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn report(
    fault: &str,
    produced: u64,
    stored: u64,
    duplicates: u64,
    dead: u64,
    recovery: Option<Duration>,
) {
    let recovery = recovery.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    println!("fault: {fault} | produced {produced} | stored {stored} | duplicates skipped {duplicates} | dead letters {dead} | recovery {recovery}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_to_dead_letter() {
    let mut sp = common::service_pipeline("garbage");
    let v = &mut sp.pipeline.config.consumer.validation;
    v.max_event_bytes = 10_000;
    common::create_topic(&sp.pipeline.config.kafka).await;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .create()
        .unwrap();
    let good = 500u32;
    let now = chrono::Utc::now().to_rfc3339();
    for i in 0..good {
        let e = format!(
            r#"{{"event_id":"good-{i}","user_id":"user_{}","item_id":"item_{}","interaction_type":"view","timestamp":"{now}"}}"#,
            i % 17,
            i % 11
        );
        producer
            .send(BaseRecord::to(&sp.topic).key(&format!("k{i}")).payload(&e))
            .unwrap();
    }
    let huge = format!(r#"{{"user_id":"u","pad":"{}"}}"#, "x".repeat(50_000));
    let bad: Vec<(&[u8], Reason)> = vec![
        (b"this is not json", Reason::NotJson),
        (br#"{"user_id": 5, "item_id": "item_1", "interaction_type": "view", "timestamp": "2026-01-01T00:00:00Z"}"#, Reason::InvalidEvent),
        (br#"{"item_id": "item_1", "interaction_type": "view"}"#, Reason::InvalidEvent),
        (huge.as_bytes(), Reason::TooLarge),
        (b"{\"user_id\": \"\xff\xfe\"}", Reason::InvalidUtf8),
        (b"", Reason::Empty),
        (br#"{"user_id": "u", "item_id": "i", "interaction_type": "hover", "timestamp": "2026-01-01T00:00:00Z"}"#, Reason::FailedValidation),
    ];
    for (payload, _) in &bad {
        producer
            .send(BaseRecord::to(&sp.topic).key("bad").payload(*payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let summary =
        common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()).await;
    assert_eq!(
        summary.stats.stored, good as u64,
        "every good event is stored"
    );
    assert_eq!(summary.stats.rejected, bad.len() as u64);
    let store = store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    assert_eq!(store.count_events().await.unwrap(), good as u64);
    let letters = store.dead_letters(100).await.unwrap();
    let mut got: Vec<Reason> = letters.iter().map(|d| d.reason).collect();
    let mut want: Vec<Reason> = bad.iter().map(|b| b.1).collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "each bad message is a dead letter with its reason: {letters:#?}"
    );
    for d in &letters {
        assert!(
            d.id.starts_with(&format!("{}:{}:", sp.topic, d.partition)) && d.offset >= 0,
            "{d:?}"
        );
        assert!(!d.detail.is_empty());
    }
    let big = letters
        .iter()
        .find(|d| d.reason == Reason::TooLarge)
        .unwrap();
    assert_eq!(big.payload_bytes, huge.len());
    assert!(big.payload.len() <= runner::dead_letter::KEEP_BYTES);

    // Consuming the same messages again (offsets reset) keeps one dead letter per message.
    common::reset_group_offsets(&sp);
    let again =
        common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()).await;
    assert_eq!(again.stats.duplicates, good as u64);
    assert_eq!(store.count_dead_letters().await.unwrap(), bad.len() as u64);
    report(
        "garbage on the topic (7 kinds)",
        good as u64 + bad.len() as u64,
        summary.stats.stored,
        again.stats.duplicates,
        bad.len() as u64,
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_record_is_dead_lettered_and_its_batch_stored() {
    let sp = common::service_pipeline("poison");
    common::create_topic(&sp.pipeline.config.kafka).await;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .create()
        .unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let event = |id: &str, extra: &str| {
        format!(
            r#"{{"event_id":"{id}","user_id":"user_1","item_id":"item_1","interaction_type":"view","timestamp":"{now}"{extra}}}"#
        )
    };
    let good = 300u64;
    // Valid records MongoDB can never hold, in the middle of the stream: before the fix the
    // consumer retried their batch forever and the partition stalled.
    let poison = [
        event("poison-nul", r#","a\u0000b":1"#),
        event("poison-id", r#","_id":[1,2]"#),
    ];
    for i in 0..good {
        producer
            .send(
                BaseRecord::to(&sp.topic)
                    .key("k")
                    .payload(&event(&format!("good-{i}"), "")),
            )
            .unwrap();
        if i == good / 2 {
            for p in &poison {
                producer
                    .send(BaseRecord::to(&sp.topic).key("k").payload(p))
                    .unwrap();
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let run = common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new());
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the consumer finishes despite the poison records");
    let store = store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    assert_eq!(
        store.count_events().await.unwrap(),
        good,
        "every other event of the stream is stored"
    );
    let letters = store.dead_letters(10).await.unwrap();
    let mut ids: Vec<&str> = letters.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["store:poison-id", "store:poison-nul"], "{letters:#?}");
    for d in &letters {
        assert_eq!(d.reason, Reason::StoreRejected);
        assert!(d.offset >= 0 && !d.detail.is_empty(), "{d:?}");
        assert!(
            d.payload.contains("poison-"),
            "the payload is the record: {d:?}"
        );
    }
    assert_eq!(
        summary.stats.stored, good,
        "the refused records are not counted as stored"
    );

    // A replay refuses them again and keeps one dead letter each.
    common::reset_group_offsets(&sp);
    let again = tokio::time::timeout(
        Duration::from_secs(60),
        common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()),
    )
    .await
    .expect("the replay finishes");
    assert_eq!(again.stats.duplicates, good);
    assert_eq!(store.count_dead_letters().await.unwrap(), 2);
    report(
        "poison records (MongoDB refuses them)",
        good + 2,
        summary.stats.stored,
        again.stats.duplicates,
        2,
        None,
    );
}

/// Records that pass the schema but once took a deployment down, on Kafka and MongoDB: prices
/// whose sum overflows, clocks minutes ahead (one per partition) and a year-1 stamp, ids pasted
/// as item ids. The ordinary records all count, every metric and alert read keeps
/// answering, and a restart finishes instead of retrying a load for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_stall_nothing_and_poison_no_metric() {
    let sp = common::service_pipeline("hostile");
    common::create_topic(&sp.pipeline.config.kafka).await;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .create()
        .unwrap();
    let now = chrono::Utc::now();
    let record = |id: &str,
                  item: &str,
                  kind: &str,
                  at: chrono::DateTime<chrono::Utc>,
                  extra: &str| {
        format!(
            r#"{{"event_id":"{id}","user_id":"user_{id}","item_id":"{item}","interaction_type":"{kind}","timestamp":"{}"{extra}}}"#,
            at.to_rfc3339()
        )
    };
    let send = |partition: i32, payload: &str| {
        producer
            .send(
                BaseRecord::to(&sp.topic)
                    .partition(partition)
                    .key("k")
                    .payload(payload),
            )
            .unwrap()
    };
    // Three records 290 s ahead, one per partition, first: they once made the rest late.
    for p in 0..3 {
        send(
            p,
            &record(
                &format!("ahead-{p}"),
                "item_1",
                "view",
                now + chrono::Duration::seconds(290),
                "",
            ),
        );
    }
    send(
        0,
        &record(
            "year-1",
            "item_1",
            "view",
            chrono::DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z")
                .unwrap()
                .into(),
            "",
        ),
    );
    let good = 300u64;
    for i in 0..good {
        send(
            (i % 3) as i32,
            &record(
                &format!("good-{i}"),
                &format!("item_{}", i % 7),
                "view",
                now - chrono::Duration::milliseconds(i as i64),
                "",
            ),
        );
    }
    for i in 0..2 {
        send(
            1,
            &record(
                &format!("rich-{i}"),
                "item_1",
                "purchase",
                now,
                r#","price":1.7e308"#,
            ),
        );
    }
    // 64 KiB each (a megabyte each once made a pane too large for MongoDB): far past max_len.
    // A producer that reuses an id: the second record says something else.
    send(0, &record("twin", "item_1", "view", now, ""));
    send(0, &record("twin", "item_2", "click", now, ""));
    let huge_id = "i".repeat(64 << 10);
    for i in 0..20 {
        send(2, &record(&format!("huge-{i}"), &huge_id, "view", now, ""));
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let run = common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new());
    let summary = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the consumer finishes");
    let store = store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let letters = store.dead_letters(100).await.unwrap();
    let by_reason = |r: Reason| letters.iter().filter(|d| d.reason == r).count();
    assert_eq!(
        by_reason(Reason::FailedValidation),
        20,
        "the huge item ids: {:?}",
        letters
            .iter()
            .map(|d| (&d.id, d.reason))
            .collect::<Vec<_>>()
    );
    assert!(letters
        .iter()
        .filter(|d| d.reason == Reason::FailedValidation)
        .all(|d| d.detail.contains("max_len")));
    assert_eq!(
        by_reason(Reason::DuplicateId),
        1,
        "the second twin is kept as a dead letter"
    );
    assert!(letters
        .iter()
        .any(|d| d.reason == Reason::DuplicateId && d.payload.contains("item_2")));
    assert_eq!(
        by_reason(Reason::Late),
        1,
        "only the year-1 record is late: {:?}",
        letters
            .iter()
            .filter(|d| d.reason == Reason::Late)
            .map(|d| &d.id)
            .collect::<Vec<_>>()
    );
    // Every record that passed validation is stored raw; the year-1 one may already be gone,
    // expired by the raw retention's TTL index.
    let stored = store.count_events().await.unwrap();
    assert!(
        stored == good + 3 + 1 + 2 + 1 || stored == good + 3 + 2 + 1,
        "{stored} stored"
    );

    // Every metric reads, from a fresh set as the dashboard and alerts read it.
    let set = runner::aggregate::MetricSet::load(
        &sp.pipeline.config.metrics,
        &sp.pipeline.config.lookups,
        &sp.pipeline.config.schema().unwrap(),
    )
    .unwrap();
    let at = chrono::Utc::now().timestamp_millis();
    let mut values = std::collections::BTreeMap::new();
    for m in set.metrics() {
        let v = runner::aggregate::read(m, &*store, at)
            .await
            .unwrap_or_else(|e| panic!("metric {} cannot be read: {e:#}", m.name()));
        values.insert(m.name().to_string(), v.value);
    }
    assert_eq!(
        values["revenue_per_minute"],
        serde_json::json!(f64::MAX),
        "an overflowing sum saturates"
    );
    let views: u64 = values["interaction_types"]["view"].as_u64().unwrap_or(0);
    assert!(
        views >= good,
        "the ordinary records all count (views {views}): {values:?}"
    );

    // A restart loads what was stored and finishes: nothing is retried for ever.
    common::reset_group_offsets(&sp);
    let again = tokio::time::timeout(
        Duration::from_secs(90),
        common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()),
    )
    .await
    .expect("the restarted consumer finishes");
    assert!(
        again.stats.duplicates >= good + 5 && again.stats.stored <= 1,
        "a replay stores nothing twice (but the expired year-1 record): {:?}",
        again.stats
    );
    let after = store.dead_letters(100).await.unwrap();
    assert_eq!(
        after
            .iter()
            .filter(|d| d.reason == Reason::DuplicateId)
            .count(),
        1,
        "the replayed twin is the same dead letter, and the replay is no collision"
    );
    report(
        "hostile records (overflowing sum, clocks ahead and year 1, 64 KiB ids, a reused id)",
        good + 28,
        summary.stats.stored,
        again.stats.duplicates,
        letters.len() as u64,
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_script_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        scripts.join("spin.rhai"),
        "fn spin(e) { loop { } }\n#{ filter: Fn(\"spin\") }",
    )
    .unwrap();
    std::fs::write(
        scripts.join("hog.rhai"),
        "fn hog(e) { let s = \"x\"; loop { s += s; } }\n#{ filter: Fn(\"hog\") }",
    )
    .unwrap();
    let mut p = common::embedded_pipeline(&dir.path().join("data"));
    for (name, file) in [("spin", "spin.rhai"), ("hog", "hog.rhai")] {
        let mut m = p.config.metrics[0].clone();
        m.name = name.into();
        m.script = scripts.join(file);
        m.reducer = runner::aggregate::ReducerKind::Count;
        p.config.metrics.push(m);
    }
    let n = 300;
    let t = Instant::now();
    let summary = pipeline::run(
        &p,
        RunOptions {
            max_events: Some(n),
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let took = t.elapsed();
    assert_eq!(summary.stats.stored, n, "the pipeline kept storing");
    assert_eq!(
        summary.stats.script_errors,
        2 * n,
        "both scripts failed on every event, and were stopped each time"
    );
    assert!(
        took < Duration::from_secs(60),
        "runaway scripts did not stall the pipeline: {took:?}"
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
    let set = runner::aggregate::MetricSet::load(
        &p.config.metrics,
        &p.config.lookups,
        &p.config.schema().unwrap(),
    )
    .unwrap();
    let values = set
        .read_all(&*store, chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    let active = values.iter().find(|v| v.name == "active_users").unwrap();
    assert!(
        active.value.as_u64().unwrap() > 0,
        "the other metrics still count"
    );
    println!("{n} events through two runaway scripts in {took:?}");
}

/// The `runner` binary on the test services, generating and consuming.
fn spawn_runner(sp: &ServicePipeline, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    common::runner_on_services(sp, &common::shipped_pipeline(), "generator,consumer")
        .env("DEFAULT_GENERATION_RATE", "3000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_mid_stream_loses_nothing() {
    let sp = common::service_pipeline("killed");
    let dir = tempfile::tempdir().unwrap();
    // Kill at different moments of the batch cycle: soon after start, mid-stream, and later.
    for (round, after_ms) in [2_500u64, 4_100, 3_300].into_iter().enumerate() {
        let mut child = spawn_runner(&sp, &dir.path().join(format!("run{round}.log")));
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        kill9(&mut child);
    }
    let produced = common::topic_messages(
        &common::kafka(),
        &sp.topic,
        sp.pipeline.config.kafka.partitions,
    );
    assert!(
        produced > 1_000,
        "the killed runs produced events: {produced}"
    );

    // A final consumer picks up from the committed offsets, once the killed members' sessions
    // (session.timeout.ms = 6 s) have expired and it holds every partition.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let t = Instant::now();
    let summary =
        common::run_pipeline(&sp, Components::CONSUMER, None, CancellationToken::new()).await;
    let rows = assert_each_stored_once(&sp, produced, "every event that reached Kafka").await;
    assert_metrics_match(&sp, produced).await;
    report(
        "runner SIGKILLed 3 times",
        produced,
        rows,
        summary.stats.duplicates,
        0,
        Some(t.elapsed()),
    );
}

/// Checks the pipeline's store holds `expected` events (`which` names them), none twice.
async fn assert_each_stored_once(sp: &common::ServicePipeline, expected: u64, which: &str) -> u64 {
    let store = store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let (rows, distinct) = common::stored_ids(&*store).await;
    assert_eq!(rows, distinct, "no event stored twice");
    assert_eq!(rows as u64, expected, "{which} is stored exactly once");
    rows as u64
}

/// Runs generator and consumer in this process, kills `service` after `kill_after`, restarts it
/// 4 s later, and waits for the run to finish; returns the run, the recovery time (restart to
/// the first batch stored after it), and whether health showed a store outage meanwhile.
async fn run_through_outage(
    p: &runner::config::Pipeline,
    events: u64,
    service: &mut Service,
) -> (runner::pipeline::RunSummary, Duration, bool) {
    let stop = CancellationToken::new();
    let guard = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(150)).await;
        guard.cancel();
    });
    let mut p = p.clone();
    p.config.generator.rate = 2_000.0;
    let options = RunOptions {
        max_events: Some(events),
        idle_exit: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let running = pipeline::start(p, options, stop).await.unwrap();
    let stats = running.stats.clone();
    let t = Instant::now();
    while stats.snapshot().stored < 2_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "nothing stored before the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outage_seen = stats.store_failing_since().is_some();
    let stored_at_restart = stats.snapshot().stored;
    service.start().await;
    let restarted = Instant::now();
    let recovery = loop {
        if stats.snapshot().stored > stored_at_restart {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(90),
            "nothing stored within 90 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let summary = running.wait().await.expect("the run survives the outage");
    assert!(
        stats.store_failing_since().is_none(),
        "health shows the store as back"
    );
    (summary, recovery, outage_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_killed_mid_stream_loses_nothing() {
    let mut mongo = Service::secantus().await;
    let mut sp = common::service_pipeline("mongo_killed");
    sp.pipeline.config.mongodb.uri = format!("mongodb://127.0.0.1:{}", mongo.port);
    let events = 20_000;
    let (summary, recovery, outage_seen) =
        run_through_outage(&sp.pipeline, events, &mut mongo).await;
    assert!(
        summary.stats.store_retries > 0,
        "the outage was noticed and retried"
    );
    assert!(
        outage_seen,
        "health showed the store outage while it lasted"
    );
    let rows = assert_each_stored_once(&sp, events, "every produced event").await;
    assert_metrics_match(&sp, events).await;
    report(
        "MongoDB SIGKILLed for 4 s",
        events,
        rows,
        summary.stats.duplicates,
        summary.stats.rejected,
        Some(recovery),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_loses_nothing() {
    let mut broker = Service::tansu().await;
    let mut sp = common::service_pipeline("broker_killed");
    sp.pipeline.config.kafka.bootstrap_servers = format!("127.0.0.1:{}", broker.port);
    let events = 20_000;
    let (summary, recovery, _) = run_through_outage(&sp.pipeline, events, &mut broker).await;
    assert_eq!(
        summary.stats.delivery_failed, 0,
        "the producer waited and retried instead of dropping"
    );
    let rows = assert_each_stored_once(&sp, events, "every produced event").await;
    assert_metrics_match(&sp, events).await;
    report(
        "Kafka broker SIGKILLed for 4 s",
        events,
        rows,
        summary.stats.duplicates,
        summary.stats.rejected,
        Some(recovery),
    );
}
