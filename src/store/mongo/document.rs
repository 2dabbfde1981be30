//! The raw document layout, both ways, typed from the pipeline's `[event]`: string → string,
//! int → Int64, float → double, bool → boolean, timestamp → date (TTL indexes and range queries
//! need a date, not a string); undeclared fields as their JSON converts.

use crate::event::{Record, Schema, Value};
use mongodb::bson::{self, Bson, Document};
use std::sync::Arc;

/// The document stored for a record.
pub fn to_document(e: &Record) -> Document {
    let mut d = Document::new();
    for (name, v) in e.present() {
        let b = match v {
            Value::Text(s) => Bson::String(s.clone()),
            Value::Int(i) => Bson::Int64(*i),
            Value::Float(f) => Bson::Double(*f),
            Value::Bool(b) => Bson::Boolean(*b),
            Value::Time(t) => Bson::DateTime(bson::DateTime::from_millis(*t)),
            Value::Missing => continue,
        };
        d.insert(name, b);
    }
    for (k, v) in e.extra() {
        // A JSON value BSON cannot hold as such (an integer past i64) is kept as its JSON text,
        // never dropped or nulled.
        let b = Bson::try_from(v.clone()).unwrap_or_else(|_| Bson::String(v.to_string()));
        d.insert(k, b);
    }
    d
}

/// A stored document read back as a record of `schema`.
pub(super) fn from_document(schema: &Arc<Schema>, mut d: Document) -> anyhow::Result<Record> {
    d.remove("_id");
    let mut r = Record::new(schema);
    for (k, b) in d {
        let v = match b {
            Bson::String(s) => Value::Text(s),
            Bson::Int64(i) => Value::Int(i),
            Bson::Int32(i) => Value::Int(i as i64),
            Bson::Double(f) => Value::Float(f),
            Bson::Boolean(b) => Value::Bool(b),
            Bson::DateTime(t) => Value::Time(t.timestamp_millis()),
            Bson::Null => Value::Missing,
            other => {
                let json: serde_json::Value = other.into_relaxed_extjson();
                r.extra_mut().insert(k, json);
                continue;
            }
        };
        match schema.slot(&k) {
            Some(i) => r.set(i, v),
            None => {
                let json = json_of(&v);
                r.extra_mut().insert(k, json);
            }
        }
    }
    Ok(r)
}

/// An undeclared scalar as JSON.
fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Text(s) => s.clone().into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Bool(b) => (*b).into(),
        Value::Time(t) => crate::event::iso(*t).into(),
        Value::Missing => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_the_declared_bson_types_and_read_back_equal() {
        let text = r#"fields = { id = "string", n = "int", x = "float", ok = "bool", t = "timestamp", maybe = "float?" }
id = "id"
time = "t""#;
        let schema = Arc::new(Schema::new(&toml::from_str(text).unwrap()).unwrap());
        let r = Record::from_json(&schema, br#"{"id":"a","n":3,"x":1.5,"ok":true,"t":"2026-01-01T00:00:00.250Z","meta":{"k":[1,"v"]}}"#).unwrap();
        let d = to_document(&r);
        assert_eq!(d.get("n"), Some(&Bson::Int64(3)));
        assert_eq!(d.get("x"), Some(&Bson::Double(1.5)));
        assert_eq!(d.get("ok"), Some(&Bson::Boolean(true)));
        assert!(matches!(d.get("t"), Some(Bson::DateTime(_))));
        assert!(!d.contains_key("maybe"), "a missing optional field is left out, not null");
        assert_eq!(from_document(&schema, d).unwrap(), r);
    }
}
