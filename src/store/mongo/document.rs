//! The raw document layout, both ways, typed from the pipeline's `[event]`: string → string,
//! int → Int64, float → double, bool → boolean, timestamp → date (TTL indexes and range queries
//! need a date, not a string); undeclared fields as their JSON converts.

use crate::event::{Record, Schema, Value};
use mongodb::bson::{spec::ElementType, Bson, Document, RawBson, RawDocumentBuf};
use std::sync::Arc;

/// An undeclared field's JSON as BSON. A JSON value BSON cannot hold as such (an integer past
/// i64) is kept as its JSON text, never dropped or nulled.
fn extra(v: &serde_json::Value) -> Bson {
    Bson::try_from(v.clone()).unwrap_or_else(|_| Bson::String(v.to_string()))
}

/// The document stored for a record, written straight into BSON bytes: building a [`Document`]
/// first (a map with a key copy per field, then serialized by the driver) cost the consumer
/// about a fifth of its time per event. The declared fields are written into one buffer sized
/// for them up front (appending them one by one to a `RawDocumentBuf` grew it field by field:
/// the reallocations were ~8 % of the consuming path). An error is why MongoDB could never hold
/// the record (a key with a NUL byte, or past `max_bytes`).
pub fn to_raw(e: &Record, max_bytes: usize) -> Result<RawDocumentBuf, String> {
    let key = |k: &str| match k.contains('\0') {
        true => Err(format!(
            "the field name {k:?} holds a NUL byte, which BSON cannot store"
        )),
        false => Ok(()),
    };
    // BSON: i32 total length, then per element a type byte, the key as a C string and the
    // value, then a NUL. Strings are an i32 length (with the NUL), the bytes and a NUL.
    let size = 5 + e
        .present()
        .map(|(name, v)| 2 + name.len() + value_size(v))
        .sum::<usize>();
    let mut data = Vec::with_capacity(size);
    data.extend_from_slice(&[0; 4]);
    // Declared names need no NUL check: the schema admits only plain names (letters, digits, _).
    for (name, v) in e.present() {
        match v {
            Value::Text(s) => {
                element(&mut data, ElementType::String, name);
                data.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                data.extend_from_slice(s.as_bytes());
                data.push(0);
            }
            Value::Int(i) => {
                element(&mut data, ElementType::Int64, name).extend_from_slice(&i.to_le_bytes())
            }
            Value::Time(t) => {
                element(&mut data, ElementType::DateTime, name).extend_from_slice(&t.to_le_bytes())
            }
            Value::Float(f) => {
                element(&mut data, ElementType::Double, name).extend_from_slice(&f.to_le_bytes())
            }
            Value::Bool(b) => element(&mut data, ElementType::Boolean, name).push(*b as u8),
            Value::Missing => {} // `present` leaves these out
        }
    }
    data.push(0);
    let len = data.len() as i32;
    data[..4].copy_from_slice(&len.to_le_bytes());
    let mut d = RawDocumentBuf::from_bytes(data)
        .map_err(|e| format!("the record's BSON is malformed: {e}"))?;
    for (k, v) in e.extra() {
        key(k)?;
        let b = RawBson::try_from(extra(v))
            .map_err(|e| format!("field {k:?} cannot be stored as BSON: {e}"))?;
        d.append(k, b);
    }
    match d.as_bytes().len() {
        n if n > max_bytes => Err(format!(
            "the document is {n} bytes; MongoDB holds at most {max_bytes}"
        )),
        _ => Ok(d),
    }
}

/// Starts an element: its type byte and its key as a C string; the value follows.
fn element<'a>(data: &'a mut Vec<u8>, ty: ElementType, name: &str) -> &'a mut Vec<u8> {
    data.push(ty as u8);
    data.extend_from_slice(name.as_bytes());
    data.push(0);
    data
}

/// The bytes of a declared field's value in BSON.
fn value_size(v: &Value) -> usize {
    match v {
        Value::Text(s) => 5 + s.len(),
        Value::Int(_) | Value::Float(_) | Value::Time(_) => 8,
        Value::Bool(_) => 1,
        Value::Missing => 0,
    }
}

/// A stored document read back as a record of `schema`.
pub(super) fn from_document(schema: &Arc<Schema>, mut d: Document) -> anyhow::Result<Record> {
    d.remove("_id");
    let mut r = Record::new(schema);
    for (k, b) in d {
        let v = match b {
            Bson::String(s) => Value::Text(s.into()),
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
        Value::Text(s) => s.as_str().into(),
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
    use mongodb::bson;

    fn schema() -> Arc<Schema> {
        crate::event::schema_of("fields = { id = \"string\", n = \"int\", x = \"float\", ok = \"bool\", t = \"timestamp\", maybe = \"float?\", note = \"string?\" }\nid = \"id\"\ntime = \"t\"")
    }

    #[test]
    fn documents_carry_the_declared_bson_types_and_read_back_equal() {
        let schema = schema();
        let r = Record::from_json(&schema, br#"{"id":"a","n":3,"x":1.5,"ok":true,"t":"2026-01-01T00:00:00.250Z","meta":{"k":[1,"v"]}}"#).unwrap();
        let raw = to_raw(&r, usize::MAX).unwrap();
        let d = raw.to_document().unwrap();
        assert_eq!(d.get("n"), Some(&Bson::Int64(3)));
        assert_eq!(d.get("x"), Some(&Bson::Double(1.5)));
        assert_eq!(d.get("ok"), Some(&Bson::Boolean(true)));
        assert!(matches!(d.get("t"), Some(Bson::DateTime(_))));
        assert!(
            !d.contains_key("maybe"),
            "a missing optional field is left out, not null"
        );
        assert_eq!(from_document(&schema, d).unwrap(), r);
        let too_big = to_raw(&r, 20).unwrap_err();
        assert!(too_big.contains("holds at most 20"), "{too_big}");
    }

    #[test]
    fn raw_documents_are_byte_for_byte_what_the_driver_writes() {
        let schema = schema();
        let long = "é".repeat(40);
        let json = format!(
            r#"{{"id":"a\u0000b","n":-3,"x":1.5,"ok":false,"t":"2026-01-01T00:00:00.250Z","note":"{long}","extra":[1]}}"#
        );
        let r = Record::from_json(&schema, json.as_bytes()).unwrap();
        // Declared fields in slot order (the schema's), then the undeclared as their JSON converts.
        let expected = bson::doc! {
            "id": "a\u{0}b", "n": -3i64, "note": long.as_str(), "ok": false,
            "t": bson::DateTime::from_millis(1_767_225_600_250), "x": 1.5, "extra": [1i32],
        };
        assert_eq!(
            to_raw(&r, usize::MAX).unwrap().as_bytes(),
            RawDocumentBuf::from_document(&expected).unwrap().as_bytes()
        );
    }
}
