//! The pipeline file: one TOML document whose sections are owned by the components that use them.
//!
//! Loading is all-or-nothing: the text is env-interpolated, parsed with unknown keys rejected,
//! and checked, before any component starts, so a bad file never half-starts a pipeline.

mod collect;
mod interpolate;

use crate::aggregate::MetricConfig;
use crate::alert::{AlertConfig, AlertingConfig};
use crate::consumer::ConsumerConfig;
use crate::dashboard::DashboardConfig;
use crate::event::{EventConfig, Schema};
use crate::generator::GeneratorConfig;
use crate::store::embedded::EmbeddedConfig;
use crate::store::mongo::MongoConfig;
use crate::store::retention::RetentionConfig;
use crate::transport::file::SourceConfig;
use crate::transport::kafka::KafkaConfig;
use crate::transport::TransportKind;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use interpolate::interpolate;

/// The whole pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Shown in logs and used as a default for names derived from it.
    pub name: String,
    /// The record the pipeline carries: its fields, id, time and key.
    pub event: EventConfig,
    /// Transport: a Kafka cluster, or `embedded` for the in-process queue [default: embedded,
    /// topic and group named after the pipeline].
    #[serde(default = "empty_section")]
    pub kafka: KafkaConfig,
    /// Store: a MongoDB deployment, or `embedded` for the local SQLite store [default: embedded,
    /// database and collections named after the pipeline].
    #[serde(default = "empty_section")]
    pub mongodb: MongoConfig,
    /// Where the embedded store and queue keep their data.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// How long each kind of stored row is kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The event generator [default: none: the pipeline consumes only].
    #[serde(default = "empty_section")]
    pub generator: GeneratorConfig,
    /// Batching and offset commits on the consuming side.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// How metrics new to the pipeline are filled from history.
    #[serde(default)]
    pub backfill: crate::aggregate::backfill::BackfillConfig,
    /// The live dashboard.
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// Windowed aggregations, one `[[metric]]` table each.
    #[serde(default, rename = "metric")]
    pub metrics: Vec<MetricConfig>,
    /// Lookup tables metric scripts read with `lookup(...)`, one `[[lookup]]` table each.
    #[serde(default, rename = "lookup")]
    pub lookups: Vec<crate::aggregate::LookupConfig>,
    /// Fields computed once per record before the metrics, one `[[derive]]` table each.
    #[serde(default)]
    pub derive: Vec<crate::aggregate::DeriveConfig>,
    /// Alert evaluation, thresholds and channels.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Alert rules, one `[[alert]]` table each.
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertConfig>,
    /// Records from a file instead of the generator and the transport [default: none].
    #[serde(default)]
    pub source: SourceConfig,
    /// Where final window results go besides the store.
    #[serde(default)]
    pub results: crate::aggregate::results::ResultsConfig,
}

/// A section the file left out, with every default of its keys (one home for them: the
/// section's own serde defaults).
fn empty_section<T: serde::de::DeserializeOwned>() -> T {
    T::deserialize(toml::Value::Table(toml::Table::new()))
        .expect("a section whose keys all have defaults")
}

/// A loaded pipeline: its config and where it came from (relative paths resolve against it).
#[derive(Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub config: PipelineConfig,
    /// The environment it was read with, so a reload reads the same variables.
    env: Env,
    /// Command-line settings applied over the file, again after every reload.
    overrides: Vec<Override>,
    /// What reading `[event] schema` found wrong (the fields it gives are in `config.event`).
    schema_file_problems: Vec<String>,
}

