//! Built-in reducers: their partial state (one per pane and partition), how two partial states
//! merge, and what a merged state reports. Rust holds every built-in state, so the per-event
//! work of a built-in metric is a hash-map update.

use super::quantile::{self, Digest};
use super::sketch::Sketch;
use crate::event::Text;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// Per-key state, by key. Keys are looked up once per event and metric: foldhash instead of
/// SipHash (still seeded per process), and keys up to 24 bytes kept inline.
pub type Groups = HashMap<Text, Acc, foldhash::fast::RandomState>;

/// The values a distinct count has seen. Hashed, for the lookup every event makes (a B-tree of
/// strings cost ~10 string comparisons per lookup); written as a sorted list, so a stored state
/// is the same whatever the process's hash seed, and reads what a `BTreeSet` wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DistinctSet(HashSet<Text, foldhash::fast::RandomState>);

impl DistinctSet {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, v: &str) -> bool {
        self.0.contains(v)
    }

    pub fn insert(&mut self, v: &str) {
        self.0.insert(Text::from(v));
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Text::as_str)
    }

    fn extend(&mut self, other: &DistinctSet) {
        self.0.extend(other.0.iter().cloned());
    }
}

impl Serialize for DistinctSet {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<&str> = self.iter().collect();
        sorted.sort_unstable();
        ser.collect_seq(sorted)
    }
}

impl<'de> Deserialize<'de> for DistinctSet {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Ok(DistinctSet(
            Vec::<Text>::deserialize(de)?.into_iter().collect(),
        ))
    }
}

/// The group that records of keys past a metric's `max_groups` are counted under.
pub const OTHER_KEY: &str = "__other__";

/// Which reduction a metric applies; chosen in the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReducerKind {
    /// Number of events (per key with a key).
    Count,
    /// Sum of `value` (per key with a key).
    Sum,
    /// Mean of `value`.
    Avg,
    Min,
    Max,
    /// Number of distinct `value`s.
    Distinct,
    /// The `k` keys with the most events, with their counts.
    TopK,
    /// The `k` keys with the fewest events, with their counts.
    BottomK,
    /// Events per key, averaged over the keys (e.g. interactions per active user).
    MeanPerKey,
    /// Records matching `numerator` per record matching `denominator` (a conversion or error
    /// rate; 0 while nothing matches the denominator).
    Ratio,
    /// Keys (sessions, orders, users) through ordered `stages`: how many reached each stage
    /// having passed every earlier one, and the rate from each stage to the next. `key` names
    /// what moves through the funnel, `value` the stage a record shows it at; records of other
    /// stages are skipped. Built in, so a window of many sessions stays a bitmask per key.
    Funnel,
    /// The `quantiles` of `value` (p50, p95, ...), nearest rank: exact for a few values, then
    /// within 1 %.
    Quantile,
    /// How many `value`s fall in each of the buckets that `buckets` bounds, in order.
    Histogram,
    /// Fully scripted: the script's init / update / merge / finish.
    Custom,
}

impl ReducerKind {
    /// Whether the reducer needs a `key` selector.
    pub fn needs_key(self) -> bool {
        matches!(
            self,
            ReducerKind::TopK
                | ReducerKind::BottomK
                | ReducerKind::MeanPerKey
                | ReducerKind::Funnel
        )
    }

    /// Whether the reducer needs a `value` selector.
    pub fn needs_value(self) -> bool {
        matches!(
            self,
            ReducerKind::Sum
                | ReducerKind::Avg
                | ReducerKind::Min
                | ReducerKind::Max
                | ReducerKind::Distinct
                | ReducerKind::Funnel
                | ReducerKind::Quantile
                | ReducerKind::Histogram
        )
    }

    /// An empty accumulator for one group.
    pub fn empty(self) -> Acc {
        match self {
            ReducerKind::Count
            | ReducerKind::TopK
            | ReducerKind::BottomK
            | ReducerKind::MeanPerKey => Acc::Count(0),
            ReducerKind::Sum | ReducerKind::Avg => Acc::Sum { sum: 0.0, n: 0 },
            ReducerKind::Min => Acc::Min(None),
            ReducerKind::Max => Acc::Max(None),
            ReducerKind::Distinct => Acc::Distinct(DistinctSet::default()),
            ReducerKind::Ratio => Acc::Ratio { num: 0, den: 0 },
            ReducerKind::Funnel => Acc::Stages(0),
            ReducerKind::Quantile => Acc::Quantiles(Box::default()),
            ReducerKind::Histogram => Acc::Buckets(Vec::new()),
            ReducerKind::Custom => unreachable!("custom reducers keep script state"),
        }
    }
}

