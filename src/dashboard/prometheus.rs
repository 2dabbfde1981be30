//! `/metrics`: the pipeline's counters, consumer lag, alert states, every numeric metric value
//! and the size of each lookup table, encoded by `prometheus-client` (typed registry, label
//! escaping, OpenMetrics text). The counters come from [`Snapshot::counters`], the same list the
//! health API serves, so names cannot drift.

use super::view::headline_number;
use super::Shared;
use crate::telemetry::Snapshot;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
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
pub(super) async fn scrape(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut registry = Registry::with_prefix("runner");
    let stats = &state.sources.stats;
    register_counters(&mut registry, &stats.snapshot());
    let r = state.sources.reload.lock().unwrap().clone();
    registry.register("reloads", "Reloads applied", ConstCounter::new(r.reloads));
    registry.register(
        "reload_failures",
        "Reloads rejected",
        ConstCounter::new(r.failures),
    );
    let viewers: Gauge = Gauge::default();
    viewers.set(state.hub.clients() as i64);
    registry.register("dashboard_viewers", "Open live dashboard streams", viewers);
    let feeds: Gauge = Gauge::default();
    feeds.set(state.hub.feeds() as i64);
    registry.register(
        "dashboard_feeds",
        "Panel renders running (one per range and metric filter viewed)",
        feeds,
    );

    let dead: Family<Labels, Counter> = Family::default();
    for (reason, n) in stats.dead_letters() {
        dead.get_or_create(&vec![("reason".into(), reason.as_str().into())])
            .inc_by(n);
    }
    registry.register(DEAD_LETTERS.name, DEAD_LETTERS.help, dead);

    // Registered even without partitions (the embedded queue), so the family a dashboard
    // queries always exists.
    let family: Family<Labels, Gauge> = Family::default();
    for (p, l) in stats.lag() {
        family
            .get_or_create(&vec![("partition".into(), p.to_string().into())])
            .set(l);
    }
    registry.register(CONSUMER_LAG.name, CONSUMER_LAG.help, family);
    // What the lookup tables hold: their memory is bounded by `max_rows` and shown here.
    let (rows, bytes): (Family<Labels, Gauge>, Family<Labels, Gauge>) = Default::default();
    for table in state.sources.metrics.borrow().lookups().tables() {
        let labels = vec![("lookup".into(), table.name.as_str().into())];
        rows.get_or_create(&labels).set(table.len() as i64);
        bytes.get_or_create(&labels).set(table.bytes as i64);
    }
    registry.register(LOOKUP_ROWS.name, LOOKUP_ROWS.help, rows);
    registry.register(LOOKUP_BYTES.name, LOOKUP_BYTES.help, bytes);
    // A store that cannot be read is an answer of its own: a scrape with whole families
    // missing would read as "no alerts" and "no metrics".
    let unavailable = |what: &str, e: anyhow::Error| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read {what} from the store: {e:#}\n"),
        )
            .into_response()
    };
    let active = match crate::alert::active_alerts(&*state.sources.store).await {
        Ok(active) => active,
        Err(e) => return unavailable("the alert states", e),
    };
    let family: Family<Labels, Gauge> = Family::default();
    for a in active {
        let state = format!("{:?}", a.status).to_lowercase();
        family
            .get_or_create(&vec![
                ("alertname".into(), a.alert.into()),
                ("state".into(), state.into()),
            ])
            .inc();
    }
    registry.register(ALERTS.name, ALERTS.help, family);
    let values = super::view::current_values(&state).await;
    if let Some(e) = super::view::all_failed(&values) {
        return unavailable("the metric values", anyhow::anyhow!(e.to_string()));
    }
    // A metric that cannot be read (a damaged state) has no sample; the others keep theirs.
    let family: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
    for v in values.iter().flatten().cloned() {
        if let Some(n) = headline_number(&v.value) {
            family
                .get_or_create(&vec![("name".into(), v.name.into())])
                .set(n);
        }
    }
    registry.register(METRIC.name, METRIC.help, family);
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
            .into_response();
    }
    declare_empty(&mut out, LABELLED);
    // Prometheus asks for OpenMetrics; other readers (promtool, curl, older agents) get the
    // classic text format, where a counter's HELP and TYPE name its `_total` sample.
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match accept.contains("application/openmetrics-text") {
        true => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        false => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            classic_text(&out),
        )
            .into_response(),
    }
}

