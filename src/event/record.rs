//! The record: one value slot per declared field, plus the undeclared fields as they came.
//!
//! Decoding (JSON: `json.rs`) is lenient about types; [`Record::check`] then says exactly what
//! breaks the schema, so a record from any transport (or from a generator hook) is judged by the
//! same rules.

use super::schema::{Extra, FieldType, Naive, Origin, Schema};
use chrono::{DateTime, NaiveDateTime, SecondsFormat};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;

/// A field's text: up to 24 bytes inline (ids, keys, labels), so decoding, cloning and dropping
/// most records' strings allocates nothing.
pub type Text = compact_str::CompactString;

/// One field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Missing,
    Text(Text),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Milliseconds since the epoch.
    Time(i64),
}

impl Value {
    /// The value as text (numbers as written), for keys and comparisons.
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Text(s) => Some(Cow::Borrowed(s)),
            Value::Int(i) => Some(Cow::Owned(i.to_string())),
            Value::Float(f) => Some(Cow::Owned(f.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Time(t) => Some(Cow::Owned(iso(*t))),
            Value::Missing => None,
        }
    }

    /// The value as a number, where it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Time(t) => Some(*t as f64),
            _ => None,
        }
    }

    /// Whether it equals a listed value (compared as text).
    pub fn matches(&self, listed: &str) -> bool {
        match self {
            Value::Text(s) => s == listed,
            Value::Missing => false,
            Value::Float(f) => listed.parse::<f64>().ok() == Some(*f),
            other => other.as_text().is_some_and(|t| t == listed),
        }
    }

    /// An integer read for a field of type `ty`: a float field takes it as a float.
    pub fn of_int(i: i64, ty: FieldType) -> Value {
        match ty {
            FieldType::Float => Value::Float(i as f64),
            _ => Value::Int(i),
        }
    }

    /// A float read for a field of type `ty`: an int field takes a whole one as an int (a
    /// fraction stays a float, for [`Record::check`] to name).
    pub fn of_float(f: f64, ty: FieldType) -> Value {
        match ty {
            FieldType::Int if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(f as i64),
            _ => Value::Float(f),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::Missing => "nothing",
            Value::Text(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Time(_) => "a timestamp",
        }
    }
}

/// ISO 8601 in UTC with milliseconds (`2026-11-27T23:22:29.123Z`).
pub fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads an ISO 8601 timestamp; a zone-less one as `naive` says.
pub fn parse_time(text: &str, naive: Naive) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    match naive {
        Naive::Utc => Some(local.and_utc().timestamp_millis()),
        Naive::Offset(secs) => Some(local.and_utc().timestamp_millis() - secs as i64 * 1000),
        Naive::Reject => None,
    }
}

/// Records of schemas with up to this many fields keep their values inline.
const INLINE_SLOTS: usize = 10;

