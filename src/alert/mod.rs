//! Alerting: `[[alert]]` rules written in Rhai, evaluated every `[alerting] interval` against the
//! current metric values, with Alertmanager's life cycle (pending for `for`, firing, repeated
//! every `repeat_interval`, resolved) and delivery to log, email and webhook channels.
//!
//! Rule state is saved to the store before its notifications are queued, so a restart resumes
//! where it was and re-sends nothing; every notification is kept as alert history for the
//! dashboard. Evaluation runs beside the consumer in every process that consumes, but only the
//! one holding the pipeline's lease in the store evaluates and notifies (see [`lease`]).

mod channel;
pub mod config;
pub mod group;
pub mod history;
pub mod lease;
mod notification;
pub mod outcome;
pub mod route;
mod rule;
pub mod silence;
pub mod state;

pub use channel::Dispatcher;
pub use config::{AlertConfig, AlertingConfig, ChannelConfig};
pub use notification::Notification;
pub use rule::{Inputs, Names, Rule};

use crate::aggregate::MetricSet;
use crate::script::{sandboxed_engine, ScriptError, ScriptLimits};
use crate::store::StateStore;
use crate::telemetry::{Snapshot, Stats};
use chrono::{DateTime, Utc};
use rhai::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use state::{Labels, RuleState, Status};
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
    /// `[alerting.route]` resolved, when there is one.
    routes: Option<route::Routes>,
}

/// The alert-state row the open notification groups are kept in (rule names cannot start with
/// `(`, so no rule's state is ever stored under it).
const GROUPS_ROW: &str = "(notification groups)";

impl AlertSet {
    /// Compiles every rule and checks every channel; errors name the file (and line, for scripts).
    pub fn load(
        config: &AlertingConfig,
        alerts: &[AlertConfig],
        pipeline_file: &Path,
    ) -> Result<AlertSet, ScriptError> {
        Self::load_all(config, alerts, pipeline_file).map_err(|mut errors| errors.remove(0))
    }

