//! The record generator: a Rhai script describes the distributions once, Rust samples every record.
//!
//! A script evaluates to a map from field name to distribution (see [`plan`] for the functions it
//! can call), for any field of the pipeline's `[event]`; the runner sets the id and time fields.
//! `[generator] params` are constants the script sees. It may also define `fn on_event(e)`,
//! called per record to add or change fields; that hook costs a script call per record, so the
//! shipped scripts do without it.

pub mod plan;
pub mod rate;
pub mod session;
mod task;
pub mod traffic;

pub use plan::EventPlan;
pub use rate::Pacer;
pub use session::SessionPlan;
pub use task::{GeneratorTask, Settings, Swap};
pub use traffic::{Effects, ProfileConfig, ScenarioConfig, Traffic};

use crate::base::de;
use crate::event::{Record, Schema};
use crate::script::{self, ScriptError, ScriptLimits};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rhai::{Engine, Map, Scope, AST};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// `[generator]`: what to generate and how fast.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// The Rhai script describing the event distributions (relative to the pipeline file)
    /// [default: none: the pipeline generates nothing and consumes what Kafka carries].
    #[serde(default)]
    pub script: Option<PathBuf>,
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
    /// How the rate moves over time: a daily curve, steps and ramps, random bursts
    /// (`[generator.profile]`) [default: `rate`, flat].
    #[serde(default)]
    pub profile: Option<ProfileConfig>,
    /// Named incidents that change the traffic for a while (`[[generator.scenario]]`).
    #[serde(default, rename = "scenario")]
    pub scenario_defs: Vec<ScenarioConfig>,
    /// The scenarios to run, by name (`--scenario NAME` adds one) [default: none].
    #[serde(default)]
    pub scenarios: Vec<String>,
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
            p.push(format!(
                "generator.rate must be 0 (unlimited) or more, got {}",
                self.rate
            ));
        }
        if self.batch_size == 0 {
            p.push("generator.batch_size must be at least 1".to_string());
        }
        for (name, _) in self.params.iter().filter(|(n, _)| !is_constant_name(n)) {
            p.push(format!("generator.params: {name:?} is not a script name (letters, digits and _, not starting with a digit)"));
        }
        p.extend(self.profile.iter().flat_map(ProfileConfig::check));
        for (i, s) in self.scenario_defs.iter().enumerate() {
            if self.scenario_defs[..i].iter().any(|o| o.name == s.name) {
                p.push(format!(
                    "generator.scenario: the name {:?} is used twice",
                    s.name
                ));
            }
        }
        for name in self
            .scenarios
            .iter()
            .filter(|n| !self.scenario_defs.iter().any(|s| &s.name == *n))
        {
            let known: Vec<&str> = self.scenario_defs.iter().map(|s| s.name.as_str()).collect();
            p.push(format!(
                "generator.scenarios: no scenario named {name:?} (the file has: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

/// What the script describes: records drawn one by one, or sessions of records.
#[derive(Clone)]
enum Shape {
    Independent(EventPlan),
    Sessions(Arc<SessionPlan>),
}

/// The compiled generator: the script's plan, the optional per-event hook, and how the traffic
/// changes over time (profile and scenarios).
#[derive(Clone)]
pub struct GeneratorScript {
    shape: Shape,
    hook: Option<Arc<(Engine, AST)>>,
    path: PathBuf,
    traffic: Arc<Traffic>,
}

impl GeneratorScript {
    /// Compiles and evaluates the script named in `config` for records of `schema`; every error
    /// names the file and line.
    pub fn load(config: &GeneratorConfig, schema: &Arc<Schema>) -> Result<Self, ScriptError> {
        let Some(path) = config.script.as_ref() else {
            return Err(ScriptError::whole_file(
                Path::new("[generator]"),
                "this pipeline has no generator script: set [generator] script = \"gen.rhai\" to generate records",
            ));
        };
        let mut engine = script::sandboxed_engine(ScriptLimits::default());
        plan::register(&mut engine);
        session::register(&mut engine);
        let ast = script::compile_file(&engine, path)?;
        let mut scope = Scope::new();
        for (name, value) in config.all_params() {
            scope.push_constant(name, value.to_dynamic());
        }
        let described: rhai::Dynamic = engine
            .eval_ast_with_scope(&mut scope, &ast)
            .map_err(|e| ScriptError::from_eval(path, &e))?;
        let shape = if described.is_map() {
            Shape::Independent(
                EventPlan::from_map(described.cast::<Map>(), schema)
                    .map_err(|m| ScriptError::whole_file(path, m))?,
            )
        } else if described.is::<session::SessionsSpec>() {
            let plan = SessionPlan::compile(described.cast::<session::SessionsSpec>(), schema)
                .map_err(|m| ScriptError::whole_file(path, m))?;
            Shape::Sessions(Arc::new(plan))
        } else {
            let got = described.type_name();
            return Err(ScriptError::whole_file(path, format!("the script must end with a map of field distributions, or sessions(events, description); it ends with a {got}")));
        };
        let traffic = Traffic::compile(
            config.profile.as_ref(),
            &config.scenario_defs,
            &config.scenarios,
            schema,
        )
        .map_err(|m| ScriptError::whole_file(path, format!("[generator] {m}")))?;
        let has_hook = ast
            .iter_functions()
            .any(|f| f.name == "on_event" && f.params.len() == 1);
        let hook = has_hook.then(|| Arc::new((engine, ast)));
        Ok(GeneratorScript {
            shape,
            hook,
            path: path.clone(),
            traffic: Arc::new(traffic),
        })
    }

    /// How the traffic changes over time.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// The session description, when the script describes sessions.
    pub fn sessions(&self) -> Option<&Arc<SessionPlan>> {
        match &self.shape {
            Shape::Sessions(s) => Some(s),
            Shape::Independent(_) => None,
        }
    }
}

/// When and how fast a batch is made, and what the scenarios change in it.
pub struct Tick<'a> {
    /// The wall clock, ms since the epoch: records are timed at it (sessions: at their step,
    /// never after it).
    pub now_ms: i64,
    /// The rate the batch is paced at (0 = unpaced); sessions keep rate × think time open.
    pub rate: f64,
    pub effects: &'a Effects,
}

/// Produces events from a [`GeneratorScript`]; one per task, since it owns its random state.
pub struct Generator {
    script: GeneratorScript,
    rng: SmallRng,
    id_prefix: String,
    next_seq: u64,
    /// The open sessions, when the script describes sessions.
    sessions: Option<session::Sessions>,
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
        let mut g = Generator {
            script,
            rng,
            id_prefix,
            next_seq: 0,
            sessions: None,
            hook_errors: 0,
        };
        g.follow_sessions();
        g
    }

    /// Swaps in a reloaded script; the random state and id sequence carry on, and so do the
    /// open sessions unless the session description changed.
    pub fn set_script(&mut self, script: GeneratorScript) {
        self.script = script;
        self.follow_sessions();
    }

    fn follow_sessions(&mut self) {
        match self.script.sessions() {
            Some(plan) if !self.sessions.as_ref().is_some_and(|s| s.follows(plan)) => {
                self.sessions = Some(session::Sessions::new(plan.clone(), &self.id_prefix));
            }
            Some(_) => {}
            None => self.sessions = None,
        }
    }

    /// How the traffic of the script in use changes over time.
    pub fn traffic(&self) -> &Arc<Traffic> {
        self.script.traffic()
    }

    /// Sessions open now (0 when the script draws records one by one).
    pub fn open_sessions(&self) -> usize {
        self.sessions.as_ref().map_or(0, |s| s.open())
    }

    /// Appends `n` records to `out`, timed now, unpaced and with no scenario on.
    pub fn fill(&mut self, n: usize, out: &mut Vec<Record>) {
        let effects = Effects::default();
        self.fill_at(
            n,
            &Tick {
                now_ms: chrono::Utc::now().timestamp_millis(),
                rate: 0.0,
                effects: &effects,
            },
            out,
        );
    }

    /// Draws `n` records at `tick` and appends those the scenarios do not drop to `out`.
    pub fn fill_at(&mut self, n: usize, tick: &Tick<'_>, out: &mut Vec<Record>) {
        out.reserve(n);
        let now = tick.now_ms;
        if let Some(s) = self.sessions.as_mut() {
            s.prepare(&mut self.rng, now, tick.rate);
        }
        for _ in 0..n {
            let mut e = match (&mut self.sessions, &self.script.shape) {
                (Some(s), _) => s.next(&mut self.rng, self.next_seq, now, &tick.effects.overrides),
                (None, Shape::Independent(plan)) => {
                    let mut r = Record::new(plan.schema());
                    r.set_time_ms(now);
                    plan.draw(
                        &mut self.rng,
                        self.next_seq,
                        &mut r,
                        None,
                        &tick.effects.overrides,
                    );
                    r
                }
                (None, Shape::Sessions(_)) => {
                    unreachable!("follow_sessions opens sessions for a session script")
                }
            };
            e.set_id(compact_str::format_compact!(
                "{}-{:x}",
                self.id_prefix,
                self.next_seq
            ));
            self.next_seq += 1;
            if let Some(hook) = self.script.hook.clone() {
                e = self.apply_hook(&hook, e);
            }
            if !tick.effects.drops(&e) {
                out.push(e);
            }
        }
    }

    fn apply_hook(&mut self, hook: &(Engine, AST), event: Record) -> Record {
        let (engine, ast) = hook;
        // eval_ast(false): the top level (the distribution map) ran once at load, not per record.
        let options = rhai::CallFnOptions::new().eval_ast(false);
        let result = engine
            .call_fn_with_options::<rhai::Dynamic>(
                options,
                &mut Scope::new(),
                ast,
                "on_event",
                (script::record_map(&event),),
            )
            .map_err(|e| e.to_string())
            .and_then(|out| {
                out.try_cast::<Map>()
                    .ok_or_else(|| "on_event(e) must return the record (a map)".to_string())
            })
            .and_then(|map| script::record_from_map(&event, map));
        match result {
            Ok(mut changed) => {
                // The id is the runner's promise of uniqueness; a hook may not change it.
                changed.set_id(event.id());
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
        Ok(
            match Any::deserialize(d)
                .map_err(|_| serde::de::Error::custom("a param is a number, a bool or a string"))?
            {
                Any::I(i) => Param::Int(i),
                Any::F(f) => Param::Float(f),
                Any::B(b) => Param::Bool(b),
                Any::S(s) => Param::parse(&s),
            },
        )
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
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
