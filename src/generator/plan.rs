//! The generator script describes distributions; this module turns that description into a plan
//! that samples events in Rust. The script runs once per load, not once per event.
//!
//! Functions available to the script:
//! - `zipf(prefix, n, exponent)`: labels `prefix1..prefixN`, rank k drawn with weight 1/k^exponent;
//! - `weighted(#{label: weight, ...})`: one of the labels, in proportion to the weights;
//! - `uniform(lo, hi)`: a float in [lo, hi); `uniform_int(lo, hi)`: an integer in [lo, hi];
//! - `.round(decimals)`: round a numeric distribution; `.only_when(type)` / `.only_when([types])`:
//!   the field is present only for those interaction types.

use chrono::Utc;
use rand::Rng;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::Zipf;
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use std::borrow::Cow;
use std::sync::Arc;

use crate::event::Event;

/// How one field's values are drawn.
#[derive(Debug, Clone)]
pub struct Distribution {
    kind: Arc<Kind>,
    decimals: Option<u32>,
    only_when: Option<Arc<[String]>>,
}

/// Zipf populations up to this size get an alias table and every label prebuilt (O(1) per
/// draw); larger ones are drawn by rejection sampling with only this many labels prebuilt (the
/// most likely ranks) and the rarer ones formatted when drawn, so a population of ten million
/// costs no ten-million-entry table. (Rejection sampling alone cost a quarter of the generator's
/// speed on the shipped 1,000 users.)
const PREBUILT_LABELS: usize = 1 << 16;

/// How Zipf ranks are drawn.
#[derive(Debug)]
enum Ranks {
    Table(WeightedAliasIndex<f64>),
    Rejection(Zipf<f64>),
}

#[derive(Debug)]
enum Kind {
    /// One of a listed set, by weight (Walker's alias method: O(1) per draw).
    Labels { labels: Vec<String>, table: WeightedAliasIndex<f64> },
    /// `prefix1..prefixN`, rank k with weight 1/k^s.
    Zipf { prefix: String, ranks: Ranks, labels: Vec<String> },
    Uniform { lo: f64, hi: f64 },
    UniformInt { lo: i64, hi: i64 },
}

/// One drawn value.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample<'a> {
    Label(Cow<'a, str>),
    Number(f64),
}

type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

fn script_err<T>(msg: impl Into<String>) -> ScriptResult<T> {
    Err(msg.into().into())
}

impl Distribution {
    fn new(kind: Kind) -> Self {
        Distribution {
            kind: Arc::new(kind),
            decimals: None,
            only_when: None,
        }
    }

    fn zipf(prefix: &str, n: i64, exponent: f64) -> ScriptResult<Self> {
        if !(1..=10_000_000).contains(&n) {
            return script_err(format!("zipf: n must be between 1 and 10,000,000, got {n}"));
        }
        if !exponent.is_finite() || exponent < 0.0 {
            return script_err(format!("zipf: exponent must be >= 0, got {exponent}"));
        }
        let ranks = if n as usize <= PREBUILT_LABELS {
            let weights = (1..=n).map(|k| (k as f64).powf(-exponent)).collect();
            Ranks::Table(WeightedAliasIndex::new(weights).map_err(|e| format!("zipf: {e}"))?)
        } else {
            Ranks::Rejection(Zipf::new(n as f64, exponent).map_err(|e| format!("zipf: {e}"))?)
        };
        let labels = (1..=n.min(PREBUILT_LABELS as i64)).map(|k| format!("{prefix}{k}")).collect();
        Ok(Self::new(Kind::Zipf { prefix: prefix.to_string(), ranks, labels }))
    }

