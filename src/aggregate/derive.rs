//! Derived fields: `[[derive]]` computes a value once per record, before the metrics, into a
//! slot of its own, so every metric reads it like a declared field (`field("category")`,
//! `e.category`, `field_is(...)`) instead of each calling its own script function.
//!
//! ```toml
//! [[derive]]
//! name = "view_length"
//! type = "string"
//! script = "../scripts/derive/view_length.rhai"   # fn view_length(e) {...}  Fn("view_length")
//! store = false                                   # true: written with the raw record too
//! ```
//!
//! The script evaluates, once at load, to what a metric's `key` may be: `field("meta.channel")`,
//! `lookup("items", "item_id", "category")` or `bucket("view_duration", [10, 60], ["glance",
//! "read", "long"])` (read in Rust, no script call per record), or `Fn("name")`, a function of
//! the record called per record. Derivations run in file order, so
//! a later one reads an earlier one's field. A value that does not fit the type (or a failing
//! call) leaves the field missing in that record, counted and logged as a script error; the
//! record itself goes on.

use super::lookup::Lookups;
use super::script::{self, FieldValue, Selector};
use crate::event::{parse_time, DerivedField, FieldType, Naive, Record, Schema, Text, Value};
use crate::script::{record_map_of, MapFields, ScriptError};
use crate::telemetry::Stats;
use compact_str::ToCompactString;
use rhai::{CallFnOptions, Dynamic, Engine, Scope, AST};
use serde::Deserialize;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

/// `[[derive]]`: a field computed per record before the metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveConfig {
    /// The field's name: metrics read it as they read a declared field (`field("name")`,
    /// `e.name`); it must not be a declared field's.
    pub name: String,
    /// `string`, `int`, `float`, `bool` or `timestamp`; the value is converted to it where
    /// nothing is lost, else the field is missing in that record.
    #[serde(rename = "type", deserialize_with = "crate::event::derived_type")]
    pub ty: FieldType,
    /// A Rhai script, relative to the pipeline file, that evaluates to `field("name")`,
    /// `lookup("table", "field", "column")`, `bucket("field", [bounds], [labels])` (read in
    /// Rust) or `Fn("function")` (a function of the record, called once per record).
    pub script: PathBuf,
    /// Also write the value with the raw record (stored, and shown where raw records are).
    #[serde(default)]
    pub store: bool,
}

impl DeriveConfig {
    /// The field it adds to the schema.
    pub fn field(&self) -> DerivedField {
        DerivedField {
            name: self.name.clone(),
            ty: self.ty,
            store: self.store,
        }
    }
}

/// One compiled derivation.
struct Derivation {
    name: String,
    slot: usize,
    ty: FieldType,
    selector: Selector,
    engine: Arc<Engine>,
    ast: Arc<AST>,
    /// The fields its function reads from a record map.
    map_fields: MapFields,
    path: PathBuf,
}

/// The compiled `[[derive]]`s of a pipeline, in file order.
#[derive(Clone, Default)]
pub struct Derivations(Arc<Vec<Derivation>>);

