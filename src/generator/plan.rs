//! The generator script describes distributions; this module turns that description into a plan
//! that samples records in Rust. The script runs once per load, not once per record.
//!
//! Functions available to the script:
//! - `zipf(prefix, n, exponent)`: labels `prefix1..prefixN`, rank k drawn with weight 1/k^exponent;
//! - `weighted(#{label: weight, ...})`: one of the labels, in proportion to the weights (labels
//!   `true` / `false` for a bool field);
//! - `uniform(lo, hi)`: a float in [lo, hi); `uniform_int(lo, hi)`: an integer in [lo, hi];
//! - `normal(mean, sd)`, `exponential(mean)`: floats from those distributions;
//! - `uuid()`: a random UUID; `sequence(prefix)`: `prefix1`, `prefix2`, ... one per record;
//! - `now()`: the send time (for a timestamp field other than the record's `time`);
//! - a plain value (`"lab"`, `3`, `true`): that value in every record;
//! - `chance(p)`: `true` with probability p, else `false` (a bool field);
//! - `.round(decimals)`: round a numeric distribution; `.only_when(field, value_or_list)`: the
//!   field is present only when another (unconditional) field drew one of those values;
//!   `.optional(share)`: the field is present in that share of records (an optional field).

use rand::{Rng, SeedableRng};
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Exp, Normal, Zipf};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use std::borrow::Cow;
use std::sync::Arc;

use crate::event::{FieldType, Record, Schema, Value};

/// How one field's values are drawn.
#[derive(Debug, Clone)]
pub struct Distribution {
    kind: Arc<Kind>,
    decimals: Option<u32>,
    /// Present only when this field drew one of these values.
    only_when: Option<(String, Arc<[String]>)>,
    /// Present in this share of records (`.optional(share)`); always when `None`.
    presence: Option<f64>,
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
    Labels {
        labels: Vec<String>,
        table: WeightedAliasIndex<f64>,
    },
    /// `prefix1..prefixN`, rank k with weight 1/k^s.
    Zipf {
        prefix: String,
        ranks: Ranks,
        labels: Vec<String>,
    },
    Uniform {
        lo: f64,
        hi: f64,
    },
    UniformInt {
        lo: i64,
        hi: i64,
    },
    Normal(Normal<f64>),
    /// The distribution and its mean.
    Exponential(Exp<f64>, f64),
    Uuid,
    /// `true` with this probability.
    Chance(f64),
    /// `prefix` followed by the record's sequence number (from 1).
    Sequence {
        prefix: String,
    },
    Now,
    Const(Constant),
}

