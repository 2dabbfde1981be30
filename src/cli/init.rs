//! `runner init`: a starting pipeline for data a user already has. It reads a sample (a JSON
//! lines file, or a few hundred messages of a Kafka topic), infers the `[event]` section (types,
//! optional fields, a likely id, time and key), and writes a pipeline file, a generator script
//! that mimics the sample, and one count metric. `runner validate` passes on what it writes.

use crate::event::{parse_time, Naive};
use anyhow::{bail, Context};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A type inferred from the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inferred {
    String,
    Int,
    Float,
    Bool,
    Timestamp,
}

impl Inferred {
    fn name(self) -> &'static str {
        match self {
            Inferred::String => "string",
            Inferred::Int => "int",
            Inferred::Float => "float",
            Inferred::Bool => "bool",
            Inferred::Timestamp => "timestamp",
        }
    }

    fn of(v: &Value) -> Option<Inferred> {
        match v {
            Value::String(s) if parse_time(s, Naive::Utc).is_some() && s.len() >= 10 => {
                Some(Inferred::Timestamp)
            }
            Value::String(_) => Some(Inferred::String),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Inferred::Int),
            Value::Number(_) => Some(Inferred::Float),
            Value::Bool(_) => Some(Inferred::Bool),
            _ => None,
        }
    }

    /// The type both fit, if any (an int and a float are a float; a timestamp and other text, text).
    fn join(self, other: Inferred) -> Option<Inferred> {
        use Inferred::*;
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Int, Float) | (Float, Int) => Some(Float),
            (String, Timestamp) | (Timestamp, String) => Some(String),
            _ => None,
        }
    }
}

/// What the sample says about one field.
#[derive(Debug, Clone)]
pub struct FieldGuess {
    pub name: String,
    /// `None`: values of kinds no one type holds (objects, lists, mixed); left undeclared.
    pub ty: Option<Inferred>,
    /// Missing or null in some records.
    pub optional: bool,
    values: Vec<Value>,
}

