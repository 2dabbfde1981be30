//! A compiled `[[alert]]` rule: its Rhai condition, and what the condition's result means.
//!
//! The condition sees three maps: `metrics` (every metric's current window value, as the
//! dashboard shows it), `thresholds` (`[alerting.thresholds]`) and `health` (pipeline counters
//! and consumer lag). It returns `true`/`false` for a single alert, or an array of label maps
//! (one firing instance each, like one alert per series); a `value` entry in a map is reported
//! as the instance's value rather than used as a label. `history("metric", "30m")` gives it the
//! metric's past windows (see [`super::history`]).

use super::config::AlertConfig;
use super::history::{self, Histories};
use super::state::{Labels, Timing};
use crate::script::{compile_file, ScriptError};
use rhai::{Dynamic, Engine, Map, Scope, AST};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What every condition sees, built once per evaluation tick.
#[derive(Clone)]
pub struct Inputs {
    pub metrics: Dynamic,
    pub thresholds: Dynamic,
    pub health: Dynamic,
    /// The histories the rules name, read before the evaluation.
    pub history: Arc<Histories>,
}

/// A map of names the runner fills (`thresholds`, `health`). Reading a name it lacks is an error
/// that lists the names it has: a typo in a condition (`thresholds.max_lagg`) makes the rule an
/// error alert, where a plain map gave `()`, which compares false, and the rule was silently quiet.
#[derive(Clone)]
pub struct Names {
    /// What the map is, as conditions name it.
    what: &'static str,
    map: Arc<Map>,
}

impl Names {
    /// `value` (a JSON object) as the `what` map conditions read.
    pub fn dynamic(what: &'static str, value: &serde_json::Value) -> Dynamic {
        let map = crate::script::json_to_dynamic(value)
            .try_cast::<Map>()
            .unwrap_or_default();
        Dynamic::from(Names {
            what,
            map: Arc::new(map),
        })
    }

    /// Lets conditions read `what.name`, `what["name"]` and `"name" in what`.
    pub fn register(engine: &mut Engine) {
        engine
            .register_type_with_name::<Names>("Names")
            .register_indexer_get(
                |n: &mut Names, name: &str| -> Result<Dynamic, Box<rhai::EvalAltResult>> {
                    n.map.get(name).cloned().ok_or_else(|| {
                        let known: Vec<&str> = n.map.keys().map(|k| k.as_str()).collect();
                        format!(
                            "{}.{name} does not exist (it has: {})",
                            n.what,
                            known.join(", ")
                        )
                        .into()
                    })
                },
            )
            .register_fn("contains", |n: &mut Names, name: &str| {
                n.map.contains_key(name)
            });
    }
}

/// One compiled rule.
pub struct Rule {
    pub config: AlertConfig,
    ast: AST,
    /// The script file, or the pipeline file with the alert named (inline condition).
    origin: PathBuf,
    /// The condition's text, to tell which metrics it reads.
    source: String,
    /// The `history("metric", "range")` calls of the condition.
    histories: Vec<(String, Duration)>,
}

impl Rule {
    /// Compiles the rule's condition and checks its message template.
    pub fn load(
        engine: &Engine,
        config: &AlertConfig,
        pipeline_file: &Path,
    ) -> Result<Rule, ScriptError> {
        let (ast, origin, source) = match (&config.condition, &config.script) {
            (Some(inline), None) => {
                let origin = PathBuf::from(format!(
                    "{} [alert {:?}] condition",
                    pipeline_file.display(),
                    config.name
                ));
                let ast = engine
                    .compile(inline)
                    .map_err(|e| ScriptError::from_parse(&origin, &e))?;
                (ast, origin, inline.clone())
            }
            (None, Some(file)) => (
                compile_file(engine, file)?,
                file.clone(),
                std::fs::read_to_string(file).unwrap_or_default(),
            ),
            _ => {
                return Err(ScriptError::whole_file(
                    pipeline_file,
                    format!(
                        "alert {:?}: give exactly one of condition or script",
                        config.name
                    ),
                ))
            }
        };
        let templates = minijinja::Environment::new();
        if let Err(e) = templates.template_from_str(&config.message) {
            return Err(ScriptError::whole_file(
                pipeline_file,
                format!("alert {:?}: message template: {e}", config.name),
            ));
        }
        let histories = history::calls(&source).map_err(|m| ScriptError::whole_file(&origin, m))?;
        Ok(Rule {
            config: config.clone(),
            ast,
            origin,
            source,
            histories,
        })
    }

