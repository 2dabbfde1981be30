//! `/metrics`: the pipeline's counters, consumer lag, alert states and every numeric metric value,
//! encoded by `prometheus-client` (typed registry, label escaping, OpenMetrics text). The counters
//! come from [`Snapshot::counters`], the same list the health API serves, so names cannot drift.

use super::view::headline_number;
use super::Shared;
use crate::telemetry::Snapshot;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of one series, as `(name, value)` pairs.
type Labels = Vec<(String, LabelValue)>;

/// A label value escaped as the text format requires (`\\`, `\"`, `\n`). prometheus-client 0.24
/// writes label values as they are, so a metric or alert name with a quote would break the
/// whole scrape (the unit test below caught it).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct LabelValue(String);

impl From<String> for LabelValue {
    fn from(s: String) -> Self {
        LabelValue(s)
    }
}

impl From<&str> for LabelValue {
    fn from(s: &str) -> Self {
        LabelValue(s.to_string())
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Serves the current values, freshly registered per scrape (they are read from the snapshot,
/// the store and the metric set, not kept in the registry between scrapes).
pub(super) async fn scrape(State(state): State<Shared>) -> Response {
    let mut registry = Registry::with_prefix("runner");
    let stats = &state.sources.stats;
    register_counters(&mut registry, &stats.snapshot());
    let r = state.sources.reload.lock().unwrap().clone();
    registry.register("reloads", "Reloads applied", ConstCounter::new(r.reloads));
    registry.register("reload_failures", "Reloads rejected", ConstCounter::new(r.failures));
    let viewers: Gauge = Gauge::default();
    viewers.set(state.hub.clients() as i64);
    registry.register("dashboard_viewers", "Open live dashboard streams", viewers);
    let feeds: Gauge = Gauge::default();
    feeds.set(state.hub.feeds() as i64);
    registry.register("dashboard_feeds", "Panel renders running (one per range and metric filter viewed)", feeds);

    let dead: Family<Labels, Counter> = Family::default();
    for (reason, n) in stats.dead_letters() {
        dead.get_or_create(&vec![("reason".into(), reason.as_str().into())]).inc_by(n);
    }
    registry.register("dead_letters", "Messages stored as dead letters, by reason", dead);

    let lag = stats.lag();
    if !lag.is_empty() {
        let family: Family<Labels, Gauge> = Family::default();
        for (p, l) in lag {
            family.get_or_create(&vec![("partition".into(), p.to_string().into())]).set(l);
        }
        registry.register("consumer_lag", "Messages behind the end of each assigned partition", family);
    }
    // A store that cannot be read is an answer of its own: a scrape with whole families
    // missing would read as "no alerts" and "no metrics".
    let unavailable = |what: &str, e: anyhow::Error| (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read {what} from the store: {e:#}\n")).into_response();
    let active = match crate::alert::active_alerts(&*state.sources.store).await {
        Ok(active) => active,
        Err(e) => return unavailable("the alert states", e),
    };
    let family: Family<Labels, Gauge> = Family::default();
    for a in active {
        let state = format!("{:?}", a.status).to_lowercase();
        family.get_or_create(&vec![("alertname".into(), a.alert.into()), ("state".into(), state.into())]).inc();
    }
    registry.register("alerts", "Alert instances by rule and state", family);
    let set = state.sources.metrics.borrow().clone();
    let values = match set.read_all(&*state.sources.store, chrono::Utc::now().timestamp_millis()).await {
        Ok(values) => values,
        Err(e) => return unavailable("the metric values", e),
    };
    let family: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
    for v in values {
        if let Some(n) = headline_number(&v.value) {
            family.get_or_create(&vec![("name".into(), v.name.into())]).set(n);
        }
    }
    registry.register("metric", "Current window value of each numeric pipeline metric", family);
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

/// Every counter of the snapshot, under its Prometheus name (`runner_<metric>_total`).
fn register_counters(registry: &mut Registry, snapshot: &Snapshot) {
    for c in snapshot.counters() {
        registry.register(c.metric, c.help, ConstCounter::new(c.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exported_under_its_total_name_with_escaped_labels() {
        let snapshot = Snapshot { stored: 42, ..Snapshot::default() };
        let mut registry = Registry::with_prefix("runner");
        register_counters(&mut registry, &snapshot);
        let family: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        family.get_or_create(&vec![("name".into(), "a \"quoted\"\nname".into())]).set(1.5);
        registry.register("metric", "m", family);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains("# TYPE runner_events_stored counter\nrunner_events_stored_total 42\n"), "{out}");
        for c in snapshot.counters() {
            assert!(out.contains(&format!("runner_{}_total ", c.metric)), "{} missing: {out}", c.metric);
        }
        assert!(out.contains(r#"runner_metric{name="a \"quoted\"\nname"} 1.5"#), "{out}");
    }
}
