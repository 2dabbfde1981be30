//! Metric scripts. A script evaluates to a map that says what the metric looks at:
//!
//! ```rhai
//! #{
//!     filter: field_is("interaction_type", "purchase"),   // optional: which events count
//!     key: field("item_id"),                              // optional: group by
//!     value: field("price"),                              // for sum / avg / min / max / distinct
//! }
//! ```
//!
//! `field(...)`, `field_is(...)` and `field_in(...)` are read in Rust at no script cost per
//! event. Any of the three may instead be `Fn("name")`, a function of the script called per
//! event with the event as a map, for logic the selectors cannot express. A `custom` reducer
//! script defines `init()`, `update(e)`, `merge(other)` and `finish()`, with the state as `this`.

use crate::event::Event;
use crate::script::ScriptError;
use rhai::{Dynamic, Engine, FnPtr, Map};
use std::path::Path;

/// A field of the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    EventId,
    UserId,
    ItemId,
    InteractionType,
    SessionId,
    Value,
    Price,
    ViewDuration,
    Attribute(String),
}

/// A field's value in one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Text(&'a str),
    Number(f64),
    Missing,
}

impl Field {
    fn parse(name: &str) -> Field {
        match name {
            "event_id" => Field::EventId,
            "user_id" => Field::UserId,
            "item_id" => Field::ItemId,
            "interaction_type" => Field::InteractionType,
            "session_id" => Field::SessionId,
            "value" => Field::Value,
            "price" => Field::Price,
            "view_duration" => Field::ViewDuration,
            other => Field::Attribute(other.strip_prefix("attributes.").unwrap_or(other).to_string()),
        }
    }

    /// Reads the field from an event.
    #[inline]
    pub fn get<'a>(&self, e: &'a Event) -> FieldValue<'a> {
        match self {
            Field::EventId => FieldValue::Text(&e.event_id),
            Field::UserId => FieldValue::Text(&e.user_id),
            Field::ItemId => FieldValue::Text(&e.item_id),
            Field::InteractionType => FieldValue::Text(&e.interaction_type),
            Field::SessionId => FieldValue::Text(&e.session_id),
            Field::Value => FieldValue::Number(e.value),
            Field::Price => e.price.map_or(FieldValue::Missing, FieldValue::Number),
            Field::ViewDuration => e.view_duration.map_or(FieldValue::Missing, FieldValue::Number),
            Field::Attribute(name) => match e.attributes.get(name) {
                Some(serde_json::Value::String(s)) => FieldValue::Text(s),
                Some(serde_json::Value::Number(n)) => n.as_f64().map_or(FieldValue::Missing, FieldValue::Number),
                _ => FieldValue::Missing,
            },
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
        .register_fn("field_is", |name: &str, v: &str| FieldIn(name.to_string(), vec![v.to_string()]))
        .register_fn("field_in", |name: &str, vs: rhai::Array| {
            FieldIn(name.to_string(), vs.into_iter().map(|v| v.to_string()).collect())
        });
}

/// The selectors a metric script described.
#[derive(Debug, Clone)]
pub struct Selectors {
    pub filter: Filter,
    pub key: Option<Selector>,
    pub value: Option<Selector>,
}

/// Reads the map a metric script evaluated to.
pub fn selectors(path: &Path, mut spec: Map) -> Result<Selectors, ScriptError> {
    let err = |m: String| ScriptError::whole_file(path, m);
    let selector = |name: &str, v: Dynamic| -> Result<Selector, ScriptError> {
        if let Some(f) = v.clone().try_cast::<FieldRef>() {
            Ok(Selector::Field(Field::parse(&f.0)))
        } else if let Some(f) = v.try_cast::<FnPtr>() {
            Ok(Selector::Script(f))
        } else {
            Err(err(format!("`{name}` must be field(\"name\") or Fn(\"function\")")))
        }
    };
    let filter = match spec.remove("filter") {
        None => Filter::All,
        Some(v) => {
            if let Some(f) = v.clone().try_cast::<FieldIn>() {
                Filter::FieldIn(Field::parse(&f.0), f.1)
            } else if let Some(f) = v.try_cast::<FnPtr>() {
                Filter::Script(f)
            } else {
                return Err(err("`filter` must be field_is(...), field_in(...) or Fn(\"function\")".into()));
            }
        }
    };
    let key = spec.remove("key").map(|v| selector("key", v)).transpose()?;
    let value = spec.remove("value").map(|v| selector("value", v)).transpose()?;
    if let Some(extra) = spec.keys().next() {
        return Err(err(format!("unknown entry `{extra}` (a metric script may give filter, key and value)")));
    }
    Ok(Selectors { filter, key, value })
}

/// The event as a script sees it (built once per event and shared by every metric that needs it).
pub fn event_map(e: &Event) -> Dynamic {
    let mut m = Map::new();
    m.insert("event_id".into(), e.event_id.clone().into());
    m.insert("user_id".into(), e.user_id.clone().into());
    m.insert("item_id".into(), e.item_id.clone().into());
    m.insert("interaction_type".into(), e.interaction_type.clone().into());
    m.insert("timestamp".into(), e.timestamp.to_rfc3339().into());
    m.insert("session_id".into(), e.session_id.clone().into());
    m.insert("value".into(), e.value.into());
    m.insert("price".into(), e.price.map_or(Dynamic::UNIT, Dynamic::from));
    m.insert("view_duration".into(), e.view_duration.map_or(Dynamic::UNIT, Dynamic::from));
    if !e.attributes.is_empty() {
        let attrs = rhai::serde::to_dynamic(&e.attributes).unwrap_or(Dynamic::UNIT);
        m.insert("attributes".into(), attrs);
    }
    Dynamic::from_map(m)
}
