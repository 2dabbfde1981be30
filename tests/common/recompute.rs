//! The shipped metrics recomputed straight from raw events, to check what the pipeline stored.

use super::Fields;
use super::ServicePipeline;
use runner::aggregate::MetricValue;
use runner::event::Record;
use runner::store::{self, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The seed's metrics and the two added ones, computed directly from raw events in `[start, end)`.
pub fn recompute(events: &[Record], start: i64, end: i64) -> BTreeMap<String, Value> {
    let in_window: Vec<&Record> = events
        .iter()
        .filter(|e| (start..end).contains(&e.time_ms()))
        .collect();
    let catalogue = categories();
    let mut by_category: BTreeMap<String, f64> = BTreeMap::new();
    let mut view_durations: Vec<f64> = Vec::new();
    let mut by_length: BTreeMap<String, u64> = BTreeMap::new();
    // The shipped basket_prices buckets and their labels.
    let bounds = [25.0, 50.0, 100.0, 200.0, 300.0, 400.0];
    let labels = [
        "< 25",
        "25 – 50",
        "50 – 100",
        "100 – 200",
        "200 – 300",
        "300 – 400",
        "≥ 400",
    ];
    let mut baskets = [0u64; 7];
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    let mut per_item: HashMap<&str, u64> = HashMap::new();
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    let (mut revenue, mut views, mut purchases) = (0.0, 0u64, 0u64);
    // Funnel stages reached per session (1 view, 2 add_to_cart, 4 purchase).
    let mut stages: HashMap<&str, u8> = HashMap::new();
    for e in &in_window {
        let bit = match e.s("interaction_type") {
            "view" => 1,
            "add_to_cart" => 2,
            "purchase" => 4,
            _ => 0,
        };
        *stages.entry(e.s("session_id")).or_default() |= bit;
        *per_user.entry(e.s("user_id")).or_default() += 1;
        *per_item.entry(e.s("item_id")).or_default() += 1;
        *types
            .entry(e.s("interaction_type").to_string())
            .or_default() += 1;
        match e.s("interaction_type") {
            "purchase" => {
                purchases += 1;
                let price = e.n("price").unwrap();
                revenue += price;
                let category = catalogue
                    .get(e.s("item_id"))
                    .map_or("__missing__", String::as_str);
                *by_category.entry(category.to_string()).or_default() += price;
                baskets[bounds.iter().filter(|b| **b <= price).count()] += 1;
            }
            "view" => {
                views += 1;
                view_durations.extend(e.n("view_duration"));
                // The shipped derived field view_length (scripts/derive/view_length.rhai).
                if let Some(d) = e.n("view_duration") {
                    let length = match d {
                        d if d < 10.0 => "glance",
                        d if d < 60.0 => "read",
                        _ => "long",
                    };
                    *by_length.entry(length.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut items: Vec<(&str, u64)> = per_item.iter().map(|(k, v)| (*k, *v)).collect();
    items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let busiest = items
        .first()
        .map(|(k, c)| json!([{"key": k, "count": c}]))
        .unwrap();
    let top: Vec<Value> = items
        .iter()
        .take(10)
        .map(|(k, c)| json!({"key": k, "count": c}))
        .collect();
    items.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
    let quietest = items
        .first()
        .map(|(k, c)| json!([{"key": k, "count": c}]))
        .unwrap();
    let reached = |bits: u8| stages.values().filter(|s| **s & bits == bits).count() as u64;
    let (sessions, carted, purchased) = (reached(1), reached(3), reached(7));
    let share = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            (part as f64 / whole as f64 * 1000.0).round() / 1000.0
        }
    };
    let funnel = json!({"view": sessions, "add_to_cart": carted, "purchase": purchased, "view_to_add_to_cart": share(carted, sessions), "add_to_cart_to_purchase": share(purchased, carted)});
    view_durations.sort_by(f64::total_cmp);
    let p95 = match view_durations.len() {
        0 => Value::Null,
        n => json!(view_durations[runner::aggregate::nearest_rank(0.95, n)]),
    };
    let baskets: Vec<Value> = labels
        .iter()
        .zip(baskets)
        .map(|(label, n)| json!({"key": label, "count": n}))
        .collect();
    let (ended, mean_length) = shipped_sessions(events, start, end);
    BTreeMap::from([
        ("sessions_per_minute".into(), ended),
        ("mean_session_length".into(), mean_length),
        ("funnel".into(), funnel),
        ("revenue_by_category".into(), json!(by_category)),
        ("view_duration_p95".into(), p95),
        ("views_by_length".into(), json!(by_length)),
        ("basket_prices".into(), json!(baskets)),
        (
            "avg_interactions_per_user".into(),
            json!(in_window.len() as f64 / per_user.len() as f64),
        ),
        ("busiest_item".into(), busiest),
        ("top_items".into(), json!(top)),
        ("quietest_item".into(), quietest),
        ("interaction_types".into(), json!(types)),
        ("active_users".into(), json!(per_user.len())),
        ("active_items".into(), json!(per_item.len())),
        ("revenue_per_minute".into(), json!(revenue)),
        (
            "conversion_rate".into(),
            json!(purchases as f64 / views as f64),
        ),
    ])
}

/// The shipped session metrics over `[start, end)`: sessions of a session id cut by a 30 s gap
/// that ended then, and their mean length in seconds, from every raw row in time order. A
/// session closes when its partition's records pass its end; raw rows do not say which
/// partition a record came from, so this reads the stream as one partition (exact on the
/// embedded queue; [`matches`] allows for the difference on Kafka).
fn shipped_sessions(events: &[Record], start: i64, end: i64) -> (Value, Value) {
    let mut in_order: Vec<&Record> = events.iter().collect();
    in_order.sort_by_key(|e| e.time_ms());
    let lengths: Vec<i64> = sessions_of(&in_order, 30_000, 5_000)
        .into_iter()
        .filter(|(at, _)| (start..end).contains(at))
        .map(|s| s.1)
        .collect();
    let mean = match lengths.len() {
        0 => Value::Null,
        n => json!(lengths.iter().sum::<i64>() as f64 / 1000.0 / n as f64),
    };
    (json!(lengths.len()), mean)
}

/// The item catalogue's categories (lookups/items.csv), by item; read once per test binary
/// (a results check recomputes every window).
fn categories() -> &'static HashMap<String, String> {
    static CATEGORIES: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    CATEGORIES.get_or_init(|| {
        let text = std::fs::read_to_string(super::repo_root().join("lookups/items.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                (cols[0].to_string(), cols[1].to_string())
            })
            .collect()
    })
}

/// Whether metric `name` read `read` where the recomputation gives `expected`: the same value,
/// and for the quantile within the 1 % its sketch promises.
pub fn matches(name: &str, read: &Value, expected: &Value) -> bool {
    match (name, read.as_f64(), expected.as_f64()) {
        ("view_duration_p95", Some(r), Some(e)) => (r - e).abs() <= 0.01 * e.abs(),
        // Sessions close as their own partition's records pass their end, which the raw rows
        // cannot replay: a session ending near the window's edge may fall on either side.
        ("sessions_per_minute", Some(r), Some(e)) => (r - e).abs() <= 0.02 * e + 3.0,
        ("mean_session_length", Some(r), Some(e)) => (r - e).abs() <= 0.02 * e,
        _ => same(read, expected),
    }
}

pub fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if !a.is_u64() || !b.is_u64() => {
            (x - y).abs() <= 1e-9 * x.abs().max(1.0)
        }
        (None, None) => runner::cli::testing::same_value(a, b),
        _ => a == b,
    }
}

/// Reads every metric from the store at the newest raw event and checks it against the
/// recomputation; returns the values read.
pub async fn assert_metrics_match(sp: &ServicePipeline, expected_events: u64) -> Vec<MetricValue> {
    let store: Arc<dyn Store> = store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store;
    let events = store.all_events().await.unwrap();
    assert_eq!(
        events.len() as u64,
        expected_events,
        "raw store holds every event once"
    );
    // The shipped derived fields: `category` (store = true) is stored with every raw record as
    // the catalogue says; `view_length` (not stored) is in none.
    let catalogue = categories();
    for e in &events {
        let listed = catalogue
            .get(e.s("item_id"))
            .map_or("__missing__", String::as_str);
        assert_eq!(e.s("category"), listed, "stored category of {}", e.id());
        assert_eq!(e.field("view_length"), Some(&runner::event::Value::Missing));
    }
    let at = events.iter().map(|e| e.time_ms()).max().unwrap();
    let set = sp.pipeline.metric_set(&Default::default()).unwrap();
    let values = set.read_all(&*store, at).await.unwrap();
    assert_eq!(values.len(), 16);
    let (start, end) = (values[0].window_start, values[0].window_end);
    let expected = recompute(&events, start, end);
    let counted: u64 = expected["interaction_types"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(counted > 0, "the window holds events");
    for v in &values {
        assert!(
            matches(&v.name, &v.value, &expected[&v.name]),
            "{}: read {} but recomputation gives {}",
            v.name,
            v.value,
            expected[&v.name]
        );
    }
    values
}

/// The sessions of `records` (in time order, as the embedded queue delivers them) cut by
/// `gap_ms`, recomputed from the raw rows: (closing time, duration ms) of each that closed. A
/// session closes at the first record `lateness_ms` past its end (its last record plus the
/// gap), or at a record of its own past its end, whichever comes first, and counts at that
/// record's time less the lateness, or at its end if that is later.
pub fn sessions_of(records: &[&Record], gap_ms: i64, lateness_ms: i64) -> Vec<(i64, i64)> {
    let times: Vec<i64> = records.iter().map(|r| r.time_ms()).collect();
    let closed_at = |end: i64| {
        let i = times.partition_point(|t| *t < end + lateness_ms);
        times.get(i).map(|t| t - lateness_ms)
    };
    let mut open: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut ended = Vec::new();
    for r in records {
        let (id, t) = (r.s("session_id"), r.time_ms());
        match open.get_mut(id) {
            Some((_, last)) if t < *last + gap_ms => *last = t,
            Some(s) => {
                // Closed by this record of its own, unless the stream closed it before.
                let end = s.1 + gap_ms;
                let at = closed_at(end).map_or(t, |w| w.min(t)) - lateness_ms;
                ended.push((at.max(end), s.1 - s.0));
                *s = (t, t);
            }
            None => {
                open.insert(id, (t, t));
            }
        }
    }
    ended.extend(open.values().filter_map(|(first, last)| {
        let end = last + gap_ms;
        closed_at(end).map(|at| (at.max(end), last - first))
    }));
    ended
}
