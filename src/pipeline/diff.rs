//! The one reload diff: for every section and key of the pipeline file, whether a change
//! applies live, reconnects what holds a connection, or needs a restart. Reload uses it to decide
//! what to do and reports it in the reload status; the README's table is checked against it.

use crate::config::PipelineConfig;
use crate::store::StoreKind;
use crate::transport::TransportKind;

/// What a changed setting takes to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Swapped in between batches or evaluations; nothing restarts.
    Live,
    /// The parts holding its connection are rebuilt (connect new, drain, switch): see `reconnect`.
    Reconnect,
    /// Applies only when the process starts again; reported in the reload status.
    Restart,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Live => "live",
            Effect::Reconnect => "reconnect",
            Effect::Restart => "restart",
        }
    }
}

/// One row of the table: a section or key, what a change to it takes, and how to tell it changed.
pub struct Row {
    /// `section` or `section.key`; a section row that has key rows compares only the rest.
    pub key: &'static str,
    pub effect: Effect,
    /// What happens, in the words the README uses.
    pub note: &'static str,
    changed: fn(&PipelineConfig, &PipelineConfig) -> bool,
}

/// Every section of the pipeline file (the exhaustive match in [`sections_in_table`] keeps this
/// list complete when a section is added).
pub const TABLE: &[Row] = &[
    Row { key: "name", effect: Effect::Restart, note: "shown in logs, the dashboard and notifications", changed: |a, b| a.name != b.name },
    Row { key: "event", effect: Effect::Restart, note: "records in flight keep the running schema; scripts reload against it", changed: |a, b| a.event != b.event },
    Row { key: "kafka", effect: Effect::Reconnect, note: "new broker connected first; generator moves between batches; consumer drains and resumes from committed offsets", changed: |a, b| a.kafka != b.kafka },
    Row { key: "mongodb", effect: Effect::Reconnect, note: "new store connected first; consumer drains, then writes to it; dashboard and alerts follow", changed: |a, b| a.mongodb != b.mongodb },
    Row { key: "source", effect: Effect::Reconnect, note: "the file is opened again and read from its start; records already stored and counted are skipped by their positions", changed: |a, b| a.source != b.source },
    Row { key: "results", effect: Effect::Restart, note: "the results topic's producer is created at start", changed: |a, b| a.results != b.results },
    Row { key: "embedded", effect: Effect::Reconnect, note: "the embedded store (and queue, when Kafka is embedded) are reopened", changed: |a, b| a.embedded != b.embedded },
    Row { key: "retention", effect: Effect::Reconnect, note: "the store is reopened with the new TTL indexes or sweep", changed: |a, b| a.retention != b.retention },
    Row { key: "consumer", effect: Effect::Reconnect, note: "consumer drains and restarts with the new batching, validation and workers", changed: |a, b| a.consumer != b.consumer },
    Row { key: "backfill", effect: Effect::Reconnect, note: "consumer drains and restarts; unfinished backfills resume from their stored progress with the new settings", changed: |a, b| a.backfill != b.backfill },
    Row { key: "generator.seed", effect: Effect::Restart, note: "the random stream is seeded once", changed: |a, b| a.generator.seed != b.generator.seed },
    // generator.seed has its own row: this one compares the rest of the section.
    Row { key: "generator", effect: Effect::Live, note: "script, rate, batch size, params, profile and scenarios apply to the next batch (scenarios stay timed from the start)", changed: |a, b| {
        crate::generator::GeneratorConfig { seed: None, ..a.generator.clone() } != crate::generator::GeneratorConfig { seed: None, ..b.generator.clone() }
    } },
    Row { key: "metric", effect: Effect::Live, note: "unchanged state shape keeps its window state; a new or redefined metric is backfilled from history", changed: |a, b| a.metrics != b.metrics },
    Row { key: "derive.script", effect: Effect::Live, note: "the next batch is derived with the new script (so is one whose file changed); what was counted stays", changed: |a, b| a.derive.iter().map(|d| &d.script).ne(b.derive.iter().map(|d| &d.script)) },
    // derive.script has its own row: this one compares the fields (name, type, store).
    Row { key: "derive", effect: Effect::Restart, note: "a derived field's name, type and storage are part of the running record, as [event] is; until the restart the running derivations stay", changed: |a, b| a.derive.iter().map(|d| d.field()).ne(b.derive.iter().map(|d| d.field())) },
    Row { key: "lookup", effect: Effect::Live, note: "tables are read again (so is a changed file; a collection also every `refresh`); metrics keep their window state and new records see the new rows", changed: |a, b| a.lookups != b.lookups },
    Row { key: "alerting", effect: Effect::Live, note: "interval, thresholds and channels apply from the next evaluation", changed: |a, b| a.alerting != b.alerting },
    Row { key: "alert", effect: Effect::Live, note: "rules that stay keep their pending and firing instances; removed ones resolve", changed: |a, b| a.alerts != b.alerts },
    Row { key: "dashboard.listen", effect: Effect::Restart, note: "the server is bound once", changed: |a, b| a.dashboard.listen != b.dashboard.listen },
    Row { key: "dashboard.templates", effect: Effect::Restart, note: "the override folder is chosen at start (edits of the files inside it apply live)", changed: |a, b| a.dashboard.templates != b.dashboard.templates },
    Row { key: "dashboard.token", effect: Effect::Live, note: "the next request needs the new token", changed: |a, b| a.dashboard.token != b.dashboard.token },
    Row { key: "dashboard.tokens", effect: Effect::Live, note: "the next request is checked against the new tokens and roles", changed: |a, b| a.dashboard.tokens != b.dashboard.tokens },
    Row { key: "dashboard.allow_anonymous", effect: Effect::Restart, note: "checked when the server is bound", changed: |a, b| a.dashboard.allow_anonymous != b.dashboard.allow_anonymous },
    Row { key: "dashboard.allowed_hosts", effect: Effect::Live, note: "the next request is checked against the new names", changed: |a, b| a.dashboard.allowed_hosts != b.dashboard.allowed_hosts },
    Row { key: "dashboard.refresh", effect: Effect::Live, note: "the next push uses the new interval", changed: |a, b| a.dashboard.refresh != b.dashboard.refresh },
    Row { key: "dashboard.headline", effect: Effect::Live, note: "the next render shows the chosen tiles", changed: |a, b| a.dashboard.headline != b.dashboard.headline },
    Row { key: "dashboard.max_clients", effect: Effect::Live, note: "the next viewer to connect is counted against the new limit", changed: |a, b| a.dashboard.max_clients != b.dashboard.max_clients },
    Row { key: "dashboard.workbench", effect: Effect::Live, note: "the next workbench request is let in or refused by the new setting", changed: |a, b| a.dashboard.workbench != b.dashboard.workbench },
];

