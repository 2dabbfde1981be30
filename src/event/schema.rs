//! `[event]`: the record a pipeline carries, declared in its file, and the checks derived from it.
//!
//! ```toml
//! [event]
//! fields = { reading_id = "string", device_id = "string", temperature = "float", humidity = "float?", ts = "timestamp" }
//! id = "reading_id"   # unique per record; assigned when missing
//! time = "ts"         # event time: windows and lateness
//! key = "device_id"   # Kafka message key
//! ```

use super::wire::{Format, Framing};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[event]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// Field name → type (`"float?"`) or `{ type = "...", values = [...], min, max, ... }`.
    /// With an Avro or Protobuf `schema`, the fields come from it and a declared one adds checks.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    /// The field unique per record (the store's unique index); the runner assigns it when missing.
    pub id: String,
    /// The field holding event time, used for windows and lateness.
    pub time: String,
    /// The field used as the Kafka message key (records with one key keep their order).
    #[serde(default)]
    pub key: Option<String>,
    /// What to do with fields the section does not declare: `keep` them, or `reject` the record.
    #[serde(default)]
    pub extra: Extra,
    /// How each message's payload is written: `json`, `avro` or `protobuf`.
    #[serde(default)]
    pub format: Format,
    /// The schema file of an Avro (`.avsc`) or Protobuf (`.proto`) record, relative to the
    /// pipeline file; `fields` come from it (declare a field only to add checks).
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Protobuf: the message type of a record, with its package (`shop.Interaction`).
    #[serde(default)]
    pub message: Option<String>,
    /// `none`, or `confluent`: a zero byte and the writer schema's id before each record.
    #[serde(default)]
    pub framing: Framing,
    /// Confluent-framed Avro: writer schema files by id (`{ 1 = "a.avsc", 2 = "b.avsc" }`); the
    /// id whose file is also `schema` is the one the runner writes with.
    #[serde(default)]
    pub schemas: BTreeMap<String, PathBuf>,
    /// Confluent-framed Avro: a schema registry's URL, asked for ids not in `schemas`
    /// (`GET /schemas/ids/{id}`, once per id).
    #[serde(default)]
    pub registry: Option<String>,
}

impl EventConfig {
    /// What does not fit together, each starting with `event.<key>`.
    pub fn wire_check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (self.format, &self.schema) {
            (Format::Json, Some(_)) => problems.push("event.schema: a schema file is read for format = \"avro\" or \"protobuf\"; JSON records are declared in `fields`".to_string()),
            (Format::Avro | Format::Protobuf, None) => problems.push(format!("event.format: {} records need their schema file: schema = \"path/to/file.{}\"", self.format.name(), match self.format { Format::Avro => "avsc", _ => "proto" })),
            _ => {}
        }
        match (self.format, &self.message) {
            (Format::Protobuf, None) => problems.push("event.message: name the Protobuf message type of a record, with its package (message = \"shop.Interaction\")".to_string()),
            (Format::Json | Format::Avro, Some(_)) => problems.push("event.message: applies to format = \"protobuf\"".to_string()),
            _ => {}
        }
        if self.framing == Framing::Confluent && self.format == Format::Json {
            problems.push(
                "event.framing: confluent framing applies to Avro and Protobuf records".to_string(),
            );
        }
        if (!self.schemas.is_empty() || self.registry.is_some())
            && !(self.framing == Framing::Confluent && self.format == Format::Avro)
        {
            problems.push("event.schemas: writer schemas by id (schemas, registry) apply to format = \"avro\" with framing = \"confluent\"".to_string());
        }
        for id in self.schemas.keys() {
            if id.parse::<u32>().is_err() {
                problems.push(format!(
                    "event.schemas: {id:?} is not a schema id (a whole number)"
                ));
            }
        }
        problems
    }

    /// The writer schemas by id, for those whose id parses ([`EventConfig::wire_check`] names the others).
    pub fn schemas_by_id(&self) -> impl Iterator<Item = (u32, &PathBuf)> {
        self.schemas
            .iter()
            .filter_map(|(id, path)| Some((id.parse().ok()?, path)))
    }
}

/// What happens to undeclared fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extra {
    /// Kept as they are: stored, and visible to scripts.
    #[default]
    Keep,
    /// A record with one is a dead letter.
    Reject,
}