    fn weighted(choices: Map) -> ScriptResult<Self> {
        let mut labels = Vec::with_capacity(choices.len());
        let mut weights = Vec::with_capacity(choices.len());
        for (label, weight) in choices {
            let w = weight
                .as_float()
                .or_else(|_| weight.as_int().map(|i| i as f64))
                .map_err(|t| format!("weighted: the weight of {label:?} is a {t}, not a number"))?;
            labels.push(label.to_string());
            weights.push(w);
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || !weights.iter().any(|w| *w > 0.0) {
            return script_err("weighted: weights must be finite, not negative, and not all zero");
        }
        let table = WeightedAliasIndex::new(weights).map_err(|e| format!("weighted: {e}"))?;
        Ok(Self::new(Kind::Labels { labels, table }))
    }

    fn uniform(lo: f64, hi: f64) -> ScriptResult<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return script_err(format!("uniform: needs lo < hi, got {lo} and {hi}"));
        }
        Ok(Self::new(Kind::Uniform { lo, hi }))
    }

    fn uniform_int(lo: i64, hi: i64) -> ScriptResult<Self> {
        if lo > hi {
            return script_err(format!("uniform_int: needs lo <= hi, got {lo} and {hi}"));
        }
        Ok(Self::new(Kind::UniformInt { lo, hi }))
    }

    fn round(mut self, decimals: i64) -> ScriptResult<Self> {
        if !(0..=9).contains(&decimals) {
            return script_err(format!("round: decimals must be 0 to 9, got {decimals}"));
        }
        self.decimals = Some(decimals as u32);
        Ok(self)
    }

    fn only_when(mut self, types: Array) -> ScriptResult<Self> {
        let types = types
            .into_iter()
            .map(|t| t.into_string().map_err(|t| format!("only_when: expected type names, got a {t}")))
            .collect::<Result<Vec<_>, _>>()?;
        self.only_when = Some(types.into());
        Ok(self)
    }

    fn is_labels(&self) -> bool {
        matches!(*self.kind, Kind::Labels { .. } | Kind::Zipf { .. })
    }

    /// Draws one value.
    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Sample<'_> {
        match &*self.kind {
            Kind::Labels { labels, table } => Sample::Label(Cow::Borrowed(&labels[rng.sample(table)])),
            Kind::Zipf { prefix, ranks, labels } => {
                let rank = match ranks {
                    Ranks::Table(table) => rng.sample(table) + 1,
                    Ranks::Rejection(zipf) => rng.sample(zipf) as usize, // 1..=n
                };
                match labels.get(rank - 1) {
                    Some(label) => Sample::Label(Cow::Borrowed(label)),
                    None => Sample::Label(Cow::Owned(format!("{prefix}{rank}"))),
                }
            }
            Kind::Uniform { lo, hi } => Sample::Number(self.rounded(rng.random_range(*lo..*hi))),
            Kind::UniformInt { lo, hi } => Sample::Number(rng.random_range(*lo..=*hi) as f64),
        }
    }

    fn rounded(&self, v: f64) -> f64 {
        match self.decimals {
            Some(d) => {
                let scale = 10f64.powi(d as i32);
                (v * scale).round() / scale
            }
            None => v,
        }
    }

    fn applies_to(&self, interaction_type: &str) -> bool {
        self.only_when
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == interaction_type))
    }
}

/// Makes the distribution builders callable from generator scripts.
pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<Distribution>("Distribution")
        .register_fn("zipf", Distribution::zipf)
        .register_fn("zipf", |p: &str, n: i64, e: i64| Distribution::zipf(p, n, e as f64))
        .register_fn("weighted", Distribution::weighted)
        .register_fn("uniform", Distribution::uniform)
        .register_fn("uniform", |lo: i64, hi: i64| Distribution::uniform(lo as f64, hi as f64))
        .register_fn("uniform_int", Distribution::uniform_int)
        .register_fn("round", Distribution::round)
        .register_fn("only_when", Distribution::only_when)
        .register_fn("only_when", |d: Distribution, t: &str| {
            d.only_when(vec![Dynamic::from(t.to_string())])
        });
}

/// The compiled description of one event: a distribution per field.
#[derive(Debug, Clone)]
pub struct EventPlan {
    user_id: Distribution,
    item_id: Distribution,
    interaction_type: Distribution,
    value: Option<Distribution>,
    price: Option<Distribution>,
    view_duration: Option<Distribution>,
    attributes: Vec<(String, Distribution)>,
}

impl EventPlan {
    /// Builds a plan from the map the script returned; the error names the offending field.
    pub fn from_map(mut spec: Map) -> Result<Self, String> {
        let mut take = |name: &str, labels: bool, required: bool| -> Result<Option<Distribution>, String> {
            let Some(v) = spec.remove(name) else {
                return if required {
                    Err(format!("the event description has no `{name}` field"))
                } else {
                    Ok(None)
                };
            };
            let d = v.try_cast::<Distribution>().ok_or_else(|| {
                format!("`{name}` must be a distribution (zipf, weighted, uniform, uniform_int)")
            })?;
            if d.is_labels() != labels {
                let want = if labels { "labels (zipf or weighted)" } else { "numbers (uniform or uniform_int)" };
                return Err(format!("`{name}` must draw {want}"));
            }
            Ok(Some(d))
        };
        let user_id = take("user_id", true, true)?.unwrap();
        let item_id = take("item_id", true, true)?.unwrap();
        let interaction_type = take("interaction_type", true, true)?.unwrap();
        if interaction_type.only_when.is_some() {
            return Err("`interaction_type` cannot be conditional on itself".into());
        }
        let value = take("value", false, false)?;
        let price = take("price", false, false)?;
        let view_duration = take("view_duration", false, false)?;
        for reserved in ["event_id", "timestamp", "session_id"] {
            if spec.contains_key(reserved) {
                return Err(format!("`{reserved}` is set by the runner, not the script"));
            }
        }
        let mut attributes = Vec::new();
        for (name, v) in spec {
            let d = v.try_cast::<Distribution>().ok_or_else(|| format!("`{name}` must be a distribution"))?;
            attributes.push((name.to_string(), d));
        }
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(EventPlan { user_id, item_id, interaction_type, value, price, view_duration, attributes })
    }