/// Compile-time guard: adding a section to [`PipelineConfig`] fails here until the table has it.
#[allow(dead_code)]
fn sections_in_table(c: &PipelineConfig) {
    let PipelineConfig {
        name: _,
        event: _,
        kafka: _,
        mongodb: _,
        embedded: _,
        retention: _,
        generator: _,
        consumer: _,
        backfill: _,
        dashboard: _,
        metrics: _,
        lookups: _,
        derive: _,
        alerting: _,
        alerts: _,
        source: _,
        results: _,
    } = c;
    let crate::dashboard::DashboardConfig {
        listen: _,
        refresh: _,
        templates: _,
        token: _,
        tokens: _,
        allow_anonymous: _,
        allowed_hosts: _,
        headline: _,
        max_clients: _,
        workbench: _,
    } = &c.dashboard;
}

/// What changed between two versions, by table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// The rows that changed, with what each takes.
    pub changed: Vec<(&'static str, Effect)>,
    /// The transport chosen (the embedded queue's capacity is in `[embedded]`).
    transport: TransportKind,
    /// The store chosen (the embedded store's folder is in `[embedded]`).
    store: StoreKind,
}

/// Which connection-holding parts a diff rebuilds.
#[derive(Debug, Default, PartialEq)]
pub struct Reconnects {
    pub transport: bool,
    pub store: bool,
    pub consumer: bool,
}