/// The partial state of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acc {
    Count(u64),
    Sum {
        sum: f64,
        n: u64,
    },
    Min(Option<f64>),
    Max(Option<f64>),
    Distinct(DistinctSet),
    /// A distinct count past its exact limit.
    Sketch(Sketch),
    /// Records matching a ratio's numerator and its denominator.
    Ratio {
        num: u64,
        den: u64,
    },
    /// The funnel stages a key was seen at, bit i for stage i.
    Stages(u64),
    /// The values a quantile has seen (boxed: most accumulators are a word or two).
    Quantiles(Box<Digest>),
    /// Values per histogram bucket; buckets past the last one seen are not stored.
    Buckets(Vec<u64>),
}

/// What one event contributes to an accumulator.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Event,
    Number(f64),
    Text(&'a str),
    /// Whether the record matches a ratio's numerator and its denominator.
    Matches {
        num: bool,
        den: bool,
    },
    /// The funnel stage (its index) a record shows its key at.
    Stage(u32),
    /// The histogram bucket (its index) a record's value falls in.
    Bucket(u32),
}

impl Acc {
    /// Adds one event's input; a distinct set larger than `exact_limit` becomes a sketch.
    #[inline]
    pub fn add(&mut self, input: Input<'_>, exact_limit: usize) {
        match (&mut *self, input) {
            (Acc::Count(n), _) => *n += 1,
            (Acc::Stages(bits), Input::Stage(i)) => *bits |= 1 << i,
            (Acc::Quantiles(d), Input::Number(v)) => d.add(v, exact_limit),
            (Acc::Buckets(counts), Input::Bucket(i)) => {
                let i = i as usize;
                if counts.len() <= i {
                    counts.resize(i + 1, 0);
                }
                counts[i] += 1;
            }
            (Acc::Ratio { num, den }, Input::Matches { num: a, den: b }) => {
                *num += a as u64;
                *den += b as u64;
            }
            (Acc::Sum { sum, n }, Input::Number(v)) => {
                *sum = saturating_sum(*sum, v);
                *n += 1;
            }
            (Acc::Min(m), Input::Number(v)) => *m = Some(m.map_or(v, |m| m.min(v))),
            (Acc::Max(m), Input::Number(v)) => *m = Some(m.map_or(v, |m| m.max(v))),
            // A value already in the set falls through to the no-op arm below.
            (Acc::Distinct(set), Input::Text(s)) if !set.contains(s) => {
                set.insert(s);
                if set.len() > exact_limit {
                    self.become_sketch();
                }
            }
            (Acc::Distinct(_), Input::Number(v)) => {
                self.add(Input::Text(&v.to_string()), exact_limit)
            }
            (Acc::Sketch(sk), Input::Text(s)) => sk.insert(s),
            (Acc::Sketch(sk), Input::Number(v)) => sk.insert(&v.to_string()),
            // A missing or mistyped value is skipped by the caller; nothing else reaches here.
            _ => {}
        }
    }

    fn become_sketch(&mut self) {
        if let Acc::Distinct(set) = self {
            let mut sk = Sketch::default();
            set.iter().for_each(|v| sk.insert(v));
            *self = Acc::Sketch(sk);
        }
    }

    /// Folds another partial state of the same reducer into this one.
    pub fn merge(&mut self, other: &Acc, exact_limit: usize) -> Result<(), String> {
        if let (Acc::Distinct(_), Acc::Sketch(_)) = (&*self, other) {
            self.become_sketch();
        }
        match (&mut *self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum { sum, n }, Acc::Sum { sum: s2, n: n2 }) => {
                *sum = saturating_sum(*sum, *s2);
                *n += n2;
            }
            (Acc::Min(a), Acc::Min(b)) => *a = min_opt(*a, *b, f64::min),
            (Acc::Max(a), Acc::Max(b)) => *a = min_opt(*a, *b, f64::max),
            (Acc::Distinct(a), Acc::Distinct(b)) => {
                a.extend(b);
                if a.len() > exact_limit {
                    self.become_sketch();
                }
            }
            (Acc::Sketch(a), Acc::Sketch(b)) => a.merge(b),
            (Acc::Ratio { num, den }, Acc::Ratio { num: n2, den: d2 }) => {
                *num += n2;
                *den += d2;
            }
            (Acc::Stages(a), Acc::Stages(b)) => *a |= b,
            (Acc::Quantiles(a), Acc::Quantiles(b)) => a.merge(b, exact_limit),
            (Acc::Buckets(a), Acc::Buckets(b)) => {
                if a.len() < b.len() {
                    a.resize(b.len(), 0);
                }
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
            (Acc::Sketch(a), Acc::Distinct(b)) => b.iter().for_each(|v| a.insert(v)),
            (a, b) => return Err(format!("cannot merge a stored {} state into a {} state: it was written by another definition of the metric", b.kind(), a.kind())),
        }
        Ok(())
    }

