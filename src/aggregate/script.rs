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
//! record, and so is `lookup("table", "field", "column")` (a column of the `[[lookup]]` table's
//! row that the record's field names; `__missing__`, or a fourth argument's default, when the
//! table has no row for it). `filter`, `key` and `value` may instead be `Fn("name")`, a
//! function of the script called per record with the record as a map, for logic the selectors
//! cannot express. A `custom` reducer
//! script defines `init()`, `update(e)`, `merge(other)` and `finish()`, with the state as `this`.

use super::lookup::{Cell, Lookups, MISSING_KEY};
use crate::event::{Extra, FieldType, Naive, Record, Schema, Text, Value};
use crate::script::{compile_source, read_script, sandboxed_engine, ScriptError, ScriptLimits};
use rhai::{Dynamic, Engine, FnPtr, Map, NativeCallContext, Position, AST};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

/// How a metric picks its key or value: a field read in Rust, a lookup table's column or a
/// bucket of a number read in Rust, or a script function.
#[derive(Debug, Clone)]
pub enum Selector {
    Field(Field),
    Lookup(Arc<LookupSelector>),
    Bucket(Arc<BucketSelector>),
    Script(FnPtr),
}

impl Selector {
    /// What the selector gives for a record, when Rust reads it (not for a script's).
    #[inline]
    pub fn read<'a>(&'a self, e: &'a Record) -> Option<FieldValue<'a>> {
        match self {
            Selector::Field(f) => Some(f.get(e)),
            Selector::Lookup(l) => Some(l.get(e)),
            Selector::Bucket(b) => Some(b.get(e)),
            Selector::Script(_) => None,
        }
    }
}

/// `bucket(field, [bounds], [labels])`: the label of the range a number falls in (below the
/// first bound the first label, from a bound up to the next the next label, from the last bound
/// up the last), so a duration or a price groups into a few named ranges with no script call.
#[derive(Debug)]
pub struct BucketSelector {
    field: Field,
    bounds: Vec<f64>,
    labels: Vec<Text>,
}

impl BucketSelector {
    #[inline]
    fn get<'a>(&'a self, e: &'a Record) -> FieldValue<'a> {
        match self.field.get(e) {
            FieldValue::Number(n) if !n.is_nan() => {
                let i = self.bounds.partition_point(|b| *b <= n);
                FieldValue::Text(&self.labels[i])
            }
            _ => FieldValue::Missing,
        }
    }
}

/// `lookup(table, field, column[, default])`: the column of the row the record's field names.
#[derive(Debug)]
pub struct LookupSelector {
    field: Field,
    /// The table's column it reads, by key.
    column: HashMap<Text, Cell, foldhash::fast::RandomState>,
    /// What a record whose field has no row gives: the default, or `__missing__`.
    missing: Cell,
}

impl LookupSelector {
    #[inline]
    fn get<'a>(&'a self, e: &'a Record) -> FieldValue<'a> {
        let row = match self.field.get(e) {
            FieldValue::Text(key) => self.column.get(key),
            // Keys written as numbers in the table are stored as their text.
            FieldValue::Number(n) => self.column.get(n.to_string().as_str()),
            FieldValue::Missing => return FieldValue::Missing,
        };
        match row.unwrap_or(&self.missing) {
            Cell::Text(t) => FieldValue::Text(t),
            Cell::Number(n) => FieldValue::Number(*n),
            Cell::Empty => FieldValue::Missing,
        }
    }
}

/// Which events a metric counts.
#[derive(Debug, Clone)]
pub enum Filter {
    All,
    FieldIn(Field, Vec<Wanted>),
    Script(FnPtr),
}

/// A value `field_is` / `field_in` compares a field with, in the field's type (checked at load).
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    Text(String),
    /// Ints, floats and timestamps (milliseconds) compare as numbers.
    Number(f64),
    Bool(bool),
}

