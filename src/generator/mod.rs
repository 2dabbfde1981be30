//! The event generator: a Rhai script describes the distributions once, Rust samples every event.
//!
//! A script evaluates to a map from field name to distribution (see [`plan`] for the functions it
//! can call). It may also define `fn on_event(e)`, called per event to add or change fields; that
//! hook costs a script call per event, so the shipped script does without it.

pub mod plan;
mod rate;
mod task;

pub use plan::EventPlan;
pub use rate::Pacer;
pub use task::{GeneratorTask, Settings, Swap};

use crate::base::de;
use crate::event::Event;
use crate::script::{self, ScriptError, ScriptLimits};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rhai::{Engine, Map, Scope, AST};
use serde::Deserialize;
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
    /// How many distinct users the script may draw from (the script sees it as `USERS`).
    #[serde(default = "default_users", deserialize_with = "de::number")]
    pub users: i64,
    /// How many distinct items (`ITEMS` in the script).
    #[serde(default = "default_items", deserialize_with = "de::number")]
    pub items: i64,
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
fn default_users() -> i64 {
    1000
}
fn default_items() -> i64 {
    500
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
        if self.users < 1 || self.items < 1 {
            p.push("generator.users and generator.items must be at least 1".to_string());
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
    /// Compiles and evaluates the script named in `config`; every error names the file and line.
    pub fn load(config: &GeneratorConfig) -> Result<Self, ScriptError> {
        let path = &config.script;
        let mut engine = script::sandboxed_engine(ScriptLimits::default());
        plan::register(&mut engine);
        let ast = script::compile_file(&engine, path)?;
        let mut scope = Scope::new();
        scope.push_constant("USERS", config.users);
        scope.push_constant("ITEMS", config.items);
        let spec: Map = engine
            .eval_ast_with_scope(&mut scope, &ast)
            .map_err(|e| ScriptError::from_eval(path, &e))?;
        let plan = EventPlan::from_map(spec).map_err(|m| ScriptError::whole_file(path, m))?;
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

    /// Appends `n` events to `out`.
    pub fn fill(&mut self, n: usize, out: &mut Vec<Event>) {
        out.reserve(n);
        for _ in 0..n {
            let mut e = self.script.plan.sample(&mut self.rng);
            e.event_id = format!("{}-{:x}", self.id_prefix, self.next_seq);
            self.next_seq += 1;
            if let Some(hook) = self.script.hook.clone() {
                e = self.apply_hook(&hook, e);
            }
            out.push(e);
        }
    }

    fn apply_hook(&mut self, hook: &(Engine, AST), event: Event) -> Event {
        let (engine, ast) = hook;
        let result = rhai::serde::to_dynamic(&event)
            .and_then(|d| {
                // eval_ast(false): the top level (the distribution map) ran once at load, not per event.
                let options = rhai::CallFnOptions::new().eval_ast(false);
                engine.call_fn_with_options::<rhai::Dynamic>(options, &mut Scope::new(), ast, "on_event", (d,))
            })
            .and_then(|out| rhai::serde::from_dynamic::<serde_json::Map<String, serde_json::Value>>(&out))
            .map_err(|e| e.to_string())
            .and_then(hook_result_to_event);
        match result {
            Ok(mut changed) => {
                // The id is the runner's promise of uniqueness; a hook may not change it.
                changed.event_id = event.event_id;
                changed
            }
            Err(e) => {
                self.hook_errors += 1;
                if self.hook_errors <= 10 || self.hook_errors.is_power_of_two() {
                    tracing::warn!(
                        error = %format!("{}: {e}", self.script.path.display()),
                        failures = self.hook_errors,
                        "on_event hook failed; the event is kept as sampled"
                    );
                }
                event
            }
        }
    }
}

/// Fields of [`Event`] itself; anything else a hook sets goes into `attributes`.
const EVENT_FIELDS: &[&str] = &[
    "event_id", "user_id", "item_id", "interaction_type", "timestamp", "session_id", "value", "price", "view_duration", "attributes",
];

fn hook_result_to_event(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Event, String> {
    let extra: Vec<String> = map.keys().filter(|k| !EVENT_FIELDS.contains(&k.as_str())).cloned().collect();
    if !extra.is_empty() {
        let mut attributes = match map.remove("attributes") {
            Some(serde_json::Value::Object(a)) => a,
            _ => serde_json::Map::new(),
        };
        for k in extra {
            if let Some(v) = map.remove(&k) {
                attributes.insert(k, v);
            }
        }
        map.insert("attributes".into(), serde_json::Value::Object(attributes));
    }
    for optional in ["price", "view_duration"] {
        if map.get(optional).is_some_and(|v| v.is_null()) {
            map.remove(optional);
        }
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| format!("on_event returned something that is not an event: {e}"))
}