    /// The reducer a state belongs to, for errors.
    fn kind(&self) -> &'static str {
        match self {
            Acc::Count(_) => "count",
            Acc::Sum { .. } => "sum/avg",
            Acc::Min(_) => "min",
            Acc::Max(_) => "max",
            Acc::Distinct(_) | Acc::Sketch(_) => "distinct",
            Acc::Ratio { .. } => "ratio",
            Acc::Stages(_) => "funnel",
            Acc::Quantiles(_) => "quantile",
            Acc::Buckets(_) => "histogram",
        }
    }

    fn report(&self, r: &Report) -> Value {
        match self {
            Acc::Count(n) => json!(n),
            Acc::Sum { sum, n } if r.kind == ReducerKind::Avg => {
                if *n == 0 {
                    Value::Null
                } else {
                    json!(sum / *n as f64)
                }
            }
            Acc::Sum { sum, .. } => json!(sum),
            Acc::Min(v) | Acc::Max(v) => v.map_or(Value::Null, |v| json!(v)),
            Acc::Distinct(set) => json!(set.len()),
            Acc::Sketch(sk) => json!(sk.estimate().round() as u64),
            Acc::Ratio { num, den } => json!(if *den == 0 {
                0.0
            } else {
                *num as f64 / *den as f64
            }),
            Acc::Stages(bits) => json!(bits),
            // One quantile is a number (charted, compared in alerts as `metrics.<name>`);
            // several are an object by label.
            Acc::Quantiles(d) if r.quantiles.len() == 1 => {
                d.quantile(r.quantiles[0].0).map_or(Value::Null, |v| json!(v))
            }
            Acc::Quantiles(d) => Value::Object(
                r.quantiles
                    .iter()
                    .map(|(q, label)| (label.clone(), d.quantile(*q).map_or(Value::Null, |v| json!(v))))
                    .collect(),
            ),
            // In bucket order, as a ranking is: the dashboard draws it as bars in that order.
            Acc::Buckets(counts) => Value::Array(
                r.buckets
                    .iter()
                    .enumerate()
                    .map(|(i, label)| json!({"key": label, "count": counts.get(i).copied().unwrap_or(0)}))
                    .collect(),
            ),
        }
    }
}

/// How a metric reports its merged state: its reducer and the settings that shape the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kind: ReducerKind,
    /// Keys a ranking lists.
    pub k: usize,
    /// A funnel's stages, in order.
    pub stages: Vec<String>,
    /// A quantile's quantiles, each with its label (`p95`).
    pub quantiles: Vec<(f64, String)>,
    /// A histogram's bucket labels, in order.
    pub buckets: Vec<String>,
}

impl Report {
    /// The report of `kind` with one key ranked and no stages, quantiles or buckets.
    pub fn of(kind: ReducerKind) -> Report {
        Report {
            kind,
            k: 1,
            stages: Vec::new(),
            quantiles: Vec::new(),
            buckets: Vec::new(),
        }
    }

    pub fn with_quantiles(mut self, qs: &[f64]) -> Report {
        self.quantiles = qs.iter().map(|q| (*q, quantile::label(*q))).collect();
        self
    }
}

