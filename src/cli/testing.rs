//! `runner test`: pipeline tests kept next to the pipeline file. Each test feeds a list of
//! records (in the pipeline's `[event]` shape; an id is assigned when missing) through the pipeline's real metric scripts, reducers and an embedded store, then
//! compares the metrics read back with the expected values.
//!
//! Alert fixtures (`[[alert_test]]`) run one rule on a simulated clock over a timeline of
//! metric (and health) values, and compare its transitions (pending, firing, repeat, resolved)
//! with the expected ones, in milliseconds instead of minutes; `history()` reads the timeline.
//!
//! ```toml
//! [[test]]
//! name = "busiest item"
//! at = "2026-01-01T00:00:59Z"   # read the window ending with the pane holding this time
//! events = [
//!   { device_id = "d1", site = "lab", temperature = 21.5, ts = "2026-01-01T00:00:10Z" },
//! ]
//! [test.expect]
//! max_temperature_by_site = { lab = 21.5 }
//! ```

use crate::aggregate::{Aggregator, MetricSet};
use crate::alert::group::Groups;
use crate::alert::history::{Histories, Window};
use crate::alert::outcome::{self, Evaluation};
use crate::alert::silence::{self, parse_matcher, Silences};
use crate::alert::state::{RuleState, Status};
use crate::alert::{AlertSet, Inputs, Names};
use crate::base::de;
use crate::config::Pipeline;
use crate::event::{Record, Schema};
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
use crate::store::{Silence, StateStore};
use crate::telemetry::Stats;
use crate::transport::Batch;
use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "test", default)]
    tests: Vec<TestCase>,
    #[serde(rename = "alert_test", default)]
    alert_tests: Vec<AlertCase>,
}

/// `[[alert_test]]`: one rule evaluated on a simulated clock.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertCase {
    name: String,
    /// The `[[alert]]` rule's name.
    rule: String,
    /// How often the rule is evaluated [default: `[alerting] interval`].
    #[serde(default, deserialize_with = "de::optional_duration")]
    every: Option<Duration>,
    /// The first evaluation; the values before it are history only [default: 0s].
    #[serde(default, deserialize_with = "de::duration")]
    from: Duration,
    /// The last evaluation.
    #[serde(deserialize_with = "de::duration")]
    until: Duration,
    /// Thresholds over the file's `[alerting.thresholds]`.
    #[serde(default)]
    thresholds: BTreeMap<String, toml::Value>,
    /// The timeline: each entry's metric and health values hold from its `at` until another
    /// entry changes them.
    values: Vec<TimelineEntry>,
    /// The transitions expected, in order; a transition not listed fails the test.
    #[serde(default)]
    expect: Vec<Expected>,
    /// Silences in force during the test.
    #[serde(default)]
    silences: Vec<SilenceCase>,
    /// The group notifications expected of a rule that goes through `[alerting.route]`, in
    /// order (checked when any is listed; then one not listed fails the test).
    #[serde(default)]
    notify: Vec<ExpectedNotify>,
}

/// `[[alert_test.notify]]`: one notification of a route's group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedNotify {
    #[serde(deserialize_with = "de::duration")]
    at: Duration,
    channels: Vec<String>,
    /// How many alerts the notification carries.
    alerts: usize,
    /// `firing` (some alert of the group fires) or `resolved`.
    #[serde(default = "firing")]
    status: String,
}

fn firing() -> String {
    "firing".to_string()
}

/// `[[alert_test.silences]]`: a silence from `from` until `until` on the simulated clock.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceCase {
    /// Matchers as `runner silence add` takes them (`alertname = "purchases_stopped"`).
    matchers: Vec<String>,
    #[serde(deserialize_with = "de::duration")]
    from: Duration,
    #[serde(deserialize_with = "de::duration")]
    until: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineEntry {
    #[serde(deserialize_with = "de::duration")]
    at: Duration,
    #[serde(default)]
    metrics: BTreeMap<String, toml::Value>,
    #[serde(default)]
    health: BTreeMap<String, toml::Value>,
    /// Metrics with no data from `at` on (no record in their window), until an entry gives them
    /// a value again.
    #[serde(default)]
    no_data: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    #[serde(deserialize_with = "de::duration")]
    at: Duration,
    /// pending, firing, repeat or resolved.
    change: String,
    /// The instance's labels, when the rule gives it any (checked when listed).
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// Whether a silence kept the notification from being sent.
    #[serde(default)]
    silenced: bool,
    /// The same transition this many times in a row (instances of one rule) [default: 1].
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    at: chrono::DateTime<chrono::Utc>,
    events: Vec<toml::Value>,
    expect: BTreeMap<String, toml::Value>,
}

