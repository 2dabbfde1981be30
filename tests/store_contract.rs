//! One contract, two stores: MongoDB (on the real server) and the embedded SQLite store.

mod common;

use chrono::{TimeZone, Utc};
use runner::store::PaneRecord;
use runner::dead_letter::{DeadLetter, Reason};
use runner::event::Event;
use serde_json::json;
use runner::store::embedded::{EmbeddedConfig, EmbeddedStore};
use runner::store::mongo::{MongoConfig, MongoStore};
use runner::store::{EventStore, InsertOutcome};
use std::time::Duration;

fn event(i: u32) -> Event {
    let mut e = Event {
        event_id: format!("ev-{i}"),
        user_id: format!("user_{}", i % 7),
        item_id: format!("item_{}", i % 5),
        interaction_type: if i.is_multiple_of(3) { "purchase" } else { "view" }.into(),
        timestamp: Utc.timestamp_millis_opt(1_700_000_000_000 + i as i64 * 1000).unwrap(),
        session_id: format!("s-{i}"),
        value: i as f64 / 4.0,
        price: i.is_multiple_of(3).then_some(12.5),
        view_duration: (!i.is_multiple_of(3)).then_some(30.0),
        attributes: Default::default(),
    };
    if i == 1 {
        e.attributes.insert("channel".into(), "web".into());
    }
    e
}

async fn contract(store: &dyn EventStore) {
    assert_eq!(store.count_events().await.unwrap(), 0, "starts empty");
    assert_eq!(store.insert_events(&[]).await.unwrap(), InsertOutcome::default());

    let first: Vec<Event> = (0..100).map(event).collect();
    assert_eq!(store.insert_events(&first).await.unwrap(), InsertOutcome { inserted: 100, duplicates: 0 });

    // A replay overlapping what is stored writes only the new events.
    let overlap: Vec<Event> = (50..150).map(event).collect();
    assert_eq!(store.insert_events(&overlap).await.unwrap(), InsertOutcome { inserted: 50, duplicates: 50 });
    assert_eq!(store.insert_events(&[event(3)]).await.unwrap(), InsertOutcome { inserted: 0, duplicates: 1 });
    assert_eq!(store.count_events().await.unwrap(), 150);

    // Every field comes back as written, oldest first.
    let back = store.all_events().await.unwrap();
    let expected: Vec<Event> = (0..150).map(event).collect();
    assert_eq!(back, expected);

    // Metric partials: replaced by newer offsets, never by older ones; read back by range.
    let pane = |start: i64, partition: i32, offset: i64, n: u64| PaneRecord {
        metric: "m".into(),
        pane_start: start,
        partition,
        offset,
        state: json!({"single": {"count": n}}),
    };
    store.write_panes(&[pane(0, 0, 10, 1), pane(5000, 0, 12, 2), pane(5000, 1, 3, 7)]).await.unwrap();
    store.write_panes(&[pane(5000, 0, 20, 5)]).await.unwrap();
    store.write_panes(&[pane(5000, 0, 15, 99)]).await.unwrap(); // stale: a consumer that lost the partition
    let mut loaded = store.load_panes("m", 5000, 10_000, None).await.unwrap();
    loaded.sort_by_key(|p| p.partition);
    assert_eq!(loaded, vec![pane(5000, 0, 20, 5), pane(5000, 1, 3, 7)]);
    assert_eq!(store.load_panes("m", 0, 10_000, Some(1)).await.unwrap(), vec![pane(5000, 1, 3, 7)]);
    assert!(store.load_panes("other", 0, 10_000, None).await.unwrap().is_empty());

    // Alert state: one JSON value per rule, replaced on save.
    assert!(store.load_alert_states().await.unwrap().is_empty());
    store.save_alert_state("r1", &json!({"severity": "warning", "instances": {}})).await.unwrap();
    store.save_alert_state("r1", &json!({"severity": "critical", "instances": {"item=a.b$c": {"x": 1}}})).await.unwrap();
    assert_eq!(
        store.load_alert_states().await.unwrap(),
        vec![("r1".to_string(), json!({"severity": "critical", "instances": {"item=a.b$c": {"x": 1}}}))]
    );

    // Alert history: newest first, and recording the same notification twice keeps one.
    let notice = |id: &str, at: i64| {
        let mut n: runner::alert::Notification = serde_json::from_value(json!({
            "id": id, "pipeline": "p", "alert": "a", "status": "firing", "change": "firing", "severity": "warning",
            "labels": {"alertname": "a"}, "value": 1.5, "message": "m", "description": "", "fingerprint": "",
            "starts_at": "2026-11-28T00:00:00Z", "ends_at": null, "at": "2026-11-28T00:00:00Z", "channels": ["log"]
        }))
        .unwrap();
        n.at = Utc.timestamp_millis_opt(at).unwrap();
        n
    };
    store.record_alert(&notice("n1", 1_000)).await.unwrap();
    store.record_alert(&notice("n2", 2_000)).await.unwrap();
    store.record_alert(&notice("n1", 1_000)).await.unwrap();
    let recent = store.recent_alerts(10).await.unwrap();
    assert_eq!(recent.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["n2", "n1"]);
    assert_eq!(recent[1], notice("n1", 1_000));

    // Dead letters: kept with reason and source, idempotent by id, newest first.
    let dead = |id: &str, reason: Reason| DeadLetter {
        id: id.into(),
        reason,
        detail: "expected value at line 1 column 1".into(),
        partition: 2,
        offset: 41,
        payload: "{oops".into(),
        payload_bytes: 5,
        at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
    };
    store.write_dead_letters(&[dead("t:2:41", Reason::NotJson), dead("t:2:42", Reason::InvalidUtf8)]).await.unwrap();
    store.write_dead_letters(&[dead("t:2:41", Reason::NotJson)]).await.unwrap();
    assert_eq!(store.count_dead_letters().await.unwrap(), 2);
    let mut back = store.dead_letters(10).await.unwrap();
    back.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(back, vec![dead("t:2:41", Reason::NotJson), dead("t:2:42", Reason::InvalidUtf8)]);
}

#[tokio::test]
async fn embedded_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig { data_dir: dir.path().to_path_buf(), ..EmbeddedConfig::default() };
    contract(&EmbeddedStore::open(&config, None).unwrap()).await;
}

#[tokio::test]
async fn mongo_store_meets_the_contract() {
    let config = MongoConfig {
        uri: common::mongodb(),
        database: common::unique("contract"),
        raw_collection: "raw_interactions".into(),
        metrics_collection: "aggregated_metrics".into(),
        alerts_collection: "alerts".into(),
        alert_state_collection: "alert_state".into(),
        dead_letter_collection: "dead_letters".into(),
        retention: Some(Duration::from_secs(7 * 86400)),
        connect_timeout: Duration::from_secs(20),
    };
    contract(&MongoStore::connect(&config).await.unwrap()).await;
}