    /// Draws one event (without its `event_id`, which the generator assigns).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Event {
        let label = |d: &Distribution, rng: &mut R| match d.sample(rng) {
            Sample::Label(s) => s.to_string(),
            Sample::Number(n) => n.to_string(),
        };
        let user_id = label(&self.user_id, rng);
        let item_id = label(&self.item_id, rng);
        let interaction_type = label(&self.interaction_type, rng);
        let number = |d: &Option<Distribution>, rng: &mut R| {
            d.as_ref().filter(|d| d.applies_to(&interaction_type)).map(|d| match d.sample(rng) {
                Sample::Number(n) => n,
                Sample::Label(_) => unreachable!("checked at load"),
            })
        };
        let value = number(&self.value, rng).unwrap_or(0.0);
        let price = number(&self.price, rng);
        let view_duration = number(&self.view_duration, rng);
        let mut attributes = serde_json::Map::new();
        for (name, d) in &self.attributes {
            if d.applies_to(&interaction_type) {
                let v = match d.sample(rng) {
                    Sample::Label(s) => serde_json::Value::from(s.into_owned()),
                    Sample::Number(n) => serde_json::Value::from(n),
                };
                attributes.insert(name.clone(), v);
            }
        }
        Event {
            event_id: String::new(),
            user_id,
            item_id,
            interaction_type,
            timestamp: Utc::now(),
            session_id: uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string(),
            value,
            price,
            view_duration,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn draw_labels(d: &Distribution, n: usize) -> std::collections::HashMap<String, u32> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..n {
            let Sample::Label(l) = d.sample(&mut rng) else { panic!("labels expected") };
            *counts.entry(l.into_owned()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn weighted_frequencies_follow_weights_and_zero_is_never_drawn() {
        let mut m = Map::new();
        for (k, w) in [("a", 0.65), ("b", 0.20), ("c", 0.10), ("d", 0.05), ("never", 0.0)] {
            m.insert(k.into(), Dynamic::from(w));
        }
        let counts = draw_labels(&Distribution::weighted(m).unwrap(), 200_000);
        for (k, w) in [("a", 0.65), ("b", 0.20), ("c", 0.10), ("d", 0.05)] {
            assert!((counts[k] as f64 / 200_000.0 - w).abs() < 0.005, "{counts:?}");
        }
        assert!(!counts.contains_key("never"));
    }

    #[test]
    fn bad_weights_are_rejected() {
        let weights = |ws: &[f64]| ws.iter().enumerate().map(|(i, w)| (format!("l{i}").into(), Dynamic::from(*w))).collect::<Map>();
        assert!(Distribution::weighted(Map::new()).is_err());
        assert!(Distribution::weighted(weights(&[0.0, 0.0])).is_err());
        assert!(Distribution::weighted(weights(&[1.0, -1.0])).is_err());
    }

    #[test]
    fn zipf_ranks_follow_the_power_law() {
        let counts = draw_labels(&Distribution::zipf("u", 1000, 1.1).unwrap(), 200_000);
        // P(rank 1) / P(rank 2) = 2^1.1, P(rank 1) / P(rank 10) = 10^1.1.
        let ratio = |a: &str, b: &str| counts[a] as f64 / counts[b] as f64;
        assert!((ratio("u1", "u2") - 2f64.powf(1.1)).abs() < 0.1, "{}", ratio("u1", "u2"));
        assert!((ratio("u1", "u10") - 10f64.powf(1.1)).abs() < 1.5, "{}", ratio("u1", "u10"));
        assert!(counts.keys().all(|k| (1..=1000).contains(&k[1..].parse::<u32>().unwrap())));
    }

    #[test]
    fn a_huge_zipf_population_builds_no_table_and_draws_rare_labels() {
        let d = Distribution::zipf("item_", 10_000_000, 0.3).unwrap();
        let Kind::Zipf { labels, .. } = &*d.kind else { panic!() };
        assert_eq!(labels.len(), PREBUILT_LABELS);
        let counts = draw_labels(&d, 20_000);
        let beyond = counts.keys().filter(|k| k[5..].parse::<usize>().unwrap() > PREBUILT_LABELS).count();
        assert!(beyond > 1000, "ranks past the prebuilt labels are drawn and formatted: {beyond}");
    }
}