/// A field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    /// ISO 8601 text in JSON, a date in MongoDB; kept to the millisecond.
    Timestamp,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }

    fn parse(text: &str) -> Result<(FieldType, bool), String> {
        let (name, optional) = match text.strip_suffix('?') {
            Some(name) => (name, true),
            None => (text, false),
        };
        let ty = match name.trim() {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            "timestamp" => FieldType::Timestamp,
            other => return Err(format!("unknown field type {other:?} (string, int, float, bool or timestamp; a trailing ? makes the field optional)")),
        };
        Ok((ty, optional))
    }
}

/// How a zone-less timestamp (`2026-01-02T03:04:05`) is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Naive {
    /// As UTC (what the original Python generator wrote).
    #[default]
    Utc,
    /// At a fixed offset from UTC, in seconds (`naive = "+02:00"`).
    Offset(i32),
    /// Not at all: a timestamp must name its zone.
    Reject,
}

/// One field's declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub ty: FieldType,
    pub optional: bool,
    /// Allowed values (strings and ints); empty allows any.
    pub values: Vec<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// A string field must not be empty.
    pub non_empty: bool,
    /// How a timestamp without a zone is read.
    pub naive: Naive,
    /// The longest a string field may be, in bytes; a longer one makes the record a dead letter.
    /// Ids and labels become metric keys and pane state: a 1 MB id pasted into the wrong field
    /// would otherwise make every pane holding it too large to store.
    pub max_len: usize,
}

/// A string field's default `max_len`, in bytes: room for any id, label or URL; a field meant
/// for longer text says so with its own `max_len`.
pub const DEFAULT_MAX_LEN: usize = 1024;

impl FieldSpec {
    pub fn of(ty: FieldType, optional: bool) -> FieldSpec {
        FieldSpec {
            ty,
            optional,
            values: Vec::new(),
            min: None,
            max: None,
            non_empty: false,
            naive: Naive::Utc,
            max_len: DEFAULT_MAX_LEN,
        }
    }
}

/// The long form: `name = { type = "string", values = [...], ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongSpec {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    values: Vec<Scalar>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    non_empty: bool,
    #[serde(default)]
    naive: Option<String>,
    #[serde(default)]
    max_len: Option<usize>,
}

/// A listed value, kept as the text it compares by.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            B(bool),
        }
        Ok(Scalar(
            match Any::deserialize(d)
                .map_err(|_| de::Error::custom("values must be strings, integers or booleans"))?
            {
                Any::S(s) => s,
                Any::I(i) => i.to_string(),
                Any::B(b) => b.to_string(),
            },
        ))
    }
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a type such as \"float\" or \"string?\", or a table { type = \"...\", ... }",
                )
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<FieldSpec, E> {
                let (ty, optional) = FieldType::parse(text).map_err(E::custom)?;
                Ok(FieldSpec::of(ty, optional))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                let long = LongSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let (ty, optional) = FieldType::parse(&long.ty).map_err(de::Error::custom)?;
                let naive = match long.naive.as_deref() {
                    None | Some("utc") | Some("UTC") => Naive::Utc,
                    Some("reject") => Naive::Reject,
                    Some(offset) => Naive::Offset(
                        parse_offset(offset)
                            .ok_or_else(|| de::Error::custom(format!("naive = {offset:?}: expected \"utc\", \"reject\" or an offset such as \"+02:00\"")))?,
                    ),
                };
                Ok(FieldSpec {
                    ty,
                    optional: optional || long.optional,
                    values: long.values.into_iter().map(|s| s.0).collect(),
                    min: long.min,
                    max: long.max,
                    non_empty: long.non_empty,
                    naive,
                    max_len: long.max_len.unwrap_or(DEFAULT_MAX_LEN),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `+HH:MM` / `-HH:MM` into seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(sign * (h * 3600 + m * 60))
}

/// A field with its slot in every record: declared in `[event]`, or derived.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub spec: FieldSpec,
    pub origin: Origin,
}

impl Field {
    /// Whether the raw record is written with this field (declared fields and derived ones with
    /// `store = true`).
    pub fn stored(&self) -> bool {
        match self.origin {
            Origin::Declared => true,
            Origin::Derived { store } => store,
        }
    }
}

/// Where a field's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The record as it arrives.
    Declared,
    /// Computed per record by a `[[derive]]` before the metrics (`store`: written with the raw
    /// record too). The checks of `[event]` do not apply: the derivation types it.
    Derived { store: bool },
}

/// A `[[derive]]`'s field as the schema sees it: its name, type, and whether it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedField {
    pub name: String,
    pub ty: FieldType,
    pub store: bool,
}

