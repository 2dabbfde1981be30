//! Metric history for alert conditions, so a rule can compare a value with its own past
//! ("an item above 5× its trailing median") instead of a fixed number:
//!
//! - `history("top_items", "30m")`: the metric's windows over the last 30 minutes, oldest first,
//!   one per slide, as `#{ end: <ms>, value: <as metrics.top_items> }`; windows without data are
//!   left out (no data is not a zero);
//! - `median(list)`, `mean(list)`, `quantile(list, q)`: of a list of numbers (NaN for an empty
//!   list, so every comparison with it is false and a rule with no baseline does not fire).
//!
//! Rhai functions cannot wait on the store, so the evaluator reads every history a rule names
//! before evaluating it: the metric and range are read from the condition's text and must be
//! literal strings. The evaluation runs with the histories in a thread-local [`Histories`].

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The histories read for one evaluation, by (metric, range in ms).
#[derive(Debug, Default)]
pub struct Histories {
    series: HashMap<(String, i64), Dynamic>,
}

/// One window of a metric's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Its end, ms since the epoch.
    pub end: i64,
    pub value: serde_json::Value,
}

impl Histories {
    /// Adds what `history(metric, range)` returns.
    pub fn insert(&mut self, metric: &str, range: Duration, windows: &[Window]) {
        let list: Array = windows
            .iter()
            .map(|w| {
                let mut m = Map::new();
                m.insert("end".into(), Dynamic::from(w.end));
                m.insert("value".into(), crate::script::json_to_dynamic(&w.value));
                Dynamic::from_map(m)
            })
            .collect();
        self.series.insert(
            (metric.to_string(), range.as_millis() as i64),
            Dynamic::from_array(list),
        );
    }

    /// Runs `f` (a rule's evaluation) with these histories for `history()` to read.
    pub fn during<T>(self: &Arc<Self>, f: impl FnOnce() -> T) -> T {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                CURRENT.with(|c| c.borrow_mut().take());
            }
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        let _reset = Reset;
        f()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Histories>>> = const { RefCell::new(None) };
}

/// The `history("metric", "range")` calls in a condition's text, in order, without repeats.
/// A call whose arguments are not two literal strings is left out (it fails when evaluated,
/// saying why); a range that is not a duration is an error.
pub fn calls(source: &str) -> Result<Vec<(String, Duration)>, String> {
    /// A string literal at the start of `s` (after blanks), and what follows it.
    fn literal(s: &str) -> Option<(&str, &str)> {
        let r = s.trim_start().strip_prefix('"')?;
        let end = r.find('"')?;
        Some((&r[..end], &r[end + 1..]))
    }
    let mut out: Vec<(String, Duration)> = Vec::new();
    for (i, _) in source.match_indices("history(") {
        if source[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // another function whose name ends in "history"
        }
        let Some((metric, rest)) = literal(&source[i + "history(".len()..]) else {
            continue;
        };
        let Some((range, _)) = rest.trim_start().strip_prefix(',').and_then(literal) else {
            continue;
        };
        let d = crate::base::de::parse_duration(range)
            .map_err(|e| format!("history({metric:?}, {range:?}): {e}"))?;
        if !out.iter().any(|(m, r)| m == metric && *r == d) {
            out.push((metric.to_string(), d));
        }
    }
    Ok(out)
}

type ScriptResult<T> = std::result::Result<T, Box<EvalAltResult>>;

/// Registers `history`, `median`, `mean` and `quantile` for alert conditions.
pub fn register(engine: &mut Engine) {
    engine
        .register_fn("history", |metric: &str, range: &str| -> ScriptResult<Dynamic> {
            let d = crate::base::de::parse_duration(range).map_err(|e| format!("history({metric:?}, {range:?}): {e}"))?;
            let key = (metric.to_string(), d.as_millis() as i64);
            CURRENT
                .with(|c| c.borrow().as_ref().and_then(|h| h.series.get(&key).cloned()))
                .ok_or_else(|| format!("history({metric:?}, {range:?}) was not read for this evaluation: is {metric:?} a metric of the pipeline, and are both arguments literal strings?").into())
        })
        .register_fn("median", |list: Array| -> ScriptResult<f64> { Ok(quantile(numbers(list)?, 0.5)) })
        .register_fn("quantile", |list: Array, q: f64| -> ScriptResult<f64> {
            if !(0.0..=1.0).contains(&q) {
                return Err(format!("quantile(list, {q}): q is between 0 and 1").into());
            }
            Ok(quantile(numbers(list)?, q))
        })
        .register_fn("mean", |list: Array| -> ScriptResult<f64> {
            let n = numbers(list)?;
            Ok(if n.is_empty() { f64::NAN } else { n.iter().sum::<f64>() / n.len() as f64 })
        });
}

fn numbers(list: Array) -> ScriptResult<Vec<f64>> {
    list.into_iter()
        .map(|v| {
            v.as_float()
                .or_else(|_| v.as_int().map(|i| i as f64))
                .map_err(|t| format!("a list of numbers was expected; it holds a {t}").into())
        })
        .collect()
}

/// The q-quantile by linear interpolation between the closest ranks (NaN for no numbers).
fn quantile(mut n: Vec<f64>, q: f64) -> f64 {
    if n.is_empty() {
        return f64::NAN;
    }
    n.sort_by(f64::total_cmp);
    let pos = q * (n.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    n[lo] + (n[hi] - n[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_history_calls_are_found_once() {
        let src = r#"let a = history("top_items", "30m"); let b = history( "top_items" , "30m" ); let c = history(name, "1h"); my_history("x", "1m"); history("rate", "10s")"#;
        let found = calls(src).unwrap();
        assert_eq!(
            found,
            vec![
                ("top_items".to_string(), Duration::from_secs(1800)),
                ("rate".to_string(), Duration::from_secs(10))
            ]
        );
        assert!(calls(r#"history("x", "soon")"#)
            .unwrap_err()
            .contains("history(\"x\", \"soon\")"));
    }

    #[test]
    fn median_and_quantiles_interpolate_and_empty_is_nan() {
        assert_eq!(quantile(vec![3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(vec![1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(vec![1.0, 2.0, 3.0, 4.0, 5.0], 0.9), 4.6);
        assert!(quantile(vec![], 0.5).is_nan());
    }

    #[test]
    fn history_reads_what_the_evaluation_was_given() {
        let mut engine = Engine::new();
        register(&mut engine);
        let mut h = Histories::default();
        h.insert(
            "m",
            Duration::from_secs(60),
            &[
                Window {
                    end: 1,
                    value: serde_json::json!(4),
                },
                Window {
                    end: 2,
                    value: serde_json::json!(6),
                },
            ],
        );
        let h = Arc::new(h);
        let median: f64 = h
            .during(|| {
                engine.eval(
                    r#"let v = []; for w in history("m", "1m") { v.push(w.value); } median(v)"#,
                )
            })
            .unwrap();
        assert_eq!(median, 5.0);
        let err = h
            .during(|| engine.eval::<Dynamic>(r#"history("m", "2m")"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("was not read for this evaluation"), "{err}");
        assert!(
            engine.eval::<Dynamic>(r#"history("m", "1m")"#).is_err(),
            "nothing outside an evaluation"
        );
    }
}