/// One test's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    /// Empty when the test passed; otherwise one line per metric that differs.
    pub failures: Vec<String>,
}

/// The test file that belongs to a pipeline: `name.toml` -> `name.test.toml`.
pub fn default_test_file(pipeline: &Path) -> PathBuf {
    let stem = pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    pipeline.with_file_name(format!("{stem}.test.toml"))
}

/// Runs every test in `tests` against the pipeline's metrics.
pub async fn run_tests(pipeline: &Pipeline, tests: &Path) -> anyhow::Result<Vec<TestOutcome>> {
    let text = std::fs::read_to_string(tests)
        .with_context(|| format!("cannot read {}", tests.display()))?;
    let file: TestFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .unwrap_or(0);
        anyhow::anyhow!("{}:{line}: {}", tests.display(), e.message().trim())
    })?;
    let schema = pipeline.schema();
    let set = Arc::new(
        pipeline
            .metric_set(&Default::default())
            .map_err(|mut e| e.remove(0))?,
    );
    let mut outcomes = Vec::new();
    for case in file.tests {
        outcomes.push(
            run_case(&set, &schema, &case)
                .await
                .with_context(|| format!("{}: test {:?}", tests.display(), case.name))?,
        );
    }
    if !file.alert_tests.is_empty() {
        let alerts = AlertSet::load(
            &pipeline.config.alerting,
            &pipeline.config.alerts,
            &pipeline.path,
        )?;
        for case in &file.alert_tests {
            let outcome = run_alert_case(pipeline, &alerts, case)
                .with_context(|| format!("{}: alert test {:?}", tests.display(), case.name))?;
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// The simulated clock's zero (any time would do; this one reads well in notifications).
const EPOCH_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Runs one alert fixture: evaluates the rule every `every` from `from` to `until` over the
/// timeline, through the same evaluation and state machine as the running pipeline.
fn run_alert_case(
    pipeline: &Pipeline,
    alerts: &AlertSet,
    case: &AlertCase,
) -> anyhow::Result<TestOutcome> {
    let rule = alerts
        .rules()
        .iter()
        .find(|r| r.name() == case.rule)
        .ok_or_else(|| {
            let known: Vec<&str> = alerts.rules().iter().map(|r| r.name()).collect();
            anyhow::anyhow!(
                "no [[alert]] named {:?} (the file has: {})",
                case.rule,
                known.join(", ")
            )
        })?;
    let every = case
        .every
        .unwrap_or(pipeline.config.alerting.interval)
        .as_millis() as i64;
    anyhow::ensure!(every > 0, "every must be more than 0s");
    let mut timeline: Vec<&TimelineEntry> = case.values.iter().collect();
    timeline.sort_by_key(|e| e.at);
    let slide_of = |metric: &str| {
        pipeline
            .config
            .metrics
            .iter()
            .find(|m| m.name == metric)
            .and_then(|m| m.window().ok())
            .map(|w| w.slide_ms)
    };
    // The values in force at `t` ms after the start: each name's latest entry at or before it.
    let at = |t: i64, pick: &dyn Fn(&TimelineEntry) -> &BTreeMap<String, toml::Value>| {
        let mut out = serde_json::Map::new();
        for e in timeline.iter().take_while(|e| e.at.as_millis() as i64 <= t) {
            for name in &e.no_data {
                out.remove(name);
            }
            for (k, v) in pick(e) {
                out.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
            }
        }
        out
    };
    let mut thresholds = serde_json::to_value(&pipeline.config.alerting.thresholds)?;
    for (k, v) in &case.thresholds {
        thresholds[k] = serde_json::to_value(v)?;
    }
    let silences = case
        .silences
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let at = |d: Duration| {
                chrono::DateTime::from_timestamp_millis(EPOCH_MS + d.as_millis() as i64)
                    .unwrap_or_default()
            };
            let silence = Silence {
                id: format!("silence {}", n + 1),
                matchers: c
                    .matchers
                    .iter()
                    .map(|m| parse_matcher(m))
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
                starts_at: at(c.from),
                ends_at: at(c.until),
                created_by: "runner test".into(),
                comment: case.name.clone(),
                updated_at: at(c.from),
                expired_by: None,
            };
            silence::check(&silence)
                .map_err(|e| anyhow::anyhow!("silence {}: {e}", n + 1))
                .map(|()| silence)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut state = RuleState::default();
    let mut got: Vec<(i64, String, BTreeMap<String, String>, bool)> = Vec::new();
    let routes = alerts.routes_of(&rule.config);
    let mut groups = Groups::default();
    // (at, channels, alerts, status) of each group notification.
    let mut sent: Vec<(i64, Vec<String>, usize, String)> = Vec::new();
    // Conditions that failed, shown when the expected transitions are not what happened.
    let mut errors: Vec<String> = Vec::new();
    let (from, until) = (case.from.as_millis() as i64, case.until.as_millis() as i64);
    let mut t = from;
    while t <= until {
        let mut histories = Histories::default();
        for (metric, range) in rule.histories() {
            let Some(slide) = slide_of(metric) else {
                continue;
            };
            let now = EPOCH_MS + t;
            let mut end = now - now.rem_euclid(slide);
            let mut windows = Vec::new();
            while end > now - range.as_millis() as i64 {
                if let Some(v) = at(end - EPOCH_MS, &|e| &e.metrics).remove(metric) {
                    windows.push(Window { end, value: v });
                }
                end -= slide;
            }
            windows.reverse();
            histories.insert(metric, *range, &windows);
        }
        let inputs = Inputs {
            metrics: crate::script::json_to_dynamic(&Value::Object(at(t, &|e| &e.metrics))),
            thresholds: Names::dynamic("thresholds", &thresholds),
            health: Names::dynamic("health", &Value::Object(at(t, &|e| &e.health))),
            history: Arc::new(histories),
        };
        let metrics_now = at(t, &|e| &e.metrics);
        let reads = pipeline
            .config
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .filter(|m| rule.reads(m));
        let evaluation = match outcome::no_data(reads, |m| metrics_now.contains_key(m)) {
            true => Evaluation::NoData,
            false => match alerts.evaluate(rule, &inputs) {
                Ok(h) => Evaluation::Holding(h),
                Err(e) => {
                    errors.push(format!("at {}: {e}", shown(t)));
                    Evaluation::Error(e.to_string())
                }
            },
        };
        let holding = outcome::holding(&rule.config, &evaluation, &state);
        let pending_before: Vec<String> = state
            .instances
            .iter()
            .filter(|(_, i)| i.status == Status::Pending)
            .map(|(k, _)| k.clone())
            .collect();
        let now = chrono::DateTime::from_timestamp_millis(EPOCH_MS + t).unwrap_or_default();
        let transitions = silence::step(
            &rule.config,
            &mut state,
            EPOCH_MS + t,
            holding,
            rule.timing(),
            &Silences::active_at(&silences, now).0,
        );
        for (k, i) in &state.instances {
            if i.status == Status::Pending
                && !pending_before.contains(k)
                && i.active_since == EPOCH_MS + t
            {
                got.push((t, "pending".to_string(), i.labels.clone(), false));
            }
        }
        let error = match &evaluation {
            Evaluation::Error(e) => Some(e.as_str()),
            _ => None,
        };
        for (tr, silenced_by) in transitions {
            if let Some(routes) = routes {
                let mut n = alerts.notification(
                    &pipeline.config.name,
                    &rule.config,
                    &tr,
                    error,
                    EPOCH_MS + t,
                );
                n.silenced_by = silenced_by.clone();
                groups.add(&n, &routes.leaves_for(&n.labels), EPOCH_MS + t);
            }
            got.push((
                t,
                format!("{:?}", tr.change).to_lowercase(),
                tr.instance.labels,
                silenced_by.is_some(),
            ));
        }
        for n in groups.flush(&pipeline.config.name, EPOCH_MS + t) {
            sent.push((t, n.channels, n.alerts.len(), n.status));
        }
        t += every;
    }
    let expect: Vec<&Expected> = case
        .expect
        .iter()
        .flat_map(|e| std::iter::repeat_n(e, e.count))
        .collect();
    let matches = got.len() == expect.len()
        && got.iter().zip(&expect).all(|(g, e)| {
            g.0 == e.at.as_millis() as i64
                && g.1 == e.change
                && e.labels.as_ref().is_none_or(|l| *l == g.2)
                && g.3 == e.silenced
        });
    let expected_sent: Vec<(i64, Vec<String>, usize, String)> = case
        .notify
        .iter()
        .map(|e| {
            (
                e.at.as_millis() as i64,
                e.channels.clone(),
                e.alerts,
                e.status.clone(),
            )
        })
        .collect();
    let sent_matches = case.notify.is_empty() || sent == expected_sent;
    let show_sent = |s: &[(i64, Vec<String>, usize, String)]| -> String {
        s.iter()
            .map(|(t, ch, n, status)| {
                format!("{} {status} {n} alerts to {}", shown(*t), ch.join(","))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let failures = if matches && sent_matches {
        Vec::new()
    } else if matches {
        vec![
            format!(
                "rule {:?}: expected notifications [{}]",
                case.rule,
                show_sent(&expected_sent)
            ),
            format!("got                    [{}]", show_sent(&sent)),
        ]
    } else {
        let line = |t: i64, change: &str, labels: Option<&BTreeMap<String, String>>, silenced| {
            let labels = labels
                .filter(|l| !l.is_empty())
                .map(|l| format!(" {l:?}"))
                .unwrap_or_default();
            let silenced = if silenced { " (silenced)" } else { "" };
            format!("{} {change}{labels}{silenced}", shown(t))
        };
        let expected: Vec<String> = expect
            .iter()
            .map(|e| {
                line(
                    e.at.as_millis() as i64,
                    &e.change,
                    e.labels.as_ref(),
                    e.silenced,
                )
            })
            .collect();
        let got: Vec<String> = got
            .iter()
            .map(|g| line(g.0, &g.1, Some(&g.2), g.3))
            .collect();
        let mut lines = vec![
            format!("rule {:?}: expected [{}]", case.rule, expected.join(", ")),
            format!("got      [{}]", got.join(", ")),
        ];
        lines.extend(
            errors
                .iter()
                .take(3)
                .map(|e| format!("condition failed {e}")),
        );
        lines
    };
    Ok(TestOutcome {
        name: case.name.clone(),
        failures,
    })
}

/// A simulated time as the fixture writes it (`95s`, `2m5s`).
fn shown(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
        .to_string()
        .replace(' ', "")
}

async fn run_case(
    set: &Arc<MetricSet>,
    schema: &Arc<Schema>,
    case: &TestCase,
) -> anyhow::Result<TestOutcome> {
    let mut events = Vec::with_capacity(case.events.len());
    for (i, raw) in case.events.iter().enumerate() {
        let json = serde_json::to_vec(raw)?;
        let mut e = Record::from_json(schema, &json)
            .map_err(|e| anyhow::anyhow!("event {}: {}", i + 1, e.message))?;
        e.check()
            .map_err(|(_, why)| anyhow::anyhow!("event {}: {why}", i + 1))?;
        if e.id().is_empty() {
            e.set_id(format!("test-{i}"));
        }
        events.push(e);
    }
    let dir = std::env::temp_dir().join(format!(
        "runner-test-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = async {
        let store = EmbeddedStore::open(
            &EmbeddedConfig {
                data_dir: dir.clone(),
                ..Default::default()
            },
            &Default::default(),
            schema,
            &[],
        )?;
        let stats = Stats::new();
        set.derive(&mut events, &stats);
        let mut agg = Aggregator::new(set.clone(), stats);
        let absorbed = agg
            .absorb(
                &Batch {
                    events,
                    ..Batch::default()
                },
                &store,
            )
            .await?;
        store.write_panes(&absorbed.panes).await?;
        let values = set.read_all(&store, case.at.timestamp_millis()).await?;
        let mut failures = Vec::new();
        for (name, expected) in &case.expect {
            let expected = serde_json::to_value(expected)?;
            match values.iter().find(|v| &v.name == name) {
                None => failures.push(format!("{name}: no such metric in the pipeline")),
                Some(v) if !same_value(&v.value, &expected) => {
                    failures.push(format!("{name}: expected {expected}, got {}", v.value))
                }
                Some(_) => {}
            }
        }
        Ok::<_, anyhow::Error>(TestOutcome {
            name: case.name.clone(),
            failures,
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Equal, with numbers compared to 1e-9 (relative) and integers equal to the same float.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_with_tolerance() {
        assert!(same_value(&json!(3), &json!(3.0)));
        assert!(same_value(
            &json!({"a": [0.1]}),
            &json!({"a": [0.1 + 1e-12]})
        ));
        assert!(!same_value(&json!({"a": 1}), &json!({"a": 2})));
        assert!(!same_value(&json!({"a": 1}), &json!({"a": 1, "b": 1})));
    }
}