/// Reads a derived field's `type`: a type name without `?` (a derived value is missing
/// whenever its derivation gives nothing, so every derived field may be missing).
pub fn derived_type<'de, D: Deserializer<'de>>(d: D) -> Result<FieldType, D::Error> {
    let text = String::deserialize(d)?;
    match FieldType::parse(&text) {
        Ok((ty, false)) => Ok(ty),
        Ok((_, true)) => Err(de::Error::custom(format!(
            "{text:?}: a derived field is always optional (missing when its derivation gives nothing); write the type without `?`"
        ))),
        Err(e) => Err(de::Error::custom(e)),
    }
}

/// The compiled `[event]`: fields in slot order, and the slots of id, time and key.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    fields: Vec<Field>,
    id: usize,
    time: usize,
    key: Option<usize>,
    extra: Extra,
}

impl Schema {
    /// Checks the section; each problem starts with `event.<key>` so the config can point at its line.
    pub fn new(config: &EventConfig) -> Result<Schema, Vec<String>> {
        let fields: Vec<Field> = config
            .fields
            .iter()
            .map(|(name, spec)| Field {
                name: name.clone(),
                spec: spec.clone(),
                origin: Origin::Declared,
            })
            .collect();
        let mut problems = Vec::new();
        if fields.is_empty() && config.schema.is_none() {
            problems.push("event.fields: declare at least one field".to_string());
        }
        let slot = |role: &str, name: &str, problems: &mut Vec<String>| {
            let found = fields.iter().position(|f| f.name == name);
            if found.is_none() {
                let declared: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                problems.push(format!(
                    "event.{role}: {name:?} is not a declared field (declared: {})",
                    declared.join(", ")
                ));
            }
            found
        };
        let id = slot("id", &config.id, &mut problems);
        let time = slot("time", &config.time, &mut problems);
        let key = config.key.as_deref().map(|k| slot("key", k, &mut problems));
        if let Some(i) = id {
            if fields[i].spec.ty != FieldType::String {
                problems.push(format!(
                    "event.id: the id field {:?} must be a string (it is {})",
                    fields[i].name,
                    fields[i].spec.ty.name()
                ));
            }
        }
        if let Some(i) = time {
            let f = &fields[i];
            if f.spec.ty != FieldType::Timestamp || f.spec.optional {
                problems.push(format!(
                    "event.time: the time field {:?} must be a required timestamp (it is {}{})",
                    f.name,
                    f.spec.ty.name(),
                    if f.spec.optional { "?" } else { "" }
                ));
            }
        }
        for f in &fields {
            let s = &f.spec;
            if !plain_name(&f.name) {
                problems.push(format!("event.fields: {:?} is not a plain name (letters, digits and _, not starting with a digit)", f.name));
            }
            if !s.values.is_empty() && !matches!(s.ty, FieldType::String | FieldType::Int) {
                problems.push(format!(
                    "event.fields: {:?}: `values` applies to string and int fields",
                    f.name
                ));
            }
            if (s.min.is_some() || s.max.is_some())
                && !matches!(s.ty, FieldType::Int | FieldType::Float)
            {
                problems.push(format!(
                    "event.fields: {:?}: `min` and `max` apply to int and float fields",
                    f.name
                ));
            }
            if s.non_empty && s.ty != FieldType::String {
                problems.push(format!(
                    "event.fields: {:?}: `non_empty` applies to string fields",
                    f.name
                ));
            }
            if s.max_len != DEFAULT_MAX_LEN && s.ty != FieldType::String {
                problems.push(format!(
                    "event.fields: {:?}: `max_len` applies to string fields",
                    f.name
                ));
            }
            if s.max_len == 0 {
                problems.push(format!(
                    "event.fields: {:?}: `max_len` must be at least 1",
                    f.name
                ));
            }
            if let (Some(lo), Some(hi)) = (s.min, s.max) {
                if lo > hi {
                    problems.push(format!(
                        "event.fields: {:?}: min ({lo}) is above max ({hi})",
                        f.name
                    ));
                }
            }
        }
        match (id, time) {
            (Some(id), Some(time)) if problems.is_empty() => Ok(Schema {
                fields,
                id,
                time,
                key: key.flatten(),
                extra: config.extra,
            }),
            _ => Err(problems),
        }
    }

