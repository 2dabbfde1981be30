//! One contract, two stores: MongoDB (on the real server) and the embedded SQLite store.

mod common;

use chrono::{TimeZone, Utc};
use runner::dead_letter::{DeadLetter, Reason};
use runner::event::{iso, Record, Schema};
use runner::store::embedded::{EmbeddedConfig, EmbeddedStore};
use runner::store::mongo::{MongoConfig, MongoStore};
use runner::store::retention::RetentionConfig;
use runner::store::PaneRecord;
use runner::store::{Collections, Document, InsertOutcome, RawEvents, StateStore, Store};
use runner::transport::{History, NO_PARTITION};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A record shape the contract runs with: the schema, and record `i` of it as JSON.
struct Shape {
    schema: Arc<Schema>,
    json: fn(u32) -> String,
    indexes: &'static [&'static str],
}

fn interactions() -> Shape {
    let text = r#"
fields = { event_id = "string", user_id = "string", item_id = "string", interaction_type = "string", timestamp = "timestamp", session_id = "string?", value = "float?", price = "float?", view_duration = "float?" }
id = "event_id"
time = "timestamp"
key = "user_id""#;
    let json = |i: u32| {
        let kind = if i.is_multiple_of(3) {
            "purchase"
        } else {
            "view"
        };
        let extra = if i.is_multiple_of(3) {
            r#","price":12.5"#.to_string()
        } else {
            r#","view_duration":30.0"#.to_string()
        };
        let channel = if i == 1 {
            r#","attributes":{"channel":"web"}"#
        } else {
            ""
        };
        format!(
            r#"{{"event_id":"ev-{i}","user_id":"user_{}","item_id":"item_{}","interaction_type":"{kind}","timestamp":"{}","session_id":"s-{i}","value":{}{extra}{channel}}}"#,
            i % 7,
            i % 5,
            iso(1_700_000_000_000 + i as i64 * 1000),
            i as f64 / 4.0
        )
    };
    Shape {
        schema: schema(text),
        json,
        indexes: &["user_id", "item_id"],
    }
}

