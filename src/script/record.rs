//! Records as scripts see them, both ways: a map built only when a script function needs one.

use crate::event::{iso, parse_time, FieldType, Record, Value};
use rhai::{Dynamic, Map};

/// The record as a script sees it: declared fields by their type (timestamps as ISO text, a
/// missing one as `()`), undeclared ones as they came.
pub fn record_map(e: &Record) -> Dynamic {
    let mut m = Map::new();
    for (i, f) in e.schema().fields().iter().enumerate() {
        m.insert(f.name.as_str().into(), to_dynamic(e.get(i)));
    }
    for (k, v) in e.extra() {
        m.insert(k.as_str().into(), rhai::serde::to_dynamic(v).unwrap_or(Dynamic::UNIT));
    }
    Dynamic::from_map(m)
}

/// One value as a script sees it.
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Missing => Dynamic::UNIT,
        Value::Text(s) => s.clone().into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Bool(b) => (*b).into(),
        Value::Time(t) => iso(*t).into(),
    }
}

/// A map a script returned, as a record of `like`'s schema: declared fields converted to their
/// type where nothing is lost (a value that does not convert is kept as it is, for the
/// consumer's check to name), the rest kept as undeclared fields.
pub fn record_from_map(like: &Record, map: Map) -> Result<Record, String> {
    let schema = like.schema();
    let mut out = Record::new(schema);
    for (name, v) in map {
        match schema.slot(&name) {
            Some(i) => {
                let spec = &schema.fields()[i].spec;
                out.set(i, from_dynamic(v, spec.ty, spec.naive)?);
            }
            None if v.is_unit() => {}
            None => {
                let json = rhai::serde::from_dynamic::<serde_json::Value>(&v).map_err(|e| format!("field {name:?}: {e}"))?;
                out.extra_mut().insert(name.to_string(), json);
            }
        }
    }
    Ok(out)
}

fn from_dynamic(v: Dynamic, ty: FieldType, naive: crate::event::Naive) -> Result<Value, String> {
    Ok(if v.is_unit() {
        Value::Missing
    } else if let Ok(b) = v.as_bool() {
        Value::Bool(b)
    } else if let Ok(i) = v.as_int() {
        if ty == FieldType::Float { Value::Float(i as f64) } else { Value::Int(i) }
    } else if let Ok(f) = v.as_float() {
        if ty == FieldType::Int && f.fract() == 0.0 && f.abs() < 9.0e15 { Value::Int(f as i64) } else { Value::Float(f) }
    } else if v.is_string() {
        let s = v.into_string().map_err(|t| t.to_string())?;
        match (ty, parse_time(&s, naive)) {
            (FieldType::Timestamp, Some(t)) => Value::Time(t),
            _ => Value::Text(s),
        }
    } else {
        Value::Text(v.to_string())
    })
}