impl FieldGuess {
    fn distinct(&self) -> usize {
        let mut seen: Vec<String> = self.values.iter().map(Value::to_string).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

/// The inferred `[event]`.
#[derive(Debug, Clone)]
pub struct Guess {
    pub fields: Vec<FieldGuess>,
    pub id: String,
    /// True when the sample has no field unique per record: the id is a new field, assigned.
    pub id_added: bool,
    pub time: String,
    pub time_added: bool,
    pub key: Option<String>,
    pub records: usize,
}

/// Infers the record from sample records (JSON objects).
pub fn infer(records: &[Map<String, Value>]) -> anyhow::Result<Guess> {
    if records.is_empty() {
        bail!("the sample holds no JSON objects to learn from");
    }
    let mut order: Vec<String> = Vec::new();
    let mut by_name: HashMap<String, FieldGuess> = HashMap::new();
    for r in records {
        for (k, v) in r {
            let g = by_name.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                FieldGuess {
                    name: k.clone(),
                    ty: Inferred::of(v),
                    optional: false,
                    values: Vec::new(),
                }
            });
            if v.is_null() {
                g.optional = true;
                continue;
            }
            g.ty = match (g.ty, Inferred::of(v)) {
                (Some(a), Some(b)) => a.join(b),
                _ => None,
            };
            g.values.push(v.clone());
        }
    }
    for g in by_name.values_mut() {
        if g.values.len() < records.len() {
            g.optional = true;
        }
    }
    let mut fields: Vec<FieldGuess> = order
        .into_iter()
        .filter_map(|k| by_name.remove(&k))
        .collect();
    let named = |g: &FieldGuess, words: &[&str]| {
        words.iter().any(|w| {
            g.name.to_lowercase() == *w || g.name.to_lowercase().ends_with(&format!("_{w}"))
        })
    };
    // The id: a required text field unique in the sample, preferring one named like an id.
    let unique: Vec<&FieldGuess> = fields
        .iter()
        .filter(|g| g.ty == Some(Inferred::String) && !g.optional && g.distinct() == records.len())
        .collect();
    let id = unique
        .iter()
        .find(|g| named(g, &["id", "uuid", "key"]))
        .or(unique.first())
        .map(|g| g.name.clone());
    // The time: a required timestamp, preferring a name like ts / time / timestamp.
    let times: Vec<&FieldGuess> = fields
        .iter()
        .filter(|g| g.ty == Some(Inferred::Timestamp) && !g.optional)
        .collect();
    let time = times
        .iter()
        .find(|g| named(g, &["ts", "time", "timestamp", "at", "date"]))
        .or(times.first())
        .map(|g| g.name.clone());
    let (id, id_added) = match id {
        Some(id) => (id, false),
        None => (fresh_name(&fields, "record_id"), true),
    };
    let (time, time_added) = match time {
        Some(t) => (t, false),
        None => (fresh_name(&fields, "ts"), true),
    };
    // The key: a text field that repeats (some value in several records) but has more than one
    // value, preferring one named like an id: records with one key keep their order on Kafka.
    let keys: Vec<&FieldGuess> = fields
        .iter()
        .filter(|g| {
            g.name != id
                && g.ty == Some(Inferred::String)
                && !g.optional
                && (2..records.len()).contains(&g.distinct())
        })
        .collect();
    let key = keys
        .iter()
        .find(|g| named(g, &["id"]))
        .or(keys.first())
        .map(|g| g.name.clone());
    for (name, added, ty) in [
        (&id, id_added, Inferred::String),
        (&time, time_added, Inferred::Timestamp),
    ] {
        if added {
            fields.insert(
                0,
                FieldGuess {
                    name: name.clone(),
                    ty: Some(ty),
                    optional: false,
                    values: Vec::new(),
                },
            );
        }
    }
    Ok(Guess {
        fields,
        id,
        id_added,
        time,
        time_added,
        key,
        records: records.len(),
    })
}

fn fresh_name(fields: &[FieldGuess], wanted: &str) -> String {
    let mut name = wanted.to_string();
    while fields.iter().any(|g| g.name == name) {
        name.push('_');
    }
    name
}

/// Reads JSON lines; lines that are not JSON objects are counted, not fatal.
pub fn read_jsonl(path: &Path, limit: usize) -> anyhow::Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the sample {}", path.display()))?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            _ => skipped.push(i + 1),
        }
        if out.len() >= limit {
            break;
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(lines = ?&skipped[..skipped.len().min(10)], skipped = skipped.len(), "init: {} lines of {} are not JSON objects; left out", skipped.len(), path.display());
    }
    Ok(out)
}

/// Reads up to `limit` messages of `topic` from the start (a group of its own, nothing
/// committed), waiting at most `wait` for more; messages that are not JSON objects are counted
/// and left out. A topic of Confluent-framed records (Avro or Protobuf, whose fields only their
/// schema tells) is recognised and named in the error, with what to write instead.
pub fn read_topic(
    servers: &str,
    topic: &str,
    limit: usize,
    wait: std::time::Duration,
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let config = crate::transport::kafka::KafkaConfig::reader_of(servers, topic);
    let payloads = crate::transport::kafka::sample(&config, limit, wait)?;
    let total = payloads.len();
    let out: Vec<Map<String, Value>> = payloads
        .iter()
        .filter_map(|p| crate::codec::object(p))
        .collect();
    let mut framed: Vec<u32> = payloads
        .iter()
        .filter_map(|p| crate::codec::confluent_header(p).ok().map(|(id, _)| id))
        .collect();
    framed.sort_unstable();
    framed.dedup();
    if out.len() < total {
        tracing::warn!(
            not_objects = total - out.len(),
            confluent_framed = framed.len(),
            "init: messages that are not JSON objects were left out",
        );
    }
    if out.is_empty() && !framed.is_empty() {
        bail!("topic {topic:?} carries Confluent-framed records (a zero byte and a schema id first; schema ids seen: {}): Avro or Protobuf, whose fields only the writer schema tells. Write the [event] section with format = \"avro\" (or \"protobuf\" with message = \"package.Type\"), schema = \"the .avsc or .proto file\" and framing = \"confluent\": the fields come from the schema (README, Formats)", framed.iter().map(u32::to_string).collect::<Vec<_>>().join(", "));
    }
    if out.is_empty() {
        bail!("read no JSON messages from topic {topic:?} at {servers} within {wait:?} (is the topic empty, or the address wrong?)");
    }
    Ok(out)
}