/// A record of a [`Schema`]: its slots in field order, and the fields it does not declare.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub(super) schema: Arc<Schema>,
    /// Inline up to [`INLINE_SLOTS`] fields: one heap allocation less per record on the hot path.
    pub(super) slots: SmallVec<[Value; INLINE_SLOTS]>,
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    /// A record with every field missing.
    pub fn new(schema: &Arc<Schema>) -> Record {
        let n = schema.fields().len();
        // Built in place rather than by cloning `Missing` into each slot (~3 % of decode).
        let slots = match n {
            0..=INLINE_SLOTS => {
                SmallVec::from_buf_and_len([const { Value::Missing }; INLINE_SLOTS], n)
            }
            _ => smallvec::smallvec![Value::Missing; n],
        };
        Record {
            schema: schema.clone(),
            slots,
            extra: serde_json::Map::new(),
        }
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The value in a slot.
    #[inline]
    pub fn get(&self, slot: usize) -> &Value {
        &self.slots[slot]
    }

    #[inline]
    pub fn set(&mut self, slot: usize, value: Value) {
        self.slots[slot] = value;
    }

    /// A declared field's value by name, or `None` when the name is not declared.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.schema.slot(name).map(|i| &self.slots[i])
    }

    /// The undeclared fields.
    pub fn extra(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.extra
    }

    pub fn extra_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        &mut self.extra
    }

    /// Every field written out that has a value (declared, and derived with `store = true`),
    /// with its name, in slot order.
    pub fn present(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.schema
            .fields()
            .iter()
            .zip(&self.slots)
            .filter(|(f, v)| !matches!(v, Value::Missing) && f.stored())
            .map(|(f, v)| (f.name.as_str(), v))
    }

    /// Whether two records say the same as they arrived: every declared field and the
    /// undeclared ones. Derived values are left out: they are the pipeline's reading of the
    /// record (a replay after a derivation changed is still a replay).
    pub fn same_content(&self, other: &Record) -> bool {
        self.extra == other.extra
            && self
                .schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.origin == Origin::Declared)
                .all(|(i, f)| other.field(&f.name).unwrap_or(&Value::Missing) == &self.slots[i])
    }

    /// The unique id ("" until assigned).
    pub fn id(&self) -> &str {
        match &self.slots[self.schema.id_slot()] {
            Value::Text(s) => s,
            _ => "",
        }
    }

    pub fn set_id(&mut self, id: impl Into<Text>) {
        let slot = self.schema.id_slot();
        self.slots[slot] = Value::Text(id.into());
    }

    /// Event time in ms since the epoch (0 for a record that has none: [`Record::check`] rejects those).
    #[inline]
    pub fn time_ms(&self) -> i64 {
        match self.slots[self.schema.time_slot()] {
            Value::Time(t) => t,
            _ => 0,
        }
    }

    pub fn set_time_ms(&mut self, ms: i64) {
        let slot = self.schema.time_slot();
        self.slots[slot] = Value::Time(ms);
    }

    /// The Kafka message key, when the schema names one and the record has it.
    pub fn key(&self) -> Option<Cow<'_, str>> {
        self.schema.key_slot().and_then(|k| self.slots[k].as_text())
    }

    /// What in this record breaks its schema: the first problem, naming the field. `shape` is
    /// true for a missing or mistyped field (the record is not of the schema at all), false for a
    /// value the schema's checks refuse (`values`, `min`/`max`, `non_empty`).
    pub fn check(&self) -> Result<(), (bool, String)> {
        for (i, (f, v)) in self.schema.fields().iter().zip(&self.slots).enumerate() {
            if f.origin != Origin::Declared {
                continue; // derived after the check, by its own typing
            }
            let s = &f.spec;
            let fits = match (s.ty, v) {
                (_, Value::Missing) => {
                    if s.optional || i == self.schema.id_slot() {
                        continue;
                    }
                    return Err((true, format!("field {:?} is missing (it is required: declare it {:?} to make it optional)", f.name, format!("{}?", s.ty.name()))));
                }
                (FieldType::String, Value::Text(_))
                | (FieldType::Int, Value::Int(_))
                | (FieldType::Float, Value::Float(_))
                | (FieldType::Bool, Value::Bool(_))
                | (FieldType::Timestamp, Value::Time(_)) => true,
                _ => false,
            };
            if !fits {
                let shown = v.as_text().unwrap_or_default();
                let what = if s.ty == FieldType::Timestamp && matches!(v, Value::Text(_)) {
                    " that is not an ISO 8601 timestamp"
                } else {
                    ""
                };
                return Err((
                    true,
                    format!(
                        "field {:?} must be {} but is {} ({shown:?}){what}",
                        f.name,
                        s.ty.name(),
                        v.type_name()
                    ),
                ));
            }
            if !s.values.is_empty() && !s.values.iter().any(|listed| v.matches(listed)) {
                return Err((
                    false,
                    format!(
                        "field {:?}: {:?} is not one of {}",
                        f.name,
                        v.as_text().unwrap_or_default(),
                        s.values.join(", ")
                    ),
                ));
            }
            if let Some(n) = v.as_f64().filter(|_| s.ty != FieldType::Timestamp) {
                if s.min.is_some_and(|lo| n < lo) || s.max.is_some_and(|hi| n > hi) {
                    let range = |b: Option<f64>| b.map_or("-".to_string(), |b| b.to_string());
                    return Err((
                        false,
                        format!(
                            "field {:?}: {n} is outside [{}, {}]",
                            f.name,
                            range(s.min),
                            range(s.max)
                        ),
                    ));
                }
            }
            if s.non_empty && matches!(v, Value::Text(t) if t.is_empty()) {
                return Err((false, format!("field {:?} must not be empty", f.name)));
            }
            if let Value::Text(t) = v {
                if t.len() > s.max_len {
                    return Err((false, format!("field {:?} is {} bytes long, more than its max_len of {} (set `max_len` in its [event] declaration for longer text)", f.name, t.len(), s.max_len)));
                }
            }
        }
        if self.schema.extra() == Extra::Reject {
            if let Some(name) = self.extra.keys().next() {
                return Err((
                    true,
                    format!("field {name:?} is not declared in [event] (extra = \"reject\")"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::schema::EventConfig;

    fn schema(text: &str) -> Arc<Schema> {
        Arc::new(Schema::new(&toml::from_str::<EventConfig>(text).unwrap()).unwrap())
    }

    fn sensors() -> Arc<Schema> {
        schema(
            r#"fields = { reading_id = "string", device_id = "string", site = { type = "string", values = ["lab", "roof"] }, temperature = { type = "float", min = -50, max = 80 }, humidity = "float?", count = "int?", ok = "bool?", ts = "timestamp" }
id = "reading_id"
time = "ts"
key = "device_id""#,
        )
    }

    #[test]
    fn json_round_trip_keeps_declared_and_undeclared_fields() {
        let s = sensors();
        let text = br#"{"reading_id":"r1","device_id":"d","site":"lab","temperature":21,"count":3.0,"ok":true,"ts":"2026-11-27T10:00:00.123Z","note":{"a":[1,2]}}"#;
        let r = Record::from_json(&s, text).unwrap();
        assert_eq!(r.field("temperature"), Some(&Value::Float(21.0)));
        assert_eq!(r.field("count"), Some(&Value::Int(3)));
        assert_eq!(r.field("humidity"), Some(&Value::Missing));
        assert_eq!(r.time_ms(), 1_795_773_600_123);
        assert_eq!((r.id(), r.key().as_deref()), ("r1", Some("d")));
        assert!(r.check().is_ok());
        let again = Record::from_json(&s, r.to_json().as_bytes()).unwrap();
        assert_eq!(again, r);
        assert!(
            r.to_json().contains(r#""note":{"a":[1,2]}"#),
            "{}",
            r.to_json()
        );
    }

    #[test]
    fn a_float_is_read_as_the_nearest_double_to_its_text() {
        // Adjacent doubles whose shortest texts differ only in the last digit: without
        // serde_json's float_roundtrip its fast parser read the second as the first.
        let s = sensors();
        for text in [
            "11.019283746556471",
            "11.019283746556473",
            "1121.8600000000001",
        ] {
            let json = format!(
                r#"{{"device_id":"d","site":"lab","temperature":{text},"ts":"2026-01-02T03:04:05Z"}}"#
            );
            let r = Record::from_json(&s, json.as_bytes()).unwrap();
            let expected: f64 = text.parse().unwrap();
            assert_eq!(
                r.field("temperature").map(|v| match v {
                    Value::Float(f) => f.to_bits(),
                    _ => 0,
                }),
                Some(expected.to_bits()),
                "{text}"
            );
        }
    }

    #[test]
    fn naive_timestamps_are_read_as_declared() {
        let s = sensors();
        let r = Record::from_json(
            &s,
            br#"{"device_id":"d","site":"lab","temperature":1,"ts":"2026-01-02T03:04:05.5"}"#,
        )
        .unwrap();
        assert_eq!(iso(r.time_ms()), "2026-01-02T03:04:05.500Z");
        assert_eq!(r.id(), "");
        assert!(
            r.check().is_ok(),
            "a missing id is assigned later, not an error"
        );
        assert_eq!(
            parse_time("2026-01-02T03:04:05", Naive::Offset(3600))
                .map(iso)
                .unwrap(),
            "2026-01-02T02:04:05.000Z"
        );
        assert_eq!(parse_time("2026-01-02T03:04:05", Naive::Reject), None);
    }

    #[test]
    fn each_schema_problem_names_its_field() {
        let s = sensors();
        let problem = |json: &str| {
            Record::from_json(&s, json.as_bytes())
                .unwrap()
                .check()
                .unwrap_err()
        };
        let base = r#""device_id":"d","ts":"2026-01-01T00:00:00Z""#;
        let (shape, why) = problem(&format!(r#"{{{base},"temperature":1}}"#));
        assert!(shape && why.contains("\"site\" is missing"), "{why}");
        let (shape, why) = problem(&format!(r#"{{{base},"site":"lab","temperature":"hot"}}"#));
        assert!(
            shape && why.contains("\"temperature\" must be float but is a string"),
            "{why}"
        );
        let (shape, why) = problem(&format!(r#"{{{base},"site":"moon","temperature":1}}"#));
        assert!(
            !shape && why.contains("\"site\": \"moon\" is not one of lab, roof"),
            "{why}"
        );
        let (shape, why) = problem(&format!(r#"{{{base},"site":"lab","temperature":81}}"#));
        assert!(
            !shape && why.contains("\"temperature\": 81 is outside [-50, 80]"),
            "{why}"
        );
        let (_, why) =
            problem(r#"{"device_id":"d","site":"lab","temperature":1,"ts":"yesterday"}"#);
        assert!(
            why.contains("\"ts\" must be timestamp") && why.contains("ISO 8601"),
            "{why}"
        );
    }

    #[test]
    fn undeclared_fields_are_kept_unless_rejected() {
        let keep =
            schema("fields = { i = \"string\", t = \"timestamp\" }\nid = \"i\"\ntime = \"t\"");
        let r = Record::from_json(&keep, br#"{"t":"2026-01-01T00:00:00Z","x":1}"#).unwrap();
        assert_eq!(r.extra()["x"], 1);
        assert!(r.check().is_ok());
        let reject = schema("fields = { i = \"string\", t = \"timestamp\" }\nid = \"i\"\ntime = \"t\"\nextra = \"reject\"");
        let r = Record::from_json(&reject, br#"{"t":"2026-01-01T00:00:00Z","x":1}"#).unwrap();
        assert!(r.check().unwrap_err().1.contains("\"x\" is not declared"));
    }

    #[test]
    fn a_key_written_with_escapes_finds_its_field_in_either_reader() {
        let s = sensors();
        let text = r#"{"device\u005fid":"d","s\u0069te":"lab","temperature":1,"ts":"2026-01-01T00:00:00Z","n\u00f6te":2}"#;
        for r in [
            Record::from_json(&s, text.as_bytes()).unwrap(),
            Record::from_json_str(&s, text).unwrap(),
        ] {
            assert_eq!(
                (r.key().as_deref(), r.field("site")),
                (Some("d"), Some(&Value::Text("lab".into())))
            );
            assert_eq!(r.extra()["n\u{f6}te"], 2);
            assert!(r.check().is_ok());
        }
    }

    #[test]
    fn bad_json_is_syntax_and_nested_values_in_declared_fields_name_the_field() {
        let s = sensors();
        assert!(Record::from_json(&s, b"not json").unwrap_err().syntax);
        assert!(
            Record::from_json(&s, br#"{"site": "lab""#)
                .unwrap_err()
                .syntax
        );
        let e = Record::from_json(&s, br#"{"site": ["lab"]}"#).unwrap_err();
        assert!(!e.syntax && e.message.contains("\"site\""), "{e:?}");
        assert!(!Record::from_json(&s, b"[1]").unwrap_err().syntax);
    }
}
