//! The record generator: a Rhai script describes the distributions once, Rust samples every record.
//!
//! A script evaluates to a map from field name to distribution (see [`plan`] for the functions it
//! can call), for any field of the pipeline's `[event]`; the runner sets the id and time fields.
//! `[generator] params` are constants the script sees. It may also define `fn on_event(e)`,
//! called per record to add or change fields; that hook costs a script call per record, so the
//! shipped scripts do without it.

pub mod plan;
mod rate;
mod task;

pub use plan::EventPlan;
pub use rate::Pacer;
pub use task::{GeneratorTask, Settings, Swap};

use crate::base::de;
use crate::event::{Record, Schema};
use crate::script::{self, ScriptError, ScriptLimits};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rhai::{Engine, Map, Scope, AST};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// `[generator]`: what to generate and how fast.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// The Rhai script describing the event distributions (relative to the pipeline file).
    pub script: PathBuf,
    /// Events per second; 0 means as fast as the transport accepts them.
    #[serde(default = "default_rate", deserialize_with = "de::number")]
    pub rate: f64,
    /// Events per batch handed to the transport.
    #[serde(default = "default_batch_size", deserialize_with = "de::number")]
    pub batch_size: usize,
    /// Constants the script sees by name, e.g. `{ DEVICES = 200 }` (`--param NAME=VALUE`
    /// overrides one). A string that reads as a number (from `${VAR}`) is that number.
    #[serde(default)]
    pub params: BTreeMap<String, Param>,
    /// Older files' `users = N`: the same as `params = { USERS = N }`.
    #[serde(default, deserialize_with = "optional_number")]
    pub users: Option<i64>,
    /// Older files' `items = N`: the same as `params = { ITEMS = N }`.
    #[serde(default, deserialize_with = "optional_number")]
    pub items: Option<i64>,
    /// Seed for reproducible streams; unset draws a fresh one each run.
    #[serde(default, deserialize_with = "optional_seed")]
    pub seed: Option<u64>,
}

fn default_rate() -> f64 {
    100.0
}
fn default_batch_size() -> usize {
    100
}
fn optional_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    de::number(d).map(Some)
}
fn optional_seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de::number(d).map(Some)
}