/// The files `runner init` writes, relative to the folder it writes into.
pub struct Written {
    pub pipeline: PathBuf,
    pub generator: PathBuf,
    pub metric: PathBuf,
}

/// Writes `<dir>/<name>.toml`, `<dir>/<name>/generator.rhai` and `<dir>/<name>/count.rhai`;
/// refuses to overwrite unless `force`.
pub fn write(
    dir: &Path,
    name: &str,
    guess: &Guess,
    source: &str,
    force: bool,
) -> anyhow::Result<Written> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("the pipeline name {name:?} must be letters, digits, - and _");
    }
    let files = Written {
        pipeline: dir.join(format!("{name}.toml")),
        generator: dir.join(name).join("generator.rhai"),
        metric: dir.join(name).join("count.rhai"),
    };
    for f in [&files.pipeline, &files.generator, &files.metric] {
        if f.exists() && !force {
            bail!("{} exists; pass --force to overwrite it", f.display());
        }
    }
    std::fs::create_dir_all(dir.join(name))
        .with_context(|| format!("cannot create {}", dir.join(name).display()))?;
    std::fs::write(&files.pipeline, pipeline_text(name, guess, source))?;
    std::fs::write(&files.generator, generator_text(guess))?;
    std::fs::write(&files.metric, "// Counts every record in the window. Add a key to count per value, e.g.\n// #{ key: field(\"status\") }\n#{}\n")?;
    Ok(files)
}

fn pipeline_text(name: &str, g: &Guess, source: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `runner init` from {} records of {source}. Check the [event] section: it is",
        g.records
    );
    let _ = writeln!(t, "# what the sample showed, not what the data promises.");
    let _ = writeln!(t, "\nname = \"{name}\"\n\n[event]");
    let _ = writeln!(
        t,
        "id = \"{}\"{}",
        g.id,
        if g.id_added {
            "    # no field was unique in the sample: the runner assigns this one"
        } else {
            ""
        }
    );
    let _ = writeln!(
        t,
        "time = \"{}\"{}",
        g.time,
        if g.time_added {
            "    # the sample had no timestamp in every record: records need one"
        } else {
            ""
        }
    );
    match &g.key {
        Some(k) => {
            let _ = writeln!(t, "key = \"{k}\"");
        }
        None => {
            let _ = writeln!(
                t,
                "# key = \"...\"    # a field whose records should stay in order on Kafka"
            );
        }
    }
    let _ = writeln!(t, "\n[event.fields]");
    for f in &g.fields {
        match f.ty {
            Some(ty) => {
                let _ = writeln!(
                    t,
                    "{} = \"{}{}\"",
                    toml_key(&f.name),
                    ty.name(),
                    if f.optional { "?" } else { "" }
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "# {}: objects, lists or mixed types in the sample; kept undeclared",
                    f.name
                );
            }
        }
    }
    let _ = write!(
        t,
        r#"
# Transport and store: with neither section the pipeline runs on the embedded queue and the
# local SQLite store under data/ (KAFKA_BOOTSTRAP_SERVERS and MONGODB_CONNECTION_STRING, or
# --kafka / --mongodb, switch to real services). Topic, consumer group, database and
# collections are named after the pipeline; uncomment to choose others:
# [kafka]
# topic = "{name}"
# consumer_group = "{name}-consumer"
# [mongodb]
# database = "{name}"

[embedded]
data_dir = "${{RUNNER_DATA_DIR:-data/{name}}}"

[generator]
script = "{name}/generator.rhai"
rate = "${{DEFAULT_GENERATION_RATE:-100}}"

[dashboard]
# Open http://127.0.0.1:8050/ while `runner run` runs (--dashboard-listen to change it).
listen = "${{DASHBOARD_LISTEN:-127.0.0.1:8050}}"
headline = ["records_per_minute"]

[[metric]]
name = "records_per_minute"
description = "Records in the last minute"
script = "{name}/count.rhai"
reducer = "count"
window = "60s"
slide = "5s"

# What to edit next:
# 1. Check [event] above: the types, which fields are optional, the id, time and key.
# 2. `runner generate {name}.toml -n 5` prints records the generator draws; tune
#    {name}/generator.rhai until they look like yours.
# 3. Add metrics: copy the [[metric]] above with another reducer (sum, avg, min, max, distinct,
#    top_k, ratio, funnel, custom) and a script that picks the field, e.g.
#    #{{ key: field("...") , value: field("...") }}. `runner validate {name}.toml` checks them.
# 4. `runner run {name}.toml` and open the dashboard; edits to this file and the scripts apply
#    while it runs.
"#
    );
    t
}