    /// Like [`AlertSet::load`], returning every problem rather than the first.
    pub fn load_all(
        config: &AlertingConfig,
        alerts: &[AlertConfig],
        pipeline_file: &Path,
    ) -> Result<AlertSet, Vec<ScriptError>> {
        let engine = alert_engine();
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(alerts.len());
        let mut errors = Vec::new();
        for a in alerts {
            if !names.insert(a.name.as_str()) {
                errors.push(ScriptError::whole_file(
                    pipeline_file,
                    format!("alert name {:?} is used twice", a.name),
                ));
            }
            match Rule::load(&engine, a, pipeline_file) {
                Ok(r) => rules.push(r),
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = Dispatcher::check(&config.channels) {
            errors.push(ScriptError::whole_file(pipeline_file, format!("{e:#}")));
        }
        let routes = match &config.route {
            Some(r) => match route::Routes::new(r, &config.default_channels) {
                Ok(routes) => Some(routes),
                Err(e) => {
                    errors.push(ScriptError::whole_file(pipeline_file, e));
                    None
                }
            },
            None => None,
        };
        match errors.is_empty() {
            true => Ok(AlertSet {
                config: config.clone(),
                rules,
                engine,
                routes,
            }),
            false => Err(errors),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The instances of `rule` whose condition holds for `inputs`.
    pub fn evaluate(
        &self,
        rule: &Rule,
        inputs: &Inputs,
    ) -> Result<Vec<(Labels, Option<f64>)>, ScriptError> {
        rule.evaluate(&self.engine, inputs)
    }

    /// Whether there is anything to evaluate.
    pub fn is_active(&self) -> bool {
        self.config.enabled && !self.rules.is_empty()
    }

    /// The route tree `rule`'s notifications go through: when there is one and the rule names
    /// no `channels` of its own.
    pub fn routes_of(&self, rule: &AlertConfig) -> Option<&route::Routes> {
        self.routes.as_ref().filter(|_| rule.channels.is_none())
    }

    /// The channels a notification of `rule` with `labels` reaches: the rule's own, or those of
    /// the routes it goes to, or `default_channels`.
    pub fn channels_for(&self, rule: &AlertConfig, labels: &Labels) -> Vec<String> {
        match (&rule.channels, self.routes_of(rule)) {
            (Some(own), _) => own.clone(),
            (None, Some(routes)) => {
                let mut out: Vec<String> = routes
                    .leaves_for(labels)
                    .iter()
                    .flat_map(|l| l.channels.iter().cloned())
                    .collect();
                out.dedup();
                out
            }
            (None, None) => self.config.default_channels.clone(),
        }
    }

    /// The notification of transition `t` of an instance of `rule` at `now` (ms), to the
    /// channels it reaches, its message saying why when the rule has no data or failed (`error`).
    pub fn notification(
        &self,
        pipeline: &str,
        rule: &AlertConfig,
        t: &state::Transition,
        error: Option<&str>,
        now: i64,
    ) -> Notification {
        let channels = self.channels_for(rule, &notification::labels_of(rule, &t.instance.labels));
        let mut n = Notification::new(pipeline, rule, &channels, &self.config.thresholds, t, now);
        if let Some(m) = outcome::message(&rule.name, &t.instance.labels, t.change, error) {
            n.message = m;
        }
        n
    }

    /// Whether a channel of `rule` must hear of its firing instances while they last.
    fn wants_refresh(&self, rule: &AlertConfig) -> bool {
        let mut channels: Vec<&str> = match self.routes_of(rule) {
            Some(routes) => routes.channels(),
            None => rule
                .channels
                .as_ref()
                .unwrap_or(&self.config.default_channels)
                .iter()
                .map(String::as_str)
                .collect(),
        };
        channels.retain(|c| {
            matches!(
                self.config.channels.get(*c),
                Some(ChannelConfig::Alertmanager(_))
            )
        });
        !channels.is_empty()
    }
}

/// The engine alert conditions run in, with `history()` and the list statistics.
fn alert_engine() -> Engine {
    // Conditions run every few seconds on small inputs: a tighter budget than the generator's.
    let mut engine = sandboxed_engine(ScriptLimits {
        max_operations: 1_000_000,
        ..ScriptLimits::default()
    });
    history::register(&mut engine);
    Names::register(&mut engine);
    engine
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
    /// `alerting`, or `no_data` / `error` for the states of a rule that cannot say (see [`outcome`]).
    #[serde(default = "alerting")]
    pub state: String,
    pub labels: Labels,
    pub value: Option<f64>,
    pub active_since: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    /// The silence that keeps its notifications from being sent, if one does.
    #[serde(default)]
    pub silenced_by: Option<String>,
}

fn alerting() -> String {
    "alerting".to_string()
}

/// Every pending and firing instance in the store, firing first.
pub async fn active_alerts(store: &dyn StateStore) -> anyhow::Result<Vec<ActiveAlert>> {
    let mut out = Vec::new();
    for (rule, value) in store.load_alert_states().await? {
        if rule == GROUPS_ROW {
            continue;
        }
        let stored: Stored = serde_json::from_value(value)?;
        for i in stored.state.instances.into_values() {
            out.push(ActiveAlert {
                alert: rule.clone(),
                severity: stored.severity.clone(),
                status: i.status,
                state: outcome::state_of(&i.labels).to_string(),
                labels: i.labels,
                value: i.value,
                active_since: DateTime::from_timestamp_millis(i.active_since).unwrap_or_default(),
                fired_at: i.fired_at.and_then(DateTime::from_timestamp_millis),
                silenced_by: i.silenced_by,
            });
        }
    }
    out.sort_by_key(|a| (a.status != Status::Firing, a.active_since));
    Ok(out)
}

/// What the evaluator needs from the running pipeline.
pub struct Sources {
    pub pipeline: String,
    pub store: Arc<dyn StateStore>,
    pub metrics: watch::Receiver<Arc<MetricSet>>,
    pub stats: Arc<Stats>,
}

/// Evaluates the rules every interval until `stop`; reloaded rules apply from the next tick.
pub async fn run(
    sources: Sources,
    mut rules: watch::Receiver<Arc<AlertSet>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut current = rules.borrow_and_update().clone();
    let c = &current.config;
    let mut dispatcher = Dispatcher::new(&c.channels, &c.thresholds, sources.stats.clone())?;
    let keeper_stop = CancellationToken::new();
    let (lease, keeper) = lease::keep(
        lease::Lease::new(&sources.pipeline),
        sources.store.clone(),
        rules.clone(),
        sources.stats.clone(),
        keeper_stop.clone(),
    );
    // The rule states are read when this process takes the lease: it may take it long after
    // start, from an evaluator that saved newer states meanwhile.
    let mut evaluator = Evaluator {
        term: None,
        states: BTreeMap::new(),
        unsaved: BTreeMap::new(),
        last: (Instant::now(), sources.stats.snapshot()),
        started: Utc::now().timestamp_millis(),
        silences: Vec::new(),
        groups: Default::default(),
        saved_groups: Default::default(),
        group_outbox: Vec::new(),
        sources,
    };
    let mut ticker = ticker(current.config.interval);
    let mut reloads_open = true;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = rules.changed(), if reloads_open => {
                if changed.is_err() {
                    reloads_open = false;
                    continue;
                }
                let next = rules.borrow_and_update().clone();
                if lease.borrow().held() {
                    evaluator.retire_removed(&current, &next, &dispatcher).await;
                }
                if let Err(e) = dispatcher.reconfigure(&next.config.channels, &next.config.thresholds) {
                    tracing::error!(error = %format!("{e:#}"), "alert channels not reconfigured; the previous ones stay");
                }
                if next.config.interval != current.config.interval {
                    ticker = self::ticker(next.config.interval);
                }
                current = next;
            }
            _ = ticker.tick() => {
                let holding = *lease.borrow();
                if current.is_active() && holding.held() {
                    evaluator.lead(holding.term).await;
                    evaluator.tick(&current, &dispatcher, &lease).await;
                }
            }
        }
    }
    keeper_stop.cancel();
    let _ = keeper.await;
    dispatcher.close(Duration::from_secs(10)).await;
    Ok(())
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The stored rule states, and the open notification groups.
async fn load_states(store: &dyn StateStore) -> (BTreeMap<String, RuleState>, group::Groups) {
    match store.load_alert_states().await {
        Ok(rows) => {
            let mut groups = group::Groups::default();
            let mut states = BTreeMap::new();
            for (rule, v) in rows {
                if rule == GROUPS_ROW {
                    groups = serde_json::from_value(v).unwrap_or_default();
                } else if let Ok(s) = serde_json::from_value::<Stored>(v) {
                    states.insert(rule, s.state.rekeyed());
                }
            }
            (states, groups)
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the stored alert state; alerts start fresh");
            Default::default()
        }
    }
}

struct Evaluator {
    /// The lease term whose stored rule states `states` started from.
    term: Option<u64>,
    states: BTreeMap<String, RuleState>,
    /// Rules whose latest state is not stored yet, with the notifications held until it is:
    /// state is stored before anything is sent, so a restart never sends twice.
    unsaved: BTreeMap<String, Vec<Notification>>,
    /// The previous tick's counters, for rates.
    last: (Instant, Snapshot),
    /// When this process started evaluating (ms): an empty window is no data only once the
    /// process has run for the window's length, so a start is not a no-data alert.
    started: i64,
    /// The silences last read from the store (kept when a read fails).
    silences: Vec<crate::store::Silence>,
    /// The open notification groups of routed rules, and as they were last stored.
    groups: group::Groups,
    saved_groups: group::Groups,
    /// Group notifications due but not sent yet: they wait until the groups that sent them are
    /// stored, as a rule's notifications wait for its state.
    group_outbox: Vec<Notification>,
    sources: Sources,
}

impl Evaluator {
    /// On a newly taken lease (`term`), starts from the stored rule states, so the previous
    /// evaluator's notifications are not sent again.
    async fn lead(&mut self, term: u64) {
        if self.term == Some(term) {
            return;
        }
        (self.states, self.groups) = load_states(&*self.sources.store).await;
        self.saved_groups = self.groups.clone();
        self.unsaved.clear();
        self.term = Some(term);
    }

    async fn tick(
        &mut self,
        set: &AlertSet,
        dispatcher: &Dispatcher,
        lease: &watch::Receiver<lease::Holding>,
    ) {
        let now = Utc::now().timestamp_millis();
        let metric_set = self.sources.metrics.borrow().clone();
        // Each metric is read on its own: one that cannot be read (a damaged state) holds back
        // only the rules that read it. Without values a rule would look resolved, so those rules
        // keep their state as it is; when no metric reads at all (the store is away), every rule does.
        let mut values = Vec::with_capacity(metric_set.metrics().len());
        let mut unreadable = Vec::new();
        for m in metric_set.metrics() {
            match crate::aggregate::read(m, &*self.sources.store, now).await {
                Ok(v) => values.push(v),
                Err(e) => {
                    self.sources
                        .stats
                        .alert_error("(reading metrics)", &format!("{e:#}"));
                    unreadable.push(m.name().to_string());
                }
            }
        }
        if values.is_empty() && !unreadable.is_empty() {
            return;
        }
        // A metric filling from history has a partial value: rules reading it wait for it, as
        // rules reading a metric that cannot be read do.
        let waiting: Vec<String> = values
            .iter()
            .filter(|v| v.backfilling.is_some())
            .map(|v| v.name.clone())
            .chain(unreadable)
            .collect();
        // A metric has data when its window counted a record, or when this process has not run
        // for a whole window yet (its window could not have filled: not knowing is not no data).
        let with_data: HashSet<String> = metric_set
            .metrics()
            .iter()
            .filter(|m| {
                now - self.started < m.window.size_ms
                    || values.iter().any(|v| v.name == m.name() && v.filled)
            })
            .map(|m| m.name().to_string())
            .collect();
        let metrics: serde_json::Map<String, Value> =
            values.into_iter().map(|v| (v.name, v.value)).collect();
        let history = Arc::new(self.histories(set, &metric_set, now).await);
        let silences = self.silences(now).await;
        let inputs = Inputs {
            metrics: crate::script::json_to_dynamic(&Value::Object(metrics)),
            thresholds: Names::dynamic("thresholds", &json!(set.config.thresholds)),
            health: Names::dynamic("health", &self.health()),
            history,
        };
        for rule in set.rules() {
            if let Some(m) = waiting.iter().find(|m| rule.reads(m)) {
                tracing::debug!(rule = rule.name(), metric = %m, "alert rule waits: a metric it reads is backfilling or cannot be read");
                continue;
            }
            let reads = metric_set
                .metrics()
                .iter()
                .map(|m| m.name())
                .filter(|m| rule.reads(m));
            let evaluation = match outcome::no_data(reads, |m| with_data.contains(m)) {
                true => outcome::Evaluation::NoData,
                false => match rule.evaluate(&set.engine, &inputs) {
                    Ok(h) => outcome::Evaluation::Holding(h),
                    Err(e) => {
                        self.sources.stats.alert_error(rule.name(), &e);
                        outcome::Evaluation::Error(e.to_string())
                    }
                },
            };
            let error = match &evaluation {
                outcome::Evaluation::Error(e) => Some(e.clone()),
                _ => None,
            };
            let timing = rule.timing();
            let state = self.states.entry(rule.name().to_string()).or_default();
            let before = state.clone();
            let holding = outcome::holding(&rule.config, &evaluation, state);
            let transitions = silence::step(&rule.config, state, now, holding, timing, &silences);
            let changed = *state != before;
            let stored = Stored {
                severity: rule.config.severity.clone(),
                state: state.clone(),
            };
            let due: Vec<Notification> = transitions
                .iter()
                .map(|(t, silenced_by)| {
                    let mut n = set.notification(
                        &self.sources.pipeline,
                        &rule.config,
                        t,
                        error.as_deref(),
                        now,
                    );
                    n.silenced_by = silenced_by.clone();
                    n
                })
                .collect();
            if !lease.borrow().held() {
                // This tick outlasted the lease (a stall): another process may evaluate now, and
                // it will find the last stored state.
                return;
            }
            let refreshes: Vec<Notification> = match set.wants_refresh(&rule.config) {
                true => state
                    .instances
                    .values()
                    .filter(|i| i.status == Status::Firing && i.silenced_by.is_none())
                    .map(|i| {
                        let t = state::Transition {
                            change: state::Change::Refresh,
                            instance: i.clone(),
                        };
                        set.notification(&self.sources.pipeline, &rule.config, &t, None, now)
                    })
                    .collect(),
                false => Vec::new(),
            };
            self.save_then_notify(set, rule.name(), changed, &stored, due, dispatcher)
                .await;
            dispatcher.refresh(refreshes);
        }
        self.send_groups(dispatcher, now).await;
    }

    /// Sends the group notifications due at `now` once the groups are stored (so a restart
    /// neither loses a waiting group nor sends a sent one again); if the store refuses, they
    /// wait for the next evaluation.
    async fn send_groups(&mut self, dispatcher: &Dispatcher, now: i64) {
        let due = self.groups.flush(&self.sources.pipeline, now);
        self.group_outbox.extend(due);
        if self.groups != self.saved_groups {
            let value = serde_json::to_value(&self.groups).expect("groups serialize");
            if let Err(e) = self
                .sources
                .store
                .save_alert_state(GROUPS_ROW, &value)
                .await
            {
                self.sources.stats.alert_error(
                    GROUPS_ROW,
                    &format!(
                        "cannot store the notification groups, their notifications wait: {e:#}"
                    ),
                );
                return;
            }
            self.saved_groups = self.groups.clone();
        }
        for n in self.group_outbox.drain(..) {
            dispatcher.send(n);
        }
    }

    /// Stores the rule's state if it changed (or an earlier save failed), and only then sends
    /// what is due, with anything held from before. If the save fails, everything is held for
    /// the next tick, which tries again.
    async fn save_then_notify(
        &mut self,
        set: &AlertSet,
        rule: &str,
        changed: bool,
        stored: &Stored,
        due: Vec<Notification>,
        dispatcher: &Dispatcher,
    ) {
        // An entry in `unsaved` (even with no notifications) means the last save failed.
        let retry = self.unsaved.remove(rule);
        let must_save = changed || retry.is_some();
        let mut held = retry.unwrap_or_default();
        held.extend(due);
        if must_save && !self.save(rule, stored).await {
            self.unsaved.insert(rule.to_string(), held);
            return;
        }
        for n in held {
            self.notify(set, n, dispatcher).await;
        }
    }

    /// Reads the metric histories the rules name (once each), leaving out windows with no data.
    /// A metric the pipeline lacks, or one the store cannot read now, is left out: the rules
    /// naming it fail with the reason.
    async fn histories(&self, set: &AlertSet, metrics: &MetricSet, now: i64) -> history::Histories {
        let mut out = history::Histories::default();
        let mut read: Vec<&(String, Duration)> = Vec::new();
        for wanted in set.rules().iter().flat_map(|r| r.histories()) {
            if read.contains(&wanted) {
                continue;
            }
            read.push(wanted);
            let (name, range) = wanted;
            let Some(metric) = metrics.metrics().iter().find(|m| m.name() == name) else {
                continue;
            };
            // One point per slide, up to a day of 5 s slides.
            match crate::aggregate::history(
                metric,
                &*self.sources.store,
                now - range.as_millis() as i64,
                now,
                20_000,
            )
            .await
            {
                Ok(points) => {
                    let windows: Vec<history::Window> = points
                        .into_iter()
                        .filter(|p| p.filled)
                        .map(|p| history::Window {
                            end: p.end,
                            value: p.value,
                        })
                        .collect();
                    out.insert(name, *range, &windows);
                }
                Err(e) => self
                    .sources
                    .stats
                    .alert_error("(reading metric history)", &format!("{name}: {e:#}")),
            }
        }
        out
    }

    /// Resolves the firing instances of rules a reload removed.
    async fn retire_removed(&mut self, old: &AlertSet, new: &AlertSet, dispatcher: &Dispatcher) {
        let now = Utc::now().timestamp_millis();
        for rule in old.rules() {
            if new.rules().iter().any(|r| r.name() == rule.name()) {
                continue;
            }
            let Some(mut state) = self.states.remove(rule.name()) else {
                continue;
            };
            let due: Vec<Notification> = state
                .resolve_all()
                .iter()
                .map(|t| old.notification(&self.sources.pipeline, &rule.config, t, None, now))
                .collect();
            let stored = Stored {
                severity: rule.config.severity.clone(),
                state,
            };
            self.save_then_notify(old, rule.name(), true, &stored, due, dispatcher)
                .await;
        }
    }

    /// Stores a rule's state; false (counted and logged) when the store refused it.
    async fn save(&self, rule: &str, stored: &Stored) -> bool {
        let value = serde_json::to_value(stored).expect("alert state serializes");
        match self.sources.store.save_alert_state(rule, &value).await {
            Ok(()) => true,
            Err(e) => {
                self.sources.stats.alert_error(
                    rule,
                    &format!("cannot store alert state, its notifications wait for it: {e:#}"),
                );
                false
            }
        }
    }

    /// Keeps `n` as history and sends it, unless a silence holds it (then it is only kept); a
    /// routed rule's goes to its groups instead, which send it with the others.
    async fn notify(&mut self, set: &AlertSet, n: Notification, dispatcher: &Dispatcher) {
        if let Err(e) = self.sources.store.record_alert(&n).await {
            self.sources
                .stats
                .alert_error(&n.alert, &format!("cannot store alert history: {e:#}"));
        }
        let routes = set
            .rules()
            .iter()
            .find(|r| r.name() == n.alert)
            .and_then(|r| set.routes_of(&r.config));
        match routes {
            Some(routes) => {
                let leaves = routes.leaves_for(&n.labels);
                self.groups.add(&n, &leaves, n.at.timestamp_millis());
            }
            None if n.silenced_by.is_none() => dispatcher.send(n),
            None => {}
        }
    }

    /// The silences active at `now` (ms). When the store cannot be read, the last ones read:
    /// a store hiccup must not un-silence a planned outage.
    async fn silences(&mut self, now: i64) -> silence::Silences {
        let at = DateTime::from_timestamp_millis(now).unwrap_or_default();
        match self.sources.store.silences(now).await {
            Ok(all) => self.silences = all,
            Err(e) => self
                .sources
                .stats
                .alert_error("(reading silences)", &format!("{e:#}")),
        }
        let (active, broken) = silence::Silences::active_at(&self.silences, at);
        for b in broken {
            self.sources.stats.alert_error("(silences)", &b);
        }
        active
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetter;
    use crate::event::Schema;
    use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
    use crate::store::PaneRecord;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The embedded store, whose alert-state writes fail while `failing` is set, and whose
    /// silences take `slow` to read (a mock for this one unit: the evaluator's order of save and
    /// send, and an evaluation longer than the lease).
    struct FlakyStore {
        inner: EmbeddedStore,
        failing: AtomicBool,
        slow: Duration,
    }

    impl FlakyStore {
        /// An embedded store in `data_dir` for records of an id and a time, failing its alert
        /// state writes when `failing`, its silences read in `slow`.
        fn open(data_dir: &Path, failing: bool, slow: Duration) -> (Arc<Schema>, Arc<FlakyStore>) {
            let schema = crate::event::schema_of(
                "fields = { id = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"",
            );
            let inner = EmbeddedStore::open(
                &EmbeddedConfig {
                    data_dir: data_dir.to_path_buf(),
                    ..Default::default()
                },
                &Default::default(),
                &schema,
                &[],
            )
            .unwrap();
            let store = FlakyStore {
                inner,
                failing: AtomicBool::new(failing),
                slow,
            };
            (schema, Arc::new(store))
        }
    }

    /// What the evaluator reads, for pipeline "p": `store`, `metrics` (fixed), `stats`.
    fn sources(store: &Arc<FlakyStore>, metrics: MetricSet, stats: &Arc<Stats>) -> Sources {
        Sources {
            pipeline: "p".into(),
            store: store.clone(),
            metrics: watch::channel(Arc::new(metrics)).1,
            stats: stats.clone(),
        }
    }

    #[async_trait::async_trait]
    impl StateStore for FlakyStore {
        fn describe(&self) -> String {
            "flaky".into()
        }
        async fn write_panes(&self, p: &[PaneRecord]) -> anyhow::Result<()> {
            self.inner.write_panes(p).await
        }
        async fn load_panes(
            &self,
            m: &str,
            from: i64,
            to: i64,
            p: Option<i32>,
        ) -> anyhow::Result<Vec<PaneRecord>> {
            self.inner.load_panes(m, from, to, p).await
        }
        async fn save_alert_state(&self, rule: &str, state: &Value) -> anyhow::Result<()> {
            anyhow::ensure!(!self.failing.load(Ordering::SeqCst), "the store is away");
            self.inner.save_alert_state(rule, state).await
        }
        async fn load_alert_states(&self) -> anyhow::Result<Vec<(String, Value)>> {
            self.inner.load_alert_states().await
        }
        async fn save_silence(&self, s: &crate::store::Silence) -> anyhow::Result<()> {
            self.inner.save_silence(s).await
        }
        async fn silences(&self, after: i64) -> anyhow::Result<Vec<crate::store::Silence>> {
            tokio::time::sleep(self.slow).await;
            self.inner.silences(after).await
        }
        async fn record_alert(&self, n: &Notification) -> anyhow::Result<()> {
            self.inner.record_alert(n).await
        }
        async fn recent_alerts(&self, limit: usize) -> anyhow::Result<Vec<Notification>> {
            self.inner.recent_alerts(limit).await
        }
        async fn write_dead_letters(&self, l: &[DeadLetter]) -> anyhow::Result<()> {
            self.inner.write_dead_letters(l).await
        }
        async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
            self.inner.dead_letters(limit).await
        }
        async fn count_dead_letters(&self) -> anyhow::Result<u64> {
            self.inner.count_dead_letters().await
        }
        async fn write_results(&self, rows: &[crate::store::ResultRow]) -> anyhow::Result<()> {
            self.inner.write_results(rows).await
        }
        async fn load_results(
            &self,
            metric: &str,
            from: i64,
            to: i64,
        ) -> anyhow::Result<Vec<crate::store::ResultRow>> {
            self.inner.load_results(metric, from, to).await
        }
        async fn latest_result(&self, metric: &str) -> anyhow::Result<Option<i64>> {
            self.inner.latest_result(metric).await
        }
        async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> anyhow::Result<bool> {
            self.inner.take_lease(name, holder, ttl_ms).await
        }
    }

    #[tokio::test]
    async fn notifications_wait_until_the_state_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, store) = FlakyStore::open(dir.path(), true, Duration::ZERO);
        let rule: AlertConfig = toml::from_str("name = \"always\"\ncondition = \"true\"").unwrap();
        let set = AlertSet::load(&AlertingConfig::default(), &[rule], Path::new("p.toml")).unwrap();
        let stats = Stats::new();
        let dispatcher =
            Dispatcher::new(&set.config.channels, &set.config.thresholds, stats.clone()).unwrap();
        let sources = sources(&store, MetricSet::load(&[], &[], &schema).unwrap(), &stats);
        let mut evaluator = Evaluator {
            term: None,
            states: BTreeMap::new(),
            unsaved: BTreeMap::new(),
            last: (Instant::now(), stats.snapshot()),
            started: Utc::now().timestamp_millis(),
            silences: Vec::new(),
            groups: Default::default(),
            saved_groups: Default::default(),
            group_outbox: Vec::new(),
            sources,
        };
        let mut lease = lease::Lease::new("p");
        assert!(
            lease
                .renew(&*store, Duration::from_secs(3600))
                .await
                .unwrap(),
            "the only process takes the lease"
        );
        let (_held, lease) = watch::channel(lease.holding());

        // `for` is 0: the first tick fires. The state cannot be stored, so nothing is sent.
        evaluator.tick(&set, &dispatcher, &lease).await;
        evaluator.tick(&set, &dispatcher, &lease).await;
        assert!(
            store.recent_alerts(10).await.unwrap().is_empty(),
            "nothing sent while the state is not stored"
        );
        assert_eq!(
            evaluator.unsaved.get("always").map(Vec::len),
            Some(1),
            "the firing notification is held"
        );
        assert!(stats.snapshot().alert_errors >= 2);

        store.failing.store(false, Ordering::SeqCst);
        evaluator.tick(&set, &dispatcher, &lease).await;
        let sent = store.recent_alerts(10).await.unwrap();
        assert_eq!(sent.len(), 1, "sent once the state is stored: {sent:?}");
        assert_eq!(store.load_alert_states().await.unwrap().len(), 1);
        evaluator.tick(&set, &dispatcher, &lease).await;
        assert_eq!(
            store.recent_alerts(10).await.unwrap().len(),
            1,
            "and not again"
        );
        dispatcher.close(Duration::from_secs(1)).await;
    }

    /// A metric whose stored state cannot be read holds back only the rules that read it: the
    /// others are evaluated and fire (once, one such metric stopped every rule's tick).
    #[tokio::test]
    async fn one_unreadable_metric_holds_back_only_the_rules_that_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, store) = FlakyStore::open(&dir.path().join("data"), false, Duration::ZERO);
        std::fs::write(dir.path().join("all.rhai"), "#{}").unwrap();
        let metric = |name: &str| -> crate::aggregate::MetricConfig {
            toml::from_str(&format!(
                "name = \"{name}\"\nscript = {:?}\nreducer = \"count\"",
                dir.path().join("all.rhai")
            ))
            .unwrap()
        };
        let metric_set =
            MetricSet::load(&[metric("good"), metric("broken")], &[], &schema).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let broken = metric_set.metrics()[1].state_key().to_string();
        store
            .write_panes(&[PaneRecord {
                metric: broken,
                pane_start: now - now % 60_000,
                partition: 0,
                offset: 0,
                state: crate::store::StateJson::stored("{\"nonsense\":1}".into()),
            }])
            .await
            .unwrap();
        let rules: Vec<AlertConfig> = [
            "name = \"reads_good\"\ncondition = \"metrics.good >= 0\"",
            "name = \"reads_broken\"\ncondition = \"metrics.broken >= 0\"",
        ]
        .iter()
        .map(|r| toml::from_str(r).unwrap())
        .collect();
        let set = AlertSet::load(&AlertingConfig::default(), &rules, Path::new("p.toml")).unwrap();
        let stats = Stats::new();
        let dispatcher =
            Dispatcher::new(&set.config.channels, &set.config.thresholds, stats.clone()).unwrap();
        let sources = sources(&store, metric_set, &stats);
        let mut evaluator = Evaluator {
            term: None,
            states: BTreeMap::new(),
            unsaved: BTreeMap::new(),
            last: (Instant::now(), stats.snapshot()),
            started: Utc::now().timestamp_millis(),
            silences: Vec::new(),
            groups: Default::default(),
            saved_groups: Default::default(),
            group_outbox: Vec::new(),
            sources,
        };
        let mut lease = lease::Lease::new("p");
        assert!(lease
            .renew(&*store, Duration::from_secs(3600))
            .await
            .unwrap());
        let (_held, lease) = watch::channel(lease.holding());
        evaluator.tick(&set, &dispatcher, &lease).await;
        let sent: Vec<String> = store
            .recent_alerts(10)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.alert)
            .collect();
        assert_eq!(
            sent,
            ["reads_good"],
            "the rule on the readable metric fires; the other waits"
        );
        assert!(
            stats.snapshot().alert_errors >= 1,
            "the unreadable metric is reported"
        );
        dispatcher.close(Duration::from_secs(1)).await;
    }

    /// An evaluation that takes longer than the lease (here every one: the store answers slowly)
    /// still fires its rule: the lease is renewed beside it. (Renewed between evaluations, it
    /// lapsed during each one, whose result was then dropped; a rule with a `for` never fired
    /// on a loaded machine.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rule_fires_when_each_evaluation_outlasts_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let interval = Duration::from_millis(100);
        let (schema, store) = FlakyStore::open(dir.path(), false, lease::Lease::ttl(interval) * 2);
        let rule: AlertConfig =
            toml::from_str("name = \"always\"\ncondition = \"true\"\nfor = \"300ms\"").unwrap();
        let config = AlertingConfig {
            interval,
            ..Default::default()
        };
        let set = AlertSet::load(&config, &[rule], Path::new("p.toml")).unwrap();
        let (_rules_tx, rules) = watch::channel(Arc::new(set));
        let stats = Stats::new();
        let sources = sources(&store, MetricSet::load(&[], &[], &schema).unwrap(), &stats);
        let stop = CancellationToken::new();
        let evaluating = tokio::spawn(run(sources, rules, stop.clone()));
        let t = Instant::now();
        while store.recent_alerts(10).await.unwrap().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the rule never fired (alert errors: {})",
                stats.snapshot().alert_errors
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        evaluating.await.unwrap().unwrap();
        assert_eq!(store.recent_alerts(10).await.unwrap()[0].status, "firing");
    }
}