impl GeneratorConfig {
    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        let mut p = Vec::new();
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            p.push(format!("generator.rate must be 0 (unlimited) or more, got {}", self.rate));
        }
        if self.batch_size == 0 {
            p.push("generator.batch_size must be at least 1".to_string());
        }
        for (name, _) in self.params.iter().filter(|(n, _)| !is_constant_name(n)) {
            p.push(format!("generator.params: {name:?} is not a script name (letters, digits and _, not starting with a digit)"));
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

/// The compiled generator script: the plan plus the optional per-event hook.
#[derive(Clone)]
pub struct GeneratorScript {
    plan: EventPlan,
    hook: Option<Arc<(Engine, AST)>>,
    path: PathBuf,
}

impl GeneratorScript {
    /// Compiles and evaluates the script named in `config` for records of `schema`; every error
    /// names the file and line.
    pub fn load(config: &GeneratorConfig, schema: &Arc<Schema>) -> Result<Self, ScriptError> {
        let path = &config.script;
        let mut engine = script::sandboxed_engine(ScriptLimits::default());
        plan::register(&mut engine);
        let ast = script::compile_file(&engine, path)?;
        let mut scope = Scope::new();
        for (name, value) in config.all_params() {
            scope.push_constant(name, value.to_dynamic());
        }
        let spec: Map = engine
            .eval_ast_with_scope(&mut scope, &ast)
            .map_err(|e| ScriptError::from_eval(path, &e))?;
        let plan = EventPlan::from_map(spec, schema).map_err(|m| ScriptError::whole_file(path, m))?;
        let has_hook = ast.iter_functions().any(|f| f.name == "on_event" && f.params.len() == 1);
        let hook = has_hook.then(|| Arc::new((engine, ast)));
        Ok(GeneratorScript { plan, hook, path: path.clone() })
    }
}

/// Produces events from a [`GeneratorScript`]; one per task, since it owns its random state.
pub struct Generator {
    script: GeneratorScript,
    rng: SmallRng,
    id_prefix: String,
    next_seq: u64,
    /// Per-event hook failures, kept so the caller can report them.
    pub hook_errors: u64,
}

impl Generator {
    /// A generator seeded from `seed`, or from the OS when `None`.
    pub fn new(script: GeneratorScript, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_os_rng(),
        };
        // The prefix comes from the OS even with a seed: two runs of a seeded stream are still
        // different events, and must not collide on the store's unique event_id.
        let id_prefix = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        Generator { script, rng, id_prefix, next_seq: 0, hook_errors: 0 }
    }

    /// Swaps in a reloaded script; the random state and id sequence carry on.
    pub fn set_script(&mut self, script: GeneratorScript) {
        self.script = script;
    }

    /// Appends `n` records to `out`, timed now (one clock reading: they are sent together).
    pub fn fill(&mut self, n: usize, out: &mut Vec<Record>) {
        out.reserve(n);
        let now = chrono::Utc::now().timestamp_millis();
        for _ in 0..n {
            let mut e = self.script.plan.sample(&mut self.rng, self.next_seq, now);
            e.set_id(format!("{}-{:x}", self.id_prefix, self.next_seq));
            self.next_seq += 1;
            if let Some(hook) = self.script.hook.clone() {
                e = self.apply_hook(&hook, e);
            }
            out.push(e);
        }
    }

    fn apply_hook(&mut self, hook: &(Engine, AST), event: Record) -> Record {
        let (engine, ast) = hook;
        // eval_ast(false): the top level (the distribution map) ran once at load, not per record.
        let options = rhai::CallFnOptions::new().eval_ast(false);
        let result = engine
            .call_fn_with_options::<rhai::Dynamic>(options, &mut Scope::new(), ast, "on_event", (script::record_map(&event),))
            .map_err(|e| e.to_string())
            .and_then(|out| out.try_cast::<Map>().ok_or_else(|| "on_event(e) must return the record (a map)".to_string()))
            .and_then(|map| script::record_from_map(&event, map));
        match result {
            Ok(mut changed) => {
                // The id is the runner's promise of uniqueness; a hook may not change it.
                changed.set_id(event.id().to_string());
                changed
            }
            Err(e) => {
                self.hook_errors += 1;
                if self.hook_errors <= 10 || self.hook_errors.is_power_of_two() {
                    tracing::warn!(
                        error = %format!("{}: {e}", self.script.path.display()),
                        failures = self.hook_errors,
                        "on_event hook failed; the record is kept as sampled"
                    );
                }
                event
            }
        }
    }
}

/// A `[generator] params` value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Param {
    /// Reads `--param NAME=VALUE`'s value (and a string from the file): a number or bool when it
    /// reads as one, text otherwise.
    pub fn parse(text: &str) -> Param {
        if let Ok(i) = text.trim().parse::<i64>() {
            Param::Int(i)
        } else if let Ok(f) = text.trim().parse::<f64>() {
            Param::Float(f)
        } else if let Ok(b) = text.trim().parse::<bool>() {
            Param::Bool(b)
        } else {
            Param::Text(text.to_string())
        }
    }

    fn to_dynamic(&self) -> rhai::Dynamic {
        match self {
            Param::Int(i) => (*i).into(),
            Param::Float(f) => (*f).into(),
            Param::Bool(b) => (*b).into(),
            Param::Text(s) => s.clone().into(),
        }
    }
}

impl<'de> Deserialize<'de> for Param {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            I(i64),
            F(f64),
            B(bool),
            S(String),
        }
        Ok(match Any::deserialize(d).map_err(|_| serde::de::Error::custom("a param is a number, a bool or a string"))? {
            Any::I(i) => Param::Int(i),
            Any::F(f) => Param::Float(f),
            Any::B(b) => Param::Bool(b),
            Any::S(s) => Param::parse(&s),
        })
    }
}

impl GeneratorConfig {
    /// `params`, with the older `users` / `items` keys as `USERS` / `ITEMS` (params win).
    pub fn all_params(&self) -> BTreeMap<String, Param> {
        let mut all = BTreeMap::new();
        for (name, v) in [("USERS", self.users), ("ITEMS", self.items)] {
            if let Some(v) = v {
                all.insert(name.to_string(), Param::Int(v));
            }
        }
        all.extend(self.params.clone());
        all
    }
}

/// Whether a name can be a script constant.
fn is_constant_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
