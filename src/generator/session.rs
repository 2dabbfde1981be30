//! Sessions: records that belong together, as ShadowTraffic and real traffic have them. A
//! session belongs to one key (a user), carries a session id, walks a state machine (view →
//! click → add_to_cart → purchase → end, say) and waits a think time between its steps; a field
//! may stick to the session across steps (a purchase is of the item viewed before it).
//!
//! The script describes it once:
//!
//! ```rhai
//! sessions(#{ user_id: zipf("user_", USERS, 1.1), item_id: zipf("item_", ITEMS, 1.1) }, #{
//!     key: "user_id",                 // drawn once per session
//!     id: "session_id",               // gets the session's id (optional)
//!     state: "interaction_type",      // gets the state of each step
//!     start: "view",                  // or #{ view: 0.9, click: 0.1 }
//!     steps: #{ view: #{ view: 0.3, click: 0.3, end: 0.4 }, click: #{ end: 1.0 } },
//!     think: exponential(6.0),        // seconds between two steps of a session
//!     keep: #{ item_id: ["click"] },  // in these states the field keeps the session's value
//!     max_open: 100000,               // sessions open at once, at most
//! })
//! ```
//!
//! and Rust samples it: open sessions wait in a heap ordered by the time of their next step, so
//! the stream interleaves them in time order at O(log open) per record. How many are open follows
//! Little's law (rate × mean think time), corrected as the session clock drifts from the wall
//! clock, so event times keep the think times while the pacer holds the rate.

use super::plan::{Distribution, EventPlan, Override};
use crate::event::{FieldType, Record, Schema, Value};
use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::weighted::WeightedAliasIndex;
use rhai::{Dynamic, Engine, Map};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// The state that ends a session.
pub const END: &str = "end";
/// Sessions open at once when the script does not say.
const DEFAULT_MAX_OPEN: usize = 100_000;
/// Sessions open at once when unpaced (rate 0): few enough that a short run already has the
/// described mix of states rather than mostly first steps.
const UNPACED_OPEN: usize = 1_000;
/// The furthest a step may lag the wall clock: a session due earlier (too many were open when
/// the rate fell) takes its step now, as if it had thought longer, so records stay current.
const MAX_LAG_MS: i64 = 1_000;
/// How quickly the open count corrects a drift of the session clock from the wall clock.
const DRIFT_HORIZON_MS: f64 = 10_000.0;

/// What `sessions(events, spec)` returns to the script: compiled against the schema at load.
#[derive(Clone)]
pub struct SessionsSpec {
    events: Map,
    spec: Map,
}

/// Makes `sessions(events, spec)` callable from generator scripts.
pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<SessionsSpec>("Sessions")
        .register_fn("sessions", |events: Map, spec: Map| SessionsSpec {
            events,
            spec,
        });
}

/// One state's way on: the next states (None = end) by weight.
#[derive(Debug)]
struct Choice {
    table: WeightedAliasIndex<f64>,
    weights: Vec<f64>,
    targets: Vec<Option<usize>>,
}

impl Choice {
    fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        self.targets[rng.sample(&self.table)]
    }
}

/// A compiled session description.
#[derive(Debug)]
pub struct SessionPlan {
    plan: EventPlan,
    state_slot: usize,
    id_slot: Option<usize>,
    states: Vec<String>,
    start: Choice,
    next: Vec<Choice>,
    think: Distribution,
    max_open: usize,
    /// Fields the first step does not draw (the state and the id are set by the session).
    first_skip: Vec<bool>,
    /// Per state, the fields a later step does not draw (also the key and the kept ones).
    step_skip: Vec<Vec<bool>>,
    /// The slots whose values a session carries from step to step (the key, the kept fields).
    carried: Vec<usize>,
    /// Mean think time, ms.
    pub mean_think_ms: f64,
    /// Mean steps per session, from the state machine.
    pub mean_steps: f64,
    /// A fingerprint of the description: a reload that compiles the same one keeps the open
    /// sessions (every reload recompiles the generator, whatever changed).
    fingerprint: u64,
}