    /// Adds the `[[derive]]` fields after the declared ones; each problem starts with
    /// `derive "<name>"` so the config can point at its line.
    pub fn with_derived(mut self, derived: &[DerivedField]) -> Result<Schema, Vec<String>> {
        let mut problems = Vec::new();
        for d in derived {
            let named = format!("derive {:?}", d.name);
            if !plain_name(&d.name) {
                problems.push(format!(
                    "{named}: not a plain name (letters, digits and _, not starting with a digit)"
                ));
            } else if let Some(f) = self.fields.iter().find(|f| f.name == d.name) {
                problems.push(match f.origin {
                    Origin::Declared => format!("{named}: [event] declares a field of that name (a derived field needs a name of its own)"),
                    Origin::Derived { .. } => format!("{named}: derived twice"),
                });
            } else {
                self.fields.push(Field {
                    name: d.name.clone(),
                    spec: FieldSpec::of(d.ty, true),
                    origin: Origin::Derived { store: d.store },
                });
            }
        }
        match problems.is_empty() {
            true => Ok(self),
            false => Err(problems),
        }
    }

    /// The fields, declared then derived, in slot order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The slot of a declared field.
    #[inline]
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn id_slot(&self) -> usize {
        self.id
    }

    pub fn time_slot(&self) -> usize {
        self.time
    }

    pub fn key_slot(&self) -> Option<usize> {
        self.key
    }

    pub fn extra(&self) -> Extra {
        self.extra
    }

    /// The id field's name.
    pub fn id_name(&self) -> &str {
        &self.fields[self.id].name
    }

    /// The time field's name.
    pub fn time_name(&self) -> &str {
        &self.fields[self.time].name
    }
}

/// Letters, digits and `_`, not starting with a digit: a name every store and script can use.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EventConfig, String> {
        toml::from_str::<EventConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn short_and_long_forms_give_types_and_checks() {
        let c = parse(
            r#"fields = { id = "string", n = "int?", t = "timestamp", site = { type = "string", values = ["lab", "roof"], non_empty = true }, x = { type = "float", min = 0, max = 1.5 } }
id = "id"
time = "t"
key = "site""#,
        )
        .unwrap();
        let s = Schema::new(&c).unwrap();
        let n = &s.fields()[s.slot("n").unwrap()].spec;
        assert_eq!((n.ty, n.optional), (FieldType::Int, true));
        let site = &s.fields()[s.slot("site").unwrap()].spec;
        assert_eq!(site.values, ["lab", "roof"]);
        assert!(site.non_empty);
        assert_eq!(s.fields()[s.slot("x").unwrap()].spec.max, Some(1.5));
        assert_eq!(
            (s.id_name(), s.time_name(), s.key_slot()),
            ("id", "t", s.slot("site"))
        );
    }

    #[test]
    fn an_unknown_type_is_named_with_the_valid_ones() {
        let err = parse("fields = { a = \"flaot\" }\nid = \"a\"\ntime = \"a\"").unwrap_err();
        assert!(
            err.contains("unknown field type \"flaot\"") && err.contains("timestamp"),
            "{err}"
        );
    }

    #[test]
    fn roles_must_name_declared_fields_of_the_right_type() {
        let c = parse("fields = { a = \"int\", t = \"timestamp?\" }\nid = \"a\"\ntime = \"t\"\nkey = \"nope\"").unwrap();
        let problems = Schema::new(&c).unwrap_err().join("\n");
        assert!(
            problems.contains("event.id: the id field \"a\" must be a string"),
            "{problems}"
        );
        assert!(
            problems.contains("event.time: the time field \"t\" must be a required timestamp"),
            "{problems}"
        );
        assert!(
            problems.contains("event.key: \"nope\" is not a declared field (declared: a, t)"),
            "{problems}"
        );
    }

    #[test]
    fn string_fields_have_a_default_max_len_that_the_long_form_sets() {
        let c = parse("fields = { i = \"string\", note = { type = \"string\", max_len = 100000 }, t = \"timestamp\" }\nid = \"i\"\ntime = \"t\"").unwrap();
        assert_eq!(
            (c.fields["i"].max_len, c.fields["note"].max_len),
            (DEFAULT_MAX_LEN, 100_000)
        );
        let c = parse("fields = { i = \"string\", n = { type = \"int\", max_len = 3 }, t = \"timestamp\" }\nid = \"i\"\ntime = \"t\"").unwrap();
        assert!(Schema::new(&c)
            .unwrap_err()
            .join("\n")
            .contains("`max_len` applies to string fields"));
    }

    #[test]
    fn naive_offsets_parse() {
        let c = parse("fields = { i = \"string\", t = { type = \"timestamp\", naive = \"+02:30\" } }\nid = \"i\"\ntime = \"t\"").unwrap();
        assert_eq!(c.fields["t"].naive, Naive::Offset(9000));
        assert!(parse("fields = { i = \"string\", t = { type = \"timestamp\", naive = \"mars\" } }\nid = \"i\"\ntime = \"t\"").is_err());
    }
}
