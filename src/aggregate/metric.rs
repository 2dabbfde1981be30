//! A metric definition (`[[metric]]` in the pipeline file) and its compiled form.

use super::lookup::Lookups;
use super::reducer::{Input, ReducerKind, Report, State, OTHER_KEY};
use super::script::{self, FieldValue, Filter, Selector, Selectors};
use super::session::{Closed, Measure, SessionConfig, Spec};
use super::window::Window;
use crate::base::de;
use crate::event::{Record, Schema, DEFAULT_MAX_LEN};
use crate::script::{MapFields, ScriptError};
use crate::store::StateJson;
use rhai::{CallFnOptions, Dynamic, Engine, Scope, AST};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[[metric]]`: one windowed aggregation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Unique name; also the key of its state in the store.
    pub name: String,
    /// Rhai script describing filter / key / value (or a custom reducer); relative to the pipeline file.
    pub script: PathBuf,
    /// count, sum, avg, min, max, distinct, top_k, bottom_k, mean_per_key, ratio, funnel,
    /// quantile, histogram or custom.
    pub reducer: ReducerKind,
    /// The quantiles a `quantile` reducer reports, each in [0, 1]: `[0.5, 0.95, 0.99]` reports
    /// `{ p50, p95, p99 }`; a single one (`[0.95]`) reports the number itself.
    #[serde(default = "default_quantiles")]
    pub quantiles: Vec<f64>,
    /// A `histogram`'s bucket bounds, increasing: `[10, 50]` counts values below 10, from 10 to
    /// below 50, and from 50 up.
    #[serde(default)]
    pub buckets: Vec<f64>,
    /// A funnel's stages in order (the values of its `value` selector), e.g.
    /// `["view", "add_to_cart", "purchase"]`; funnel only.
    #[serde(default)]
    pub stages: Vec<String>,
    /// How many keys top_k / bottom_k report.
    #[serde(default = "default_k", deserialize_with = "de::number")]
    pub k: usize,
    /// Window length.
    #[serde(default = "default_window", deserialize_with = "de::duration")]
    pub window: Duration,
    /// How often the window moves; unset means tumbling (slide = window).
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub slide: Option<Duration>,
    /// `event` (the event's timestamp) or `processing` (when the runner sees it).
    #[serde(default)]
    pub time: TimeMode,
    /// How far behind the newest event an event may be and still count (event time only).
    #[serde(default = "default_lateness", deserialize_with = "de::duration")]
    pub lateness: Duration,
    /// Shown beside the metric on the dashboard and in `runner metrics`.
    #[serde(default)]
    pub description: String,
    /// What the value counts, shown on the dashboard's y axis (e.g. "events", "USD", "users").
    #[serde(default)]
    pub unit: String,
    /// Distinct counts stay exact up to this many values per partial, then switch to a
    /// HyperLogLog sketch (about 1.6% standard error); quantiles up to this many or 64, then
    /// switch to buckets (1 % relative error).
    #[serde(default = "default_exact_limit", deserialize_with = "de::number")]
    pub exact_limit: usize,
    /// A grouped metric keeps at most this many keys per pane and partition; records of further
    /// keys are counted under the key `__other__` (left out of top_k / bottom_k rankings), so a
    /// flood of distinct keys cannot make a pane too large to store.
    #[serde(default = "default_max_groups", deserialize_with = "de::number")]
    pub max_groups: usize,
    /// Makes it a session metric: `session = { gap = "30s", measure = "duration" }` reduces the
    /// sessions of the script's `key` (its records while each comes within `gap` of the one
    /// before), each once it has closed, reported per `window` of closing time. The key should
    /// be the Kafka key or fixed by it (a session id of one user, the user being the Kafka
    /// key), so a session's records are in one partition; otherwise each partition sees its
    /// own sessions of the key. At most `max_groups` sessions are open per partition.
    #[serde(default)]
    pub session: Option<SessionConfig>,
}

fn default_quantiles() -> Vec<f64> {
    vec![0.5, 0.95, 0.99]
}

fn default_max_groups() -> usize {
    50_000
}

fn default_exact_limit() -> usize {
    10_000
}

fn default_k() -> usize {
    1
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_lateness() -> Duration {
    Duration::from_secs(5)
}

/// Which clock places an event in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// The event's own timestamp: replays land in the same windows, so results are exact.
    #[default]
    Event,
    /// The time the runner processes the event.
    Processing,
}

impl MetricConfig {
    /// The window and slide as pane arithmetic.
    pub fn window(&self) -> Result<Window, String> {
        Window::new(self.window, self.slide.unwrap_or(self.window))
            .map_err(|e| format!("metric {:?}: {e}", self.name))
    }
}

/// A metric's partial state for one pane and partition.
#[derive(Debug, Clone)]
pub enum Partial {
    Builtin(State),
    Custom(Dynamic),
}

/// A compiled metric: its config, window and selectors, ready to reduce events.
#[derive(Clone)]
pub struct Metric {
    pub config: MetricConfig,
    pub window: Window,
    /// Names this metric's stored partials: the name plus what fixes the state's shape, so a
    /// redefined metric starts fresh instead of merging with partials of another shape.
    state_key: String,
    selectors: Selectors,
    engine: Arc<Engine>,
    ast: Arc<AST>,
    /// The fields this metric's script functions may read from a record map.
    map_fields: MapFields,
    /// Decoded partials of its settled panes, shared by every reader of this definition.
    pub(super) settled: Arc<super::query::SettledPanes>,
    /// Whether a pane reached `max_groups` (said once in the log).
    overflowed: Arc<std::sync::atomic::AtomicBool>,
    /// How its merged state is reported.
    report: Report,
}

impl Metric {
    /// Compiles the metric's script and checks it fits the reducer.
    pub fn load(
        config: &MetricConfig,
        schema: &Schema,
        lookups: &Lookups,
    ) -> Result<Metric, ScriptError> {
        let source = crate::script::read_script(&config.script)?;
        Self::load_text(config, source, schema, lookups)
    }

    /// [`Metric::load`] with the script's text given (a draft not saved yet); errors still name
    /// `config.script`, where the text is meant to be saved.
    pub fn load_text(
        config: &MetricConfig,
        source: String,
        schema: &Schema,
        lookups: &Lookups,
    ) -> Result<Metric, ScriptError> {
        let path = &config.script;
        let window = config
            .window()
            .map_err(|m| ScriptError::whole_file(path, m))?;
        let (engine, ast) = script::compile_text(path, &source)?;
        let has = |name: &str, params: usize| {
            ast.iter_functions()
                .any(|f| f.name == name && f.params.len() == params)
        };
        let selectors = if config.reducer == ReducerKind::Custom {
            for (f, n, signature) in [
                ("init", 0, "init()"),
                ("update", 1, "update(e)"),
                ("merge", 1, "merge(other)"),
                ("finish", 0, "finish()"),
            ] {
                if !has(f, n) {
                    return Err(ScriptError::whole_file(
                        path,
                        format!("a custom reducer must define fn {signature}"),
                    ));
                }
            }
            Selectors {
                filter: Filter::All,
                key: None,
                value: None,
                ratio: None,
                having: None,
            }
        } else {
            let spec: rhai::Map = engine
                .eval_ast_with_scope(&mut Scope::new(), &ast)
                .map_err(|e| ScriptError::from_eval(path, &e))?;
            let s = script::selectors(path, spec, schema, lookups)?;
            if config.reducer.needs_key() && s.key.is_none() {
                return Err(ScriptError::whole_file(
                    path,
                    format!("reducer {:?} needs a `key`", config.reducer),
                ));
            }
            if (config.reducer == ReducerKind::Ratio) != s.ratio.is_some() {
                return Err(ScriptError::whole_file(path, "reducer \"ratio\" takes `numerator` and `denominator` (filters), and only it does".to_string()));
            }
            if (config.reducer == ReducerKind::Funnel) == config.stages.is_empty()
                || config.stages.len() > 64
            {
                return Err(ScriptError::whole_file(path, format!("metric {:?}: `stages` (1 to 64 stage names, in order) goes with reducer \"funnel\", and only with it", config.name)));
            }
            if let Some(problem) = session_settings(config, &s) {
                return Err(ScriptError::whole_file(
                    path,
                    format!("metric {:?}: {problem}", config.name),
                ));
            }
            if let Some(problem) = reducer_settings(config) {
                return Err(ScriptError::whole_file(
                    path,
                    format!("metric {:?}: {problem}", config.name),
                ));
            }
            if config.reducer.needs_value() && s.value.is_none() && config.session.is_none() {
                return Err(ScriptError::whole_file(
                    path,
                    format!("reducer {:?} needs a `value`", config.reducer),
                ));
            }
            for (name, sel) in [("key", &s.key), ("value", &s.value)] {
                if let Some(Selector::Script(f)) = sel {
                    if !has(f.fn_name(), 1) {
                        return Err(ScriptError::whole_file(
                            path,
                            format!(
                                "`{name}` names fn {}(e), which the script does not define",
                                f.fn_name()
                            ),
                        ));
                    }
                }
            }
            s
        };
        // mean_per_key changed its stored state (event count + distinct keys, once a map per
        // key): a new key, so states in the old form are never merged with the new.
        // A funnel's bits mean its stages: other stages, other states.
        let format = match config.reducer {
            ReducerKind::MeanPerKey => "/2".to_string(),
            ReducerKind::Funnel => format!("/{}", config.stages.join(",")),
            ReducerKind::Histogram => format!("/{:?}", config.buckets),
            _ => String::new(),
        };
        // A session metric's partials count sessions of one gap, bound and measure.
        let format = match &config.session {
            Some(c) => format!(
                "{format}/session:{}:{}:{:?}:{}",
                c.gap.as_millis(),
                c.max_length.as_millis(),
                c.measure,
                selectors.having.is_some()
            ),
            None => format,
        };
        let shape = format!(
            "{:?}/{}/{}/{:?}/{}{format}",
            config.reducer,
            window.size_ms,
            window.slide_ms,
            config.time,
            selectors.key.is_some()
        );
        let state_key = format!(
            "{}#{:08x}",
            config.name,
            crate::base::fnv1a(shape.as_bytes()) as u32
        );
        let map_fields = MapFields::of_source(&source, schema);
        Ok(Metric {
            config: config.clone(),
            window,
            state_key,
            selectors,
            engine: Arc::new(engine),
            ast: Arc::new(ast),
            map_fields,
            settled: Arc::default(),
            overflowed: Arc::default(),
            report: Report {
                k: config.k,
                stages: config.stages.clone(),
                buckets: bucket_labels(&config.buckets),
                ..Report::of(config.reducer).with_quantiles(&config.quantiles)
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The key of this metric's partials in the store.
    pub fn state_key(&self) -> &str {
        &self.state_key
    }

    /// Whether reducing an event calls into the script (so the event must be a script map).
    pub fn needs_event_map(&self) -> bool {
        self.config.reducer == ReducerKind::Custom
            || matches!(self.selectors.filter, Filter::Script(_))
            || matches!(self.selectors.key, Some(Selector::Script(_)))
            || matches!(self.selectors.value, Some(Selector::Script(_)))
            || matches!(&self.selectors.ratio, Some((a, b)) if matches!(a, Filter::Script(_)) || matches!(b, Filter::Script(_)))
            || matches!(self.selectors.having, Some(Filter::Script(_)))
    }

    /// A session metric's settings in milliseconds and its measure; `None` for a metric of
    /// records.
    pub fn session(&self) -> Option<(Spec, Measure)> {
        self.config.session.as_ref().map(|c| {
            (
                Spec {
                    gap_ms: c.gap.as_millis() as i64,
                    max_length_ms: c.max_length.as_millis() as i64,
                    lateness_ms: self.config.lateness.as_millis() as i64,
                    max_open: self.config.max_groups,
                },
                c.measure,
            )
        })
    }

    /// What a record gives a session metric: its session's key (none: the record has no key
    /// or fails the filter) and whether it passes the `having` filter.
    pub fn session_record<'a>(
        &'a self,
        event: &'a Record,
        map: Option<&Dynamic>,
    ) -> Result<Option<(std::borrow::Cow<'a, str>, bool)>, String> {
        use std::borrow::Cow;
        if !self.matches(&self.selectors.filter, event, map)? {
            return Ok(None);
        }
        let key = match &self.selectors.key {
            None => return Ok(None),
            Some(Selector::Script(f)) => Cow::Owned(self.call_ptr(f, map)?.to_string()),
            Some(sel) => match sel.read(event) {
                Some(FieldValue::Text(t)) => Cow::Borrowed(t),
                Some(FieldValue::Number(n)) => Cow::Owned(n.to_string()),
                Some(FieldValue::Missing) | None => return Ok(None),
            },
        };
        if key.len() > DEFAULT_MAX_LEN {
            return Err(format!(
                "the session key is {} bytes long, more than {DEFAULT_MAX_LEN}: left out of this metric",
                key.len()
            ));
        }
        let marked = match &self.selectors.having {
            Some(f) => self.matches(f, event, map)?,
            None => false,
        };
        Ok(Some((key, marked)))
    }

    /// Adds one closed session to a session metric's partial (unless `having` leaves it out).
    pub fn add_session(&self, partial: &mut Partial, closed: &Closed, measure: Measure) {
        if self.selectors.having.is_some() && !closed.marked {
            return;
        }
        let Partial::Builtin(state) = partial else {
            return;
        };
        let v = closed.value(measure);
        let input = match self.config.reducer {
            ReducerKind::Count => Input::Event,
            ReducerKind::Histogram => {
                Input::Bucket(self.config.buckets.partition_point(|bound| *bound <= v) as u32)
            }
            _ => Input::Number(v),
        };
        state.add(self.config.reducer, None, input, self.config.exact_limit);
    }

    /// The fields its record maps need (when [`Self::needs_event_map`]).
    pub fn map_fields(&self) -> &MapFields {
        &self.map_fields
    }

    /// A fresh partial state.
    pub fn empty(&self) -> Result<Partial, String> {
        match self.config.reducer {
            ReducerKind::Custom => self.call(None, "init", ()).map(Partial::Custom),
            // A session metric's key names sessions, not groups.
            kind => Ok(Partial::Builtin(State::new(
                kind,
                self.selectors.key.is_some() && self.config.session.is_none(),
            ))),
        }
    }

    /// Adds one event. `map` is the event as a script map, present when [`Self::needs_event_map`].
    pub fn add(
        &self,
        partial: &mut Partial,
        event: &Record,
        map: Option<&Dynamic>,
    ) -> Result<(), String> {
        match partial {
            Partial::Custom(state) => {
                // update() changes `this`; its return value is not used.
                let _ = self.call(
                    Some(state),
                    "update",
                    (map.cloned().unwrap_or(Dynamic::UNIT),),
                )?;
                Ok(())
            }
            Partial::Builtin(state) => {
                if !self.matches(&self.selectors.filter, event, map)? {
                    return Ok(());
                }
                let matches = match &self.selectors.ratio {
                    Some((num, den)) => Some(Input::Matches {
                        num: self.matches(num, event, map)?,
                        den: self.matches(den, event, map)?,
                    }),
                    None => None,
                };
                let kind = self.config.reducer;
                let key_owned;
                let key = match &self.selectors.key {
                    None => None,
                    Some(Selector::Script(f)) => {
                        key_owned = self.call_ptr(f, map)?.to_string();
                        Some(key_owned.as_str())
                    }
                    Some(sel) => match sel.read(event) {
                        Some(FieldValue::Text(t)) => Some(t),
                        Some(FieldValue::Number(n)) => {
                            key_owned = n.to_string();
                            Some(key_owned.as_str())
                        }
                        Some(FieldValue::Missing) | None => return Ok(()),
                    },
                };
                // A key past the limit of a declared string (a script's key can be any length)
                // is this record's error for this metric; a key past `max_groups` is `__other__`.
                let key = match key {
                    Some(k) if k.len() > DEFAULT_MAX_LEN => return Err(format!("the key is {} bytes long, more than {DEFAULT_MAX_LEN}: left out of this metric", k.len())),
                    Some(k) if !state.has_room(k, self.config.max_groups) => {
                        if !self.overflowed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::warn!(metric = self.name(), max_groups = self.config.max_groups, "a pane of this metric reached max_groups; records of further keys are counted under {OTHER_KEY:?}");
                        }
                        Some(OTHER_KEY)
                    }
                    other => other,
                };
                let value_owned;
                let input = match &self.selectors.value {
                    None => matches.unwrap_or(Input::Event),
                    Some(Selector::Script(f)) => {
                        let v = self.call_ptr(f, map)?;
                        if let Ok(n) = v.as_float() {
                            Input::Number(n)
                        } else if let Ok(i) = v.as_int() {
                            Input::Number(i as f64)
                        } else if v.is_unit() {
                            return Ok(());
                        } else {
                            value_owned = v.to_string();
                            Input::Text(&value_owned)
                        }
                    }
                    Some(sel) => match sel.read(event) {
                        Some(FieldValue::Text(t)) => Input::Text(t),
                        Some(FieldValue::Number(n)) => Input::Number(n),
                        Some(FieldValue::Missing) | None => return Ok(()),
                    },
                };
                if kind.needs_value() && matches!(input, Input::Event) {
                    return Ok(());
                }
                // No stored state may hold NaN or infinity (JSON has neither: it would be stored
                // as `null` and never read back), so such a value is this metric's error for
                // this record, counted like any script error, and the record is left out.
                if let Input::Number(n) = input {
                    if !n.is_finite() {
                        return Err(format!(
                            "the value is {n}, not a finite number: left out of this metric"
                        ));
                    }
                }
                let input = match (kind, input) {
                    (ReducerKind::Funnel, Input::Text(stage)) => {
                        match self.config.stages.iter().position(|s| s == stage) {
                            Some(i) => Input::Stage(i as u32),
                            None => return Ok(()),
                        }
                    }
                    (ReducerKind::Funnel, _) => return Ok(()),
                    (ReducerKind::Histogram, Input::Number(v)) => Input::Bucket(
                        self.config.buckets.partition_point(|bound| *bound <= v) as u32,
                    ),
                    (ReducerKind::Histogram, _) => return Ok(()),
                    (_, input) => input,
                };
                state.add(kind, key, input, self.config.exact_limit);
                Ok(())
            }
        }
    }

    /// What the metric's script makes of one record, for the workbench's samples: whether it
    /// passes the filter, and the key and value its selectors give (null where it has none), or
    /// the error the record meets. A custom reducer's `update` sees every record.
    pub fn explain(&self, event: &Record) -> Value {
        let map = self
            .needs_event_map()
            .then(|| crate::script::record_map_of(event, &self.map_fields));
        let map = map.as_ref();
        let s = &self.selectors;
        let selected = |sel: &Option<Selector>| -> Result<Value, String> {
            Ok(match sel {
                None => Value::Null,
                Some(Selector::Script(f)) => {
                    rhai::serde::from_dynamic(&self.call_ptr(f, map)?).unwrap_or(Value::Null)
                }
                Some(sel) => match sel.read(event) {
                    Some(FieldValue::Text(t)) => t.into(),
                    Some(FieldValue::Number(n)) => serde_json::Number::from_f64(n)
                        .map(Value::Number)
                        .unwrap_or_else(|| n.to_string().into()),
                    Some(FieldValue::Missing) | None => Value::Null,
                },
            })
        };
        let explained = || -> Result<Value, String> {
            if self.config.reducer == ReducerKind::Custom {
                return Ok(serde_json::json!({ "passes": true }));
            }
            let passes = self.matches(&s.filter, event, map)?;
            Ok(match passes {
                false => serde_json::json!({ "passes": false }),
                true => serde_json::json!({
                    "passes": true,
                    "key": selected(&s.key)?,
                    "value": selected(&s.value)?,
                }),
            })
        };
        explained().unwrap_or_else(|error| serde_json::json!({ "error": error }))
    }

    /// Whether a record passes a filter.
    #[inline]
    fn matches(
        &self,
        filter: &Filter,
        event: &Record,
        map: Option<&Dynamic>,
    ) -> Result<bool, String> {
        Ok(match filter {
            Filter::All => true,
            Filter::FieldIn(field, values) => {
                let v = field.get(event);
                values.iter().any(|w| w.matches(v))
            }
            Filter::Script(f) => self
                .call_ptr(f, map)?
                .as_bool()
                .map_err(|t| format!("filter returned a {t}, not a bool"))?,
        })
    }

    /// Folds `other` into `into`.
    pub fn merge(&self, into: &mut Partial, other: &Partial) -> Result<(), String> {
        match (into, other) {
            (Partial::Builtin(a), Partial::Builtin(b)) => a.merge(b, self.config.exact_limit),
            (Partial::Custom(a), Partial::Custom(b)) => {
                self.call(Some(a), "merge", (b.clone(),)).map(|_| ())
            }
            _ => Err("stored state does not match the metric's reducer".into()),
        }
    }

    /// The reported value of a merged state.
    pub fn report(&self, partial: &Partial) -> Result<Value, String> {
        match partial {
            Partial::Builtin(s) => Ok(s.report(&self.report)),
            Partial::Custom(state) => {
                let mut state = state.clone();
                let out = self.call(Some(&mut state), "finish", ())?;
                rhai::serde::from_dynamic::<Value>(&out)
                    .map_err(|e| format!("finish() returned something not JSON-like: {e}"))
            }
        }
    }

    /// Records of a merged state counted under `__other__` (keys past `max_groups`), if any.
    pub fn overflow(&self, partial: &Partial) -> Option<u64> {
        match partial {
            Partial::Builtin(s) => s.other_count(),
            Partial::Custom(_) => None,
        }
    }

    /// The state as stored.
    ///
    /// A built-in state always encodes (its numbers are kept finite). A custom reducer's state
    /// that JSON cannot hold (NaN or infinity, a function pointer) is an error naming the path
    /// to it: stored as `null` it would read back as another state, or not at all.
    pub fn encode(&self, partial: &Partial) -> Result<StateJson, String> {
        match partial {
            Partial::Builtin(s) => Ok(StateJson::encode(s)),
            Partial::Custom(d) => {
                storable("this", d)
                    .map_err(|e| format!("the custom reducer's state cannot be stored: {e}"))?;
                let v = rhai::serde::from_dynamic::<Value>(d)
                    .map_err(|e| format!("the custom reducer's state cannot be stored: {e}"))?;
                Ok(StateJson::encode(&serde_json::json!({ "custom": v })))
            }
        }
    }

    /// A stored state read back.
    pub fn decode(&self, stored: &StateJson) -> Result<Partial, String> {
        match self.config.reducer {
            ReducerKind::Custom => {
                #[derive(Deserialize)]
                struct Stored {
                    custom: Value,
                }
                let inner: Stored = stored
                    .parse()
                    .map_err(|_| "stored state is not a custom reducer's")?;
                rhai::serde::to_dynamic(inner.custom)
                    .map(Partial::Custom)
                    .map_err(|e| e.to_string())
            }
            // Parsed straight from the stored text: through a `Value` first cost as much again.
            _ => stored.parse::<State>().map(Partial::Builtin).map_err(|e| {
                format!(
                    "stored state does not fit reducer {:?}: {e}",
                    self.config.reducer
                )
            }),
        }
    }

    fn call(
        &self,
        this: Option<&mut Dynamic>,
        name: &str,
        args: impl rhai::FuncArgs,
    ) -> Result<Dynamic, String> {
        let mut options = CallFnOptions::new().eval_ast(false);
        if let Some(this) = this {
            options = options.bind_this_ptr(this);
        }
        self.engine
            .call_fn_with_options::<Dynamic>(options, &mut Scope::new(), &self.ast, name, args)
            .map_err(|e| ScriptError::from_eval(&self.config.script, &e).to_string())
    }

    fn call_ptr(&self, f: &rhai::FnPtr, map: Option<&Dynamic>) -> Result<Dynamic, String> {
        self.call(None, f.fn_name(), (map.cloned().unwrap_or(Dynamic::UNIT),))
    }
}

/// What is wrong with a session metric's settings (or with `having` on another), if anything.
fn session_settings(config: &MetricConfig, s: &Selectors) -> Option<String> {
    let Some(session) = &config.session else {
        return s
            .having
            .is_some()
            .then(|| "`having` goes with a session metric (`session = { gap = ... }`)".into());
    };
    if let Some(problem) = session.problem() {
        return Some(problem);
    }
    use ReducerKind::*;
    if !matches!(
        config.reducer,
        Count | Sum | Avg | Min | Max | Quantile | Histogram
    ) {
        return Some(format!("a session metric reduces its sessions with count, sum, avg, min, max, quantile or histogram, not {:?}", config.reducer));
    }
    if s.key.is_none() {
        return Some(
            "a session metric needs a `key`: what has sessions (a session id, a user)".into(),
        );
    }
    if s.value.is_some() {
        return Some("a session metric's value is its `measure` (sessions, duration or events), not a `value` of the script".into());
    }
    None
}

/// What is wrong with the settings that go with one reducer (`quantiles`, `buckets`), if
/// anything.
fn reducer_settings(config: &MetricConfig) -> Option<String> {
    let kind = config.reducer;
    if let Some(q) = config.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return Some(format!(
            "quantile {q} is not between 0 and 1 (0.95 is the p95)"
        ));
    }
    if kind == ReducerKind::Quantile && config.quantiles.is_empty() {
        return Some("`quantiles` is empty: name at least one, e.g. [0.5, 0.95]".into());
    }
    if (kind == ReducerKind::Histogram) == config.buckets.is_empty() {
        return Some("`buckets` (increasing bounds, e.g. [10, 50, 100]) goes with reducer \"histogram\", and only with it".into());
    }
    if config.buckets.len() > 256 {
        return Some(format!("{} buckets: 256 at most", config.buckets.len()));
    }
    if let Some(b) = config.buckets.iter().find(|b| !b.is_finite()) {
        return Some(format!("bucket bound {b} is not a finite number"));
    }
    if config.buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Some(format!("`buckets` {:?} must increase", config.buckets));
    }
    None
}

/// A histogram's bucket labels: `< 10`, `10 – 50`, `≥ 50`.
fn bucket_labels(bounds: &[f64]) -> Vec<String> {
    let (Some(first), Some(last)) = (bounds.first(), bounds.last()) else {
        return Vec::new();
    };
    let short = crate::base::short;
    std::iter::once(format!("< {}", short(*first)))
        .chain(
            bounds
                .windows(2)
                .map(|w| format!("{} – {}", short(w[0]), short(w[1]))),
        )
        .chain(std::iter::once(format!("≥ {}", short(*last))))
        .collect()
}

/// Whether JSON can hold `d` as it is: no NaN or infinite number anywhere in it (serde writes
/// those as `null`). `path` names where `d` is, for the error.
fn storable(path: &str, d: &Dynamic) -> Result<(), String> {
    if let Ok(f) = d.as_float() {
        return match f.is_finite() {
            true => Ok(()),
            false => Err(format!(
                "{path} is {f}, which JSON cannot hold (return a finite number)"
            )),
        };
    }
    if let Some(map) = d.read_lock::<rhai::Map>() {
        return map
            .iter()
            .try_for_each(|(k, v)| storable(&format!("{path}.{k}"), v));
    }
    if let Some(array) = d.read_lock::<rhai::Array>() {
        return array
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| storable(&format!("{path}[{i}]"), v));
    }
    if d.is_fnptr() {
        return Err(format!("{path} is a function pointer"));
    }
    Ok(())
}
