use super::*;
use crate::aggregate::reducer::OTHER_KEY;
use crate::aggregate::{MetricConfig, ReducerKind};
use crate::event::{Schema, Value};
use std::time::Duration;

/// A count-per-item metric set, its script in a directory removed once compiled.
pub(in crate::aggregate) fn per_item_set(window: Duration, lateness: Duration) -> Arc<MetricSet> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("per_item.rhai");
    std::fs::write(&script, "#{ key: field(\"item_id\") }").unwrap();
    let config = MetricConfig {
        name: "per_item".into(),
        script,
        reducer: ReducerKind::Count,
        k: 1,
        window,
        slide: Some(Duration::from_secs(5)),
        time: TimeMode::Event,
        lateness,
        description: String::new(),
        unit: String::new(),
        stages: Vec::new(),
        quantiles: Vec::new(),
        buckets: Vec::new(),
        exact_limit: 10_000,
        max_groups: 50_000,
        session: None,
    };
    Arc::new(MetricSet::load(&[config], &[], &schema()).unwrap())
}

/// The record these tests aggregate: an id, an item, a time and an optional amount.
pub(in crate::aggregate) fn schema() -> Arc<Schema> {
    crate::event::schema_of("fields = { event_id = \"string\", item_id = \"string\", timestamp = \"timestamp\", amount = \"float?\" }\nid = \"event_id\"\ntime = \"timestamp\"")
}

pub(in crate::aggregate) fn event(id: &str, item: &str, second: i64) -> Record {
    let s = schema();
    let mut r = Record::new(&s);
    r.set_id(id);
    r.set(s.slot("item_id").unwrap(), Value::Text(item.into()));
    r.set_time_ms((1_000_000 + second) * 1000);
    r
}

/// Splits written records into metric partials and watermark records.
fn panes_and_watermarks(records: Vec<PaneRecord>) -> (Vec<PaneRecord>, Vec<PaneRecord>) {
    records
        .into_iter()
        .partition(|r| !r.metric.ends_with("#watermark"))
}

/// After a crash (memory lost), the stored watermark makes an event that was late before
/// late again on replay, and a replayed late event is not dead-lettered twice.
#[test]
fn a_stored_watermark_keeps_late_events_late_after_a_crash() {
    let (mut agg, _) = aggregator(10);
    agg.apply(
        &[event("new", "x", 60), event("old", "x", 5)],
        &[(0, 1), (0, 2)],
    );
    assert_eq!(agg.take_late().len(), 1);
    let stored = agg.checkpoint();
    // A new process: loads what was stored, then replays from offset 2 and reads offset 3.
    let (mut again, stats) = aggregator(10);
    again.install(0, 0, stored).unwrap();
    again.apply(
        &[event("old", "x", 5), event("older", "x", 4)],
        &[(0, 2), (0, 3)],
    );
    let late = again.take_late();
    assert_eq!(
        late.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["late:0:3"],
        "the replayed one is not dead-lettered again"
    );
    assert_eq!(stats.snapshot().late_events, 1);
    let (panes, _) = panes_and_watermarks(again.checkpoint());
    assert!(panes.is_empty(), "nothing counted: {panes:?}");
}

fn aggregator(lateness_s: u64) -> (Aggregator, Arc<Stats>) {
    let set = per_item_set(Duration::from_secs(60), Duration::from_secs(lateness_s));
    let stats = Stats::new();
    (Aggregator::new(set, stats.clone()), stats)
}

/// Offsets up to a metric's seam on a partition are its backfill's: live skips them, also
/// when they are read again after a rebalance or restart.
#[test]
fn live_leaves_offsets_up_to_the_seam_to_the_backfill() {
    let (mut agg, _) = aggregator(10);
    let m = &agg.set.metrics[0];
    let seam = crate::aggregate::backfill::new_seam(m, 0, 11, 1_000_000_000).unwrap();
    agg.install(0, 0, vec![seam]).unwrap();
    let events: Vec<Record> = (0..5).map(|i| event(&format!("e{i}"), "x", i)).collect();
    agg.apply(&events, &[(0, 9), (0, 10), (0, 11), (0, 12), (0, 13)]);
    let (panes, _) = panes_and_watermarks(agg.checkpoint());
    assert_eq!(panes.len(), 1);
    assert_eq!(
        panes[0].state.to_value().unwrap()["counts"]["x"],
        2,
        "offsets 12 and 13 only"
    );
}

