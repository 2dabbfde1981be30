//! A record as JSON, both ways: the reader goes straight from JSON text into the slots (a serde
//! visitor that finds each key's slot once and writes the typed value), with no
//! `serde_json::Value` tree per record; the writer emits the present fields, then the undeclared
//! ones as they came.

use super::record::{iso, parse_time, Record, Text, Value};
use super::schema::{FieldType, Naive, Schema};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use std::fmt;
use std::sync::Arc;

/// Why a message is not a record.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// Not JSON at all (as opposed to JSON of the wrong shape).
    pub syntax: bool,
    pub message: String,
}

impl Record {
    /// Decodes one JSON object under `schema`.
    pub fn from_json(schema: &Arc<Schema>, bytes: &[u8]) -> Result<Record, DecodeError> {
        Record::read_json(schema, serde_json::Deserializer::from_slice(bytes))
    }

    /// [`Record::from_json`] of text already known to be UTF-8: its strings are not checked
    /// again (the second check was ~5 % of the consuming path).
    pub fn from_json_str(schema: &Arc<Schema>, text: &str) -> Result<Record, DecodeError> {
        Record::read_json(schema, serde_json::Deserializer::from_str(text))
    }

    fn read_json<'de, R: serde_json::de::Read<'de>>(
        schema: &Arc<Schema>,
        mut de: serde_json::Deserializer<R>,
    ) -> Result<Record, DecodeError> {
        let mut record = Record::new(schema);
        let field = std::cell::Cell::new(None);
        let result = RecordSeed {
            schema,
            record: &mut record,
            field: &field,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        match result {
            Ok(()) => Ok(record),
            Err(e) => {
                let syntax = e.is_syntax() || e.is_eof();
                let message = match field.get() {
                    Some(i) if !syntax => format!("field {:?}: {e}", schema.fields()[i].name),
                    _ => e.to_string(),
                };
                Err(DecodeError { syntax, message })
            }
        }
    }

    /// Appends the JSON encoding to `out` (reused across records to avoid an allocation each).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut ser = serde_json::Serializer::new(out);
        self.serialize_into(&mut ser)
            .expect("a record always serializes");
    }

    /// The JSON encoding as a string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    fn serialize_into<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut map = ser.serialize_map(None)?;
        for (name, v) in self.present() {
            match v {
                Value::Text(s) => map.serialize_entry(name, s)?,
                Value::Int(i) => map.serialize_entry(name, i)?,
                Value::Float(f) => map.serialize_entry(name, f)?,
                Value::Bool(b) => map.serialize_entry(name, b)?,
                Value::Time(t) => map.serialize_entry(name, &iso(*t))?,
                Value::Missing => {}
            }
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl serde::Serialize for Record {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        self.serialize_into(ser)
    }
}

/// Decodes a JSON object into a record's slots; `field` is the slot being read, for errors.
struct RecordSeed<'a> {
    schema: &'a Schema,
    record: &'a mut Record,
    field: &'a std::cell::Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let schema = self.schema;
        let fields = schema.fields();
        // Records this runner wrote list their fields in slot order: guessing the slot after the
        // last one finds most keys with one comparison instead of a scan.
        let mut guess = 0;
        while let Some(key) = map.next_key_seed(KeySeed { schema, guess })? {
            match key {
                Key::Slot(i) => {
                    guess = i + 1;
                    self.field.set(Some(i));
                    let spec = &fields[i].spec;
                    self.record.slots[i] = map.next_value_seed(SlotSeed {
                        ty: spec.ty,
                        naive: spec.naive,
                    })?;
                    self.field.set(None);
                }
                Key::Extra(name) => {
                    // Kept even under extra = "reject", so the check can name it.
                    let v: serde_json::Value = map.next_value()?;
                    self.record.extra.insert(name, v);
                }
            }
        }
        Ok(())
    }
}

/// A key of the object: the slot of a declared field, or the name of an undeclared one.
enum Key {
    Slot(usize),
    Extra(String),
}

/// Reads a key straight into its slot: the name is looked up where it lies in the text, not
/// copied into a `String` first (a malloc and a free per key and record were ~15 % of decode).
struct KeySeed<'a> {
    schema: &'a Schema,
    /// The slot tried first.
    guess: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        let slot = match self.schema.fields().get(self.guess) {
            Some(f) if f.name == name => Some(self.guess),
            _ => self.schema.slot(name),
        };
        Ok(match slot {
            Some(i) => Key::Slot(i),
            None => Key::Extra(name.to_owned()),
        })
    }
}

/// Reads one declared field's value, converting where nothing is lost (an integral float into
/// an int field, an int into a float field, ISO text into a timestamp field). What does not
/// convert is kept as it came, for [`Record::check`] to name.
struct SlotSeed {
    ty: FieldType,
    naive: Naive,
}

impl<'de> DeserializeSeed<'de> for SlotSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SlotSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} value", self.ty.name())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Missing)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Missing)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::of_int(i, self.ty))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        match i64::try_from(u) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Ok(Value::Float(u as f64)),
        }
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::of_float(f, self.ty))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        if self.ty == FieldType::Timestamp {
            if let Some(t) = parse_time(s, self.naive) {
                return Ok(Value::Time(t));
            }
        }
        Ok(Value::Text(Text::from(s)))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        if self.ty == FieldType::Timestamp {
            return self.visit_str(&s);
        }
        Ok(Value::Text(Text::from(s)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(de::Error::custom(format!(
            "expected {}, found a list",
            self.ty.name()
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Err(de::Error::custom(format!(
            "expected {}, found an object",
            self.ty.name()
        )))
    }
}