impl Wanted {
    /// Whether a record's field holds this value.
    #[inline]
    pub fn matches(&self, v: FieldValue<'_>) -> bool {
        match (self, v) {
            (Wanted::Text(w), FieldValue::Text(t)) => w == t,
            (Wanted::Number(w), FieldValue::Number(n)) => *w == n,
            // Bools read as the text `true` / `false` (see [`Field::get`]).
            (Wanted::Bool(b), FieldValue::Text(t)) => t == if *b { "true" } else { "false" },
            _ => false,
        }
    }

    /// The script's value in the type of the field it is compared with, or why it cannot be.
    fn typed(v: &Dynamic, ty: Option<FieldType>, naive: Naive) -> Result<Wanted, String> {
        let number = v.as_int().map(|i| i as f64).or_else(|_| v.as_float());
        match ty {
            Some(FieldType::String) if v.is_string() => Ok(Wanted::Text(v.to_string())),
            Some(FieldType::Int | FieldType::Float) if number.is_ok() => {
                Ok(Wanted::Number(number.unwrap_or_default()))
            }
            Some(FieldType::Bool) if v.is_bool() => {
                Ok(Wanted::Bool(v.as_bool().unwrap_or_default()))
            }
            Some(FieldType::Timestamp) if v.is_int() => {
                Ok(Wanted::Number(number.unwrap_or_default()))
            }
            Some(FieldType::Timestamp) if v.is_string() => {
                let text = v.to_string();
                crate::event::parse_time(&text, naive)
                    .map(|ms| Wanted::Number(ms as f64))
                    .ok_or_else(|| {
                        format!("{text:?} is not a time (ISO 8601, e.g. \"2026-01-01T00:00:00Z\")")
                    })
            }
            Some(ty) => Err(format!(
                "a {} cannot equal a {} field",
                v.type_name(),
                ty.name()
            )),
            // An undeclared field may hold any scalar.
            None if v.is_string() => Ok(Wanted::Text(v.to_string())),
            None if v.is_bool() => Ok(Wanted::Bool(v.as_bool().unwrap_or_default())),
            None if number.is_ok() => Ok(Wanted::Number(number.unwrap_or_default())),
            None => Err(format!(
                "a {} is not a value a field can hold (a string, number or bool)",
                v.type_name()
            )),
        }
    }
}

/// A marker type the selector functions return inside scripts.
#[derive(Debug, Clone)]
struct FieldRef(String);
/// `field_is` / `field_in`: the field, the values as written, and where the call stands (for
/// an error at load that names the line).
#[derive(Debug, Clone)]
struct FieldIn(String, Vec<Dynamic>, Position);
/// `lookup(table, field, column[, default])` as written, and where it stands.
#[derive(Debug, Clone)]
struct LookupRef {
    table: String,
    field: String,
    column: String,
    default: Option<Dynamic>,
    at: Position,
}

/// A metric's or a derivation's script, compiled: its engine (sandboxed, with the selector
/// functions, and a tight budget per call, so a runaway script fails its record, not the
/// pipeline), its text (the record fields it names) and its AST.
pub fn compile(path: &Path) -> Result<(Engine, String, AST), ScriptError> {
    let source = read_script(path)?;
    let (engine, ast) = compile_text(path, &source)?;
    Ok((engine, source, ast))
}

/// [`compile`] of a script's text (errors name `path`).
pub fn compile_text(path: &Path, source: &str) -> Result<(Engine, AST), ScriptError> {
    let mut engine = sandboxed_engine(ScriptLimits {
        max_operations: 100_000,
        ..ScriptLimits::default()
    });
    register(&mut engine);
    let ast = compile_source(&engine, path, source)?;
    Ok((engine, ast))
}

/// `bucket(field, bounds, labels)` as written, and where it stands.
#[derive(Debug, Clone)]
struct BucketRef(String, rhai::Array, rhai::Array, Position);