/// Metrics applied side by side on worker threads give the partials, watermarks and late
/// dead letters (each naming every metric that left its event out, in metric order) that
/// one thread gives.
#[test]
fn metrics_applied_on_worker_threads_give_what_one_thread_gives() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("per_item.rhai");
    std::fs::write(&script, "#{ key: field(\"item_id\") }").unwrap();
    let metric = |name: &str, reducer, lateness| MetricConfig {
        name: name.into(),
        script: script.clone(),
        reducer,
        k: 2,
        window: Duration::from_secs(60),
        slide: Some(Duration::from_secs(5)),
        time: TimeMode::Event,
        lateness: Duration::from_secs(lateness),
        description: String::new(),
        unit: String::new(),
        stages: Vec::new(),
        quantiles: Vec::new(),
        buckets: Vec::new(),
        exact_limit: 10_000,
        max_groups: 50_000,
        session: None,
    };
    let configs = [
        metric("count", ReducerKind::Count, 10),
        metric("top", ReducerKind::TopK, 30),
        metric("bottom", ReducerKind::BottomK, 5),
    ];
    let set = Arc::new(MetricSet::load(&configs, &[], &schema()).unwrap());
    // Out of order by up to two minutes over three partitions: some late for one metric, some for all.
    let events: Vec<Record> = (0..600)
        .map(|i| {
            event(
                &format!("e{i}"),
                &format!("item{}", i % 7),
                i / 4 + (i * 37 % 120) - 60,
            )
        })
        .collect();
    let sources: Vec<(i32, i64)> = (0..600).map(|i: i32| (i % 3, (i / 3) as i64)).collect();
    let run = |threads: usize| {
        let mut agg =
            Aggregator::new(set.clone(), Stats::new()).with_workers(Workers::new(threads));
        let (mut written, mut late) = (Vec::new(), Vec::new());
        for (events, sources) in events.chunks(64).zip(sources.chunks(64)) {
            agg.apply(events, sources);
            late.extend(agg.take_late().into_iter().map(|d| (d.id, d.detail)));
            // Watermarks and a state's keys come in hash order: sorted per checkpoint, and
            // states compared as JSON values (key order aside).
            let mut records: Vec<_> = agg
                .checkpoint()
                .into_iter()
                .map(|r| {
                    (
                        (r.metric, r.pane_start, r.partition, r.offset),
                        r.state.to_value().unwrap(),
                    )
                })
                .collect();
            records.sort_by(|a, b| a.0.cmp(&b.0));
            written.push(records);
        }
        (written, late)
    };
    let (one, three) = (run(1), run(3));
    assert!(
        one.1.iter().any(|(_, detail)| detail.contains("; ")),
        "an event late for several metrics"
    );
    assert_eq!(one.0.len(), three.0.len());
    for (i, (a, b)) in one.0.iter().zip(&three.0).enumerate() {
        assert_eq!(a, b, "checkpoint {i}");
    }
    assert_eq!(one.1, three.1, "the same late events, the same details");
}

/// A recomputation writes each pane once: a pane leaves only when no event can reach it.
#[test]
fn a_pane_is_closed_once_its_end_plus_lateness_is_behind_the_watermark() {
    let (mut agg, _) = aggregator(10);
    agg.apply(
        &[event("a", "x", 1), event("b", "x", 7), event("c", "x", 19)],
        &[(0, 1), (0, 2), (0, 3)],
    );
    // Watermark 1,000,019 s; panes of 5 s, lateness 10 s: the pane at 1,000,000 s closes
    // (its end 1,000,005 + 10 <= 1,000,019), the one at 1,000,005 does not (1,000,010 + 10).
    let closed = agg.take_closed(false);
    assert_eq!(
        closed.iter().map(|r| r.pane_start).collect::<Vec<_>>(),
        [1_000_000_000]
    );
    assert_eq!(closed[0].offset, 1);
    let rest = agg.take_closed(true);
    assert_eq!(
        rest.iter().map(|r| r.pane_start).collect::<Vec<_>>(),
        [1_000_005_000, 1_000_015_000]
    );
    assert!(
        agg.take_closed(true).is_empty(),
        "each pane is handed out once"
    );
}