/// `a + b` for the finite numbers a sum holds: a sum past the largest float stays at the
/// largest float of its sign instead of becoming infinite (two prices of 1.7e308). An infinite
/// sum would be stored as JSON `null`, which no reader can decode; a saturated one is an honest
/// "at least this much" that every reader, chart and alert can use.
#[inline]
pub fn saturating_sum(a: f64, b: f64) -> f64 {
    let s = a + b;
    if s.is_finite() {
        s
    } else {
        s.clamp(f64::MIN, f64::MAX)
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The partial state of a built-in metric for one pane and partition: one accumulator, or one
/// per key. Stored as [`Written`], read from [`Stored`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Stored")]
pub enum State {
    Single(Acc),
    Grouped(Groups),
    /// `mean_per_key`: events, and the distinct keys they came from (exact up to the metric's
    /// `exact_limit`, then a sketch), so a window of 100,000 active users stays a few KiB
    /// instead of a map entry per user.
    PerKey {
        events: u64,
        keys: Acc,
    },
}

/// A [`State`] as written: a grouped state whose groups are all counts (`count`, `top_k`) or
/// all funnel stages is written as one number per key (`{"counts": {"a": 3}}`) instead of an
/// object per key (`{"grouped": {"a": {"count": 3}}}`): a funnel pane holds a group per
/// session, and the object took a third of its bytes, rewritten at every checkpoint.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Written<'a> {
    Single(&'a Acc),
    Grouped(&'a Groups),
    PerKey { events: u64, keys: &'a Acc },
    Counts(Numbers<'a>),
    Stages(Numbers<'a>),
}

/// Groups written as one number each (see [`Written`]).
struct Numbers<'a>(&'a Groups);

impl Serialize for Numbers<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(self.0.iter().map(|(k, acc)| {
            let n = match acc {
                Acc::Count(n) | Acc::Stages(n) => *n,
                _ => unreachable!("Numbers holds only counts or stages"),
            };
            (k.as_str(), n)
        }))
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let all = |map: &Groups, f: fn(&Acc) -> bool| !map.is_empty() && map.values().all(f);
        match self {
            State::Single(acc) => Written::Single(acc),
            State::Grouped(map) if all(map, |a| matches!(a, Acc::Count(_))) => {
                Written::Counts(Numbers(map))
            }
            State::Grouped(map) if all(map, |a| matches!(a, Acc::Stages(_))) => {
                Written::Stages(Numbers(map))
            }
            State::Grouped(map) => Written::Grouped(map),
            State::PerKey { events, keys } => Written::PerKey {
                events: *events,
                keys,
            },
        }
        .serialize(ser)
    }
}

/// Groups read as one number each (see [`Written`]).
type NumberMap = HashMap<Text, u64, foldhash::fast::RandomState>;

/// A [`State`] as read: what [`Written`] writes, and states stored before it (every grouped
/// state as `grouped`).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stored {
    Single(Acc),
    Grouped(Groups),
    PerKey { events: u64, keys: Acc },
    Counts(NumberMap),
    Stages(NumberMap),
}

impl From<Stored> for State {
    fn from(s: Stored) -> State {
        let groups = |map: NumberMap, acc: fn(u64) -> Acc| {
            State::Grouped(map.into_iter().map(|(k, n)| (k, acc(n))).collect())
        };
        match s {
            Stored::Single(acc) => State::Single(acc),
            Stored::Grouped(map) => State::Grouped(map),
            Stored::PerKey { events, keys } => State::PerKey { events, keys },
            Stored::Counts(map) => groups(map, Acc::Count),
            Stored::Stages(map) => groups(map, Acc::Stages),
        }
    }
}

impl State {
    pub fn new(kind: ReducerKind, grouped: bool) -> State {
        if kind == ReducerKind::MeanPerKey {
            State::PerKey {
                events: 0,
                keys: ReducerKind::Distinct.empty(),
            }
        } else if grouped {
            State::Grouped(Groups::default())
        } else {
            State::Single(kind.empty())
        }
    }

    #[inline]
    pub fn add(
        &mut self,
        kind: ReducerKind,
        key: Option<&str>,
        input: Input<'_>,
        exact_limit: usize,
    ) {
        match (self, key) {
            (State::Single(acc), _) => acc.add(input, exact_limit),
            (State::Grouped(map), Some(k)) => match map.get_mut(k) {
                Some(acc) => acc.add(input, exact_limit),
                None => {
                    let mut acc = kind.empty();
                    acc.add(input, exact_limit);
                    map.insert(Text::from(k), acc);
                }
            },
            (State::PerKey { events, keys }, Some(k)) => {
                *events += 1;
                keys.add(Input::Text(k), exact_limit);
            }
            (State::Grouped(_) | State::PerKey { .. }, None) => {}
        }
    }

    /// The records counted under [`OTHER_KEY`], when a pane overflowed into it.
    pub fn other_count(&self) -> Option<u64> {
        match self {
            State::Grouped(map) => map.get(OTHER_KEY).map(count),
            State::Single(_) | State::PerKey { .. } => None,
        }
    }

    /// Whether `key` has a group here or may get one under a limit of `max_groups`.
    #[inline]
    pub fn has_room(&self, key: &str, max_groups: usize) -> bool {
        match self {
            State::Grouped(map) => map.len() < max_groups || map.contains_key(key),
            State::Single(_) | State::PerKey { .. } => true,
        }
    }

    /// Merges another partial of the same metric; a state of another shape (written by an
    /// earlier definition of the metric) is an error, never a silently wrong value.
    pub fn merge(&mut self, other: &State, exact_limit: usize) -> Result<(), String> {
        match (self, other) {
            (State::Single(a), State::Single(b)) => a.merge(b, exact_limit),
            (State::Grouped(a), State::Grouped(b)) => {
                for (k, acc) in b {
                    match a.get_mut(k) {
                        Some(mine) => mine.merge(acc, exact_limit)?,
                        None => {
                            a.insert(k.clone(), acc.clone());
                        }
                    }
                }
                Ok(())
            }
            (State::PerKey { events, keys }, State::PerKey { events: e2, keys: k2 }) => {
                *events += e2;
                keys.merge(k2, exact_limit)
            }
            _ => Err("cannot merge partial states of different shapes (grouped, ungrouped, per key): the metric's key or reducer changed".into()),
        }
    }

    /// The metric's reported value for a merged window.
    pub fn report(&self, r: &Report) -> Value {
        let (kind, k) = (r.kind, r.k);
        if kind == ReducerKind::Funnel {
            return self.funnel(&r.stages);
        }
        match self {
            State::Single(acc) => acc.report(r),
            State::PerKey { events, keys } => {
                match keys.report(&Report::of(ReducerKind::Distinct)).as_f64() {
                    Some(n) if n > 0.0 => json!(*events as f64 / n),
                    _ => json!(0.0),
                }
            }
            State::Grouped(map) => match kind {
                ReducerKind::TopK | ReducerKind::BottomK => {
                    // The overflow group is no key of its own: it is left out of the ranking.
                    let mut counts: Vec<(&Text, u64)> = map
                        .iter()
                        .filter(|(key, _)| key.as_str() != OTHER_KEY)
                        .map(|(key, acc)| (key, count(acc)))
                        .collect();
                    // Ties break by key so every reader reports the same items.
                    if kind == ReducerKind::TopK {
                        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                    } else {
                        counts.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
                    }
                    Value::Array(
                        counts
                            .into_iter()
                            .take(k)
                            .map(|(key, n)| json!({"key": key, "count": n}))
                            .collect(),
                    )
                }
                ReducerKind::MeanPerKey => {
                    let total: u64 = map.values().map(count).sum();
                    if map.is_empty() {
                        json!(0.0)
                    } else {
                        json!(total as f64 / map.len() as f64)
                    }
                }
                _ => {
                    let mut obj = serde_json::Map::new();
                    let mut entries: Vec<(&Text, &Acc)> = map.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    for (key, acc) in entries {
                        obj.insert(key.to_string(), acc.report(r));
                    }
                    Value::Object(obj)
                }
            },
        }
    }
}

impl State {
    /// A funnel's report: per stage, the keys that reached it and every stage before it, and
    /// `<stage>_to_<next>`, the share of one stage's keys that reached the next (three decimals;
    /// 0 when none reached the first).
    fn funnel(&self, stages: &[String]) -> Value {
        let mut reached = vec![0u64; stages.len()];
        if let State::Grouped(map) = self {
            for acc in map.values() {
                if let Acc::Stages(bits) = acc {
                    // Stages passed in order: the run of set bits from stage 0.
                    let run = (bits.trailing_ones() as usize).min(stages.len());
                    reached.iter_mut().take(run).for_each(|n| *n += 1);
                }
            }
        }
        let mut out = serde_json::Map::new();
        for (i, stage) in stages.iter().enumerate() {
            out.insert(stage.clone(), json!(reached[i]));
        }
        for (i, pair) in stages.windows(2).enumerate() {
            let share = if reached[i] == 0 {
                0.0
            } else {
                (reached[i + 1] as f64 / reached[i] as f64 * 1000.0).round() / 1000.0
            };
            out.insert(format!("{}_to_{}", pair[0], pair[1]), json!(share));
        }
        Value::Object(out)
    }
}

fn count(acc: &Acc) -> u64 {
    match acc {
        Acc::Count(n) => *n,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(state: &State) -> (String, State) {
        let text = serde_json::to_string(state).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        (text, back)
    }

    #[test]
    fn grouped_counts_and_funnel_stages_are_written_as_one_number_per_key() {
        let mut counts = State::new(ReducerKind::Count, true);
        let mut stages = State::new(ReducerKind::Funnel, true);
        for (i, key) in ["a", "b", "a", "c"].iter().enumerate() {
            counts.add(ReducerKind::Count, Some(key), Input::Event, 10);
            stages.add(ReducerKind::Funnel, Some(key), Input::Stage(i as u32), 10);
        }
        let (text, back) = round_trip(&counts);
        assert_eq!(back, counts);
        assert!(
            text.starts_with(r#"{"counts":{"#) && text.contains(r#""a":2"#),
            "{text}"
        );
        let (text, back) = round_trip(&stages);
        assert_eq!(back, stages);
        assert!(
            text.starts_with(r#"{"stages":{"#) && text.contains(r#""a":5"#),
            "{text}"
        );
    }

    #[test]
    fn other_states_and_states_stored_before_read_back_unchanged() {
        let mut sums = State::new(ReducerKind::Sum, true);
        sums.add(ReducerKind::Sum, Some("a"), Input::Number(1e308), 10);
        let empty = State::new(ReducerKind::Count, true);
        for state in [sums, empty, State::new(ReducerKind::Count, false)] {
            let (text, back) = round_trip(&state);
            assert_eq!(back, state, "{text}");
        }
        let old: State =
            serde_json::from_str(r#"{"grouped":{"a":{"count":2},"b":{"count":1}}}"#).unwrap();
        let mut new = State::new(ReducerKind::Count, true);
        for key in ["a", "b", "a"] {
            new.add(ReducerKind::Count, Some(key), Input::Event, 10);
        }
        assert_eq!(old, new);
        let old: State = serde_json::from_str(r#"{"grouped":{"s":{"stages":3}}}"#).unwrap();
        assert_eq!(
            old,
            State::Grouped([(Text::from("s"), Acc::Stages(3))].into_iter().collect())
        );
    }

    #[test]
    fn a_funnel_counts_a_key_at_a_stage_only_after_every_earlier_one_across_partials() {
        let stages: Vec<String> = ["view", "cart", "buy"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (mut a, mut b) = (
            State::new(ReducerKind::Funnel, true),
            State::new(ReducerKind::Funnel, true),
        );
        for (key, stage) in [("s1", 0), ("s2", 0), ("s2", 1), ("s4", 2)] {
            a.add(ReducerKind::Funnel, Some(key), Input::Stage(stage), 10);
        }
        // s1 carts and buys in another pane; s3 only views; s4 buys without a view.
        for (key, stage) in [("s1", 1), ("s1", 2), ("s3", 0)] {
            b.add(ReducerKind::Funnel, Some(key), Input::Stage(stage), 10);
        }
        a.merge(&b, 10).unwrap();
        assert_eq!(
            a.funnel(&stages),
            json!({ "view": 3, "cart": 2, "buy": 1, "view_to_cart": 0.667, "cart_to_buy": 0.5 })
        );
        assert_eq!(
            State::new(ReducerKind::Funnel, true).funnel(&stages)["view_to_cart"],
            json!(0.0)
        );
    }

    fn grouped(kind: ReducerKind, keys: &[&str]) -> State {
        let mut s = State::new(kind, true);
        for k in keys {
            s.add(kind, Some(k), Input::Event, 10);
        }
        s
    }

    #[test]
    fn merging_a_state_of_another_shape_or_reducer_is_an_error() {
        let mut grouped_count = grouped(ReducerKind::Count, &["x"]);
        let err = grouped_count
            .merge(&State::new(ReducerKind::Count, false), 10)
            .unwrap_err();
        assert!(err.contains("different shapes"), "{err}");
        let mut min = State::new(ReducerKind::Min, false);
        min.add(ReducerKind::Min, None, Input::Number(1.0), 10);
        let mut count = State::new(ReducerKind::Count, false);
        count.add(ReducerKind::Count, None, Input::Event, 10);
        let err = min.merge(&count, 10).unwrap_err();
        assert!(err.contains("count") && err.contains("min"), "{err}");
    }

    #[test]
    fn count_sum_avg_min_max() {
        let mut s = State::new(ReducerKind::Avg, false);
        for v in [1.0, 2.0, 6.0] {
            s.add(ReducerKind::Avg, None, Input::Number(v), 10);
        }
        assert_eq!(s.report(&Report::of(ReducerKind::Avg)), json!(3.0));
        assert_eq!(s.report(&Report::of(ReducerKind::Sum)), json!(9.0));
        let mut m = State::new(ReducerKind::Min, false);
        m.add(ReducerKind::Min, None, Input::Number(4.0), 10);
        let mut m2 = State::new(ReducerKind::Min, false);
        m2.add(ReducerKind::Min, None, Input::Number(-1.0), 10);
        m.merge(&m2, 10).unwrap();
        assert_eq!(m.report(&Report::of(ReducerKind::Min)), json!(-1.0));
        assert_eq!(
            State::new(ReducerKind::Max, false).report(&Report::of(ReducerKind::Max)),
            Value::Null
        );
    }

    #[test]
    fn top_and_bottom_k_break_ties_by_key() {
        let s = grouped(ReducerKind::TopK, &["b", "a", "c", "c", "a"]);
        assert_eq!(
            s.report(&Report {
                k: 1,
                ..Report::of(ReducerKind::TopK)
            }),
            json!([{"key": "a", "count": 2}])
        );
        assert_eq!(
            s.report(&Report {
                k: 2,
                ..Report::of(ReducerKind::BottomK)
            }),
            json!([{"key": "b", "count": 1}, {"key": "a", "count": 2}])
        );
    }

    #[test]
    fn merged_partials_equal_one_pass() {
        let all = grouped(ReducerKind::Count, &["x", "y", "x", "z", "x"]);
        let mut a = grouped(ReducerKind::Count, &["x", "y"]);
        a.merge(&grouped(ReducerKind::Count, &["x", "z", "x"]), 10)
            .unwrap();
        assert_eq!(a, all);
    }

    #[test]
    fn mean_per_key_merges_exactly_and_stays_small_past_its_limit() {
        let per_key = |keys: &[&str]| {
            let mut s = State::new(ReducerKind::MeanPerKey, true);
            keys.iter()
                .for_each(|k| s.add(ReducerKind::MeanPerKey, Some(k), Input::Event, 10));
            s
        };
        let mut a = per_key(&["x", "y"]);
        a.merge(&per_key(&["x", "z", "x"]), 10).unwrap();
        assert_eq!(a, per_key(&["x", "y", "x", "z", "x"]));
        assert_eq!(
            a.report(&Report::of(ReducerKind::MeanPerKey)),
            json!(5.0 / 3.0)
        );
        assert_eq!(
            State::new(ReducerKind::MeanPerKey, true).report(&Report::of(ReducerKind::MeanPerKey)),
            json!(0.0)
        );

        let mut big = State::new(ReducerKind::MeanPerKey, true);
        for i in 0..100_000 {
            let user = format!("user_{}", i % 50_000);
            big.add(ReducerKind::MeanPerKey, Some(&user), Input::Event, 1_000);
        }
        assert!(
            matches!(
                &big,
                State::PerKey {
                    keys: Acc::Sketch(_),
                    ..
                }
            ),
            "a sketch past the limit"
        );
        let mean = big
            .report(&Report::of(ReducerKind::MeanPerKey))
            .as_f64()
            .unwrap();
        assert!((mean - 2.0).abs() < 0.1, "{mean}");
        assert!(
            serde_json::to_string(&big).unwrap().len() < 20_000,
            "stored state stays small"
        );
    }

    #[test]
    fn distinct_merges_sets() {
        let mut a = State::new(ReducerKind::Distinct, false);
        a.add(ReducerKind::Distinct, None, Input::Text("u1"), 10);
        a.add(ReducerKind::Distinct, None, Input::Text("u2"), 10);
        let mut b = State::new(ReducerKind::Distinct, false);
        b.add(ReducerKind::Distinct, None, Input::Text("u2"), 10);
        a.merge(&b, 10).unwrap();
        assert_eq!(a.report(&Report::of(ReducerKind::Distinct)), json!(2));
    }

    #[test]
    fn a_distinct_set_is_stored_sorted_whatever_the_insertion_order_and_reads_it_back() {
        let mut a = State::new(ReducerKind::Distinct, false);
        let values: Vec<String> = (0..50).rev().map(|i| format!("user_{i}")).collect();
        for v in values.iter().chain(&values[..10]) {
            a.add(ReducerKind::Distinct, None, Input::Text(v), 100);
        }
        let stored = serde_json::to_value(&a).unwrap();
        // The shape a B-tree set of strings was stored in, so earlier stored states still read.
        let mut sorted = values.clone();
        sorted.sort();
        assert_eq!(stored, json!({ "single": { "distinct": sorted } }));
        let back: State = serde_json::from_value(stored).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.report(&Report::of(ReducerKind::Distinct)), json!(50));
    }

    #[test]
    fn distinct_turns_into_a_sketch_past_its_limit_and_stays_close() {
        let (mut a, mut b) = (
            State::new(ReducerKind::Distinct, false),
            State::new(ReducerKind::Distinct, false),
        );
        for i in 0..30_000 {
            let v = format!("user_{i}");
            if i < 20_000 {
                a.add(ReducerKind::Distinct, None, Input::Text(&v), 1000)
            }
            if i >= 15_000 {
                b.add(ReducerKind::Distinct, None, Input::Text(&v), 100_000)
            }
        }
        assert!(matches!(a, State::Single(Acc::Sketch(_))));
        assert!(matches!(b, State::Single(Acc::Distinct(_))));
        a.merge(&b, 1000).unwrap();
        let n = a
            .report(&Report::of(ReducerKind::Distinct))
            .as_u64()
            .unwrap() as f64;
        assert!((n - 30_000.0).abs() / 30_000.0 < 0.05, "{n}");
    }

    #[test]
    fn a_sum_past_the_largest_float_saturates_and_its_state_reads_back() {
        let mut s = State::new(ReducerKind::Sum, false);
        for v in [1.7e308, 1.7e308, 1.0] {
            s.add(ReducerKind::Sum, None, Input::Number(v), 10);
        }
        assert_eq!(s.report(&Report::of(ReducerKind::Sum)), json!(f64::MAX));
        let mut other = State::new(ReducerKind::Sum, false);
        other.add(ReducerKind::Sum, None, Input::Number(-1.7e308), 10);
        other.add(ReducerKind::Sum, None, Input::Number(-1.7e308), 10);
        s.merge(&other, 10).unwrap();
        assert!(
            matches!(s, State::Single(Acc::Sum { sum, n: 5 }) if sum.is_finite()),
            "{s:?}"
        );
        let stored = serde_json::to_string(&s).unwrap();
        assert!(!stored.contains("null"), "{stored}");
        assert_eq!(serde_json::from_str::<State>(&stored).unwrap(), s);
        let mut avg = State::new(ReducerKind::Avg, false);
        avg.add(ReducerKind::Avg, None, Input::Number(f64::MAX), 10);
        avg.add(ReducerKind::Avg, None, Input::Number(f64::MAX), 10);
        assert_eq!(
            avg.report(&Report::of(ReducerKind::Avg)),
            json!(f64::MAX / 2.0)
        );
    }

    #[test]
    fn quantiles_report_by_label_per_key_and_one_quantile_as_a_number() {
        let mut s = State::new(ReducerKind::Quantile, true);
        let mut other = State::new(ReducerKind::Quantile, true);
        for v in 1..=100 {
            let part = if v % 3 == 0 { &mut other } else { &mut s };
            part.add(
                ReducerKind::Quantile,
                Some("a"),
                Input::Number(v as f64),
                10,
            );
            part.add(
                ReducerKind::Quantile,
                Some("b"),
                Input::Number(-v as f64),
                10,
            );
        }
        s.merge(&other, 10).unwrap();
        let r = Report::of(ReducerKind::Quantile).with_quantiles(&[0.5, 0.99]);
        let report = s.report(&r);
        // Past ten values per key (the exact limit here): buckets, within 1 %.
        let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() <= 0.01 * want.abs();
        assert!(close(&report["a"]["p50"], 50.0), "{report}");
        assert!(close(&report["a"]["p99"], 99.0), "{report}");
        assert!(close(&report["b"]["p50"], -51.0), "{report}");
        let mut single = State::new(ReducerKind::Quantile, false);
        for v in [3.0, 1.0, 2.0] {
            single.add(ReducerKind::Quantile, None, Input::Number(v), 10);
        }
        let one = Report::of(ReducerKind::Quantile).with_quantiles(&[0.5]);
        assert_eq!(single.report(&one), json!(2.0));
        assert_eq!(
            State::new(ReducerKind::Quantile, false).report(&one),
            Value::Null
        );
    }

    #[test]
    fn a_histogram_counts_per_bucket_in_bucket_order_across_partials() {
        let (mut a, mut b) = (
            State::new(ReducerKind::Histogram, false),
            State::new(ReducerKind::Histogram, false),
        );
        for i in [0, 2, 2] {
            a.add(ReducerKind::Histogram, None, Input::Bucket(i), 10);
        }
        b.add(ReducerKind::Histogram, None, Input::Bucket(3), 10);
        a.merge(&b, 10).unwrap();
        let r = Report {
            buckets: vec![
                "< 10".into(),
                "10 – 50".into(),
                "50 – 100".into(),
                "≥ 100".into(),
            ],
            ..Report::of(ReducerKind::Histogram)
        };
        assert_eq!(
            a.report(&r),
            json!([
                {"key": "< 10", "count": 1},
                {"key": "10 – 50", "count": 0},
                {"key": "50 – 100", "count": 2},
                {"key": "≥ 100", "count": 1},
            ])
        );
        // Buckets past the last one seen are reported as zero, not left out.
        let mut low = State::new(ReducerKind::Histogram, false);
        low.add(ReducerKind::Histogram, None, Input::Bucket(0), 10);
        assert_eq!(low.report(&r)[3]["count"], json!(0));
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = grouped(ReducerKind::Count, &["a", "b", "a"]);
        let back: State = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