impl Diff {
    /// Compares two versions, row by row.
    pub fn of(old: &PipelineConfig, new: &PipelineConfig) -> Diff {
        let mut changed = Vec::new();
        for row in TABLE {
            if !(row.changed)(old, new) {
                continue;
            }
            changed.push((row.key, row.effect));
        }
        Diff {
            changed,
            transport: new.transport_kind(),
            store: new.mongodb.kind(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    fn touches(&self, key: &str) -> bool {
        self.changed.iter().any(|(k, _)| *k == key)
    }

    /// The settings that changed but apply only after a restart.
    pub fn needs_restart(&self) -> Vec<String> {
        self.changed
            .iter()
            .filter(|(_, e)| *e == Effect::Restart)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// `key: effect` for every change, for the reload status and log.
    pub fn describe(&self) -> Vec<String> {
        self.changed
            .iter()
            .map(|(k, e)| format!("{k}: {}", e.as_str()))
            .collect()
    }

    /// The connection-holding parts to rebuild.
    pub fn reconnects(&self) -> Reconnects {
        let embedded = self.touches("embedded");
        Reconnects {
            transport: self.touches("kafka")
                || self.touches("source")
                || (self.transport == TransportKind::EmbeddedQueue && embedded),
            store: self.touches("mongodb")
                || self.touches("retention")
                || (self.store == StoreKind::Sqlite && embedded),
            consumer: self.touches("consumer") || self.touches("backfill"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> PipelineConfig {
        crate::config::parse(text, "p.toml", |n| {
            (n == "KAFKA").then(|| "h:9092".to_string())
        })
        .unwrap()
    }

    #[test]
    fn only_connection_sections_reconnect() {
        let base = crate::config::tests::MINIMAL;
        let old = parse(base);
        let batch = Diff::of(
            &old,
            &parse(&base.replace("[generator]", "[generator]\nbatch_size = 5")),
        );
        assert_eq!(batch.changed, vec![("generator", Effect::Live)]);
        assert_eq!(batch.reconnects(), Reconnects::default());
        let topic = Diff::of(
            &old,
            &parse(&base.replace("topic = \"t\"", "topic = \"u\"")),
        );
        assert_eq!(
            topic.reconnects(),
            Reconnects {
                transport: true,
                ..Reconnects::default()
            }
        );
        let data = Diff::of(
            &old,
            &parse(&format!("{base}[embedded]\ndata_dir = \"elsewhere\"\n")),
        );
        assert_eq!(
            data.reconnects(),
            Reconnects {
                store: true,
                ..Reconnects::default()
            },
            "Kafka does not use [embedded]; the store does"
        );
        let kept = Diff::of(&old, &parse(&format!("{base}[retention]\nraw = \"1d\"\n")));
        assert_eq!(kept.changed, vec![("retention", Effect::Reconnect)]);
        assert_eq!(
            kept.reconnects(),
            Reconnects {
                store: true,
                ..Reconnects::default()
            },
            "the store reopens with the new expiry"
        );
    }

    #[test]
    fn a_key_row_explains_its_change_alone() {
        let base = crate::config::tests::MINIMAL;
        let old = parse(base);
        let seed = Diff::of(
            &old,
            &parse(&base.replace("[generator]", "[generator]\nseed = 7")),
        );
        assert_eq!(seed.changed, vec![("generator.seed", Effect::Restart)]);
        assert_eq!(seed.needs_restart(), vec!["generator.seed"]);
        let both = Diff::of(
            &old,
            &parse(&base.replace("[generator]", "[generator]\nseed = 7\nbatch_size = 5")),
        );
        assert_eq!(
            both.changed,
            vec![
                ("generator.seed", Effect::Restart),
                ("generator", Effect::Live)
            ]
        );
        let dash = Diff::of(
            &old,
            &parse(&format!(
                "{base}[dashboard]\nlisten = \"127.0.0.1:9\"\nrefresh = \"1s\"\n"
            )),
        );
        assert_eq!(
            dash.describe(),
            vec!["dashboard.listen: restart", "dashboard.refresh: live"]
        );
    }

    /// The guide's "what a reload applies" table (docs/guide/operations.md) is this table, row for row.
    #[test]
    fn the_guides_reload_table_matches_the_diff_table() {
        let readme = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/guide/operations.md"
        ))
        .unwrap();
        let rows: Vec<(String, String)> = readme
            .lines()
            .skip_while(|l| !l.contains("<!-- reload-table -->"))
            .skip(3)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect();
        let expected: Vec<(String, String)> = TABLE
            .iter()
            .map(|r| (r.key.to_string(), r.effect.as_str().to_string()))
            .collect();
        assert_eq!(rows, expected, "docs/guide/operations.md's reload table (after <!-- reload-table -->) must list TABLE's rows in order");
    }
}