type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
/// A change applied to the config after the file is read (a command-line flag).
pub type Override = Arc<dyn Fn(&mut PipelineConfig) + Send + Sync>;

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a pipeline file could not be loaded; the text always names the file and, where it can, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the pipeline file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// Values that parse but do not make sense together, each as `file:line: problem` where the
    /// line is known.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Pipeline {
    /// Reads, interpolates, parses and checks a pipeline file, using the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Pipeline, ConfigError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// [`Pipeline::load`] with an explicit environment (tests, and reloads that must not race env changes).
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Pipeline, ConfigError> {
        Self::read(path.as_ref(), Arc::new(env), Vec::new())
    }

    /// Applies a command-line setting now and after every reload.
    pub fn add_override(
        &mut self,
        change: impl Fn(&mut PipelineConfig) + Send + Sync + 'static,
    ) -> Result<(), ConfigError> {
        change(&mut self.config);
        self.overrides.push(Arc::new(change));
        self.check()
    }

    /// Reads the file again, with the same environment and command-line settings.
    pub fn reload(&self) -> Result<Pipeline, ConfigError> {
        Self::read(&self.path, self.env.clone(), self.overrides.clone())
    }

    /// Reads and parses a pipeline file; the problems found after parsing (values that do not
    /// fit together) come back beside it instead of failing, so `runner validate` can go on to
    /// compile the scripts and report everything at once. A file that does not parse is an error.
    pub fn load_reporting(path: impl AsRef<Path>) -> Result<(Pipeline, Vec<String>), ConfigError> {
        Self::read_reporting(
            path.as_ref(),
            Arc::new(|name: &str| std::env::var(name).ok()),
            Vec::new(),
        )
    }

    fn read(path: &Path, env: Env, overrides: Vec<Override>) -> Result<Pipeline, ConfigError> {
        let (pipeline, problems) = Self::read_reporting(path, env, overrides)?;
        match problems.is_empty() {
            true => Ok(pipeline),
            false => Err(ConfigError::Invalid(problems)),
        }
    }

    fn read_reporting(
        path: &Path,
        env: Env,
        overrides: Vec<Override>,
    ) -> Result<(Pipeline, Vec<String>), ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config = parse(&text, &shown, |name| env(name))?;
        let mut pipeline = Pipeline {
            path: path.to_path_buf(),
            config,
            env,
            overrides,
            schema_file_problems: Vec::new(),
        };
        pipeline.resolve_paths();
        pipeline.schema_file_problems = crate::codec::derive_fields(&mut pipeline.config.event);
        for change in &pipeline.overrides {
            change(&mut pipeline.config);
        }
        let listen = pipeline.config.dashboard.listen.clone();
        pipeline.config.alerting.link_dashboard(&listen);
        let problems = pipeline.problems(Some(&text));
        Ok((pipeline, problems))
    }

    /// The record schema of `[event]` (checked when the file loaded).
    pub fn schema(&self) -> Arc<Schema> {
        self.config
            .schema()
            .expect("[event] is checked when the pipeline file loads")
    }

    /// Its metrics with their lookup tables (the collections' rows as `fetched` holds them) and
    /// derived fields, compiled; on failure every problem.
    pub fn metric_set(
        &self,
        fetched: &crate::aggregate::Fetched,
    ) -> Result<crate::aggregate::MetricSet, Vec<crate::script::ScriptError>> {
        let c = &self.config;
        crate::aggregate::MetricSet::load_all(
            &c.metrics,
            (&c.lookups, fetched),
            &c.derive,
            &self.schema(),
        )
    }

    /// The folder relative paths in the file are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir().to_path_buf();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        if let Some(s) = self.config.generator.script.as_mut() {
            resolve(s);
        }
        if let Some(s) = self
            .config
            .source
            .file
            .as_mut()
            .filter(|f| f.as_os_str() != "-")
        {
            resolve(s);
        }
        if let Some(s) = self.config.event.schema.as_mut() {
            resolve(s);
        }
        self.config.event.schemas.values_mut().for_each(resolve);
        if let Some(t) = self.config.dashboard.templates.as_mut() {
            resolve(t);
        }
        for m in &mut self.config.metrics {
            resolve(&mut m.script);
        }
        for l in &mut self.config.lookups {
            if let Some(from) = l.from.as_mut() {
                resolve(from);
            }
        }
        for d in &mut self.config.derive {
            resolve(&mut d.script);
        }
        for a in &mut self.config.alerts {
            if let Some(s) = a.script.as_mut() {
                resolve(s);
            }
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let problems = self.problems(None);
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ConfigError::Invalid(problems)),
        }
    }

    /// What parsing cannot catch, each as `file:line: problem` (the line where the file's text is
    /// given and the problem can be placed).
    fn problems(&self, text: Option<&str>) -> Vec<String> {
        let schema_problems = self.config.schema().err().unwrap_or_default();
        let wire_problems = self.config.event.wire_check();
        let problems: Vec<String> = [
            self.config.index_check(),
            self.config.headline_check(),
            self.config.retention_check(),
            self.config.kafka.check(),
            self.config.mongodb.check(),
            self.config.generator.check(),
            self.config.consumer.check(),
            self.config.backfill.check(),
            self.config.alerting.check(),
            self.config.dashboard.check(),
            self.config.results_check(),
        ]
        .into_iter()
        .flatten()
        .chain(schema_problems)
        .chain(wire_problems)
        .chain(self.schema_file_problems.iter().cloned())
        .chain(self.config.metrics.iter().filter_map(|m| m.window().err()))
        .chain(self.config.lookups.iter().filter_map(|l| l.problem()))
        .chain(self.config.alerts.iter().filter_map(|a| {
            a.check(
                &self.config.alerting.channels,
                &self.config.alerting.default_channels,
            )
        }))
        .collect();
        let path = self.path.display();
        problems
            .iter()
            .flat_map(|p| p.split("; "))
            .map(|p| match text.and_then(|t| problem_line(t, p)) {
                Some(line) => format!("{path}:{line}: {p}"),
                None => format!("{path}: {p}"),
            })
            .collect()
    }
}

