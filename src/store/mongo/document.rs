//! The raw document layout, both ways, typed from the pipeline's `[event]`: string → string,
//! int → Int64, float → double, bool → boolean, timestamp → date (TTL indexes and range queries
//! need a date, not a string); undeclared fields as their JSON converts.

use crate::event::{Record, Schema, Value};
use mongodb::bson::{self, Bson, Document, RawBson, RawBsonRef, RawDocumentBuf};
use std::sync::Arc;

/// An undeclared field's JSON as BSON. A JSON value BSON cannot hold as such (an integer past
/// i64) is kept as its JSON text, never dropped or nulled.
fn extra(v: &serde_json::Value) -> Bson {
    Bson::try_from(v.clone()).unwrap_or_else(|_| Bson::String(v.to_string()))
}

/// The document stored for a record, written straight into BSON bytes: building a [`Document`]
/// first (a map with a key copy per field, then serialized by the driver) cost the consumer
/// about a fifth of its time per event. An error is why MongoDB could never hold the record
/// (a key with a NUL byte, or past `max_bytes`).
pub fn to_raw(e: &Record, max_bytes: usize) -> Result<RawDocumentBuf, String> {
    let mut d = RawDocumentBuf::new();
    let key = |k: &str| match k.contains('\0') {
        true => Err(format!("the field name {k:?} holds a NUL byte, which BSON cannot store")),
        false => Ok(()),
    };
    for (name, v) in e.present() {
        key(name)?;
        match v {
            Value::Text(s) => d.append_ref(name, RawBsonRef::String(s)),
            Value::Int(i) => d.append_ref(name, RawBsonRef::Int64(*i)),
            Value::Float(f) => d.append_ref(name, RawBsonRef::Double(*f)),
            Value::Bool(b) => d.append_ref(name, RawBsonRef::Boolean(*b)),
            Value::Time(t) => d.append_ref(name, RawBsonRef::DateTime(bson::DateTime::from_millis(*t))),
            Value::Missing => {}
        }
    }
    for (k, v) in e.extra() {
        key(k)?;
        let b = RawBson::try_from(extra(v)).map_err(|e| format!("field {k:?} cannot be stored as BSON: {e}"))?;
        d.append(k, b);
    }
    match d.as_bytes().len() {
        n if n > max_bytes => Err(format!("the document is {n} bytes; MongoDB holds at most {max_bytes}")),
        _ => Ok(d),
    }
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
        let raw = to_raw(&r, usize::MAX).unwrap();
        let d = raw.to_document().unwrap();
        assert_eq!(d.get("n"), Some(&Bson::Int64(3)));
        assert_eq!(d.get("x"), Some(&Bson::Double(1.5)));
        assert_eq!(d.get("ok"), Some(&Bson::Boolean(true)));
        assert!(matches!(d.get("t"), Some(Bson::DateTime(_))));
        assert!(!d.contains_key("maybe"), "a missing optional field is left out, not null");
        assert_eq!(from_document(&schema, d).unwrap(), r);
        let too_big = to_raw(&r, 20).unwrap_err();
        assert!(too_big.contains("holds at most 20"), "{too_big}");
    }
}