impl SessionPlan {
    /// Compiles a session description for records of `schema`; the error says what is wrong.
    pub fn compile(spec: SessionsSpec, schema: &Arc<Schema>) -> Result<SessionPlan, String> {
        let SessionsSpec { events, spec } = spec;
        let fingerprint = crate::base::fnv1a(format!("{events:?}{spec:?}").as_bytes());
        let text = |name: &str| -> Result<Option<String>, String> {
            match spec.get(name) {
                None => Ok(None),
                Some(v) if v.is_string() => Ok(Some(v.to_string())),
                Some(v) => Err(format!(
                    "sessions: `{name}` names a field, so it is a string, not a {}",
                    v.type_name()
                )),
            }
        };
        for k in spec.keys() {
            if ![
                "key", "id", "state", "start", "steps", "think", "keep", "max_open",
            ]
            .contains(&k.as_str())
            {
                return Err(format!("sessions: unknown key `{k}` (known: key, id, state, start, steps, think, keep, max_open)"));
            }
        }
        let key = text("key")?
            .ok_or("sessions: `key` must name the field a session belongs to (a user id, say)")?;
        let state =
            text("state")?.ok_or("sessions: `state` must name the field the states go into")?;
        let id = text("id")?;
        let declared = |name: &str, what: &str| -> Result<usize, String> {
            let slot = schema
                .slot(name)
                .ok_or_else(|| format!("sessions: {what} `{name}` is not declared in [event]"))?;
            if slot == schema.id_slot() || slot == schema.time_slot() {
                return Err(format!(
                    "sessions: {what} `{name}` is the record's id or time, which the runner sets"
                ));
            }
            Ok(slot)
        };
        let state_slot = declared(&state, "state field")?;
        let key_slot = declared(&key, "key field")?;
        let id_slot = id.as_deref().map(|n| declared(n, "id field")).transpose()?;
        for (slot, what) in [(Some(state_slot), "state"), (id_slot, "id")] {
            if let Some(slot) = slot {
                if schema.fields()[slot].spec.ty != FieldType::String {
                    return Err(format!(
                        "sessions: the {what} field `{}` must be declared a string",
                        schema.fields()[slot].name
                    ));
                }
            }
        }
        if state_slot == key_slot || Some(state_slot) == id_slot || Some(key_slot) == id_slot {
            return Err("sessions: key, id and state must be three different fields".into());
        }
        let provided: Vec<&str> = [Some(state.as_str()), id.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        for p in &provided {
            if events.contains_key(*p) {
                return Err(format!(
                    "sessions: `{p}` is set by the session; leave it out of the events map"
                ));
            }
        }
        let plan = EventPlan::from_map_with(events, schema, &provided)?;
        let key_index = plan.index_of(&key).ok_or_else(|| {
            format!("sessions: the key field `{key}` must be drawn in the events map")
        })?;

        // States: every name the steps and the start mention, in the order first seen.
        let steps = spec.get("steps").and_then(|s| s.read_lock::<Map>().map(|m| m.clone())).ok_or("sessions: `steps` must map each state to its next states and their weights, e.g. #{ view: #{ click: 0.3, end: 0.7 } }")?;
        let mut states: Vec<String> = steps.keys().map(|k| k.to_string()).collect();
        if states.iter().any(|s| s == END) {
            return Err(format!(
                "sessions: `{END}` ends a session; it has no steps of its own"
            ));
        }
        let start = match spec.get("start") {
            Some(v) if v.is_string() => weights_of(&Map::from_iter([(v.to_string().into(), Dynamic::from(1.0))]), &mut states, "start")?,
            Some(v) if v.is_map() => weights_of(&v.clone().cast::<Map>(), &mut states, "start")?,
            _ => return Err("sessions: `start` is the first state (\"view\") or a map of first states by weight".into()),
        };
        if start.targets.iter().any(Option::is_none) {
            return Err(format!("sessions: a session cannot start with `{END}`"));
        }
        let mut next = Vec::new();
        let mut i = 0;
        while i < states.len() {
            let name = states[i].clone();
            let Some(m) = steps.get(name.as_str()) else {
                return Err(format!("sessions: state `{name}` is reached but `steps` does not say where it goes (add `{name}: #{{ ..., end: w }}`)"));
            };
            let m = m.read_lock::<Map>().map(|m| m.clone()).ok_or_else(|| {
                format!("sessions: steps.{name} must be a map of next states to weights")
            })?;
            next.push(weights_of(&m, &mut states, &format!("steps.{name}"))?);
            i += 1;
        }
        let mean_steps = expected_steps(&start, &next, &states)?;

        let think = match spec.get("think") {
            Some(v) if v.is::<Distribution>() => v.clone().cast::<Distribution>(),
            Some(v) if v.is_float() || v.is_int() => Distribution::constant_number(v.as_float().unwrap_or_else(|_| v.as_int().unwrap_or(0) as f64)),
            _ => return Err("sessions: `think` is the time between two steps in seconds: a number or a distribution (exponential(5.0), uniform(1, 10), ...)".into()),
        };
        if !think.is_numeric() {
            return Err("sessions: `think` must draw numbers (seconds)".into());
        }
        let mean_think_ms = think.mean().max(0.0) * 1000.0;
        let max_open = match spec.get("max_open") {
            None => DEFAULT_MAX_OPEN,
            Some(v) => match v.as_int() {
                Ok(n) if (1..=10_000_000).contains(&n) => n as usize,
                _ => {
                    return Err(format!(
                        "sessions: `max_open` is a whole number from 1 to 10,000,000, got {v}"
                    ))
                }
            },
        };

        // The state and id are not in the plan (they are `provided`): the first step draws the rest.
        let first_skip = vec![false; plan.len()];
        let mut carried = vec![key_slot];
        let mut kept: Vec<(usize, Vec<usize>)> = Vec::new();
        if let Some(keep) = spec.get("keep") {
            let keep = keep.read_lock::<Map>().map(|m| m.clone()).ok_or(
                "sessions: `keep` maps a field to the states in which it keeps the session's value",
            )?;
            for (field, in_states) in keep {
                let index = plan.index_of(&field).ok_or_else(|| {
                    format!("sessions: keep.{field}: the events map does not draw `{field}`")
                })?;
                let slot = schema
                    .slot(&field)
                    .ok_or_else(|| format!("sessions: keep.{field} is not declared in [event]"))?;
                let list: Vec<Dynamic> = if in_states.is_array() {
                    in_states.cast::<rhai::Array>()
                } else {
                    vec![in_states]
                };
                let mut at = Vec::new();
                for s in list {
                    let name = s.to_string();
                    let si = states.iter().position(|x| *x == name).ok_or_else(|| format!("sessions: keep.{field} names state `{name}`, which the steps never reach"))?;
                    at.push(si);
                }
                carried.push(slot);
                kept.push((index, at));
            }
        }
        let mut step_skip = vec![first_skip.clone(); states.len()];
        for (s, skip) in step_skip.iter_mut().enumerate() {
            skip[key_index] = true;
            for (index, at) in &kept {
                if at.contains(&s) {
                    skip[*index] = true;
                }
            }
        }
        Ok(SessionPlan {
            plan,
            state_slot,
            id_slot,
            states,
            start,
            next,
            think,
            max_open,
            first_skip,
            step_skip,
            carried,
            mean_think_ms,
            mean_steps,
            fingerprint,
        })
    }

    /// The states, in the order the description first names them.
    pub fn states(&self) -> &[String] {
        &self.states
    }
}

/// A map of state names to weights as a choice; names not seen before are added to `states`.
fn weights_of(m: &Map, states: &mut Vec<String>, what: &str) -> Result<Choice, String> {
    let mut weights = Vec::new();
    let mut targets = Vec::new();
    for (name, w) in m {
        let w = w
            .as_float()
            .or_else(|_| w.as_int().map(|i| i as f64))
            .map_err(|t| format!("sessions: {what}.{name}: a weight is a number, not a {t}"))?;
        if !w.is_finite() || w < 0.0 {
            return Err(format!(
                "sessions: {what}.{name}: a weight is finite and not negative, got {w}"
            ));
        }
        let target = match name.as_str() {
            END => None,
            s => Some(states.iter().position(|x| x == s).unwrap_or_else(|| {
                states.push(s.to_string());
                states.len() - 1
            })),
        };
        weights.push(w);
        targets.push(target);
    }
    if !weights.iter().any(|w| *w > 0.0) {
        return Err(format!(
            "sessions: {what} has no state with a weight above 0"
        ));
    }
    let table =
        WeightedAliasIndex::new(weights.clone()).map_err(|e| format!("sessions: {what}: {e}"))?;
    Ok(Choice {
        table,
        weights,
        targets,
    })
}

/// The mean number of steps of a session: the expected visits of an absorbing Markov chain,
/// x = (I - Q)^-T s, summed. A chain some state cannot leave to `end` from has no finite mean.
fn expected_steps(start: &Choice, next: &[Choice], states: &[String]) -> Result<f64, String> {
    let n = next.len();
    let probabilities = |c: &Choice| {
        let mut p = vec![0.0; n];
        let total: f64 = c.weights.iter().sum();
        for (w, t) in c.weights.iter().zip(&c.targets) {
            if let Some(t) = t {
                p[*t] += w / total;
            }
        }
        p
    };
    // Rows of (I - Q)^T, augmented with the start distribution.
    let mut a = vec![vec![0.0; n + 1]; n];
    for (i, c) in next.iter().enumerate() {
        for (j, q) in probabilities(c).into_iter().enumerate() {
            a[j][i] -= q;
        }
        a[i][i] += 1.0;
    }
    for (row, s) in a.iter_mut().zip(probabilities(start)) {
        row[n] = s;
    }
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|x, y| a[*x][col].abs().total_cmp(&a[*y][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() < 1e-12 {
            return Err(format!(
                "sessions: from state `{}` a session never reaches `{END}`",
                states[col]
            ));
        }
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (_, row) in a.iter_mut().enumerate().filter(|(r, _)| *r != col) {
            let f = row[col] / pivot_row[col];
            for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * p;
            }
        }
    }
    let visits: f64 = (0..n).map(|i| a[i][n] / a[i][i]).sum();
    if !visits.is_finite() || visits <= 0.0 || visits > 1e9 {
        return Err(format!(
            "sessions: a session never reaches `{END}` (mean steps {visits})"
        ));
    }
    Ok(visits)
}

/// One open session.
struct Open {
    state: usize,
    id: String,
    /// Values of [`SessionPlan::carried`], once the first step has drawn them.
    carried: Option<Vec<Value>>,
}

/// The open sessions of one generator, and the session clock.
pub struct Sessions {
    plan: Arc<SessionPlan>,
    open: Vec<Open>,
    free: Vec<usize>,
    /// (time of the next step, slot), earliest first.
    due: BinaryHeap<Reverse<(i64, usize)>>,
    live: usize,
    target: usize,
    /// The session clock: the time of the latest step handed out, ms.
    clock: Option<i64>,
    id_prefix: String,
    next_id: u64,
}

impl Sessions {
    pub fn new(plan: Arc<SessionPlan>, id_prefix: &str) -> Sessions {
        Sessions {
            plan,
            open: Vec::new(),
            free: Vec::new(),
            due: BinaryHeap::new(),
            live: 0,
            target: 0,
            clock: None,
            id_prefix: id_prefix.to_string(),
            next_id: 0,
        }
    }

