//! Alerting: `[[alert]]` rules written in Rhai, evaluated every `[alerting] interval` against the
//! current metric values, with Alertmanager's life cycle (pending for `for`, firing, repeated
//! every `repeat_interval`, resolved) and delivery to log, email and webhook channels.
//!
//! Rule state is saved to the store before its notifications are queued, so a restart resumes
//! where it was and re-sends nothing; every notification is kept as alert history for the
//! dashboard. Evaluation runs beside the consumer (one per process that consumes).

mod channel;
pub mod config;
mod notification;
mod rule;
pub mod state;

pub use channel::Dispatcher;
pub use config::{AlertConfig, AlertingConfig, ChannelConfig};
pub use notification::Notification;
pub use rule::{Inputs, Rule};

use crate::aggregate::MetricSet;
use crate::script::{sandboxed_engine, ScriptError, ScriptLimits};
use crate::store::EventStore;
use crate::telemetry::{Snapshot, Stats};
use chrono::{DateTime, Utc};
use rhai::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use state::{Labels, RuleState, Status, Timing};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The compiled rules and channel settings of one version of the pipeline file.
pub struct AlertSet {
    pub config: AlertingConfig,
    rules: Vec<Rule>,
    engine: Engine,
}

impl AlertSet {
    /// Compiles every rule and checks every channel; errors name the file (and line, for scripts).
    pub fn load(config: &AlertingConfig, alerts: &[AlertConfig], pipeline_file: &Path) -> Result<AlertSet, ScriptError> {
        Self::load_all(config, alerts, pipeline_file).map_err(|mut errors| errors.remove(0))
    }

    /// Like [`AlertSet::load`], returning every problem rather than the first.
    pub fn load_all(config: &AlertingConfig, alerts: &[AlertConfig], pipeline_file: &Path) -> Result<AlertSet, Vec<ScriptError>> {
        // Conditions run every few seconds on small inputs: a tighter budget than metric scripts.
        let engine = sandboxed_engine(ScriptLimits { max_operations: 1_000_000, ..ScriptLimits::default() });
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(alerts.len());
        let mut errors = Vec::new();
        for a in alerts {
            if !names.insert(a.name.as_str()) {
                errors.push(ScriptError::whole_file(pipeline_file, format!("alert name {:?} is used twice", a.name)));
            }
            match Rule::load(&engine, a, pipeline_file) {
                Ok(r) => rules.push(r),
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = Dispatcher::check(&config.channels) {
            errors.push(ScriptError::whole_file(pipeline_file, format!("{e:#}")));
        }
        match errors.is_empty() {
            true => Ok(AlertSet { config: config.clone(), rules, engine }),
            false => Err(errors),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether there is anything to evaluate.
    pub fn is_active(&self) -> bool {
        self.config.enabled && !self.rules.is_empty()
    }

    fn channels_of<'a>(&'a self, rule: &'a AlertConfig) -> &'a [String] {
        rule.channels.as_deref().unwrap_or(&self.config.default_channels)
    }
}

/// A rule's state as stored: its instances, and its severity for readers that lack the rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    severity: String,
    #[serde(flatten)]
    state: RuleState,
}

/// One pending or firing instance, as the dashboard and `/api/alerts` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    pub alert: String,
    pub severity: String,
    pub status: Status,
    pub labels: Labels,
    pub value: Option<f64>,
    pub active_since: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
}

/// Every pending and firing instance in the store, firing first.
pub async fn active_alerts(store: &dyn EventStore) -> anyhow::Result<Vec<ActiveAlert>> {
    let mut out = Vec::new();
    for (rule, value) in store.load_alert_states().await? {
        let stored: Stored = serde_json::from_value(value)?;
        for i in stored.state.instances.into_values() {
            out.push(ActiveAlert {
                alert: rule.clone(),
                severity: stored.severity.clone(),
                status: i.status,
                labels: i.labels,
                value: i.value,
                active_since: DateTime::from_timestamp_millis(i.active_since).unwrap_or_default(),
                fired_at: i.fired_at.and_then(DateTime::from_timestamp_millis),
            });
        }
    }
    out.sort_by_key(|a| (a.status != Status::Firing, a.active_since));
    Ok(out)
}

/// What the evaluator needs from the running pipeline.
pub struct Sources {
    pub pipeline: String,
    pub store: Arc<dyn EventStore>,
    pub metrics: watch::Receiver<Arc<MetricSet>>,
    pub stats: Arc<Stats>,
}

/// Evaluates the rules every interval until `stop`; reloaded rules apply from the next tick.
pub async fn run(sources: Sources, mut rules: watch::Receiver<Arc<AlertSet>>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut current = rules.borrow_and_update().clone();
    let c = &current.config;
    let mut dispatcher = Dispatcher::new(&c.channels, &c.thresholds, sources.stats.clone())?;
    let mut evaluator = Evaluator { states: load_states(&*sources.store).await, last: (Instant::now(), sources.stats.snapshot()), sources };
    let mut ticker = ticker(current.config.interval);
    let mut reloads_open = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = rules.changed(), if reloads_open => {
                if changed.is_err() {
                    reloads_open = false;
                    continue;
                }
                let next = rules.borrow_and_update().clone();
                evaluator.retire_removed(&current, &next, &dispatcher).await;
                if let Err(e) = dispatcher.reconfigure(&next.config.channels, &next.config.thresholds) {
                    tracing::error!(error = %format!("{e:#}"), "alert channels not reconfigured; the previous ones stay");
                }
                if next.config.interval != current.config.interval {
                    ticker = self::ticker(next.config.interval);
                }
                current = next;
            }
            _ = ticker.tick() => {
                if current.is_active() {
                    evaluator.tick(&current, &dispatcher).await;
                }
            }
        }
    }
    dispatcher.close(Duration::from_secs(10)).await;
    Ok(())
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

async fn load_states(store: &dyn EventStore) -> BTreeMap<String, RuleState> {
    match store.load_alert_states().await {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|(rule, v)| serde_json::from_value::<Stored>(v).ok().map(|s| (rule, s.state)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the stored alert state; alerts start fresh");
            BTreeMap::new()
        }
    }
}

struct Evaluator {
    states: BTreeMap<String, RuleState>,
    /// The previous tick's counters, for rates.
    last: (Instant, Snapshot),
    sources: Sources,
}

impl Evaluator {
    async fn tick(&mut self, set: &AlertSet, dispatcher: &Dispatcher) {
        let now = Utc::now().timestamp_millis();
        let metric_set = self.sources.metrics.borrow().clone();
        let values = match metric_set.read_all(&*self.sources.store, now).await {
            Ok(v) => v,
            Err(e) => {
                // Without values every rule would look resolved; keep the state as it is instead.
                self.sources.stats.alert_error("(reading metrics)", &format!("{e:#}"));
                return;
            }
        };
        let metrics: serde_json::Map<String, Value> = values.into_iter().map(|v| (v.name, v.value)).collect();
        let inputs = Inputs {
            metrics: rule::to_dynamic(&Value::Object(metrics)),
            thresholds: rule::to_dynamic(&json!(set.config.thresholds)),
            health: rule::to_dynamic(&self.health()),
        };
        for rule in set.rules() {
            let holding = match rule.evaluate(&set.engine, &inputs) {
                Ok(h) => h,
                Err(e) => {
                    self.sources.stats.alert_error(rule.name(), &e);
                    continue;
                }
            };
            let timing = Timing { for_ms: rule.config.for_.as_millis() as i64, repeat_ms: rule.config.repeat_interval.as_millis() as i64 };
            let state = self.states.entry(rule.name().to_string()).or_default();
            let before = state.clone();
            let transitions = state.step(now, holding, timing);
            if *state != before {
                let stored = Stored { severity: rule.config.severity.clone(), state: state.clone() };
                self.save(rule.name(), &stored).await;
            }
            for t in &transitions {
                let n = Notification::new(&self.sources.pipeline, &rule.config, set.channels_of(&rule.config), &set.config.thresholds, t, now);
                self.notify(n, dispatcher).await;
            }
        }
    }