fn toml_key(name: &str) -> String {
    match name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.is_empty()
    {
        true => name.to_string(),
        false => format!("{name:?}"),
    }
}

fn generator_text(g: &Guess) -> String {
    let records = g.records.max(1) as f64;
    let mut t = String::from("// Written by `runner init`: draws records like the sample's. Edit freely; docs/guide/records.md\n// lists the distributions (zipf, weighted, chance, uniform, normal, uuid, sequence, ...) and .optional(share).\n\n#{\n");
    for f in g
        .fields
        .iter()
        .filter(|f| f.name != g.id && f.name != g.time)
    {
        let Some(ty) = f.ty else { continue };
        // Only ever null in the sample: an optional field the generator leaves out.
        if f.values.is_empty() {
            continue;
        }
        let Some(expr) = distribution(f, ty) else {
            continue;
        };
        // An optional field is drawn in the share of records the sample had it in.
        let share = f.values.len() as f64 / records;
        let expr = match f.optional {
            true => format!("{expr}.optional({share:.3})"),
            false => expr,
        };
        let _ = writeln!(t, "    {}: {expr},", rhai_key(&f.name));
    }
    t.push_str("}\n");
    t
}

fn rhai_key(name: &str) -> String {
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// A distribution that draws values like the sample's.
fn distribution(f: &FieldGuess, ty: Inferred) -> Option<String> {
    let nums: Vec<f64> = f.values.iter().filter_map(Value::as_f64).collect();
    match ty {
        Inferred::Timestamp => Some("now()".into()),
        Inferred::Bool => {
            let yes = f
                .values
                .iter()
                .filter(|v| v.as_bool() == Some(true))
                .count() as f64
                / f.values.len().max(1) as f64;
            Some(format!("chance({yes:.3})"))
        }
        Inferred::Int => {
            let (lo, hi) = (
                nums.iter().cloned().fold(f64::MAX, f64::min),
                nums.iter().cloned().fold(f64::MIN, f64::max),
            );
            if nums.is_empty() {
                Some("uniform_int(0, 100)".into())
            } else {
                Some(format!("uniform_int({}, {})", lo as i64, hi as i64))
            }
        }
        Inferred::Float => {
            if nums.is_empty() {
                return Some("uniform(0.0, 1.0)".into());
            }
            let mean = nums.iter().sum::<f64>() / nums.len() as f64;
            let sd =
                (nums.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / nums.len() as f64).sqrt();
            // The most common number of decimals (a float sum's 0.30000000000000004 is not typical).
            let mut places = [0usize; 7];
            for v in &f.values {
                places[v.to_string().split('.').nth(1).map_or(0, str::len).min(6)] += 1;
            }
            let decimals = (0..7)
                .max_by_key(|d| (places[*d], std::cmp::Reverse(*d)))
                .unwrap_or(2);
            Some(format!("normal({mean:.4}, {sd:.4}).round({decimals})"))
        }
        Inferred::String => {
            let texts: Vec<&str> = f.values.iter().filter_map(Value::as_str).collect();
            if texts.is_empty() {
                return Some("\"\"".into());
            }
            if texts.iter().all(|s| uuid::Uuid::parse_str(s).is_ok()) {
                return Some("uuid()".into());
            }
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for s in &texts {
                *counts.entry(s).or_default() += 1;
            }
            // Labels with a number after a common prefix (`dev-17`): a skewed population.
            if counts.len() > 20 {
                if let Some((prefix, max)) = numbered(&texts) {
                    return Some(format!("zipf({prefix:?}, {max}, 1.0)"));
                }
            }
            let mut top: Vec<(&str, usize)> = counts.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            top.truncate(20);
            let entries: Vec<String> = top.iter().map(|(s, n)| format!("{s:?}: {n}")).collect();
            Some(format!("weighted(#{{ {} }})", entries.join(", ")))
        }
    }
}

/// `(prefix, highest number)` when every label is one prefix followed by digits.
fn numbered(texts: &[&str]) -> Option<(String, u64)> {
    let split = |s: &str| {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (digits > 0).then(|| {
            (
                s[..s.len() - digits].to_string(),
                s[s.len() - digits..].parse::<u64>().ok(),
            )
        })
    };
    let (prefix, _) = split(texts[0])?;
    let mut max = 0;
    for s in texts {
        let (p, n) = split(s)?;
        if p != prefix {
            return None;
        }
        max = max.max(n?);
    }
    (1..=10_000_000).contains(&max).then_some((prefix, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects(values: Vec<Value>) -> Vec<Map<String, Value>> {
        values
            .into_iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn types_optional_fields_id_time_and_key_are_inferred() {
        let sample = objects(
            (0..40)
                .map(|i| {
                    let mut v = json!({"order_id": format!("o-{i}"), "customer": format!("c{}", i % 7), "amount": i as f64 + 0.5, "qty": i % 4,
                        "paid": i % 2 == 0, "created_at": "2026-01-01T00:00:00Z", "tags": ["a"]});
                    if i % 3 == 0 {
                        v["coupon"] = json!("SAVE");
                    }
                    v
                })
                .collect(),
        );
        let g = infer(&sample).unwrap();
        let ty = |n: &str| {
            g.fields
                .iter()
                .find(|f| f.name == n)
                .map(|f| (f.ty, f.optional))
                .unwrap()
        };
        assert_eq!(ty("amount"), (Some(Inferred::Float), false));
        assert_eq!(ty("qty"), (Some(Inferred::Int), false));
        assert_eq!(ty("paid"), (Some(Inferred::Bool), false));
        assert_eq!(ty("coupon"), (Some(Inferred::String), true));
        assert_eq!(ty("tags").0, None, "a list stays undeclared");
        assert_eq!(
            (g.id.as_str(), g.time.as_str(), g.key.as_deref()),
            ("order_id", "created_at", Some("customer"))
        );
        assert!(!g.id_added && !g.time_added);
    }

    #[test]
    fn a_sample_without_unique_text_or_time_gets_fields_the_runner_fills() {
        let g = infer(&objects(vec![json!({"n": 1}), json!({"n": 2})])).unwrap();
        assert!(g.id_added && g.time_added);
        assert_eq!((g.id.as_str(), g.time.as_str()), ("record_id", "ts"));
    }
}