    /// Whether these sessions follow `plan`: the same description, compiled again or not (a
    /// reload with a new description starts afresh).
    pub fn follows(&self, plan: &Arc<SessionPlan>) -> bool {
        self.plan.fingerprint == plan.fingerprint
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.live
    }

    /// Sets how many sessions stay open for the next records: Little's law at `rate` (events/s;
    /// 0 = unpaced: a thousand), at most `max_open`, scaled down while the session clock lags the
    /// wall clock `now_ms` and up while it runs ahead. Opens the missing ones.
    pub fn prepare(&mut self, rng: &mut SmallRng, now_ms: i64, rate: f64) {
        let clock = *self.clock.get_or_insert(now_ms);
        let max = self.plan.max_open;
        self.target = if rate > 0.0 {
            let little = rate * self.plan.mean_think_ms / 1000.0;
            let drift = ((now_ms - clock) as f64 / DRIFT_HORIZON_MS).clamp(-0.7, 0.7);
            ((little * (-drift).exp()).round() as usize).clamp(1, max)
        } else {
            UNPACED_OPEN.min(max)
        };
        while self.live < self.target {
            let at = clock + self.think_ms(rng);
            self.start(rng, at);
        }
    }

    fn think_ms(&self, rng: &mut SmallRng) -> i64 {
        (self.plan.think.sample_number(rng).max(0.0) * 1000.0).round() as i64
    }

