//! `runner test`: pipeline tests kept next to the pipeline file. Each test feeds a list of
//! records (in the pipeline's `[event]` shape; an id is assigned when missing) through the pipeline's real metric scripts, reducers and an embedded store, then
//! compares the metrics read back with the expected values.
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
use crate::config::Pipeline;
use crate::event::{Record, Schema};
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
use crate::store::EventStore;
use crate::telemetry::Stats;
use crate::transport::Batch;
use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "test")]
    tests: Vec<TestCase>,
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
    let stem = pipeline.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    pipeline.with_file_name(format!("{stem}.test.toml"))
}

/// Runs every test in `tests` against the pipeline's metrics.
pub async fn run_tests(pipeline: &Pipeline, tests: &Path) -> anyhow::Result<Vec<TestOutcome>> {
    let text = std::fs::read_to_string(tests).with_context(|| format!("cannot read {}", tests.display()))?;
    let file: TestFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1).unwrap_or(0);
        anyhow::anyhow!("{}:{line}: {}", tests.display(), e.message().trim())
    })?;
    let schema = pipeline.schema();
    let set = Arc::new(MetricSet::load(&pipeline.config.metrics, &schema)?);
    let mut outcomes = Vec::new();
    for case in file.tests {
        outcomes.push(run_case(&set, &schema, &case).await.with_context(|| format!("{}: test {:?}", tests.display(), case.name))?);
    }
    Ok(outcomes)
}

async fn run_case(set: &Arc<MetricSet>, schema: &Arc<Schema>, case: &TestCase) -> anyhow::Result<TestOutcome> {
    let mut events = Vec::with_capacity(case.events.len());
    for (i, raw) in case.events.iter().enumerate() {
        let json = serde_json::to_vec(raw)?;
        let mut e = Record::from_json(schema, &json).map_err(|e| anyhow::anyhow!("event {}: {}", i + 1, e.message))?;
        e.check().map_err(|(_, why)| anyhow::anyhow!("event {}: {why}", i + 1))?;
        if e.id().is_empty() {
            e.set_id(format!("test-{i}"));
        }
        events.push(e);
    }
    let dir = std::env::temp_dir().join(format!("runner-test-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    let result = async {
        let store = EmbeddedStore::open(&EmbeddedConfig { data_dir: dir.clone(), ..Default::default() }, &Default::default(), schema, &[])?;
        let mut agg = Aggregator::new(set.clone(), Stats::new());
        let absorbed = agg.absorb(&Batch { events, ..Batch::default() }, &store).await?;
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
        Ok::<_, anyhow::Error>(TestOutcome { name: case.name.clone(), failures })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Equal, with numbers compared to 1e-9 (relative) and integers equal to the same float.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
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
        assert!(same_value(&json!({"a": [0.1]}), &json!({"a": [0.1 + 1e-12]})));
        assert!(!same_value(&json!({"a": 1}), &json!({"a": 2})));
        assert!(!same_value(&json!({"a": 1}), &json!({"a": 1, "b": 1})));
    }
}