fn sensors() -> Shape {
    let text = r#"
fields = { reading_id = "string", device_id = "string", site = "string", temperature = "float", humidity = "float?", samples = "int", ok = "bool", ts = "timestamp" }
id = "reading_id"
time = "ts"
key = "device_id""#;
    let json = |i: u32| {
        let humidity = if i.is_multiple_of(2) {
            format!(r#","humidity":{}"#, 40 + i % 20)
        } else {
            String::new()
        };
        let meta = if i == 1 {
            r#","meta":{"firmware":"1.2","tags":["a",1]}"#
        } else {
            ""
        };
        format!(
            r#"{{"reading_id":"r-{i}","device_id":"dev-{}","site":"{}","temperature":{},"samples":{},"ok":{},"ts":"{}"{humidity}{meta}}}"#,
            i % 9,
            ["lab", "roof", "cellar"][i as usize % 3],
            15.0 + i as f64 / 8.0,
            i * 3,
            !i.is_multiple_of(5),
            iso(1_700_000_000_000 + i as i64 * 1000)
        )
    };
    Shape {
        schema: schema(text),
        json,
        indexes: &["device_id", "site"],
    }
}

fn schema(text: &str) -> Arc<Schema> {
    Arc::new(Schema::new(&toml::from_str(text).unwrap()).unwrap())
}

impl Shape {
    fn record(&self, i: u32) -> Record {
        let r = Record::from_json(&self.schema, (self.json)(i).as_bytes()).unwrap();
        r.check().unwrap();
        r
    }

    fn indexes(&self) -> Vec<String> {
        self.indexes.iter().map(|s| s.to_string()).collect()
    }
}

/// Every role of a store, each by its own contract.
async fn contract(store: &dyn Store, shape: &Shape) {
    raw_events_contract(store, shape).await;
    state_store_contract(store).await;
}

/// Reference collections (lookup tables kept in the store): read back as written, numbers as
/// numbers, in the same order each time, at most `limit`; a load replaces the whole collection
/// and leaves the others alone.
async fn collections_contract(store: &dyn Collections) {
    let doc = |v: serde_json::Value| -> Document { serde_json::from_value(v).unwrap() };
    assert!(
        store.documents("items", 10).await.unwrap().is_empty(),
        "no such collection"
    );
    let items = vec![
        doc(json!({"item_id": "item_1", "category": "books", "list_price": 12.5, "stock": 3})),
        doc(json!({"item_id": "item_2", "category": "garden, tools", "list_price": 40})),
        doc(json!({"item_id": "item_3", "category": "ünïcode ✓"})),
    ];
    store.replace_documents("items", &items).await.unwrap();
    store
        .replace_documents("shops", &[doc(json!({"shop": "s1"}))])
        .await
        .unwrap();
    assert_eq!(store.documents("items", 10).await.unwrap(), items);
    assert_eq!(
        store.documents("items", 10).await.unwrap(),
        items,
        "the same order again"
    );
    assert_eq!(store.documents("items", 2).await.unwrap(), items[..2]);
    let next = vec![doc(json!({"item_id": "item_9", "category": "toys"}))];
    store.replace_documents("items", &next).await.unwrap();
    assert_eq!(
        store.documents("items", 10).await.unwrap(),
        next,
        "replaced, not added to"
    );
    assert_eq!(store.documents("shops", 10).await.unwrap().len(), 1);
}

/// The raw-record sink: idempotent by id, duplicates named, every field read back as written.
async fn raw_events_contract(store: &dyn RawEvents, shape: &Shape) {
    let event = |i: u32| shape.record(i);
    assert_eq!(store.count_events().await.unwrap(), 0, "starts empty");
    assert_eq!(
        store.insert_events(&[]).await.unwrap(),
        InsertOutcome::default()
    );

    let first: Vec<Record> = (0..100).map(event).collect();
    assert_eq!(
        store.insert_events(&first).await.unwrap(),
        InsertOutcome {
            inserted: 100,
            ..Default::default()
        }
    );

    // A replay overlapping what is stored writes only the new events.
    let overlap: Vec<Record> = (50..150).map(event).collect();
    // The duplicates are named by their positions in the batch, and their ids read back as stored.
    let mut outcome = store.insert_events(&overlap).await.unwrap();
    outcome.duplicates.sort_unstable();
    assert_eq!(
        outcome,
        InsertOutcome {
            inserted: 50,
            duplicates: (0..50).collect(),
            ..Default::default()
        }
    );
    assert_eq!(
        store.insert_events(&[event(3)]).await.unwrap(),
        InsertOutcome {
            inserted: 0,
            duplicates: vec![0],
            ..Default::default()
        }
    );
    assert_eq!(store.count_events().await.unwrap(), 150);
    let ids: Vec<&str> = overlap[..3]
        .iter()
        .map(Record::id)
        .chain(["never-stored"])
        .collect();
    let mut read: Vec<Record> = store.stored_events(&ids).await.unwrap();
    read.sort_by(|a, b| a.id().cmp(b.id()));
    assert_eq!(
        read,
        overlap[..3].to_vec(),
        "stored events read back by id, equal to what was written"
    );

    // Every field comes back as written, oldest first.
    let back = store.all_events().await.unwrap();
    let expected: Vec<Record> = (0..150).map(event).collect();
    assert_eq!(back, expected);
}

/// History replay: raw events read back by position in order of arrival, each once, in pages,
/// and from the first position at or after a time. `history` reads what `raw` stored; both start
/// empty.
async fn history_contract(history: &dyn History, raw: &dyn RawEvents, shape: &Shape) {
    assert_eq!(
        history.end(NO_PARTITION).await.unwrap(),
        0,
        "nothing stored yet"
    );
    let events: Vec<Record> = (0..20).map(|i| shape.record(i)).collect();
    raw.insert_events(&events[..10]).await.unwrap();
    // A replay of five stored ones takes no new position.
    raw.insert_events(&events[5..]).await.unwrap();
    let end = history.end(NO_PARTITION).await.unwrap();
    let all = history.read(NO_PARTITION, 0, end, 100).await.unwrap();
    let read: Vec<Record> = all.events.iter().map(|(_, r)| r.clone()).collect();
    assert_eq!(read, events, "in order of arrival, each once");
    assert_eq!(all.through, end, "a short read covers the whole range");
    assert!(all.events.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(all.events.last().unwrap().0, end);

    let page = history.read(NO_PARTITION, 0, end, 7).await.unwrap();
    assert_eq!(page.events.len(), 7);
    assert_eq!(
        page.through, page.events[6].0,
        "a full page ends at its last"
    );
    let rest = history
        .read(NO_PARTITION, page.through, end, 100)
        .await
        .unwrap();
    assert_eq!(rest.events.len(), 13, "the next page starts after it");

    let t = events[12].time_ms();
    let first_at_t = all
        .events
        .iter()
        .find(|(_, r)| r.time_ms() >= t)
        .map(|(at, _)| *at)
        .unwrap();
    assert_eq!(
        history.start(NO_PARTITION, t).await.unwrap(),
        (first_at_t, false),
        "the first position at or after the time, nothing lost"
    );
    let (past, _) = history.start(NO_PARTITION, i64::MAX).await.unwrap();
    assert!(
        past > end,
        "a time past every event starts after the newest"
    );
}

/// The state store: partials, alert state and history, leases, final results, dead letters.
async fn state_store_contract(store: &dyn StateStore) {
    // Metric partials: replaced by newer offsets, never by older ones; read back by range.
    store
        .write_panes(&[pane(0, 0, 10, 1), pane(5000, 0, 12, 2), pane(5000, 1, 3, 7)])
        .await
        .unwrap();
    store.write_panes(&[pane(5000, 0, 20, 5)]).await.unwrap();
    store.write_panes(&[pane(5000, 0, 15, 99)]).await.unwrap(); // stale: a consumer that lost the partition
    let mut loaded = store.load_panes("m", 5000, 10_000, None).await.unwrap();
    loaded.sort_by_key(|p| p.partition);
    assert_eq!(loaded, vec![pane(5000, 0, 20, 5), pane(5000, 1, 3, 7)]);
    assert_eq!(
        store.load_panes("m", 0, 10_000, Some(1)).await.unwrap(),
        vec![pane(5000, 1, 3, 7)]
    );
    assert!(store
        .load_panes("other", 0, 10_000, None)
        .await
        .unwrap()
        .is_empty());

    // Alert state: one JSON value per rule, replaced on save.
    assert!(store.load_alert_states().await.unwrap().is_empty());
    store
        .save_alert_state("r1", &json!({"severity": "warning", "instances": {}}))
        .await
        .unwrap();
    store
        .save_alert_state(
            "r1",
            &json!({"severity": "critical", "instances": {"item=a.b$c": {"x": 1}}}),
        )
        .await
        .unwrap();
    assert_eq!(
        store.load_alert_states().await.unwrap(),
        vec![(
            "r1".to_string(),
            json!({"severity": "critical", "instances": {"item=a.b$c": {"x": 1}}})
        )]
    );

    // Silences: replaced by id (an early expiry), read by their end, oldest start first.
    let silence = |id: &str, starts: i64, ends: i64| runner::store::Silence {
        id: id.into(),
        matchers: vec![runner::store::Matcher {
            name: "item.id".into(),
            value: "i-(1|2)$".into(),
            is_regex: true,
            is_equal: false,
        }],
        starts_at: Utc.timestamp_millis_opt(starts).unwrap(),
        ends_at: Utc.timestamp_millis_opt(ends).unwrap(),
        created_by: "ops".into(),
        comment: "planned outage".into(),
        updated_at: Utc.timestamp_millis_opt(starts).unwrap(),
        expired_by: None,
    };
    store
        .save_silence(&silence("s2", 2_000, 9_000))
        .await
        .unwrap();
    store
        .save_silence(&silence("s1", 1_000, 5_000))
        .await
        .unwrap();
    let mut expired = silence("s2", 2_000, 3_000);
    expired.expired_by = Some("lead".into());
    store.save_silence(&expired).await.unwrap();
    assert_eq!(
        store.silences(0).await.unwrap(),
        vec![silence("s1", 1_000, 5_000), expired.clone()]
    );
    assert_eq!(
        store.silences(4_000).await.unwrap(),
        vec![silence("s1", 1_000, 5_000)],
        "those ended before the given time are left out"
    );

    // Alert history: newest first, and recording the same notification twice keeps one.
    store.record_alert(&notice("n1", 1_000)).await.unwrap();
    store.record_alert(&notice("n2", 2_000)).await.unwrap();
    store.record_alert(&notice("n1", 1_000)).await.unwrap();
    let recent = store.recent_alerts(10).await.unwrap();
    assert_eq!(
        recent.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n2", "n1"]
    );
    assert_eq!(recent[1], notice("n1", 1_000));

    // Dead letters: kept with reason and source, idempotent by id, newest first.
    let dead = |id: &str, reason: Reason| dead_letter(id, reason, 1_700_000_000_000);
    // Leases: one holder at a time; renewable by its holder; free once expired by the store's
    // clock (no caller's clock takes part, so a skewed replica cannot take a held lease).
    let name = common::unique("alerting:p");
    assert!(
        store.take_lease(&name, "a", 60_000).await.unwrap(),
        "a free lease is taken"
    );
    assert!(
        !store.take_lease(&name, "b", 60_000).await.unwrap(),
        "held by another for a minute"
    );
    assert!(
        store.take_lease(&name, "a", 600).await.unwrap(),
        "its holder renews it (for 0.6 s)"
    );
    assert!(!store.take_lease(&name, "b", 60_000).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        store.take_lease(&name, "b", 60_000).await.unwrap(),
        "expired: another takes it"
    );
    assert!(
        !store.take_lease(&name, "a", 60_000).await.unwrap(),
        "the old holder has lost it"
    );
    assert!(
        store
            .take_lease(&common::unique("alerting:q"), "a", 60_000)
            .await
            .unwrap(),
        "leases are by name"
    );
    assert!(
        store.take_lease(&name, "b", 0).await.unwrap(),
        "a ttl of 0 gives it up"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(
        store.take_lease(&name, "a", 60_000).await.unwrap(),
        "given up: another takes it at once"
    );

    // Final results: one row per (metric, window end), rewritten the same; read by range.
    let result = |end: i64, v: serde_json::Value| runner::store::ResultRow {
        metric: "m".into(),
        window_start: end - 60_000,
        window_end: end,
        value: v,
    };
    let grouped = json!({"view": 120, "purchase": 3, "a.b": 1.5});
    store
        .write_results(&[
            result(60_000, json!(7)),
            result(65_000, grouped.clone()),
            result(70_000, json!([{"key": "i1", "count": 4}])),
        ])
        .await
        .unwrap();
    store
        .write_results(&[result(65_000, grouped.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.load_results("m", 60_000, 70_000).await.unwrap(),
        vec![result(60_000, json!(7)), result(65_000, grouped)]
    );
    assert_eq!(
        store.load_results("m", 0, i64::MAX).await.unwrap().len(),
        3,
        "a rewrite stores the row once"
    );
    assert_eq!(store.latest_result("m").await.unwrap(), Some(70_000));
    assert_eq!(store.latest_result("other").await.unwrap(), None);

    store
        .write_dead_letters(&[
            dead("t:2:41", Reason::NotJson),
            dead("t:2:42", Reason::InvalidUtf8),
        ])
        .await
        .unwrap();
    store
        .write_dead_letters(&[dead("t:2:41", Reason::NotJson)])
        .await
        .unwrap();
    assert_eq!(store.count_dead_letters().await.unwrap(), 2);
    let mut back = store.dead_letters(10).await.unwrap();
    back.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        back,
        vec![
            dead("t:2:41", Reason::NotJson),
            dead("t:2:42", Reason::InvalidUtf8)
        ]
    );
}

/// A partial of metric `m`.
fn pane(start: i64, partition: i32, offset: i64, n: u64) -> PaneRecord {
    PaneRecord {
        metric: "m".into(),
        pane_start: start,
        partition,
        offset,
        state: json!({"single": {"count": n}}).into(),
    }
}

/// A notification of alert `a` sent at `at` (ms).
fn notice(id: &str, at: i64) -> runner::alert::Notification {
    let mut n: runner::alert::Notification = serde_json::from_value(json!({
        "id": id, "pipeline": "p", "alert": "a", "status": "firing", "change": "firing", "severity": "warning",
        "labels": {"alertname": "a"}, "value": 1.5, "message": "m", "description": "", "fingerprint": "",
        "starts_at": "2026-11-28T00:00:00Z", "ends_at": null, "at": "2026-11-28T00:00:00Z", "channels": ["log"]
    }))
    .unwrap();
    n.at = Utc.timestamp_millis_opt(at).unwrap();
    n
}

/// A dead letter stored at `at` (ms).
fn dead_letter(id: &str, reason: Reason, at: i64) -> DeadLetter {
    DeadLetter {
        id: id.into(),
        reason,
        detail: "expected value at line 1 column 1".into(),
        partition: 2,
        offset: 41,
        payload: "{oops".into(),
        payload_bytes: 5,
        at: Utc.timestamp_millis_opt(at).unwrap(),
    }
}

/// Retention as both stores keep it: with a minute for every kind, rows dated years ago (raw
/// records by their time, panes by their start, alerts and dead letters by when they were
/// stored) go by the store's own expiry (`expire` waits for it, at most 30 s), while fresh rows,
/// the current pane and the timeless watermark records stay.
async fn retention_contract(store: &dyn Store, shape: &Shape) {
    let now = Utc::now().timestamp_millis();
    let fresh = |i: u32| {
        let old = (shape.json)(i);
        let json = old.replace(&iso(1_700_000_000_000 + i as i64 * 1000), &iso(now));
        assert_ne!(json, old, "the record's time is replaced");
        Record::from_json(&shape.schema, json.as_bytes()).unwrap()
    };
    let mut records: Vec<Record> = (0..20).map(|i| shape.record(i)).collect();
    records.extend((1000..1020).map(fresh));
    store.insert_events(&records).await.unwrap();
    let current = now - now % 5_000;
    let watermark = PaneRecord {
        metric: "m#watermark".into(),
        pane_start: runner::store::TIMELESS_PANE,
        partition: 0,
        offset: 9,
        state: json!(now).into(),
    };
    store
        .write_panes(&[
            pane(0, 0, 1, 1),
            pane(5_000, 0, 2, 2),
            pane(current, 0, 3, 3),
            watermark.clone(),
        ])
        .await
        .unwrap();
    store.record_alert(&notice("old", 1_000)).await.unwrap();
    store.record_alert(&notice("fresh", now)).await.unwrap();
    store
        .write_dead_letters(&[
            dead_letter("old", Reason::NotJson, 1_700_000_000_000),
            dead_letter("fresh", Reason::NotJson, now),
        ])
        .await
        .unwrap();
    let result = |end: i64| runner::store::ResultRow {
        metric: "m".into(),
        window_start: end - 60_000,
        window_end: end,
        value: json!(1),
    };
    store
        .write_results(&[result(60_000), result(current)])
        .await
        .unwrap();

    let t = std::time::Instant::now();
    loop {
        let left = (
            store.count_events().await.unwrap(),
            store
                .load_panes("m", 0, runner::store::TIMELESS_PANE, None)
                .await
                .unwrap()
                .len(),
            store.recent_alerts(10).await.unwrap().len(),
            store.count_dead_letters().await.unwrap(),
            store.load_results("m", 0, i64::MAX).await.unwrap().len(),
        );
        if left == (20, 1, 1, 1, 1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "rows past their retention are still stored: (raw, panes, alerts, dead letters, results) = {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let kept: Vec<Record> = store.all_events().await.unwrap();
    assert!(
        kept.iter().all(|r| r.time_ms() == now),
        "only the fresh records are left"
    );
    assert_eq!(
        store
            .load_panes("m", 0, runner::store::TIMELESS_PANE, None)
            .await
            .unwrap(),
        vec![pane(current, 0, 3, 3)],
        "the current pane stays"
    );
    let marks = store
        .load_panes(
            "m#watermark",
            runner::store::TIMELESS_PANE,
            runner::store::TIMELESS_PANE + 1,
            None,
        )
        .await
        .unwrap();
    assert_eq!(marks, vec![watermark], "watermarks never expire");
    assert_eq!(store.recent_alerts(10).await.unwrap()[0].id, "fresh");
    assert_eq!(store.dead_letters(10).await.unwrap()[0].id, "fresh");
    assert_eq!(store.latest_result("m").await.unwrap(), Some(current));
}

fn a_minute_each() -> RetentionConfig {
    let minute = Some(Duration::from_secs(60));
    RetentionConfig {
        raw: minute,
        panes: minute,
        alerts: minute,
        dead_letters: minute,
        results: minute,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_expires_each_kind_by_its_retention() {
    let shape = sensors();
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        data_dir: dir.path().to_path_buf(),
        ..EmbeddedConfig::default()
    };
    let store =
        EmbeddedStore::open(&config, &a_minute_each(), &shape.schema, &shape.indexes()).unwrap();
    retention_contract(&store, &shape).await;
}

/// On MongoDB every kind is a TTL index, which the server's own TTL monitor applies (on a
/// SecantusDB of this test's own, whose monitor is set to pass every second); a changed
/// retention rebuilds the index when the store opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store_expires_each_kind_by_ttl_indexes() {
    let server = common::services::Service::secantus().await;
    let shape = interactions();
    let mut config = mongo_config(&shape);
    config.uri = format!("mongodb://127.0.0.1:{}", server.port);
    let client = mongodb::Client::with_uri_str(&config.uri).await.unwrap();
    client
        .database("admin")
        .run_command(mongodb::bson::doc! {"setParameter": 1, "ttlMonitorSleepSecs": 1})
        .await
        .unwrap();
    let store = MongoStore::connect(&config, &a_minute_each(), &shape.schema)
        .await
        .unwrap();
    retention_contract(&store, &shape).await;

    // The expiry of each index follows the configured retention, also when it changes.
    let db = client.database(&config.database);
    let expiry = |coll: &'static str, field: &'static str| {
        let c = db.collection::<mongodb::bson::Document>(coll);
        async move {
            use futures::TryStreamExt;
            let indexes: Vec<mongodb::IndexModel> =
                c.list_indexes().await.unwrap().try_collect().await.unwrap();
            let i = indexes
                .iter()
                .find(|i| i.keys.len() == 1 && i.keys.contains_key(field))
                .unwrap_or_else(|| panic!("an index on {coll}.{field}"));
            i.options
                .as_ref()
                .and_then(|o| o.expire_after)
                .map(|d| d.as_secs())
        }
    };
    let time = shape.schema.time_name().to_string();
    let time: &'static str = Box::leak(time.into_boxed_str());
    assert_eq!(
        (
            expiry("raw", time).await,
            expiry("aggregated_metrics", "pane_at").await,
            expiry("alerts", "at").await,
            expiry("dead_letters", "at").await
        ),
        (Some(60), Some(60), Some(60), Some(60))
    );
    assert_eq!(expiry("metric_results", "window_end").await, Some(60));
    let changed = RetentionConfig {
        raw: Some(Duration::from_secs(86_400)),
        panes: None,
        ..a_minute_each()
    };
    MongoStore::connect(&config, &changed, &shape.schema)
        .await
        .unwrap();
    assert_eq!(
        expiry("raw", time).await,
        Some(86_400),
        "a changed retention rebuilds the TTL index"
    );
    assert_eq!(
        expiry("aggregated_metrics", "pane_at").await,
        None,
        "no retention leaves a plain index"
    );
}

#[tokio::test]
async fn embedded_store_meets_every_role_contract_for_two_schemas() {
    for shape in [interactions(), sensors()] {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            data_dir: dir.path().to_path_buf(),
            ..EmbeddedConfig::default()
        };
        // The embedded store is also a history replay (its row numbers).
        let replay = tempfile::tempdir().unwrap();
        let fresh = EmbeddedStore::open(
            &EmbeddedConfig {
                data_dir: replay.path().to_path_buf(),
                ..EmbeddedConfig::default()
            },
            &Default::default(),
            &shape.schema,
            &[],
        )
        .unwrap();
        history_contract(&fresh, &fresh, &shape).await;
        collections_contract(&fresh).await;
        contract(
            &EmbeddedStore::open(
                &config,
                &Default::default(),
                &shape.schema,
                &shape.indexes(),
            )
            .unwrap(),
            &shape,
        )
        .await;
        // The indexed fields are columns of their own, with an index each.
        let db = rusqlite::Connection::open(dir.path().join("runner.db")).unwrap();
        let field = shape.indexes[0];
        let value = shape
            .record(4)
            .field(field)
            .unwrap()
            .as_text()
            .unwrap()
            .into_owned();
        let n: i64 = db
            .query_row(
                &format!("SELECT COUNT(*) FROM raw_records WHERE f_{field} = ?1"),
                [&value],
                |r| r.get(0),
            )
            .unwrap();
        let expected = (0..150)
            .filter(|i| shape.record(*i).field(field).unwrap().as_text().unwrap() == value)
            .count() as i64;
        assert_eq!(n, expected, "records with {field} = {value}");
        let plan: String = db
            .query_row(
                &format!("EXPLAIN QUERY PLAN SELECT id FROM raw_records WHERE f_{field} = 'x'"),
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains(&format!("raw_records_{field}")),
            "the query uses the field's index: {plan}"
        );
    }
}

fn mongo_config(shape: &Shape) -> MongoConfig {
    MongoConfig {
        uri: common::mongodb(),
        database: common::unique("contract"),
        raw_collection: "raw".into(),
        metrics_collection: "aggregated_metrics".into(),
        alerts_collection: "alerts".into(),
        alert_state_collection: "alert_state".into(),
        silence_collection: "silences".into(),
        dead_letter_collection: "dead_letters".into(),
        results_collection: "metric_results".into(),
        lease_collection: "leases".into(),
        indexes: shape.indexes(),
        connect_timeout: Duration::from_secs(20),
        insert_streams: 4,
    }
}

#[tokio::test]
async fn mongo_store_meets_the_raw_and_state_contracts_for_two_schemas() {
    for shape in [interactions(), sensors()] {
        let config = mongo_config(&shape);
        let retention = RetentionConfig {
            raw: Some(Duration::from_secs(7 * 86400)),
            ..Default::default()
        };
        let store = MongoStore::connect(&config, &retention, &shape.schema)
            .await
            .unwrap();
        contract(&store, &shape).await;
        collections_contract(&store).await;
        // Indexes: the unique id, the time (TTL) and each declared one.
        let client = mongodb::Client::with_uri_str(&config.uri).await.unwrap();
        let raw = client
            .database(&config.database)
            .collection::<mongodb::bson::Document>("raw");
        let names = raw.list_index_names().await.unwrap();
        let (id, time) = (shape.schema.id_name(), shape.schema.time_name());
        for wanted in [format!("{id}_unique"), format!("{time}_ttl")]
            .into_iter()
            .chain(shape.indexes.iter().map(|f| format!("{f}_1")))
        {
            assert!(names.contains(&wanted), "{wanted} in {names:?}");
        }
        client.database(&config.database).drop().await.unwrap();
    }
}

#[tokio::test]
async fn mongo_refuses_only_the_records_it_cannot_hold() {
    let shape = interactions();
    let config = mongo_config(&shape);
    let store = MongoStore::connect(&config, &Default::default(), &shape.schema)
        .await
        .unwrap();
    let with = |i: u32, extra: &str| {
        let json = (shape.json)(i);
        let json = format!("{},{extra}}}", &json[..json.len() - 1]);
        Record::from_json(&shape.schema, json.as_bytes()).unwrap()
    };
    // A key BSON cannot encode (the driver refuses the whole batch before sending it) and an
    // `_id` the server refuses (a per-document write error), between good records.
    let batch = vec![
        shape.record(0),
        with(1, r#""a\u0000b":1"#),
        shape.record(2),
        with(3, r#""_id":[1,2]"#),
        shape.record(4),
    ];
    let outcome = store.insert_events(&batch).await.unwrap();
    let refused: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(
        (outcome.inserted, outcome.duplicates.len(), refused),
        (3, 0, vec![1, 3]),
        "{outcome:?}"
    );
    assert!(
        outcome.rejected[0].reason.contains("BSON"),
        "{:?}",
        outcome.rejected[0]
    );
    assert!(
        outcome.rejected[1].reason.contains("MongoDB refused"),
        "{:?}",
        outcome.rejected[1]
    );
    assert_eq!(store.count_events().await.unwrap(), 3);
    // Sent again (a replay): the good ones are duplicates, the bad ones refused again.
    let again = store.insert_events(&batch).await.unwrap();
    assert_eq!(
        (again.inserted, again.duplicates.len(), again.rejected.len()),
        (0, 3, 2),
        "{again:?}"
    );
    mongodb::Client::with_uri_str(&config.uri)
        .await
        .unwrap()
        .database(&config.database)
        .drop()
        .await
        .unwrap();
}

#[tokio::test]
async fn mongo_splits_a_batch_over_insert_streams_and_reports_refusals_at_their_batch_positions() {
    let shape = interactions();
    let config = mongo_config(&shape);
    assert!(config.insert_streams > 1);
    let store = MongoStore::connect(&config, &Default::default(), &shape.schema)
        .await
        .unwrap();
    let with = |i: u32, extra: &str| {
        let json = (shape.json)(i);
        let json = format!("{},{extra}}}", &json[..json.len() - 1]);
        Record::from_json(&shape.schema, json.as_bytes()).unwrap()
    };
    // 1,200 records: four streams of 300. Server refusals in three of them, and a record kept
    // back before sending, which shifts every later position among those sent.
    let batch: Vec<Record> = (0..1200)
        .map(|i| match i {
            5 | 700 | 1100 => with(i, r#""_id":[1,2]"#),
            450 => with(i, r#""a\u0000b":1"#),
            _ => shape.record(i),
        })
        .collect();
    let outcome = store.insert_events(&batch).await.unwrap();
    let refused: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(
        (outcome.inserted, outcome.duplicates.len(), refused),
        (1196, 0, vec![5, 450, 700, 1100]),
        "{:?}",
        outcome.rejected
    );
    assert_eq!(store.count_events().await.unwrap(), 1196);
    let again = store.insert_events(&batch).await.unwrap();
    assert_eq!(
        (again.inserted, again.duplicates.len(), again.rejected.len()),
        (0, 1196, 4)
    );
    mongodb::Client::with_uri_str(&config.uri)
        .await
        .unwrap()
        .database(&config.database)
        .drop()
        .await
        .unwrap();
}