/// A plain value the script gave instead of a distribution.
#[derive(Debug, Clone, PartialEq)]
enum Constant {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One drawn value.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample<'a> {
    Label(Cow<'a, str>),
    Number(f64),
    Int(i64),
    Bool(bool),
    /// The send time.
    Now,
}

/// What a distribution draws, for matching it with a field's type at load.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Draws {
    Labels,
    Numbers,
    Bools,
    Time,
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
            presence: None,
        }
    }

    fn chance(p: f64) -> ScriptResult<Self> {
        if !(0.0..=1.0).contains(&p) {
            return script_err(format!("chance: p must be between 0 and 1, got {p}"));
        }
        Ok(Self::new(Kind::Chance(p)))
    }

    fn optional(mut self, share: f64) -> ScriptResult<Self> {
        if !(0.0..=1.0).contains(&share) {
            return script_err(format!("optional: the share of records with the field must be between 0 and 1, got {share}"));
        }
        self.presence = Some(share);
        Ok(self)
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
        let labels = (1..=n.min(PREBUILT_LABELS as i64))
            .map(|k| format!("{prefix}{k}"))
            .collect();
        Ok(Self::new(Kind::Zipf {
            prefix: prefix.to_string(),
            ranks,
            labels,
        }))
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

    fn normal(mean: f64, sd: f64) -> ScriptResult<Self> {
        let n = Normal::new(mean, sd).map_err(|e| {
            format!("normal({mean}, {sd}): {e} (sd must be finite and not negative)")
        })?;
        Ok(Self::new(Kind::Normal(n)))
    }

    fn exponential(mean: f64) -> ScriptResult<Self> {
        if !(mean.is_finite() && mean > 0.0) {
            return script_err(format!("exponential: the mean must be above 0, got {mean}"));
        }
        Ok(Self::new(Kind::Exponential(
            Exp::new(1.0 / mean).map_err(|e| format!("exponential: {e}"))?,
            mean,
        )))
    }

    /// A plain value from the script, or `None` when it is not one.
    fn constant(v: &Dynamic) -> Option<Self> {
        let c = if let Ok(b) = v.as_bool() {
            Constant::Bool(b)
        } else if let Ok(i) = v.as_int() {
            Constant::Int(i)
        } else if let Ok(f) = v.as_float() {
            Constant::Float(f)
        } else if v.is_string() {
            Constant::Text(v.clone().into_string().ok()?)
        } else {
            return None;
        };
        Some(Self::new(Kind::Const(c)))
    }

    fn round(mut self, decimals: i64) -> ScriptResult<Self> {
        if !(0..=9).contains(&decimals) {
            return script_err(format!("round: decimals must be 0 to 9, got {decimals}"));
        }
        self.decimals = Some(decimals as u32);
        Ok(self)
    }

    fn only_when(mut self, field: &str, values: Array) -> ScriptResult<Self> {
        let values = values
            .into_iter()
            .map(|v| {
                if v.is_string() {
                    Ok(v.into_string().unwrap_or_default())
                } else if v.is_int() || v.is_bool() {
                    Ok(v.to_string())
                } else {
                    Err(format!(
                        "only_when: values must be strings, integers or booleans, got a {}",
                        v.type_name()
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() {
            return script_err(format!("only_when({field:?}, []): list at least one value"));
        }
        self.only_when = Some((field.to_string(), values.into()));
        Ok(self)
    }

    fn draws(&self) -> Draws {
        match &*self.kind {
            Kind::Labels { labels, .. } if labels.iter().all(|l| l == "true" || l == "false") => {
                Draws::Bools
            }
            Kind::Labels { .. }
            | Kind::Zipf { .. }
            | Kind::Uuid
            | Kind::Sequence { .. }
            | Kind::Const(Constant::Text(_)) => Draws::Labels,
            Kind::Const(Constant::Bool(_)) | Kind::Chance(_) => Draws::Bools,
            Kind::Now => Draws::Time,
            _ => Draws::Numbers,
        }
    }

    /// Draws one value; `seq` is the record's sequence number (from 0).
    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, seq: u64) -> Sample<'_> {
        match &*self.kind {
            Kind::Labels { labels, table } => {
                Sample::Label(Cow::Borrowed(&labels[rng.sample(table)]))
            }
            Kind::Zipf {
                prefix,
                ranks,
                labels,
            } => {
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
            Kind::UniformInt { lo, hi } => Sample::Int(rng.random_range(*lo..=*hi)),
            Kind::Normal(n) => Sample::Number(self.rounded(rng.sample(n))),
            Kind::Exponential(e, _) => Sample::Number(self.rounded(rng.sample(e))),
            Kind::Uuid => Sample::Label(Cow::Owned(
                uuid::Builder::from_random_bytes(rng.random())
                    .into_uuid()
                    .to_string(),
            )),
            Kind::Chance(p) => Sample::Bool(rng.random::<f64>() < *p),
            Kind::Sequence { prefix } => Sample::Label(Cow::Owned(format!("{prefix}{}", seq + 1))),
            Kind::Now => Sample::Now,
            Kind::Const(Constant::Text(s)) => Sample::Label(Cow::Borrowed(s)),
            Kind::Const(Constant::Int(i)) => Sample::Int(*i),
            Kind::Const(Constant::Float(f)) => Sample::Number(*f),
            Kind::Const(Constant::Bool(b)) => Sample::Bool(*b),
        }
    }

    /// Whether it draws numbers (a think time, say).
    pub fn is_numeric(&self) -> bool {
        self.draws() == Draws::Numbers
    }

    /// Draws one number from a numeric distribution (0 from any other).
    pub fn sample_number<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self.sample(rng, 0) {
            Sample::Number(n) => n,
            Sample::Int(i) => i as f64,
            _ => 0.0,
        }
    }

    /// The mean of a numeric distribution: exact where it is known, else from 200,000 draws.
    pub fn mean(&self) -> f64 {
        match &*self.kind {
            Kind::Uniform { lo, hi } => (lo + hi) / 2.0,
            Kind::UniformInt { lo, hi } => (*lo as f64 + *hi as f64) / 2.0,
            Kind::Exponential(_, mean) => *mean,
            Kind::Const(Constant::Float(f)) => *f,
            Kind::Const(Constant::Int(i)) => *i as f64,
            _ => {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5e55);
                (0..200_000)
                    .map(|_| self.sample_number(&mut rng).max(0.0))
                    .sum::<f64>()
                    / 200_000.0
            }
        }
    }

    /// A plain number as a distribution that always draws it.
    pub fn constant_number(v: f64) -> Self {
        Self::new(Kind::Const(Constant::Float(v)))
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
        .register_fn("normal", Distribution::normal)
        .register_fn("normal", |m: i64, sd: i64| Distribution::normal(m as f64, sd as f64))
        .register_fn("normal", |m: f64, sd: i64| Distribution::normal(m, sd as f64))
        .register_fn("normal", |m: i64, sd: f64| Distribution::normal(m as f64, sd))
        .register_fn("exponential", Distribution::exponential)
        .register_fn("exponential", |m: i64| Distribution::exponential(m as f64))
        .register_fn("uuid", || Distribution::new(Kind::Uuid))
        .register_fn("sequence", |prefix: &str| Distribution::new(Kind::Sequence { prefix: prefix.to_string() }))
        .register_fn("now", || Distribution::new(Kind::Now))
        .register_fn("chance", Distribution::chance)
        .register_fn("chance", |p: i64| Distribution::chance(p as f64))
        .register_fn("optional", Distribution::optional)
        .register_fn("optional", |d: Distribution, share: i64| d.optional(share as f64))
        .register_fn("round", Distribution::round)
        .register_fn("only_when", Distribution::only_when)
        .register_fn("only_when", |d: Distribution, field: &str, v: Dynamic| d.only_when(field, vec![v]))
        .register_fn("only_when", |_: Distribution, v: &str| -> ScriptResult<Distribution> {
            script_err(format!("only_when({v:?}) names no field: write .only_when(\"field\", {v:?}) (or a list of values)"))
        });
}

/// Where a drawn value goes.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Slot(usize, FieldType),
    Extra(String),
}

/// One field of the plan.
#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    target: Target,
    dist: Distribution,
    /// The condition's field (already drawn: conditional fields come last) and its values.
    only_when: Option<(Target, Arc<[String]>)>,
}

/// A value put in place of a field's draw, with probability `share` (a scenario's `set`).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub slot: usize,
    pub value: Value,
    pub share: f64,
}