    /// The metric histories the condition reads, as (metric, range).
    pub fn histories(&self) -> &[(String, Duration)] {
        &self.histories
    }

    /// Its `for`, `repeat_interval` and `keep_firing_for` in ms.
    pub fn timing(&self) -> Timing {
        let ms = |d: Duration| d.as_millis() as i64;
        Timing {
            for_ms: ms(self.config.for_),
            repeat_ms: ms(self.config.repeat_interval),
            keep_firing_ms: ms(self.config.keep_firing_for),
        }
    }

    /// Whether the condition names metric `metric` (as `metrics.NAME` or `metrics["NAME"]`, or
    /// any other whole-word use of the name).
    pub fn reads(&self, metric: &str) -> bool {
        let word = |c: char| c.is_alphanumeric() || c == '_';
        self.source.match_indices(metric).any(|(i, _)| {
            let before = self.source[..i].chars().next_back();
            let after = self.source[i + metric.len()..].chars().next();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The instances whose condition holds now.
    pub fn evaluate(
        &self,
        engine: &Engine,
        inputs: &Inputs,
    ) -> Result<Vec<(Labels, Option<f64>)>, ScriptError> {
        let mut scope = Scope::new();
        scope.push_constant_dynamic("metrics", inputs.metrics.clone());
        scope.push_constant_dynamic("thresholds", inputs.thresholds.clone());
        scope.push_constant_dynamic("health", inputs.health.clone());
        let result = inputs
            .history
            .during(|| engine.eval_ast_with_scope::<Dynamic>(&mut scope, &self.ast))
            .map_err(|e| ScriptError::from_eval(&self.origin, &e))?;
        instances(result).map_err(|m| ScriptError::whole_file(&self.origin, m))
    }
}

/// Reads a condition's result: a boolean, a label map, or an array of label maps or strings.
fn instances(result: Dynamic) -> Result<Vec<(Labels, Option<f64>)>, String> {
    if result.is_unit() {
        Ok(Vec::new())
    } else if let Ok(b) = result.as_bool() {
        Ok(if b {
            vec![(Labels::new(), None)]
        } else {
            Vec::new()
        })
    } else if result.is_map() {
        Ok(vec![labels_and_value(result.cast::<Map>())])
    } else if result.is_array() {
        result
            .cast::<rhai::Array>()
            .into_iter()
            .map(instance)
            .collect()
    } else {
        Err(format!(
            "an alert condition returns true/false, a map of labels, or an array of them; it returned {}",
            result.type_name()
        ))
    }
}

/// One entry of a condition's array: a label map, or a string naming the instance.
fn instance(item: Dynamic) -> Result<(Labels, Option<f64>), String> {
    if item.is_map() {
        Ok(labels_and_value(item.cast::<Map>()))
    } else if item.is_string() {
        Ok((
            Labels::from([("instance".to_string(), item.to_string())]),
            None,
        ))
    } else {
        Err(format!(
            "an alert condition's array holds label maps or strings, not {}",
            item.type_name()
        ))
    }
}

fn labels_and_value(map: Map) -> (Labels, Option<f64>) {
    let mut labels = Labels::new();
    let mut value = None;
    for (k, v) in map {
        if k == "value" {
            value = v
                .as_float()
                .ok()
                .or_else(|| v.as_int().ok().map(|i| i as f64));
        } else {
            labels.insert(k.to_string(), v.to_string());
        }
    }
    (labels, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{sandboxed_engine, ScriptLimits};
    use serde_json::json;

    fn rule(condition: &str) -> (Engine, Rule) {
        let engine = super::super::alert_engine();
        let config: AlertConfig =
            toml::from_str(&format!("name = \"r\"\ncondition = '''{condition}'''")).unwrap();
        let rule = Rule::load(&engine, &config, Path::new("p.toml")).unwrap();
        (engine, rule)
    }

    fn inputs() -> Inputs {
        Inputs {
            metrics: crate::script::json_to_dynamic(
                &json!({"top_items": [{"key": "i1", "count": 1500}, {"key": "i2", "count": 900}], "avg": 3.5}),
            ),
            thresholds: Names::dynamic("thresholds", &json!({"high": 1000, "low": 5})),
            health: Names::dynamic("health", &json!({"consumer_lag": 0})),
            history: Default::default(),
        }
    }

    /// A rule waits for the metrics it names while they backfill, and only for those.
    #[test]
    fn a_rule_knows_which_metrics_it_reads() {
        let (_, r) = rule("metrics.top_items.len() > 0 && metrics[\"avg\"] > 1");
        assert!(r.reads("top_items") && r.reads("avg"));
        assert!(
            !r.reads("top") && !r.reads("items") && !r.reads("av"),
            "whole names only"
        );
    }

    #[test]
    fn a_misspelt_threshold_or_health_name_is_an_error_that_lists_the_names() {
        let (e, r) = rule("health.consumer_lag > thresholds.hihg");
        let err = r.evaluate(&e, &inputs()).unwrap_err().to_string();
        assert!(
            err.contains("thresholds.hihg does not exist (it has: high, low)"),
            "{err}"
        );
        let (e, r) =
            rule("thresholds[\"high\"] > 1 && \"low\" in thresholds && !(\"x\" in health)");
        assert_eq!(r.evaluate(&e, &inputs()).unwrap().len(), 1);
    }

    #[test]
    fn boolean_condition_gives_one_unlabelled_instance() {
        let (e, r) = rule("metrics.avg < thresholds.low");
        assert_eq!(
            r.evaluate(&e, &inputs()).unwrap(),
            vec![(Labels::new(), None)]
        );
        let (e, r) = rule("metrics.avg > thresholds.low");
        assert!(r.evaluate(&e, &inputs()).unwrap().is_empty());
    }

    #[test]
    fn array_of_maps_gives_one_instance_per_series_with_value() {
        let (e, r) = rule(
            "let out = []; for e in metrics.top_items { if e.count > thresholds.high { out.push(#{ item: e.key, value: e.count }); } } out",
        );
        let got = r.evaluate(&e, &inputs()).unwrap();
        assert_eq!(
            got,
            vec![(Labels::from([("item".into(), "i1".into())]), Some(1500.0))]
        );
    }

    #[test]
    fn wrong_result_type_and_runtime_errors_name_the_rule() {
        let (e, r) = rule("42");
        let err = r.evaluate(&e, &inputs()).unwrap_err().to_string();
        assert!(
            err.contains("[alert \"r\"]") && err.contains("returned i64"),
            "{err}"
        );
        let (e, r) = rule("metrics.nope.count > 1");
        assert!(r.evaluate(&e, &inputs()).is_err());
    }

    #[test]
    fn syntax_error_is_reported_at_load() {
        let engine = sandboxed_engine(ScriptLimits::default());
        let config: AlertConfig =
            toml::from_str("name = \"r\"\ncondition = \"metrics.x >\"").unwrap();
        let err = Rule::load(&engine, &config, Path::new("p.toml"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("p.toml [alert \"r\"] condition:1:"),
            "{err}"
        );
    }
}