    fn start(&mut self, rng: &mut SmallRng, at: i64) {
        self.next_id += 1;
        let open = Open {
            state: self
                .plan
                .start
                .draw(rng)
                .expect("checked: no session starts with end"),
            id: format!("{}-s{:x}", self.id_prefix, self.next_id),
            carried: None,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.open[s] = open;
                s
            }
            None => {
                self.open.push(open);
                self.open.len() - 1
            }
        };
        self.live += 1;
        self.due.push(Reverse((at, slot)));
    }

    /// The next step of the session due first, as a record timed at that step (never later than
    /// `now_ms`); the session then waits a think time, or ends and another opens in its place.
    pub fn next(
        &mut self,
        rng: &mut SmallRng,
        seq: u64,
        now_ms: i64,
        overrides: &[Override],
    ) -> Record {
        if self.due.is_empty() {
            self.prepare(rng, now_ms, 0.0);
        }
        let Reverse((at, slot)) = self.due.pop().expect("prepare opens at least one session");
        let at = at.max(now_ms - MAX_LAG_MS);
        self.clock = Some(self.clock.map_or(at, |c| c.max(at)));
        let Sessions { plan, open, .. } = self;
        let open = &mut open[slot];
        let mut r = Record::new(plan.plan.schema());
        r.set_time_ms(at.min(now_ms));
        r.set(
            plan.state_slot,
            Value::Text(plan.states[open.state].as_str().into()),
        );
        if let Some(id) = plan.id_slot {
            r.set(id, Value::Text(open.id.as_str().into()));
        }
        let skip = match &open.carried {
            Some(values) => {
                for (slot, v) in plan.carried.iter().zip(values) {
                    r.set(*slot, v.clone());
                }
                &plan.step_skip[open.state]
            }
            None => &plan.first_skip,
        };
        plan.plan.draw(rng, seq, &mut r, Some(skip), overrides);
        // Carried values are updated in place: a kept one is unchanged, a redrawn one reuses
        // the string it replaces.
        match &mut open.carried {
            Some(values) => {
                for (slot, v) in plan.carried.iter().zip(values.iter_mut()) {
                    if v != r.get(*slot) {
                        v.clone_from(r.get(*slot));
                    }
                }
            }
            None => open.carried = Some(plan.carried.iter().map(|s| r.get(*s).clone()).collect()),
        }
        let next = plan.next[open.state].draw(rng);
        match next {
            Some(state) => {
                open.state = state;
                let wait = self.think_ms(rng);
                self.due.push(Reverse((at + wait, slot)));
            }
            None => {
                open.carried = None;
                self.free.push(slot);
                self.live -= 1;
                if self.live < self.target {
                    let wait = self.think_ms(rng);
                    self.start(rng, at + wait);
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::schema_of;
    use rand::SeedableRng;

    fn plan(script: &str) -> Result<SessionPlan, String> {
        let schema = schema_of(
            "id = \"id\"\ntime = \"t\"\n[fields]\nid = \"string\"\nt = \"timestamp\"\nuser = \"string\"\nitem = \"string\"\nkind = \"string\"\nsession = \"string?\"",
        );
        let mut engine = Engine::new();
        super::super::plan::register(&mut engine);
        register(&mut engine);
        let spec: SessionsSpec = engine.eval(script).map_err(|e| e.to_string())?;
        SessionPlan::compile(spec, &schema)
    }

    const FUNNEL: &str = r#"sessions(#{ user: zipf("u", 100, 1.0), item: zipf("i", 50, 1.0) }, #{
        key: "user", id: "session", state: "kind", start: "view",
        steps: #{ view: #{ view: 0.25, cart: 0.25, end: 0.5 }, cart: #{ buy: 0.5, end: 0.5 }, buy: #{ end: 1.0 } },
        think: 2.0, keep: #{ item: ["cart", "buy"] }, max_open: 500 })"#;

    #[test]
    fn mean_steps_come_from_the_state_machine() {
        // view repeats with 1/4: 4/3 views; cart after 1/4 of views: 1/3; buy after half: 1/6.
        let p = plan(FUNNEL).unwrap();
        assert!(
            (p.mean_steps - (4.0 / 3.0 + 1.0 / 3.0 + 1.0 / 6.0)).abs() < 1e-9,
            "{}",
            p.mean_steps
        );
        assert_eq!(p.mean_think_ms, 2000.0);
    }

    #[test]
    fn a_session_that_never_ends_is_refused() {
        let err = plan(&FUNNEL.replace("buy: #{ end: 1.0 }", "buy: #{ buy: 1.0 }")).unwrap_err();
        assert!(err.contains("never reaches `end`"), "{err}");
    }

    #[test]
    fn bad_descriptions_say_what_is_wrong() {
        for (from, to, says) in [
            (
                "state: \"kind\"",
                "state: \"nope\"",
                "state field `nope` is not declared",
            ),
            (
                "cart: #{ buy: 0.5, end: 0.5 }, ",
                "",
                "state `cart` is reached but `steps` does not say",
            ),
            (
                "keep: #{ item: [\"cart\", \"buy\"] }",
                "keep: #{ item: [\"gone\"] }",
                "names state `gone`",
            ),
            (
                "think: 2.0",
                "think: \"soon\"",
                "`think` is the time between two steps",
            ),
            (
                "key: \"user\"",
                "key: \"item\", colour: 1",
                "unknown key `colour`",
            ),
        ] {
            let err = plan(&FUNNEL.replace(from, to))
                .err()
                .unwrap_or_else(|| panic!("{to} accepted"));
            assert!(err.contains(says), "{to}: {err}");
        }
    }

    #[test]
    fn the_same_description_compiled_again_keeps_the_open_sessions() {
        let mut s = Sessions::new(Arc::new(plan(FUNNEL).unwrap()), "g");
        assert!(
            s.follows(&Arc::new(plan(FUNNEL).unwrap())),
            "a reload of an unchanged script"
        );
        assert!(
            !s.follows(&Arc::new(
                plan(&FUNNEL.replace("think: 2.0", "think: 3.0")).unwrap()
            )),
            "a changed think time"
        );
        s.prepare(&mut SmallRng::seed_from_u64(1), 0, 100.0);
        assert!(s.open() > 0);
    }

    #[test]
    fn steps_come_in_time_order_and_kept_fields_stay() {
        let p = Arc::new(plan(FUNNEL).unwrap());
        let mut s = Sessions::new(p.clone(), "g");
        let mut rng = SmallRng::seed_from_u64(1);
        let mut now = 1_000_000;
        let mut last = 0;
        let mut sessions: std::collections::HashMap<String, (String, String)> = Default::default();
        for _ in 0..200 {
            s.prepare(&mut rng, now, 100.0);
            for seq in 0..10 {
                let r = s.next(&mut rng, seq, now, &[]);
                assert!(
                    r.time_ms() >= last && r.time_ms() <= now,
                    "time order, never ahead of now"
                );
                last = r.time_ms();
                let text = |f: &str| r.field(f).unwrap().as_text().unwrap().to_string();
                let (user, item) = sessions
                    .entry(text("session"))
                    .or_insert_with(|| (text("user"), text("item")));
                assert_eq!(*user, text("user"), "one user per session");
                if text("kind") != "view" {
                    assert_eq!(*item, text("item"), "cart and buy keep the item");
                } else {
                    *item = text("item");
                }
            }
            now += 100;
        }
        // Little's law: 100 events/s × 2 s of thinking.
        assert!((150..=250).contains(&s.open()), "{} open", s.open());
    }
}