/// Registers `field`, `field_is`, `field_in`, `lookup` and `bucket` on a metric engine.
pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<BucketRef>("Bucket")
        .register_fn(
            "bucket",
            |ctx: NativeCallContext, name: &str, bounds: rhai::Array, labels: rhai::Array| {
                BucketRef(name.to_string(), bounds, labels, ctx.call_position())
            },
        );
    engine
        .register_type_with_name::<FieldRef>("Field")
        .register_type_with_name::<FieldIn>("FieldFilter")
        .register_fn("field", |name: &str| FieldRef(name.to_string()))
        .register_fn(
            "field_is",
            |ctx: NativeCallContext, name: &str, v: Dynamic| {
                FieldIn(name.to_string(), vec![v], ctx.call_position())
            },
        )
        .register_fn(
            "field_in",
            |ctx: NativeCallContext, name: &str, vs: rhai::Array| {
                FieldIn(name.to_string(), vs, ctx.call_position())
            },
        )
        .register_type_with_name::<LookupRef>("Lookup")
        .register_fn(
            "lookup",
            |ctx: NativeCallContext, table: &str, field: &str, column: &str| LookupRef {
                table: table.into(),
                field: field.into(),
                column: column.into(),
                default: None,
                at: ctx.call_position(),
            },
        )
        .register_fn(
            "lookup",
            |ctx: NativeCallContext, table: &str, field: &str, column: &str, default: Dynamic| {
                LookupRef {
                    table: table.into(),
                    field: field.into(),
                    column: column.into(),
                    default: Some(default),
                    at: ctx.call_position(),
                }
            },
        );
}

/// Resolves `lookup(...)` against the loaded tables; the error says where the call stands.
fn lookup_selector(
    l: LookupRef,
    schema: &Schema,
    lookups: &Lookups,
) -> Result<LookupSelector, (Position, String)> {
    let at = l.at;
    let table = lookups.get(&l.table).ok_or_else(|| {
        let names = lookups.names();
        (
            at,
            match names.is_empty() {
                true => format!("lookup table {:?}: the pipeline has no [[lookup]]", l.table),
                false => format!(
                    "lookup table {:?} is not a [[lookup]] of the pipeline (there are: {})",
                    l.table,
                    names.join(", ")
                ),
            },
        )
    })?;
    let column = table.column(&l.column).ok_or_else(|| {
        (
            at,
            format!(
                "lookup table {:?} has no column {:?} (columns: {})",
                l.table,
                l.column,
                table.columns().join(", ")
            ),
        )
    })?;
    let field = Field::parse(&l.field, schema).map_err(|why| (at, why))?;
    let missing = match l.default {
        None => Cell::Text(Text::from(MISSING_KEY)),
        Some(d) if d.is_string() => Cell::Text(Text::from(d.to_string().as_str())),
        Some(d) => match d.as_float().or_else(|_| d.as_int().map(|i| i as f64)) {
            Ok(n) if n.is_finite() => Cell::Number(n),
            _ => {
                return Err((
                    at,
                    format!(
                        "a lookup's default must be a string or a finite number, not a {}",
                        d.type_name()
                    ),
                ))
            }
        },
    };
    Ok(LookupSelector {
        field,
        column: table.column_map(column),
        missing,
    })
}

/// Checks `bucket(...)`: increasing finite bounds, one label more than bounds, labels text.
fn bucket_selector(b: BucketRef, schema: &Schema) -> Result<BucketSelector, (Position, String)> {
    let BucketRef(name, bounds, labels, at) = b;
    let field = Field::parse(&name, schema).map_err(|why| (at, why))?;
    let bounds: Vec<f64> = bounds
        .iter()
        .map(|b| b.as_float().or_else(|_| b.as_int().map(|i| i as f64)))
        .collect::<Result<_, _>>()
        .map_err(|t| (at, format!("bucket: bounds are numbers, not {t}")))?;
    if bounds.is_empty()
        || bounds.iter().any(|b| !b.is_finite())
        || bounds.windows(2).any(|w| w[0] >= w[1])
    {
        return Err((at, format!("bucket: bounds must be finite numbers in increasing order, at least one: {bounds:?}")));
    }
    let labels: Vec<Text> = labels
        .iter()
        .map(|l| l.clone().into_string().map(|s| Text::from(s.as_str())))
        .collect::<Result<_, _>>()
        .map_err(|t| (at, format!("bucket: labels are strings, not {t}")))?;
    if labels.len() != bounds.len() + 1 {
        return Err((
            at,
            format!(
                "bucket: {} bounds make {} ranges, so {} labels (there are {})",
                bounds.len(),
                bounds.len() + 1,
                bounds.len() + 1,
                labels.len()
            ),
        ));
    }
    Ok(BucketSelector {
        field,
        bounds,
        labels,
    })
}