impl PipelineConfig {
    /// Where records come from: a `[source] file`, else the transport `[kafka]` names.
    pub fn transport_kind(&self) -> TransportKind {
        match self.source.file {
            Some(_) => TransportKind::File,
            None => self.kafka.kind(),
        }
    }

    /// The record schema `[event]` declares, with the `[[derive]]` fields after its own, or
    /// what is wrong with them.
    pub fn schema(&self) -> Result<Arc<Schema>, Vec<String>> {
        let derived: Vec<_> = self.derive.iter().map(|d| d.field()).collect();
        Schema::new(&self.event)
            .and_then(|s| s.with_derived(&derived))
            .map(Arc::new)
    }

    /// `[results] topic` is published on the `[kafka]` cluster, so there must be one; Avro
    /// results need their schema's id.
    fn results_check(&self) -> Option<String> {
        let mut problems = self.results.problems(&self.event);
        if self.results.topic.is_some() && self.kafka.kind() != TransportKind::Kafka {
            problems.push("results.topic: results are published on the [kafka] cluster, and kafka.bootstrap_servers is \"embedded\": set it (or KAFKA_BOOTSTRAP_SERVERS, or --kafka)".to_string());
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// `[dashboard] headline` must name metrics.
    fn headline_check(&self) -> Option<String> {
        let unknown: Vec<&str> = self
            .dashboard
            .headline
            .iter()
            .filter(|h| !self.metrics.iter().any(|m| &m.name == *h))
            .map(String::as_str)
            .collect();
        (!unknown.is_empty()).then(|| {
            format!(
                "dashboard.headline: {} not a [[metric]] of this file",
                unknown.join(", ")
            )
        })
    }

    /// `[retention] panes` must keep what every window still reads.
    fn retention_check(&self) -> Option<String> {
        let needed: Vec<_> = self
            .metrics
            .iter()
            .filter_map(|m| {
                let w = m.window().ok()?;
                Some((
                    m.name.clone(),
                    std::time::Duration::from_millis((w.size_ms + w.slide_ms) as u64) + m.lateness,
                ))
            })
            .collect();
        self.retention.check(&needed)
    }

    /// `[mongodb] indexes` must name declared fields.
    fn index_check(&self) -> Option<String> {
        let undeclared: Vec<&str> = self
            .mongodb
            .indexes
            .iter()
            .filter(|f| !self.event.fields.contains_key(*f))
            .map(String::as_str)
            .collect();
        (!undeclared.is_empty()).then(|| {
            format!(
                "mongodb.indexes: {} not declared in [event]",
                undeclared.join(", ")
            )
        })
    }
}

/// Parses pipeline text; `shown` is the file name used in errors.
pub fn parse(
    text: &str,
    shown: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigError> {
    let at = |offset: usize, message: String| {
        let (line, column) = line_column(text, offset);
        ConfigError::At {
            path: shown.to_string(),
            line,
            column,
            message,
        }
    };
    let expanded = interpolate(text, &env).map_err(|m| {
        let message = match m.unsafe_value {
            None => format!(
                "environment variable {} is not set (set it, or give a default: ${{{}:-value}})",
                m.name, m.name
            ),
            Some(why) => format!(
                "the value of environment variable {} cannot stand here: {why}",
                m.name
            ),
        };
        at(m.offset, message)
    })?;
    let mut config: PipelineConfig = collect::deserialize_all(&expanded).map_err(|problems| {
        // Interpolation never adds lines, so a line in the expanded text is the same line in the file.
        let mut located: Vec<ConfigError> = problems
            .into_iter()
            .map(|(span, message)| {
                let (line, column) = line_column(&expanded, span.start);
                ConfigError::At {
                    path: shown.to_string(),
                    line,
                    column,
                    message: explain(&message),
                }
            })
            .collect();
        match located.len() {
            1 => located.remove(0),
            _ => ConfigError::Invalid(located.iter().map(ToString::to_string).collect()),
        }
    })?;
    let name = config.name.clone();
    config.kafka.fill_defaults(&name, &env);
    config.mongodb.fill_defaults(&name, &env);
    Ok(config)
}

/// The parser's words, with what to do where they alone would not say it.
fn explain(message: &str) -> String {
    match message {
        // Files written before records were declared in the file have no [event] section.
        "missing field `event`" => "missing the [event] section, which declares the record the pipeline carries: its fields and \
             types, and which field is the id and which the event time, e.g.\n  [event]\n  fields = { reading_id = \"string\", \
             device_id = \"string\", temperature = \"float\", ts = \"timestamp\" }\n  id = \"reading_id\"\n  time = \"ts\"\n\
             (pipelines/interactions.toml has the interactions record; `runner init` infers one from a sample)"
            .to_string(),
        // Files written before retention had its own section kept raw events' retention here.
        m if m.starts_with("unknown field `retention`") => "mongodb.retention moved to its own section, which sets every kind \
             of stored row: [retention] raw = \"7d\" (and panes, alerts, dead_letters)"
            .to_string(),
        other => other.to_string(),
    }
}

/// The line a problem is about: the `name = "..."` line of the metric or alert it names, or the
/// line of the `section.key` it starts with (or that section's header).
fn problem_line(text: &str, problem: &str) -> Option<usize> {
    let line_where =
        |wanted: &dyn Fn(&str) -> bool| text.lines().position(|l| wanted(l.trim())).map(|i| i + 1);
    for kind in ["metric ", "alert ", "derive ", "lookup "] {
        let name = problem
            .find(kind)
            .and_then(|i| problem[i + kind.len()..].strip_prefix('"'))
            .and_then(|r| r.split('"').next());
        if let Some(name) = name {
            let wanted = format!("name = \"{name}\"");
            if let Some(line) = line_where(&|l| l == wanted) {
                return Some(line);
            }
        }
    }
    let head = problem.split([':', ' ']).next()?;
    let (section, key) = head.rsplit_once('.')?;
    let header = format!("[{section}]");
    let mut in_section = false;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            in_section = l == header;
        } else if in_section
            && l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    line_where(&|l| l == format!("[{head}]"))
}

/// Removes `.` and `name/..` from a path without touching the file system, so errors show
/// `scripts/x.rhai` rather than `pipelines/../scripts/x.rhai`.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid pipeline file; `${KAFKA}` picks the transport.
    pub(crate) const MINIMAL: &str = r#"
name = "t"
[event]
fields = { id = "string", user = "string", t = "timestamp" }
id = "id"
time = "t"
[kafka]
bootstrap_servers = "${KAFKA:-embedded}"
topic = "t"
consumer_group = "g"
[mongodb]
uri = "embedded"
database = "d"
[generator]
script = "gen.rhai"
rate = "${RATE:-250}"
"#;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let text = format!(
            "{MINIMAL}[dashboard]\ntoken = \"tok-123\"\n[kafka.client]\n\"sasl.password\" = \"kpw-456\"\n\"client.id\" = \"r\"\n\
             [alerting.channels.hook]\ntype = \"webhook\"\nurl = \"https://hooks.example/T0/hook-path-321\"\nheaders = {{ Authorization = \"Bearer hdr-654\" }}\n"
        )
        .replace("uri = \"embedded\"", "uri = \"mongodb://bob:mpw-789@h:27017\"");
        let c = parse(&text, "p.toml", |_| None).unwrap();
        let shown = format!("{c:?} {c:#?}");
        for secret in ["tok-123", "kpw-456", "mpw-789", "hook-path-321", "hdr-654"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("client.id") && shown.contains("bob"),
            "the rest still shows: {shown}"
        );
    }

    #[test]
    fn env_values_fill_numbers_and_defaults() {
        let c = parse(MINIMAL, "p.toml", |_| None).unwrap();
        assert_eq!(c.generator.rate, 250.0);
        assert_eq!(
            c.kafka.kind(),
            crate::transport::TransportKind::EmbeddedQueue
        );
        let c = parse(MINIMAL, "p.toml", |n| {
            (n == "KAFKA").then(|| "h:9092".into())
        })
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "h:9092");
    }

    #[test]
    fn unknown_key_names_file_line_and_valid_keys() {
        let text = MINIMAL.replace("rate = ", "speed = 1\nrate = ");
        let err = parse(&text, "p.toml", |_| None).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:16:1: unknown field `speed`"),
            "{err}"
        );
        assert!(err.contains("batch_size"), "suggests the valid keys: {err}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let text = format!("{MINIMAL}[retention]\nraw = \"7 parsecs\"\n");
        let err = parse(&text, "p.toml", |_| None).unwrap_err().to_string();
        assert!(
            err.contains("p.toml:18:") && err.contains("\"30s\""),
            "{err}"
        );
    }

    #[test]
    fn retention_under_mongodb_is_told_where_it_moved() {
        let text = MINIMAL.replace("database = \"d\"", "database = \"d\"\nretention = \"7d\"");
        let err = parse(&text, "p.toml", |_| None).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:14:1: mongodb.retention moved")
                && err.contains("[retention] raw = \"7d\""),
            "{err}"
        );
    }

    #[test]
    fn pane_retention_shorter_than_a_window_names_the_metric_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let text = format!("{MINIMAL}[retention]\npanes = \"1m\"\n[[metric]]\nname = \"hourly\"\nscript = \"m.rhai\"\nreducer = \"count\"\nwindow = \"1h\"\n");
        std::fs::write(&path, text).unwrap();
        let err = Pipeline::load_with_env(&path, |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}:18: retention.panes = 1m is shorter",
                path.display()
            )),
            "{err}"
        );
        assert!(err.contains("\"hourly\""), "{err}");
    }

    #[test]
    fn inconsistent_values_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let text = format!("{MINIMAL}[consumer]\nbatch_size = 0\n[[metric]]\nname = \"m\"\nscript = \"m.rhai\"\nreducer = \"count\"\nwindow = \"60s\"\nslide = \"7s\"\n");
        std::fs::write(&path, text).unwrap();
        let err = Pipeline::load_with_env(&path, |_| None)
            .err()
            .unwrap()
            .to_string();
        let shown = path.display();
        assert!(
            err.contains(&format!(
                "{shown}:18: consumer.batch_size must be at least 1"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{shown}:20: metric \"m\": slide (7s) must divide")),
            "{err}"
        );
        std::fs::write(&path, format!("{MINIMAL}[consumer]\nworkers = 0\n")).unwrap();
        let err = Pipeline::load_with_env(&path, |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("{shown}:18: consumer.workers must be at least 1")),
            "{err}"
        );
    }

    /// A secret with TOML's special characters is one string value wherever `${...}` may stand
    /// in the shipped file, and never changes the rest of it.
    #[test]
    fn headline_and_indexes_must_name_what_the_file_declares() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let text = MINIMAL.replace(
            "database = \"d\"",
            "database = \"d\"\nindexes = [\"user\", \"nope\"]",
        ) + "[dashboard]\nheadline = [\"missing\"]\n";
        std::fs::write(&path, text).unwrap();
        let err = Pipeline::load_with_env(&path, |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("mongodb.indexes: nope not declared in [event]"),
            "{err}"
        );
        assert!(
            err.contains("dashboard.headline: missing not a [[metric]]"),
            "{err}"
        );
        assert!(!err.contains("user,"), "{err}");
    }

    #[test]
    fn secrets_with_special_characters_stay_exactly_as_given() {
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/pipelines/interactions.toml"
        ))
        .unwrap();
        let nasty = "p\"a\\ss\n[kafka]\n# '";
        let plain = parse(&shipped, "p.toml", |_| None).unwrap();
        let c = parse(&shipped, "p.toml", |n| {
            (n == "DASHBOARD_TOKEN" || n == "KAFKA_TOPIC").then(|| nasty.to_string())
        })
        .unwrap();
        assert_eq!(c.dashboard.token.expose(), nasty);
        assert_eq!(c.kafka.topic, nasty);
        assert_eq!(
            (c.metrics.len(), c.alerts.len(), &c.name),
            (plain.metrics.len(), plain.alerts.len(), &plain.name)
        );
    }

    #[test]
    fn a_file_without_event_says_how_to_declare_one() {
        let start = MINIMAL.find("[event]").unwrap();
        let end = MINIMAL.find("[kafka]").unwrap();
        let text = format!("{}{}", &MINIMAL[..start], &MINIMAL[end..]);
        let err = parse(&text, "p.toml", |_| None).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:")
                && err.contains("missing the [event] section")
                && err.contains("runner init"),
            "{err}"
        );
    }

    /// Scripts and templates are found beside the file; the embedded store's data lands where
    /// the runner runs (a pipeline folder may be read-only), as the guide says.
    #[test]
    fn scripts_resolve_beside_the_file_and_data_dir_against_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            format!("{MINIMAL}[embedded]\ndata_dir = \"state\"\n"),
        )
        .unwrap();
        let p = Pipeline::load_reporting(&file).unwrap().0;
        assert_eq!(p.config.generator.script, Some(dir.path().join("gen.rhai")));
        assert_eq!(p.config.embedded.data_dir, PathBuf::from("state"));
    }

    #[test]
    fn missing_env_var_points_at_it() {
        let text = MINIMAL.replace("${KAFKA:-embedded}", "${KAFKA}");
        let err = parse(&text, "p.toml", |_| None).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:8:22: environment variable KAFKA"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Fuzzing config parsing: any text gives a config or an error naming the file, never a panic.
        #[test]
        fn any_text_parses_or_names_the_file(text in "\\PC{0,300}") {
            if let Err(e) = parse(&text, "p.toml", |_| None) {
                proptest::prop_assert!(e.to_string().starts_with("p.toml"), "{}", e);
            }
        }

        /// The minimal file with one character changed anywhere.
        #[test]
        fn mutated_file_parses_or_points_at_a_line(at in 0usize..400, c in proptest::char::any()) {
            let mut chars: Vec<char> = MINIMAL.chars().collect();
            let at = at % chars.len();
            chars[at] = c;
            let text: String = chars.into_iter().collect();
            if let Err(e) = parse(&text, "p.toml", |_| None) {
                proptest::prop_assert!(e.to_string().starts_with("p.toml:"), "{}", e);
            }
        }
    }
}