    /// Resolves the firing instances of rules a reload removed.
    async fn retire_removed(&mut self, old: &AlertSet, new: &AlertSet, dispatcher: &Dispatcher) {
        let now = Utc::now().timestamp_millis();
        for rule in old.rules() {
            if new.rules().iter().any(|r| r.name() == rule.name()) {
                continue;
            }
            let Some(mut state) = self.states.remove(rule.name()) else { continue };
            for t in state.resolve_all() {
                let n = Notification::new(&self.sources.pipeline, &rule.config, old.channels_of(&rule.config), &old.config.thresholds, &t, now);
                self.notify(n, dispatcher).await;
            }
            self.save(rule.name(), &Stored { severity: rule.config.severity.clone(), state }).await;
        }
    }

    async fn save(&self, rule: &str, stored: &Stored) {
        let value = serde_json::to_value(stored).expect("alert state serializes");
        if let Err(e) = self.sources.store.save_alert_state(rule, &value).await {
            self.sources.stats.alert_error(rule, &format!("cannot store alert state: {e:#}"));
        }
    }

    async fn notify(&self, n: Notification, dispatcher: &Dispatcher) {
        if let Err(e) = self.sources.store.record_alert(&n).await {
            self.sources.stats.alert_error(&n.alert, &format!("cannot store alert history: {e:#}"));
        }
        dispatcher.send(n);
    }

    /// The pipeline's own health, as conditions see it (`health.consumer_lag`, ...).
    fn health(&mut self) -> Value {
        let stats = &self.sources.stats;
        let now = stats.snapshot();
        let secs = self.last.0.elapsed().as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
        let lag = stats.lag();
        let health = now.json_with(json!({
            "consumer_lag": lag.iter().map(|(_, l)| l).sum::<i64>(),
            "consumer_lag_max": lag.iter().map(|(_, l)| *l).max().unwrap_or(0),
            "events_in_per_s": rate(now.consumed, self.last.1.consumed),
            "events_stored_per_s": rate(now.stored, self.last.1.stored),
            "rejected_per_s": rate(now.rejected, self.last.1.rejected),
        }));
        self.last = (Instant::now(), now);
        health
    }
}