/// The compiled description of one record: a distribution per field.
#[derive(Debug, Clone)]
pub struct EventPlan {
    schema: Arc<Schema>,
    /// Unconditional fields first, so a condition reads a value already drawn.
    fields: Vec<FieldPlan>,
}

impl EventPlan {
    /// Builds a plan from the map the script returned; the error names the offending field.
    pub fn from_map(spec: Map, schema: &Arc<Schema>) -> Result<Self, String> {
        Self::from_map_with(spec, schema, &[])
    }

    /// [`EventPlan::from_map`] where the declared fields in `provided` get their values from
    /// elsewhere (a session's state and id): they count as drawn, and conditions may name them.
    pub fn from_map_with(
        spec: Map,
        schema: &Arc<Schema>,
        provided: &[&str],
    ) -> Result<Self, String> {
        let mut fields = Vec::new();
        let mut problems = Vec::new();
        for (name, v) in spec {
            let name = name.to_string();
            if name == schema.id_name() || name == schema.time_name() {
                problems.push(format!(
                    "`{name}` is set by the runner (it is the record's {}), not the script",
                    if name == schema.id_name() {
                        "id"
                    } else {
                        "time"
                    }
                ));
                continue;
            }
            let Some(dist) = v
                .clone()
                .try_cast::<Distribution>()
                .or_else(|| Distribution::constant(&v))
            else {
                problems.push(format!("`{name}` must be a distribution (zipf, weighted, uniform, normal, uuid, ...) or a plain value, not a {}", v.type_name()));
                continue;
            };
            let target = match schema.slot(&name) {
                Some(i) => {
                    let ty = schema.fields()[i].spec.ty;
                    let fits = match ty {
                        FieldType::String => dist.draws() == Draws::Labels,
                        FieldType::Int | FieldType::Float => dist.draws() == Draws::Numbers,
                        FieldType::Bool => dist.draws() == Draws::Bools,
                        FieldType::Timestamp => dist.draws() == Draws::Time,
                    };
                    if !fits {
                        let want = match ty {
                            FieldType::String => {
                                "text (zipf, weighted, uuid, sequence or a string)"
                            }
                            FieldType::Int | FieldType::Float => {
                                "numbers (uniform, uniform_int, normal, exponential or a number)"
                            }
                            FieldType::Bool => "true/false (chance(p) or a bool)",
                            FieldType::Timestamp => "times (now())",
                        };
                        problems.push(format!(
                            "`{name}` is declared {} in [event], so it must draw {want}",
                            ty.name()
                        ));
                        continue;
                    }
                    if dist.presence.is_some() && !schema.fields()[i].spec.optional {
                        problems.push(format!("`{name}`: .optional(...) leaves it out of some records, but [event] declares it required (declare it {:?})", format!("{}?", ty.name())));
                        continue;
                    }
                    Target::Slot(i, ty)
                }
                None if schema.extra() == crate::event::Extra::Reject => {
                    problems.push(format!(
                        "`{name}` is not declared in [event] (which has extra = \"reject\")"
                    ));
                    continue;
                }
                None => Target::Extra(name.clone()),
            };
            fields.push((
                name.clone(),
                FieldPlan {
                    name,
                    target,
                    dist,
                    only_when: None,
                },
            ));
        }
        // Conditions name unconditional fields, so one pass in this order draws every condition first.
        let provided_targets = provided.iter().filter_map(|n| {
            schema
                .slot(n)
                .map(|i| (n.to_string(), Target::Slot(i, schema.fields()[i].spec.ty)))
        });
        let unconditional: Vec<(String, Target)> = fields
            .iter()
            .filter(|(_, f)| f.dist.only_when.is_none() && f.dist.presence.is_none())
            .map(|(n, f)| (n.clone(), f.target.clone()))
            .chain(provided_targets)
            .collect();
        for (name, f) in &mut fields {
            if let Some((on, values)) = &f.dist.only_when {
                match unconditional.iter().find(|(n, _)| n == on) {
                    Some((_, target)) => f.only_when = Some((target.clone(), values.clone())),
                    None => problems.push(format!("`{name}`: only_when({on:?}, ...) must name a field the script draws unconditionally")),
                }
            }
        }
        for (i, f) in schema.fields().iter().enumerate() {
            let drawn = fields
                .iter()
                .any(|(_, p)| p.target == Target::Slot(i, f.spec.ty))
                || provided.contains(&f.name.as_str());
            if !drawn && !f.spec.optional && i != schema.id_slot() && i != schema.time_slot() {
                problems.push(format!("`{}` is a required field of [event] but the script does not draw it (declare it {:?} or add it to the map)", f.name, format!("{}?", f.spec.ty.name())));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let mut fields: Vec<FieldPlan> = fields.into_iter().map(|(_, f)| f).collect();
        fields.sort_by_key(|f| f.only_when.is_some());
        Ok(EventPlan {
            schema: schema.clone(),
            fields,
        })
    }

    /// Draws one record with its time set to `now_ms` (its id is the generator's to assign).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, seq: u64, now_ms: i64) -> Record {
        let mut r = Record::new(&self.schema);
        r.set_time_ms(now_ms);
        self.draw(rng, seq, &mut r, None, &[]);
        r
    }

    /// The schema the plan draws records of.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// How many fields the plan draws (the length of a skip mask).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the plan draws nothing.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The position of a field in the plan (for a skip mask), by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Draws the plan's fields into `r` (whose time is set): the fields `skip` marks keep what
    /// `r` holds, and a drawn field an override names takes its value with the override's share.
    pub fn draw<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        seq: u64,
        r: &mut Record,
        skip: Option<&[bool]>,
        overrides: &[Override],
    ) {
        let now_ms = r.time_ms();
        for (index, f) in self.fields.iter().enumerate() {
            if skip.is_some_and(|s| s[index]) {
                continue;
            }
            if let Some((on, values)) = &f.only_when {
                let drawn = match on {
                    Target::Slot(i, _) => values.iter().any(|v| r.get(*i).matches(v)),
                    Target::Extra(name) => r
                        .extra()
                        .get(name)
                        .is_some_and(|x| values.iter().any(|v| json_matches(x, v))),
                };
                if !drawn {
                    continue;
                }
            }
            if f.dist
                .presence
                .is_some_and(|share| rng.random::<f64>() >= share)
            {
                continue;
            }
            let sample = f.dist.sample(rng, seq);
            match &f.target {
                Target::Slot(i, ty) => match overrides.iter().find(|o| o.slot == *i) {
                    Some(o) if rng.random::<f64>() < o.share => r.set(*i, o.value.clone()),
                    _ => r.set(*i, slot_value(sample, *ty, now_ms)),
                },
                Target::Extra(name) => {
                    let v = match sample {
                        Sample::Label(s) => serde_json::Value::from(s.into_owned()),
                        Sample::Number(n) => serde_json::Value::from(n),
                        Sample::Int(i) => serde_json::Value::from(i),
                        Sample::Bool(b) => serde_json::Value::from(b),
                        Sample::Now => serde_json::Value::from(crate::event::iso(now_ms)),
                    };
                    r.extra_mut().insert(name.clone(), v);
                }
            }
        }
    }
}