/// A family with a series per label value, which may have none yet (no partitions on the
/// embedded queue, no alert active).
struct Labelled {
    /// Without the `runner_` prefix, as registered.
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const DEAD_LETTERS: Labelled = Labelled {
    name: "dead_letters",
    kind: "counter",
    help: "Messages stored as dead letters, by reason",
};
const CONSUMER_LAG: Labelled = Labelled {
    name: "consumer_lag",
    kind: "gauge",
    help: "Messages behind the end of each assigned partition",
};
const ALERTS: Labelled = Labelled {
    name: "alerts",
    kind: "gauge",
    help: "Alert instances by rule and state",
};
const METRIC: Labelled = Labelled {
    name: "metric",
    kind: "gauge",
    help: "Current window value of each numeric pipeline metric",
};
const LOOKUP_ROWS: Labelled = Labelled {
    name: "lookup_rows",
    kind: "gauge",
    help: "Rows of each lookup table",
};
const LOOKUP_BYTES: Labelled = Labelled {
    name: "lookup_bytes",
    kind: "gauge",
    help: "Bytes of each lookup table's file (about what the table holds in memory)",
};
const LABELLED: &[Labelled] = &[
    DEAD_LETTERS,
    CONSUMER_LAG,
    ALERTS,
    METRIC,
    LOOKUP_ROWS,
    LOOKUP_BYTES,
];

/// Declares (HELP and TYPE, no sample) each of `families` the encoder left out for having no
/// series: prometheus-client writes nothing for an empty family, and a dashboard or a check of
/// the names served should still find it.
fn declare_empty(out: &mut String, families: &[Labelled]) {
    let at = out.rfind("# EOF").unwrap_or(out.len());
    let mut missing = String::new();
    for Labelled { name, kind, help } in families {
        if !out.contains(&format!("# TYPE runner_{name} ")) {
            missing.push_str(&format!(
                "# HELP runner_{name} {help}.\n# TYPE runner_{name} {kind}\n"
            ));
        }
    }
    out.insert_str(at, &missing);
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4): counter families are named
/// after their `_total` sample, and the `# EOF` and `# UNIT` lines go.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
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
        let snapshot = Snapshot {
            stored: 42,
            ..Snapshot::default()
        };
        let mut registry = Registry::with_prefix("runner");
        register_counters(&mut registry, &snapshot);
        let family: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        family
            .get_or_create(&vec![("name".into(), "a \"quoted\"\nname".into())])
            .set(1.5);
        registry.register("metric", "m", family);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("# TYPE runner_events_stored counter\nrunner_events_stored_total 42\n"),
            "{out}"
        );
        for c in snapshot.counters() {
            assert!(
                out.contains(&format!("runner_{}_total ", c.metric)),
                "{} missing: {out}",
                c.metric
            );
        }
        assert!(
            out.contains(r#"runner_metric{name="a \"quoted\"\nname"} 1.5"#),
            "{out}"
        );
        declare_empty(&mut out, LABELLED);
        assert!(
            out.contains("# TYPE runner_alerts gauge\n") && out.ends_with("# EOF\n"),
            "an empty family is declared before the end: {out}"
        );
        assert_eq!(
            out.matches("# TYPE runner_metric gauge").count(),
            1,
            "a family with series is declared once"
        );
        let classic = classic_text(&out);
        assert!(
            classic.contains("# HELP runner_events_stored_total ")
                && classic.contains(
                    "# TYPE runner_events_stored_total counter\nrunner_events_stored_total 42\n"
                ),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE runner_metric gauge\n") && !classic.contains("# EOF"),
            "{classic}"
        );
    }
}
