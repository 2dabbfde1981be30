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
    pub const ALL: MapFields = MapFields {
        all: true,
        slots: Vec::new(),
        extra: Vec::new(),
    };

    /// The fields named in a script's source. Anything that could read a field not named in the
    /// text (listing keys, indexing by a computed name, `in`, serializing the map) means every
    /// field: a map with a field too many costs time, one with a field missing would be wrong.
    pub fn of_source(source: &str, schema: &Schema) -> MapFields {
        // Calls that take a field by a computed name (`get`), walk every field (`filter`, `map`,
        // `reduce`, `retain`, `drain`, `some`, `all`), or turn the whole map into text (string
        // interpolation, `to_string`, `print`, `debug`) read fields the text never names.
        const WHOLE_MAP: [&str; 23] = [
            "[",
            " in ",
            "keys",
            "values",
            "len",
            "to_json",
            "contains",
            "fill_with",
            "mixin",
            "get(",
            "filter(",
            "map(",
            "reduce(",
            "retain(",
            "drain(",
            "some(",
            "all(",
            "`",
            "to_string",
            "to_debug",
            "print(",
            "debug(",
            "+ e",
        ];
        let code = without_comments(source);
        if WHOLE_MAP.iter().any(|m| code.contains(m)) {
            return MapFields::ALL;
        }
        let words: std::collections::HashSet<&str> = source
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let slots: Vec<usize> = (0..schema.fields().len())
            .filter(|i| words.contains(schema.fields()[*i].name.as_str()))
            .collect();
        let extra = words
            .iter()
            .filter(|w| schema.slot(w).is_none())
            .map(|w| w.to_string())
            .collect();
        MapFields {
            all: false,
            slots,
            extra,
        }
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

/// `source` without its `//` and `/* */` comments (strings kept as they are), so a comment that
/// mentions `keys` or a backtick does not make every record map whole.
fn without_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' {
                    out.extend(chars.next());
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '/' && chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            None if c == '/' && chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            None => {
                if matches!(c, '"' | '`' | '\'') {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// [`record_map`] with only the fields `fields` names.
pub fn record_map_of(e: &Record, fields: &MapFields) -> Dynamic {
    let mut m = Map::new();
    let names = e.schema().fields();
    if fields.all {
        for (i, f) in names.iter().enumerate() {
            m.insert(f.name.as_str().into(), value_to_dynamic(e.get(i)));
        }
        for (k, v) in e.extra() {
            m.insert(k.as_str().into(), super::json_to_dynamic(v));
        }
    } else {
        for i in &fields.slots {
            m.insert(names[*i].name.as_str().into(), value_to_dynamic(e.get(*i)));
        }
        for k in &fields.extra {
            if let Some(v) = e.extra().get(k) {
                m.insert(k.as_str().into(), super::json_to_dynamic(v));
            }
        }
    }
    Dynamic::from_map(m)
}

/// One value as a script sees it.
pub fn value_to_dynamic(v: &Value) -> Dynamic {
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
                let json = rhai::serde::from_dynamic::<serde_json::Value>(&v)
                    .map_err(|e| format!("field {name:?}: {e}"))?;
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
        let r = Record::from_json(
            &s,
            br#"{"id":"a","kind":"view","n":3,"t":"2026-01-01T00:00:00Z","note":"x"}"#,
        )
        .unwrap();
        let named = MapFields::of_source(
            "fn update(e) { if e.kind == \"view\" && e.note != () { this.n += 1 } }",
            &s,
        );
        let m = record_map_of(&r, &named).cast::<Map>();
        let mut keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["kind", "n", "note"],
            "`n` is named too (as this.n): a field more is harmless"
        );
        let computed = [
            "fn f(e) { let k = \"ki\"; e.get(k + \"nd\") }",
            "fn f(e) { e.filter(|k, v| v == \"view\").len() }",
            "fn f(e) { e.map(|v| v) }",
            "fn f(e) { `record ${e}` }",
            "fn f(e) { e.to_string() }",
            "fn f(e) { print(e) }",
            "fn f(e) { \"record \" + e }",
        ];
        for whole in [
            "fn f(e) { e.keys().len() }",
            "fn f(e) { e[\"ki\" + \"nd\"] }",
            "fn f(e) { \"kind\" in e }",
        ]
        .iter()
        .chain(&computed)
        {
            assert_eq!(MapFields::of_source(whole, &s), MapFields::ALL, "{whole}");
        }
        assert_eq!(record_map_of(&r, &MapFields::ALL).cast::<Map>().len(), 5);
        let commented = "// `this` is the state; keys() and e.map(...) would read every field\n/* print(e) */ fn update(e) { if e.kind == \"view\" { this.n += 1 } }";
        assert_ne!(
            MapFields::of_source(commented, &s),
            MapFields::ALL,
            "comments do not count"
        );
    }
}