/// A drawn value in the declared type (checked to fit at load).
fn slot_value(sample: Sample<'_>, ty: FieldType, now_ms: i64) -> Value {
    match (sample, ty) {
        (Sample::Label(s), FieldType::Bool) => Value::Bool(s == "true"),
        (Sample::Label(s), _) => Value::Text(s.into()),
        (Sample::Number(n), FieldType::Int) => Value::Int(n.round() as i64),
        (Sample::Number(n), _) => Value::Float(n),
        (Sample::Int(i), FieldType::Float) => Value::Float(i as f64),
        (Sample::Int(i), _) => Value::Int(i),
        (Sample::Bool(b), _) => Value::Bool(b),
        (Sample::Now, _) => Value::Time(now_ms),
    }
}

fn json_matches(v: &serde_json::Value, listed: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == listed,
        serde_json::Value::Bool(b) => listed == if *b { "true" } else { "false" },
        other => other
            .as_f64()
            .is_some_and(|n| listed.parse::<f64>().ok() == Some(n)),
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
            let Sample::Label(l) = d.sample(&mut rng, 0) else {
                panic!("labels expected")
            };
            *counts.entry(l.into_owned()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn weighted_frequencies_follow_weights_and_zero_is_never_drawn() {
        let mut m = Map::new();
        for (k, w) in [
            ("a", 0.65),
            ("b", 0.20),
            ("c", 0.10),
            ("d", 0.05),
            ("never", 0.0),
        ] {
            m.insert(k.into(), Dynamic::from(w));
        }
        let counts = draw_labels(&Distribution::weighted(m).unwrap(), 200_000);
        for (k, w) in [("a", 0.65), ("b", 0.20), ("c", 0.10), ("d", 0.05)] {
            assert!(
                (counts[k] as f64 / 200_000.0 - w).abs() < 0.005,
                "{counts:?}"
            );
        }
        assert!(!counts.contains_key("never"));
    }

    #[test]
    fn bad_weights_are_rejected() {
        let weights = |ws: &[f64]| {
            ws.iter()
                .enumerate()
                .map(|(i, w)| (format!("l{i}").into(), Dynamic::from(*w)))
                .collect::<Map>()
        };
        assert!(Distribution::weighted(Map::new()).is_err());
        assert!(Distribution::weighted(weights(&[0.0, 0.0])).is_err());
        assert!(Distribution::weighted(weights(&[1.0, -1.0])).is_err());
    }

    #[test]
    fn zipf_ranks_follow_the_power_law() {
        let counts = draw_labels(&Distribution::zipf("u", 1000, 1.1).unwrap(), 200_000);
        // P(rank 1) / P(rank 2) = 2^1.1, P(rank 1) / P(rank 10) = 10^1.1.
        let ratio = |a: &str, b: &str| counts[a] as f64 / counts[b] as f64;
        assert!(
            (ratio("u1", "u2") - 2f64.powf(1.1)).abs() < 0.1,
            "{}",
            ratio("u1", "u2")
        );
        assert!(
            (ratio("u1", "u10") - 10f64.powf(1.1)).abs() < 1.5,
            "{}",
            ratio("u1", "u10")
        );
        assert!(counts
            .keys()
            .all(|k| (1..=1000).contains(&k[1..].parse::<u32>().unwrap())));
    }

    #[test]
    fn a_huge_zipf_population_builds_no_table_and_draws_rare_labels() {
        let d = Distribution::zipf("item_", 10_000_000, 0.3).unwrap();
        let Kind::Zipf { labels, .. } = &*d.kind else {
            panic!()
        };
        assert_eq!(labels.len(), PREBUILT_LABELS);
        let counts = draw_labels(&d, 20_000);
        let beyond = counts
            .keys()
            .filter(|k| k[5..].parse::<usize>().unwrap() > PREBUILT_LABELS)
            .count();
        assert!(
            beyond > 1000,
            "ranks past the prebuilt labels are drawn and formatted: {beyond}"
        );
    }
}
