//! Records as scripts see them, both ways: a map built only when a script function needs one.

use crate::event::{iso, parse_time, FieldType, Record, Schema, Value};
use rhai::{Dynamic, Map};

/// The record as a script sees it: declared fields by their type (timestamps as ISO text, a
/// missing one as `()`), undeclared ones as they came.
pub fn record_map(e: &Record) -> Dynamic {
    record_map_of(e, &MapFields::ALL)
}

/// Which fields a script's record maps need. Building a map costs an allocation per field (and a
/// date formatting for a timestamp) for every record, so a script that reads one field gets a
/// map of that field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MapFields {
    all: bool,
    /// Declared fields (slots) and undeclared names the script may read.
    slots: Vec<usize>,
    extra: Vec<String>,
}

impl MapFields {
    /// Every field.
    pub const ALL: MapFields = MapFields { all: true, slots: Vec::new(), extra: Vec::new() };

    /// The fields named in a script's source. Anything that could read a field not named in the
    /// text (listing keys, indexing by a computed name, `in`, serializing the map) means every
    /// field: a map with a field too many costs time, one with a field missing would be wrong.
    pub fn of_source(source: &str, schema: &Schema) -> MapFields {
        const WHOLE_MAP: [&str; 9] = ["[", " in ", "keys", "values", "len", "to_json", "contains", "fill_with", "mixin"];
        if WHOLE_MAP.iter().any(|m| source.contains(m)) {
            return MapFields::ALL;
        }
        let words: std::collections::HashSet<&str> = source.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
        let slots: Vec<usize> = (0..schema.fields().len()).filter(|i| words.contains(schema.fields()[*i].name.as_str())).collect();
        let extra = words.iter().filter(|w| schema.slot(w).is_none()).map(|w| w.to_string()).collect();
        MapFields { all: false, slots, extra }
    }

    /// What either needs.
    pub fn union(&mut self, other: &MapFields) {
        self.all |= other.all;
        for s in &other.slots {
            if !self.slots.contains(s) {
                self.slots.push(*s);
            }
        }
        for x in &other.extra {
            if !self.extra.contains(x) {
                self.extra.push(x.clone());
            }
        }
    }
}

/// [`record_map`] with only the fields `fields` names.
pub fn record_map_of(e: &Record, fields: &MapFields) -> Dynamic {
    let mut m = Map::new();
    let names = e.schema().fields();
    if fields.all {
        for (i, f) in names.iter().enumerate() {
            m.insert(f.name.as_str().into(), to_dynamic(e.get(i)));
        }
        for (k, v) in e.extra() {
            m.insert(k.as_str().into(), rhai::serde::to_dynamic(v).unwrap_or(Dynamic::UNIT));
        }
    } else {
        for i in &fields.slots {
            m.insert(names[*i].name.as_str().into(), to_dynamic(e.get(*i)));
        }
        for k in &fields.extra {
            if let Some(v) = e.extra().get(k) {
                m.insert(k.as_str().into(), rhai::serde::to_dynamic(v).unwrap_or(Dynamic::UNIT));
            }
        }
    }
    Dynamic::from_map(m)
}

/// One value as a script sees it.
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Missing => Dynamic::UNIT,
        Value::Text(s) => s.as_str().into(),
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
        Value::of_int(i, ty)
    } else if let Ok(f) = v.as_float() {
        Value::of_float(f, ty)
    } else if v.is_string() {
        let s = v.into_string().map_err(|t| t.to_string())?;
        match (ty, parse_time(&s, naive)) {
            (FieldType::Timestamp, Some(t)) => Value::Time(t),
            _ => Value::Text(s.into()),
        }
    } else {
        Value::Text(compact_str::ToCompactString::to_compact_string(&v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> std::sync::Arc<Schema> {
        crate::event::schema_of("fields = { id = \"string\", kind = \"string\", n = \"int?\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"")
    }

    #[test]
    fn a_script_gets_the_fields_it_names_or_all_when_it_could_read_any() {
        let s = schema();
        let r = Record::from_json(&s, br#"{"id":"a","kind":"view","n":3,"t":"2026-01-01T00:00:00Z","note":"x"}"#).unwrap();
        let named = MapFields::of_source("fn update(e) { if e.kind == \"view\" && e.note != () { this.n += 1 } }", &s);
        let m = record_map_of(&r, &named).cast::<Map>();
        let mut keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["kind", "n", "note"], "`n` is named too (as this.n): a field more is harmless");
        for whole in ["fn f(e) { e.keys().len() }", "fn f(e) { e[\"ki\" + \"nd\"] }", "fn f(e) { \"kind\" in e }"] {
            assert_eq!(MapFields::of_source(whole, &s), MapFields::ALL, "{whole}");
        }
        assert_eq!(record_map_of(&r, &MapFields::ALL).cast::<Map>().len(), 5);
    }
}