/// A script's `field(...)`, `lookup(...)`, `bucket(...)` or `Fn("name")` as a selector; `name`
/// is what the script gave it as (`key`, `value`), for the error.
pub fn selector(
    path: &Path,
    name: &str,
    v: Dynamic,
    schema: &Schema,
    lookups: &Lookups,
) -> Result<Selector, ScriptError> {
    if let Some(f) = v.clone().try_cast::<FieldRef>() {
        Field::parse(&f.0, schema)
            .map(Selector::Field)
            .map_err(|m| ScriptError::whole_file(path, m))
    } else if let Some(l) = v.clone().try_cast::<LookupRef>() {
        lookup_selector(l, schema, lookups)
            .map(|l| Selector::Lookup(Arc::new(l)))
            .map_err(|(at, why)| ScriptError::at(path, at, why))
    } else if let Some(b) = v.clone().try_cast::<BucketRef>() {
        bucket_selector(b, schema)
            .map(|b| Selector::Bucket(Arc::new(b)))
            .map_err(|(at, why)| ScriptError::at(path, at, why))
    } else if let Some(f) = v.try_cast::<FnPtr>() {
        Ok(Selector::Script(f))
    } else {
        Err(ScriptError::whole_file(
            path,
            format!("`{name}` must be field(\"name\"), lookup(\"table\", \"field\", \"column\"), bucket(\"field\", [bounds], [labels]) or Fn(\"function\")"),
        ))
    }
}

/// The selectors a metric script described.
#[derive(Debug, Clone)]
pub struct Selectors {
    pub filter: Filter,
    pub key: Option<Selector>,
    pub value: Option<Selector>,
    /// A ratio's numerator and denominator.
    pub ratio: Option<(Filter, Filter)>,
    /// A session metric's: only sessions with a record that passes it are reported.
    pub having: Option<Filter>,
}

/// Reads the map a metric script evaluated to; `lookup(...)` calls are resolved against
/// `lookups`.
pub fn selectors(
    path: &Path,
    mut spec: Map,
    schema: &Schema,
    lookups: &Lookups,
) -> Result<Selectors, ScriptError> {
    let err = |m: String| ScriptError::whole_file(path, m);
    let field = |name: &str| Field::parse(name, schema).map_err(err);
    let selector = |name: &str, v: Dynamic| selector(path, name, v, schema, lookups);
    let filter_of = |name: &str, v: Dynamic| -> Result<Filter, ScriptError> {
        if let Some(FieldIn(name, values, at)) = v.clone().try_cast::<FieldIn>() {
            let f = field(&name)?;
            let ty = match &f {
                Field::Slot(i) => Some(schema.fields()[*i].spec.ty),
                Field::Extra(_) => None,
            };
            let naive = match &f {
                Field::Slot(i) => schema.fields()[*i].spec.naive,
                Field::Extra(_) => Naive::Utc,
            };
            let wanted = values
                .iter()
                .map(|v| {
                    Wanted::typed(v, ty, naive)
                        .map_err(|why| ScriptError::at(path, at, format!("`{name}`: {why}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Filter::FieldIn(f, wanted))
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
    let having = spec
        .remove("having")
        .map(|v| filter_of("having", v))
        .transpose()?;
    let key = spec.remove("key").map(|v| selector("key", v)).transpose()?;
    let value = spec
        .remove("value")
        .map(|v| selector("value", v))
        .transpose()?;
    if let Some(extra) = spec.keys().next() {
        return Err(err(format!("unknown entry `{extra}` (a metric script may give filter, key, value, numerator and denominator, and a session metric's having)")));
    }
    Ok(Selectors {
        filter,
        key,
        value,
        ratio,
        having,
    })
}
