//! Metric scripts. A script evaluates to a map that says what the metric looks at:
//!
//! ```rhai
//! #{
//!     filter: field_is("site", "roof"),       // optional: which records count
//!     key: field("device_id"),                 // optional: group by
//!     value: field("temperature"),             // for sum / avg / min / max / distinct
//! }
//! ```
//!
//! `field(...)`, `field_is(...)` and `field_in(...)` are read in Rust at no script cost per
//! record. Any of the three may instead be `Fn("name")`, a function of the script called per
//! record with the record as a map, for logic the selectors cannot express. A `custom` reducer
//! script defines `init()`, `update(e)`, `merge(other)` and `finish()`, with the state as `this`.

use crate::event::{Extra, Record, Schema, Value};
use crate::script::ScriptError;
use rhai::{Dynamic, Engine, FnPtr, Map};
use std::path::Path;

/// A field of the record: a declared one by slot, or an undeclared one by its path
/// (`meta.channel` reads `channel` inside the undeclared object `meta`).
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Slot(usize),
    Extra(Vec<String>),
}

/// A field's value in one record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Text(&'a str),
    Number(f64),
    Missing,
}

impl Field {
    /// Resolves a name against the schema; an undeclared name is an error when the schema
    /// rejects undeclared fields (no record could have it).
    fn parse(name: &str, schema: &Schema) -> Result<Field, String> {
        if let Some(i) = schema.slot(name) {
            return Ok(Field::Slot(i));
        }
        if schema.extra() == Extra::Reject {
            let declared: Vec<&str> = schema.fields().iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "field {name:?} is not declared in [event] (declared: {})",
                declared.join(", ")
            ));
        }
        Ok(Field::Extra(name.split('.').map(str::to_string).collect()))
    }

    /// Reads the field from a record.
    #[inline]
    pub fn get<'a>(&self, e: &'a Record) -> FieldValue<'a> {
        match self {
            Field::Slot(i) => match e.get(*i) {
                Value::Text(s) => FieldValue::Text(s),
                Value::Int(n) => FieldValue::Number(*n as f64),
                Value::Float(n) => FieldValue::Number(*n),
                Value::Time(t) => FieldValue::Number(*t as f64),
                Value::Bool(b) => FieldValue::Text(if *b { "true" } else { "false" }),
                Value::Missing => FieldValue::Missing,
            },
            Field::Extra(path) => {
                let mut at = e.extra().get(&path[0]);
                for step in &path[1..] {
                    at = at.and_then(|v| v.get(step));
                }
                match at {
                    Some(serde_json::Value::String(s)) => FieldValue::Text(s),
                    Some(serde_json::Value::Number(n)) => {
                        n.as_f64().map_or(FieldValue::Missing, FieldValue::Number)
                    }
                    Some(serde_json::Value::Bool(b)) => {
                        FieldValue::Text(if *b { "true" } else { "false" })
                    }
                    _ => FieldValue::Missing,
                }
            }
        }
    }
}

/// How a metric picks its key or value: a field read in Rust, or a script function.
#[derive(Debug, Clone)]
pub enum Selector {
    Field(Field),
    Script(FnPtr),
}

/// Which events a metric counts.
#[derive(Debug, Clone)]
pub enum Filter {
    All,
    FieldIn(Field, Vec<String>),
    Script(FnPtr),
}

/// A marker type the selector functions return inside scripts.
#[derive(Debug, Clone)]
struct FieldRef(String);
#[derive(Debug, Clone)]
struct FieldIn(String, Vec<String>);

/// Registers `field`, `field_is` and `field_in` on a metric engine.
pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<FieldRef>("Field")
        .register_type_with_name::<FieldIn>("FieldFilter")
        .register_fn("field", |name: &str| FieldRef(name.to_string()))
        .register_fn("field_is", |name: &str, v: &str| {
            FieldIn(name.to_string(), vec![v.to_string()])
        })
        .register_fn("field_in", |name: &str, vs: rhai::Array| {
            FieldIn(
                name.to_string(),
                vs.into_iter().map(|v| v.to_string()).collect(),
            )
        });
}

/// The selectors a metric script described.
#[derive(Debug, Clone)]
pub struct Selectors {
    pub filter: Filter,
    pub key: Option<Selector>,
    pub value: Option<Selector>,
    /// A ratio's numerator and denominator.
    pub ratio: Option<(Filter, Filter)>,
}

/// Reads the map a metric script evaluated to.
pub fn selectors(path: &Path, mut spec: Map, schema: &Schema) -> Result<Selectors, ScriptError> {
    let err = |m: String| ScriptError::whole_file(path, m);
    let field = |name: &str| Field::parse(name, schema).map_err(err);
    let selector = |name: &str, v: Dynamic| -> Result<Selector, ScriptError> {
        if let Some(f) = v.clone().try_cast::<FieldRef>() {
            Ok(Selector::Field(field(&f.0)?))
        } else if let Some(f) = v.try_cast::<FnPtr>() {
            Ok(Selector::Script(f))
        } else {
            Err(err(format!(
                "`{name}` must be field(\"name\") or Fn(\"function\")"
            )))
        }
    };
    let filter_of = |name: &str, v: Dynamic| -> Result<Filter, ScriptError> {
        if let Some(f) = v.clone().try_cast::<FieldIn>() {
            Ok(Filter::FieldIn(field(&f.0)?, f.1))
        } else if let Some(f) = v.try_cast::<FnPtr>() {
            Ok(Filter::Script(f))
        } else {
            Err(err(format!(
                "`{name}` must be field_is(...), field_in(...) or Fn(\"function\")"
            )))
        }
    };
    let filter = spec
        .remove("filter")
        .map(|v| filter_of("filter", v))
        .transpose()?
        .unwrap_or(Filter::All);
    let ratio = match (spec.remove("numerator"), spec.remove("denominator")) {
        (None, None) => None,
        (Some(n), Some(d)) => Some((filter_of("numerator", n)?, filter_of("denominator", d)?)),
        _ => {
            return Err(err(
                "a ratio needs both `numerator` and `denominator`".into()
            ))
        }
    };
    let key = spec.remove("key").map(|v| selector("key", v)).transpose()?;
    let value = spec
        .remove("value")
        .map(|v| selector("value", v))
        .transpose()?;
    if let Some(extra) = spec.keys().next() {
        return Err(err(format!("unknown entry `{extra}` (a metric script may give filter, key, value, numerator and denominator)")));
    }
    Ok(Selectors {
        filter,
        key,
        value,
        ratio,
    })
}