impl Derivations {
    /// Compiles every derivation against `schema` (which holds their fields, from
    /// [`DeriveConfig::field`]); on failure returns every problem, each naming its script.
    pub fn load(
        configs: &[DeriveConfig],
        schema: &Schema,
        lookups: &Lookups,
    ) -> Result<Derivations, Vec<ScriptError>> {
        let (mut each, mut errors) = (Vec::new(), Vec::new());
        for c in configs {
            match Derivation::load(c, schema, lookups) {
                Ok(d) => each.push(d),
                Err(e) => errors.push(e),
            }
        }
        match errors.is_empty() {
            true => Ok(Derivations(Arc::new(each))),
            false => Err(errors),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets every derived field of every record, in order; a failure leaves that field missing
    /// in that record and is counted in `stats`.
    pub fn apply(&self, events: &mut [Record], stats: &Stats) {
        for e in events {
            for d in self.0.iter() {
                let value = d.value(e).unwrap_or_else(|why| {
                    stats.derive_error(&d.name, e.id(), &why);
                    Value::Missing
                });
                e.set(d.slot, value);
            }
        }
    }
}

impl Derivation {
    fn load(c: &DeriveConfig, schema: &Schema, lookups: &Lookups) -> Result<Self, ScriptError> {
        let path = &c.script;
        let (engine, source, ast) = script::compile(path)?;
        let given: Dynamic = engine
            .eval_ast_with_scope(&mut Scope::new(), &ast)
            .map_err(|e| ScriptError::from_eval(path, &e))?;
        let selector = script::selector(
            path,
            &format!("derive {:?}", c.name),
            given,
            schema,
            lookups,
        )?;
        if let Selector::Script(f) = &selector {
            let defined = ast
                .iter_functions()
                .any(|g| g.name == f.fn_name() && g.params.len() == 1);
            if !defined {
                return Err(ScriptError::whole_file(
                    path,
                    format!(
                        "derive {:?}: Fn({:?}) names fn {}(e), which the script does not define",
                        c.name,
                        f.fn_name(),
                        f.fn_name()
                    ),
                ));
            }
        }
        // The running schema's derived fields change only with a restart (like [event]).
        let slot = schema.slot(&c.name).ok_or_else(|| {
            ScriptError::whole_file(
                path,
                format!(
                    "derive {:?}: the running record has no such field; a new derived field applies at the next start",
                    c.name
                ),
            )
        })?;
        Ok(Derivation {
            name: c.name.clone(),
            slot,
            ty: c.ty,
            selector,
            engine: Arc::new(engine),
            ast: Arc::new(ast),
            map_fields: MapFields::of_source(&source, schema),
            path: path.clone(),
        })
    }

    /// This derivation's value for a record, in its type.
    fn value(&self, e: &Record) -> Result<Value, String> {
        match &self.selector {
            Selector::Script(f) => {
                let map = record_map_of(e, &self.map_fields);
                let options = CallFnOptions::new().eval_ast(false);
                let got: Dynamic = self
                    .engine
                    .call_fn_with_options(
                        options,
                        &mut Scope::new(),
                        &self.ast,
                        f.fn_name(),
                        (map,),
                    )
                    .map_err(|err| ScriptError::from_eval(&self.path, &err).to_string())?;
                typed(self.ty, Given::of_dynamic(&got)?)
            }
            read => {
                let v = read
                    .read(e)
                    .expect("a field or lookup selector reads in Rust");
                typed(self.ty, Given::of_field(v))
            }
        }
    }
}

/// A value as a derivation gave it, before it is typed.
#[derive(Debug, Clone, PartialEq)]
enum Given<'a> {
    Nothing,
    Text(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl<'a> Given<'a> {
    fn of_field(v: FieldValue<'a>) -> Given<'a> {
        match v {
            FieldValue::Text(t) => Given::Text(Cow::Borrowed(t)),
            FieldValue::Number(n) => Given::Float(n),
            FieldValue::Missing => Given::Nothing,
        }
    }

    fn of_dynamic(d: &Dynamic) -> Result<Given<'static>, String> {
        if d.is_unit() {
            Ok(Given::Nothing)
        } else if let Ok(b) = d.as_bool() {
            Ok(Given::Bool(b))
        } else if let Ok(i) = d.as_int() {
            Ok(Given::Int(i))
        } else if let Ok(f) = d.as_float() {
            Ok(Given::Float(f))
        } else if d.is_string() {
            Ok(Given::Text(Cow::Owned(d.to_string())))
        } else {
            Err(format!(
                "the function gave {}, not a value a field holds (a string, number, bool or ())",
                d.type_name()
            ))
        }
    }
}

/// `given` as a value of type `ty`, where nothing is lost; a whole float is an int, a number
/// is text in a string field, ISO text or milliseconds are a timestamp. Nothing gives a
/// missing field; a value that does not fit is an error that says both.
fn typed(ty: FieldType, given: Given<'_>) -> Result<Value, String> {
    let unfit = |what: String| Err(format!("gave {what}, which is not a {} value", ty.name()));
    match (ty, given) {
        (_, Given::Nothing) => Ok(Value::Missing),
        (FieldType::Float, Given::Float(f)) if f.is_finite() => Ok(Value::Float(f)),
        (FieldType::Float, Given::Int(i)) => Ok(Value::Float(i as f64)),
        (FieldType::Int, Given::Int(i)) => Ok(Value::Int(i)),
        (FieldType::Int, Given::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Ok(Value::Int(f as i64))
        }
        (FieldType::String, Given::Text(t)) => Ok(Value::Text(Text::from(t.as_ref()))),
        (FieldType::String, Given::Int(i)) => Ok(Value::Text(i.to_compact_string())),
        (FieldType::String, Given::Float(f)) if f.is_finite() => {
            Ok(Value::Text(f.to_compact_string()))
        }
        (FieldType::String, Given::Bool(b)) => Ok(Value::Text(b.to_compact_string())),
        (FieldType::Bool, Given::Bool(b)) => Ok(Value::Bool(b)),
        // A bool field read by a selector comes as its text (see `script::Field::get`).
        (FieldType::Bool, Given::Text(t)) if t == "true" || t == "false" => {
            Ok(Value::Bool(t == "true"))
        }
        (FieldType::Timestamp, Given::Int(ms)) => Ok(Value::Time(ms)),
        (FieldType::Timestamp, Given::Float(ms)) if ms.fract() == 0.0 && ms.abs() < 9.0e15 => {
            Ok(Value::Time(ms as i64))
        }
        (FieldType::Timestamp, Given::Text(t)) => match parse_time(&t, Naive::Utc) {
            Some(ms) => Ok(Value::Time(ms)),
            None => unfit(format!("{t:?}")),
        },
        (_, Given::Text(t)) => unfit(format!("{:?}", t.chars().take(64).collect::<String>())),
        (_, Given::Int(i)) => unfit(i.to_string()),
        (_, Given::Float(f)) => unfit(f.to_string()),
        (_, Given::Bool(b)) => unfit(b.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::LookupConfig;

    /// Derivations of `scripts` (name, type, store, script text) over records of `id`, `t`,
    /// `item` and `n`, with the lookup table `items` (item → category).
    fn derive(
        scripts: &[(&str, FieldType, bool, &str)],
    ) -> Result<(Arc<Schema>, Derivations), String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("items.csv"), "item,category\na,toys\n").unwrap();
        let lookups = Lookups::load(
            &[LookupConfig::of_file(
                "items",
                dir.path().join("items.csv"),
                "item",
            )],
            &Default::default(),
        )
        .unwrap();
        let configs: Vec<DeriveConfig> = scripts
            .iter()
            .map(|(name, ty, store, text)| {
                let script = dir.path().join(format!("{name}.rhai"));
                std::fs::write(&script, text).unwrap();
                DeriveConfig {
                    name: name.to_string(),
                    ty: *ty,
                    script,
                    store: *store,
                }
            })
            .collect();
        let declared = crate::event::schema_of(
            "fields = { id = \"string\", t = \"timestamp\", item = \"string\", n = \"float?\" }\nid = \"id\"\ntime = \"t\"",
        );
        let fields: Vec<DerivedField> = configs.iter().map(DeriveConfig::field).collect();
        let schema = Arc::new(
            Schema::clone(&declared)
                .with_derived(&fields)
                .map_err(|p| p.join("; "))?,
        );
        let set = Derivations::load(&configs, &schema, &lookups).map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok((schema, set))
    }

    /// Records of `schema` with the ids 0, 1, ... and the fields `rest` each gives
    /// (`"item":"a","n":3`).
    fn records(schema: &Arc<Schema>, rest: &[&str]) -> Vec<Record> {
        rest.iter()
            .enumerate()
            .map(|(i, fields)| {
                let json = format!(r#"{{"id":"{i}","t":"2026-01-01T00:00:00Z",{fields}}}"#);
                Record::from_json(schema, json.as_bytes()).unwrap()
            })
            .collect()
    }

    #[test]
    fn each_record_gets_its_derived_fields_in_order_and_a_later_one_reads_an_earlier() {
        let (schema, set) = derive(&[
            (
                "category",
                FieldType::String,
                true,
                "lookup(\"items\", \"item\", \"category\")",
            ),
            (
                "double",
                FieldType::Float,
                false,
                "fn d(e) { if e.n == () { () } else { e.n * 2 } } Fn(\"d\")",
            ),
            (
                "size",
                FieldType::String,
                false,
                "fn s(e) { if e.double > 5.0 { \"big\" } else { \"small\" } } Fn(\"s\")",
            ),
        ])
        .unwrap();
        let mut events = records(&schema, &[r#""item":"a","n":3.5"#, r#""item":"zz","n":1"#]);
        let stats = Stats::new();
        set.apply(&mut events, &stats);
        let text = |e: &Record, f: &str| e.field(f).unwrap().as_text().unwrap().to_string();
        assert_eq!(text(&events[0], "category"), "toys");
        assert_eq!(text(&events[1], "category"), "__missing__");
        assert_eq!(events[0].field("double"), Some(&Value::Float(7.0)));
        assert_eq!(text(&events[0], "size"), "big");
        assert_eq!(text(&events[1], "size"), "small");
        assert_eq!(stats.snapshot().script_errors, 0);
    }

    #[test]
    fn a_bucket_names_the_range_a_number_falls_in_and_a_bound_starts_its_range() {
        let (schema, set) = derive(&[(
            "size",
            FieldType::String,
            false,
            "bucket(\"n\", [10, 60.5], [\"small\", \"mid\", \"big\"])",
        )])
        .unwrap();
        let mut events = records(
            &schema,
            &[
                r#""item":"a","n":9.99"#,
                r#""item":"a","n":10"#,
                r#""item":"a","n":60.5"#,
                r#""item":"a","n":1e308"#,
                r#""item":"a""#,
            ],
        );
        set.apply(&mut events, &Stats::new());
        let got: Vec<Option<String>> = events
            .iter()
            .map(|e| e.field("size").unwrap().as_text().map(|t| t.to_string()))
            .collect();
        let want = [Some("small"), Some("mid"), Some("big"), Some("big"), None];
        assert_eq!(got, want.map(|w| w.map(str::to_string)));
        let labels = derive(&[(
            "x",
            FieldType::String,
            false,
            "bucket(\"n\", [1, 2], [\"a\", \"b\"])",
        )]);
        assert!(labels.err().unwrap().contains("so 3 labels (there are 2)"));
        let order = derive(&[(
            "x",
            FieldType::String,
            false,
            "bucket(\"n\", [2, 1], [\"a\", \"b\", \"c\"])",
        )]);
        assert!(order
            .err()
            .unwrap()
            .contains("x.rhai:1:1: bucket: bounds must be finite numbers in increasing order"));
    }

    #[test]
    fn a_value_that_does_not_fit_leaves_only_that_field_missing_and_is_counted() {
        let (schema, set) = derive(&[
            (
                "ratio",
                FieldType::Float,
                false,
                "fn r(e) { if e.n > 2.0 { \"many\" } else { e.n / 0.0 } } Fn(\"r\")",
            ),
            ("item_again", FieldType::String, false, "field(\"item\")"),
        ])
        .unwrap();
        let mut events = records(&schema, &[r#""item":"a","n":3"#, r#""item":"b","n":1"#]);
        let stats = Stats::new();
        set.apply(&mut events, &stats);
        // A text for a float, and an infinity: both missing, both counted; the other field set.
        for e in &events {
            assert_eq!(e.field("ratio"), Some(&Value::Missing));
        }
        assert_eq!(
            events[1].field("item_again"),
            Some(&Value::Text("b".into()))
        );
        assert_eq!(stats.snapshot().script_errors, 2);
    }

    #[test]
    fn a_derived_field_is_written_with_the_raw_record_only_when_stored() {
        let (schema, set) = derive(&[
            ("kept", FieldType::String, true, "field(\"item\")"),
            ("dropped", FieldType::String, false, "field(\"item\")"),
        ])
        .unwrap();
        let mut events = records(&schema, &[r#""item":"a""#]);
        let before = events[0].clone();
        set.apply(&mut events, &Stats::new());
        let json: serde_json::Value = serde_json::from_str(&events[0].to_json()).unwrap();
        assert_eq!(json["kept"], "a");
        assert!(json.get("dropped").is_none(), "{json}");
        assert!(
            events[0].same_content(&before),
            "derived values are not the record's content"
        );
        // A record arriving with a derived field's name has it replaced, and no check applies.
        let mut sent = records(&schema, &[r#""item":"b","kept":7"#]);
        assert!(sent[0].check().is_ok());
        set.apply(&mut sent, &Stats::new());
        assert_eq!(sent[0].field("kept"), Some(&Value::Text("b".into())));
    }

    #[test]
    fn a_derivation_that_cannot_be_built_is_a_load_error_naming_it() {
        let problem = |scripts| derive(scripts).err().unwrap_or_default();
        let undefined = problem(&[("x", FieldType::Int, false, "Fn(\"nowhere\")")]);
        assert!(
            undefined.contains("x.rhai") && undefined.contains("fn nowhere(e)"),
            "{undefined}"
        );
        let number = problem(&[("x", FieldType::Int, false, "42")]);
        assert!(number.contains("must be field"), "{number}");
        let no_table = problem(&[(
            "x",
            FieldType::Int,
            false,
            "lookup(\"other\", \"item\", \"c\")",
        )]);
        assert!(
            no_table.contains("x.rhai:1:") && no_table.contains("\"other\""),
            "{no_table}"
        );
        let declared = problem(&[("item", FieldType::String, false, "field(\"id\")")]);
        assert!(
            declared.contains("derive \"item\": [event] declares"),
            "{declared}"
        );
        let twice = problem(&[
            ("y", FieldType::String, false, "field(\"id\")"),
            ("y", FieldType::String, false, "field(\"id\")"),
        ]);
        assert!(twice.contains("derived twice"), "{twice}");
    }

    #[test]
    fn a_derived_value_is_typed_where_nothing_is_lost_and_refused_otherwise() {
        let text = |t: &'static str| Given::Text(Cow::Borrowed(t));
        assert_eq!(
            typed(FieldType::Float, Given::Int(3)),
            Ok(Value::Float(3.0))
        );
        assert_eq!(typed(FieldType::Int, Given::Float(3.0)), Ok(Value::Int(3)));
        assert!(typed(FieldType::Int, Given::Float(3.5)).is_err());
        assert!(typed(FieldType::Float, Given::Float(f64::NAN)).is_err());
        assert!(typed(FieldType::Float, Given::Float(f64::INFINITY)).is_err());
        assert_eq!(
            typed(FieldType::Float, Given::Float(1e308)),
            Ok(Value::Float(1e308))
        );
        assert_eq!(
            typed(FieldType::String, Given::Float(2.5)),
            Ok(Value::Text("2.5".into()))
        );
        assert_eq!(typed(FieldType::Bool, text("true")), Ok(Value::Bool(true)));
        assert_eq!(
            typed(FieldType::Timestamp, text("2026-01-01T00:00:01Z")),
            Ok(Value::Time(1_767_225_601_000))
        );
        assert_eq!(typed(FieldType::Bool, Given::Nothing), Ok(Value::Missing));
        let e = typed(FieldType::Float, text("abc")).unwrap_err();
        assert!(e.contains("\"abc\"") && e.contains("float"), "{e}");
    }
}