#[test]
fn partitions_have_their_own_watermark() {
    let (mut agg, stats) = aggregator(10);
    // Partition 1 replays old events while partition 0 is current: neither is late.
    agg.apply(
        &[event("a", "x", 100), event("b", "x", 20)],
        &[(0, 1), (1, 1)],
    );
    assert_eq!(stats.snapshot().late_events, 0);
    agg.apply(&[event("c", "x", 5)], &[(1, 2)]);
    assert_eq!(
        stats.snapshot().late_events,
        1,
        "15 s behind its own partition is late"
    );
}

#[test]
fn out_of_order_within_lateness_counts_and_later_is_late() {
    let (mut agg, stats) = aggregator(10);
    let events = [event("a", "x", 30), event("b", "x", 22), event("c", "y", 5)];
    agg.apply(&events, &[]);
    let (dirty, marks) = panes_and_watermarks(agg.checkpoint());
    assert_eq!(marks.len(), 1, "the partition's watermark is stored too");
    assert_eq!(marks[0].state.as_i64(), Some(1_000_030_000));
    let total: u64 = dirty
        .iter()
        .map(|r| {
            r.state.to_value().unwrap()["counts"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(total, 2, "8 s out of order counts; 25 s behind is late");
    assert_eq!(stats.snapshot().late_events, 1);
    let late = agg.take_late();
    assert_eq!(late.len(), 1, "one dead letter for the late event");
    assert_eq!(
        (late[0].id.as_str(), late[0].reason),
        ("late:c@1000005000", Reason::Late)
    );
    assert!(
        late[0].payload.contains("\"event_id\":\"c\""),
        "{}",
        late[0].payload
    );
    assert!(agg.take_late().is_empty());
    let panes: Vec<i64> = dirty.iter().map(|r| r.pane_start).collect();
    assert_eq!(
        panes,
        vec![1_000_020_000, 1_000_030_000],
        "each event touches its own pane"
    );
}

#[test]
fn replayed_offsets_are_skipped() {
    let (mut agg, _) = aggregator(10);
    let events = [event("a", "x", 1), event("b", "x", 2)];
    agg.apply(&events, &[(0, 10), (0, 11)]);
    agg.apply(&events, &[(0, 10), (0, 11)]);
    agg.apply(&[event("c", "x", 3)], &[(0, 12)]);
    let (dirty, marks) = panes_and_watermarks(agg.checkpoint());
    assert_eq!(
        marks[0].offset, 12,
        "the watermark knows the last offset it saw"
    );
    assert_eq!(dirty.len(), 1);
    assert_eq!(dirty[0].offset, 12);
    assert_eq!(dirty[0].state.to_value().unwrap()["counts"]["x"], 3);
}

/// The shipped conversion rate as the built-in ratio and as the scripted custom reducer:
/// the same number, over the same records.
#[test]
fn ratio_reducer_equals_the_custom_script_it_replaced() {
    let schema = crate::event::schema_of("fields = { id = \"string\", interaction_type = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"");
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/metrics");
    let metric = |name: &str, file: &str, reducer: ReducerKind| MetricConfig {
        k: 1,
        ..config(name, scripts.join(file), reducer)
    };
    let set = Arc::new(
        MetricSet::load(
            &[
                metric("ratio", "conversion_ratio.rhai", ReducerKind::Ratio),
                metric("custom", "conversion_rate.rhai", ReducerKind::Custom),
            ],
            &[],
            &schema,
        )
        .unwrap(),
    );
    let kinds = [
        "view", "purchase", "view", "click", "view", "purchase", "share", "view",
    ];
    let events: Vec<Record> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Record::from_json(
                &schema,
                format!(
                    r#"{{"id":"e{i}","interaction_type":"{k}","t":"2026-01-01T00:00:{i:02}Z"}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        })
        .collect();
    let mut agg = Aggregator::new(set.clone(), Stats::new());
    agg.apply(&events, &[]);
    let reported: Vec<serde_json::Value> = set
        .metrics()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.report(&agg.states[i].cells.values().next().unwrap().partial)
                .unwrap()
        })
        .collect();
    assert_eq!(
        reported[0],
        serde_json::json!(0.5),
        "2 purchases per 4 views"
    );
    assert_eq!(reported[0], reported[1]);
}

/// A stored partial that does not decode (written as `null` by an older version, or damaged)
/// is set aside whole with a dead letter, and its pane starts again: loading never fails on it.
#[test]
fn a_stored_state_that_cannot_be_read_is_quarantined_and_its_pane_starts_again() {
    let (mut agg, _) = aggregator(10);
    let key = agg.set.metrics[0].state_key().to_string();
    let broken = PaneRecord {
        metric: key.clone(),
        pane_start: 1_000_000_000,
        partition: 0,
        offset: 4,
        state: crate::store::StateJson::stored(r#"{"single":{"sum":{"sum":null,"n":2}}}"#.into()),
    };
    agg.install(0, 0, vec![broken.clone()])
        .expect("a bad state does not fail the load");
    let dead = agg.take_late();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, Reason::CorruptState);
    assert!(
        dead[0].detail.contains("per_item") && dead[0].payload.contains("null"),
        "{:?}",
        dead[0]
    );
    agg.apply(&[event("e", "x", 1)], &[(0, 5)]);
    let written = agg.checkpoint();
    let kept = written
        .iter()
        .find(|r| r.metric.ends_with("#quarantined"))
        .expect("the bad state is written aside");
    assert_eq!(
        (kept.pane_start, kept.partition, kept.state.as_str()),
        (broken.pane_start, 0, broken.state.as_str())
    );
    let pane = written
        .iter()
        .find(|r| r.metric == key)
        .expect("the pane starts again");
    assert_eq!(pane.state.to_value().unwrap()["counts"]["x"], 1);
}

/// A record stamped minutes ahead (a device clock off, within max_future) counts in its
/// pane, but the watermark stays at the wall clock: the ordinary records after it are not late.
#[test]
fn a_record_from_minutes_ahead_does_not_make_the_ordinary_ones_late() {
    let (mut agg, stats) = aggregator(5);
    let now = chrono::Utc::now().timestamp_millis();
    let at = |id: &str, ms: i64| {
        let mut e = event(id, "x", 0);
        e.set_time_ms(ms);
        e
    };
    agg.apply(&[at("ahead", now + 290_000)], &[(0, 1)]);
    agg.apply(
        &[at("now", now - 1_000), at("a bit late", now - 3_000)],
        &[(0, 2), (0, 3)],
    );
    assert!(agg.take_late().is_empty(), "nothing late");
    assert_eq!(stats.snapshot().late_events, 0);
    let (panes, marks) = panes_and_watermarks(agg.checkpoint());
    assert!(
        marks[0].state.as_i64().unwrap() <= chrono::Utc::now().timestamp_millis(),
        "the watermark is not in the future"
    );
    assert_eq!(
        panes
            .iter()
            .map(|p| p.state.to_value().unwrap()["counts"]["x"].as_u64().unwrap())
            .sum::<u64>(),
        3,
        "all three counted"
    );
    // No pane is closed early by the future record.
    assert!(
        agg.take_closed(false)
            .iter()
            .all(|r| r.pane_start < now - 60_000),
        "nothing recent closed"
    );
}

/// After a start, one record dated year 1 no longer loads every retained pane of its
/// partition: what is loaded starts at the stored watermark less the reach.
#[tokio::test]
async fn a_record_from_year_one_loads_only_the_panes_a_late_record_could_reach() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::store::embedded::EmbeddedConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let store =
        crate::store::embedded::EmbeddedStore::open(&config, &Default::default(), &schema(), &[])
            .unwrap();
    let (mut agg, _) = aggregator(10);
    // A day of panes, then a restart.
    for hour in 0..24 {
        agg.apply(
            &[event(&format!("h{hour}"), "x", hour * 3600)],
            &[(0, hour)],
        );
    }
    store.write_panes(&agg.checkpoint()).await.unwrap();
    let (mut again, _) = aggregator(10);
    let mut ancient = event("ancient", "x", 0);
    ancient.set_time_ms(-62_135_596_800_000);
    let batch = crate::transport::Batch {
        events: vec![ancient, event("next", "x", 23 * 3600 + 1)],
        sources: vec![(0, 24), (0, 25)],
        ..Default::default()
    };
    let loaded = again.load(&batch, &store).await.unwrap();
    let late = again.ingest(&batch, loaded).unwrap();
    assert_eq!(late.len(), 1, "the ancient record is late");
    let loaded: Vec<i64> = again.states[0]
        .cells
        .keys()
        .map(|(pane, _)| *pane)
        .collect();
    assert!(
        loaded
            .iter()
            .all(|pane| *pane >= (1_000_000 + 23 * 3600 - 60) * 1000),
        "only panes near the watermark: {} loaded",
        loaded.len()
    );
}

/// A panic applying one metric is that metric's dead letter for the batch; the process goes on.
#[test]
fn a_panic_in_one_metric_is_a_dead_letter_not_the_end() {
    let set = per_item_set(Duration::from_secs(60), Duration::from_secs(5));
    let m = &set.metrics[0];
    let events = [event("a", "x", 1), event("b", "x", 2)];
    let letters = crate::base::catch_panic(|| -> Vec<DeadLetter> { panic!("index out of bounds") })
        .unwrap_or_else(|p| vec![panicked(m, &events, &[(2, 40), (2, 41)], &p)]);
    assert_eq!(letters.len(), 1);
    let d = &letters[0];
    assert_eq!(
        (d.reason, d.partition, d.offset),
        (Reason::InternalError, 2, 40)
    );
    assert!(
        d.detail.contains("index out of bounds") && d.detail.contains("offsets 40 to 41"),
        "{}",
        d.detail
    );
}

/// Two records that reuse one event id but sit at different offsets are two late dead
/// letters, not one merged.
#[test]
fn late_records_that_reuse_an_id_stay_two_dead_letters() {
    let (mut agg, _) = aggregator(5);
    agg.apply(
        &[
            event("new", "x", 100),
            event("dup", "x", 1),
            event("dup", "y", 2),
        ],
        &[(0, 1), (0, 2), (0, 3)],
    );
    let late = agg.take_late();
    assert_eq!(
        late.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["late:0:2", "late:0:3"]
    );
}

/// A tumbling minute's metric with an hour's lateness and top 3.
fn config(name: &str, script: std::path::PathBuf, reducer: ReducerKind) -> MetricConfig {
    MetricConfig {
        name: name.into(),
        script,
        reducer,
        k: 3,
        window: Duration::from_secs(60),
        slide: None,
        time: TimeMode::Event,
        lateness: Duration::from_secs(3600),
        description: String::new(),
        unit: String::new(),
        stages: Vec::new(),
        quantiles: Vec::new(),
        buckets: Vec::new(),
        exact_limit: 10_000,
        max_groups: 50_000,
        session: None,
    }
}

/// [`config`] of a script written into `dir`.
fn scripted(
    dir: &std::path::Path,
    name: &str,
    reducer: ReducerKind,
    script: &str,
    max_groups: usize,
) -> MetricConfig {
    let path = dir.join(format!("{name}.rhai"));
    std::fs::write(&path, script).unwrap();
    MetricConfig {
        max_groups,
        ..config(name, path, reducer)
    }
}

/// A custom state JSON cannot hold (infinity) and a value script's infinity are that
/// metric's errors; the pane of a built-in metric beside them is written as usual.
#[test]
fn a_non_finite_number_is_one_metrics_error_and_never_stored_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let custom = "fn init() { #{ total: 0.0 } }\nfn update(e) { this.total += 1e308 * 10.0; }\nfn merge(o) { this.total += o.total; }\nfn finish() { this.total }";
    let configs = [
        scripted(
            dir.path(),
            "overflowing",
            ReducerKind::Custom,
            custom,
            50_000,
        ),
        scripted(
            dir.path(),
            "infinite_value",
            ReducerKind::Sum,
            "fn v(e) { 1e308 * 10.0 }\n#{ value: v }",
            50_000,
        ),
        scripted(
            dir.path(),
            "per_item",
            ReducerKind::Count,
            "#{ key: field(\"item_id\") }",
            50_000,
        ),
    ];
    let set = Arc::new(MetricSet::load(&configs, &[], &schema()).unwrap());
    let stats = Stats::new();
    let mut agg = Aggregator::new(set, stats.clone());
    agg.apply(&[event("a", "x", 1), event("b", "y", 2)], &[]);
    let (panes, _) = panes_and_watermarks(agg.checkpoint());
    assert!(
        panes.iter().all(|p| !p.state.as_str().contains("null")),
        "{panes:?}"
    );
    assert!(
        !panes.iter().any(|p| p.metric.starts_with("overflowing")),
        "the custom state is not stored"
    );
    let sums: Vec<_> = panes
        .iter()
        .filter(|p| p.metric.starts_with("infinite_value"))
        .map(|p| p.state.to_value().unwrap())
        .collect();
    assert!(
        sums.iter().all(|s| s["single"]["sum"]["n"] == 0),
        "infinity left out of the sum: {sums:?}"
    );
    assert_eq!(
        panes
            .iter()
            .filter(|p| p.metric.starts_with("per_item"))
            .count(),
        1,
        "the built-in metric beside them is written"
    );
    assert!(
        stats.snapshot().script_errors >= 3,
        "each reported as a script error"
    );
}

/// Past `max_groups` keys in a pane, further keys are counted under `__other__`, which
/// rankings leave out: the pane stays bounded and nothing is dropped from the count.
#[test]
fn keys_past_max_groups_are_counted_under_other_and_left_out_of_rankings() {
    let dir = tempfile::tempdir().unwrap();
    let configs = [scripted(
        dir.path(),
        "top",
        ReducerKind::TopK,
        "#{ key: field(\"item_id\") }",
        3,
    )];
    let set = Arc::new(MetricSet::load(&configs, &[], &schema()).unwrap());
    let mut agg = Aggregator::new(set.clone(), Stats::new());
    let events: Vec<Record> = (0..20)
        .map(|i| event(&format!("e{i}"), &format!("item{}", i % 10), 1))
        .collect();
    agg.apply(&events, &[]);
    let (panes, _) = panes_and_watermarks(agg.checkpoint());
    let groups = panes[0].state.to_value().unwrap()["counts"]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(groups.len(), 4, "three keys and the overflow: {groups:?}");
    assert_eq!(groups[OTHER_KEY], 14, "seven keys' records, twice each");
    let top = set.metrics[0]
        .report(&agg.states[0].cells.values().next().unwrap().partial)
        .unwrap();
    assert!(!top.to_string().contains(OTHER_KEY), "{top}");
}

/// Applies one record per item (its `item_id`, all in one pane) and reports each metric of `set`.
fn reports_over(set: &Arc<MetricSet>, items: &[&str]) -> Vec<serde_json::Value> {
    let mut agg = Aggregator::new(set.clone(), Stats::new());
    let events: Vec<Record> = items
        .iter()
        .enumerate()
        .map(|(i, item)| event(&format!("e{i}"), item, 1))
        .collect();
    agg.apply(&events, &[]);
    set.metrics()
        .iter()
        .zip(&agg.states)
        .map(|(m, state)| {
            m.report(&state.cells.values().next().unwrap().partial)
                .unwrap()
        })
        .collect()
}

/// A histogram's value falls in the bucket its bounds give (a bound starts its bucket); a
/// quantile metric reports its labels; settings that do not fit the reducer are load errors
/// naming the metric.
#[test]
fn histogram_and_quantile_metrics_bucket_and_rank_values_and_refuse_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let value = "fn v(e) { parse_float(e.item_id) }\n#{ value: v }";
    let histogram = MetricConfig {
        buckets: vec![10.0, 50.0],
        ..scripted(dir.path(), "sizes", ReducerKind::Histogram, value, 10)
    };
    let quantile = MetricConfig {
        quantiles: vec![0.5, 0.95],
        ..scripted(dir.path(), "p", ReducerKind::Quantile, value, 10)
    };
    let set =
        Arc::new(MetricSet::load(&[histogram.clone(), quantile.clone()], &[], &schema()).unwrap());
    let report = reports_over(&set, &["1", "25", "70", "70", "10"]);
    assert_eq!(
        report[0],
        serde_json::json!([
            {"key": "< 10", "count": 1},
            {"key": "10 – 50", "count": 2},
            {"key": "≥ 50", "count": 2},
        ])
    );
    assert_eq!(report[1], serde_json::json!({"p50": 25.0, "p95": 70.0}));

    let refused = |c: MetricConfig, says: &str| {
        let err = match MetricSet::load(&[c], &[], &schema()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded; expected an error saying {says:?}"),
        };
        assert!(err.contains(says), "{err}");
    };
    refused(
        MetricConfig {
            buckets: vec![],
            ..histogram.clone()
        },
        "goes with reducer \"histogram\"",
    );
    refused(
        MetricConfig {
            buckets: vec![50.0, 10.0],
            ..histogram.clone()
        },
        "must increase",
    );
    refused(
        MetricConfig {
            buckets: vec![1.0],
            ..quantile.clone()
        },
        "goes with reducer \"histogram\"",
    );
    refused(
        MetricConfig {
            quantiles: vec![95.0],
            ..quantile.clone()
        },
        "not between 0 and 1",
    );
    refused(
        MetricConfig {
            quantiles: vec![],
            ..quantile
        },
        "`quantiles` is empty",
    );
}

/// `lookup(table, field, column)` keys a metric by a column of the table's row for the
/// record's field, `__missing__` (or the default given) when the table has no row; a table or
/// column that does not exist is a load error at the script's line.
#[test]
fn a_lookup_keys_records_by_the_tables_column_and_names_what_it_lacks() {
    use crate::aggregate::LookupConfig;
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("items.csv");
    std::fs::write(
        &from,
        "item_id,category,list_price\nx,books,3.5\ny,garden,10\n",
    )
    .unwrap();
    let lookups = [LookupConfig {
        max_rows: 100,
        ..LookupConfig::of_file("items", from, "item_id")
    }];
    let configs = [
        scripted(
            dir.path(),
            "by_category",
            ReducerKind::Count,
            "#{ key: lookup(\"items\", \"item_id\", \"category\") }",
            10,
        ),
        scripted(
            dir.path(),
            "or_other",
            ReducerKind::Count,
            "#{ key: lookup(\"items\", \"item_id\", \"category\", \"other\") }",
            10,
        ),
        scripted(
            dir.path(),
            "list_prices",
            ReducerKind::Sum,
            "#{ value: lookup(\"items\", \"item_id\", \"list_price\") }",
            10,
        ),
    ];
    let set = Arc::new(MetricSet::load(&configs, &lookups, &schema()).unwrap());
    let report = reports_over(&set, &["x", "y", "x", "z"]);
    assert_eq!(
        report[0],
        serde_json::json!({"books": 2, "garden": 1, "__missing__": 1})
    );
    assert_eq!(
        report[1],
        serde_json::json!({"books": 2, "garden": 1, "other": 1})
    );
    // An item without a row has no list price: left out of the sum.
    assert_eq!(report[2], serde_json::json!(17.0));

    for (script, says) in [
        (
            "#{\n  key: lookup(\"stores\", \"item_id\", \"category\") }",
            "\"stores\" is not a [[lookup]] of the pipeline (there are: items)",
        ),
        (
            "#{\n  key: lookup(\"items\", \"item_id\", \"colour\") }",
            "no column \"colour\" (columns: item_id, category, list_price)",
        ),
    ] {
        let bad = scripted(dir.path(), "bad", ReducerKind::Count, script, 10);
        let err = match MetricSet::load(&[bad], &lookups, &schema()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded; expected {says:?}"),
        };
        assert!(err.contains(says) && err.contains("bad.rhai:2:"), "{err}");
    }
}

/// A session metric reduces each session of its key once it has ended: `having` keeps the
/// sessions with a record that passes it, `measure` is what each gives the reducer; settings
/// that do not fit a session metric are load errors naming the metric.
#[test]
fn session_metrics_reduce_ended_sessions_and_refuse_what_does_not_fit() {
    use crate::aggregate::{Measure, SessionConfig};
    let dir = tempfile::tempdir().unwrap();
    let metric = |name: &str, reducer, script: &str, measure| MetricConfig {
        lateness: Duration::from_secs(5),
        session: Some(SessionConfig {
            gap: Duration::from_secs(10),
            max_length: Duration::from_secs(3600),
            measure,
        }),
        ..scripted(dir.path(), name, reducer, script, 100)
    };
    let by_item = "#{ key: field(\"item_id\") }";
    let configs = [
        metric(
            "bought",
            ReducerKind::Count,
            "#{ key: field(\"item_id\"), having: field_is(\"amount\", 50.0) }",
            Measure::Sessions,
        ),
        metric("records", ReducerKind::Sum, by_item, Measure::Events),
        metric("longest", ReducerKind::Max, by_item, Measure::Duration),
    ];
    let set = Arc::new(MetricSet::load(&configs, &[], &schema()).unwrap());
    let amount = schema().slot("amount").unwrap();
    let mut bought = event("x0", "x", 0);
    bought.set(amount, Value::Float(50.0));
    let events = [
        bought,
        event("y1", "y", 1),
        event("z2", "z", 2),
        event("x5", "x", 5),
        // 100 s: every session above has ended (its last record + 10 s gap + 5 s lateness).
        event("w100", "w", 100),
    ];
    let mut agg = Aggregator::new(set.clone(), Stats::new());
    agg.apply(&events, &[]);
    let reports: Vec<serde_json::Value> = set
        .metrics()
        .iter()
        .zip(&agg.states)
        .map(|(m, st)| {
            assert_eq!(st.cells.len(), 1, "all ended at 95 s, in one pane");
            m.report(&st.cells.values().next().unwrap().partial)
                .unwrap()
        })
        .collect();
    assert_eq!(
        reports,
        [
            serde_json::json!(1),
            serde_json::json!(4.0),
            serde_json::json!(5.0)
        ]
    );

    for (reducer, script, says) in [
        (
            ReducerKind::TopK,
            by_item,
            "reduces its sessions with count, sum, avg",
        ),
        (
            ReducerKind::Avg,
            "#{ key: field(\"item_id\"), value: field(\"amount\") }",
            "value is its `measure`",
        ),
        (ReducerKind::Count, "#{}", "a session metric needs a `key`"),
    ] {
        let bad = metric("bad", reducer, script, Measure::Sessions);
        let err = MetricSet::load(&[bad], &[], &schema()).err().unwrap();
        assert!(err.to_string().contains(says), "{err}");
    }
    let having = scripted(
        dir.path(),
        "not_sessions",
        ReducerKind::Count,
        "#{ having: field_is(\"item_id\", \"x\") }",
        10,
    );
    let err = MetricSet::load(&[having], &[], &schema()).err().unwrap();
    assert!(
        err.to_string()
            .contains("`having` goes with a session metric"),
        "{err}"
    );
    let mut no_gap = metric("no_gap", ReducerKind::Count, by_item, Measure::Sessions);
    no_gap.session.as_mut().unwrap().gap = Duration::ZERO;
    let err = MetricSet::load(&[no_gap], &[], &schema()).err().unwrap();
    assert!(
        err.to_string().contains("gap must be longer than 0"),
        "{err}"
    );
}
