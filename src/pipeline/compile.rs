//! The one compile step: a loaded pipeline file becomes everything its components run (the
//! generator's plan, the metric set, the alert rules), checked completely before anything
//! starts. `runner run`, every hot reload and `runner validate` go through here, so what
//! validates is exactly what runs.

use crate::aggregate::{Fetched, MetricSet};
use crate::alert::AlertSet;
use crate::config::Pipeline;
use crate::event::Schema;
use crate::generator::GeneratorScript;
use std::path::Path;
use std::sync::Arc;

/// A version of the pipeline, compiled and ready to hand to the components.
#[derive(Clone)]
pub struct Compiled {
    pub pipeline: Pipeline,
    /// The record schema of `[event]`.
    pub schema: Arc<Schema>,
    /// None when the pipeline has no `[generator] script` (it consumes only).
    pub generator: Option<GeneratorScript>,
    pub metrics: Arc<MetricSet>,
    pub alerts: Arc<AlertSet>,
}

/// Every problem found, each naming its file and (where known) line and column.
#[derive(Debug, Clone, PartialEq)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// Compiles every script `pipeline` names; on failure, lists every broken script, not the first.
/// Its lookup collections are not read (see [`crate::aggregate::lookup`]): [`compile_with`]
/// takes their documents.
pub fn compile(pipeline: Pipeline) -> Result<Compiled, Problems> {
    compile_with(pipeline, &Fetched::default())
}

/// [`compile`] with the documents of the lookup collections, read from the store.
pub fn compile_with(pipeline: Pipeline, fetched: &Fetched) -> Result<Compiled, Problems> {
    compile_reporting(pipeline, fetched, Vec::new())
}

/// Loads and compiles the file at `path` and reports every problem in it: the values that do not
/// fit together and every script that does not compile (what `runner validate` prints).
pub fn validate(path: &Path) -> Result<Compiled, Problems> {
    let (pipeline, problems) = Pipeline::load_reporting(path).map_err(|e| match e {
        crate::config::ConfigError::Invalid(each) => Problems(each),
        other => Problems(vec![other.to_string()]),
    })?;
    compile_reporting(pipeline, &Fetched::default(), problems)
}

fn compile_reporting(
    pipeline: Pipeline,
    fetched: &Fetched,
    mut problems: Vec<String>,
) -> Result<Compiled, Problems> {
    let c = &pipeline.config;
    // A broken [event] is among the problems already; the scripts are checked against a good one.
    let schema = c.schema().ok();
    let generator = match (&schema, &c.generator.script) {
        (_, None) => Some(None),
        (Some(s), Some(_)) => GeneratorScript::load(&c.generator, s)
            .map_err(|e| problems.push(e.to_string()))
            .ok()
            .map(Some),
        (None, Some(_)) => None,
    };
    let metrics = schema.as_ref().and_then(|s| {
        MetricSet::load_all(&c.metrics, (&c.lookups, fetched), &c.derive, s)
            .map_err(|errors| problems.extend(errors.iter().map(ToString::to_string)))
            .ok()
    });
    let alerts = AlertSet::load_all(&c.alerting, &c.alerts, &pipeline.path)
        .map_err(|errors| problems.extend(errors.iter().map(ToString::to_string)))
        .ok();
    match (schema, generator, metrics, alerts) {
        (Some(schema), Some(generator), Some(metrics), Some(alerts)) if problems.is_empty() => {
            Ok(Compiled {
                pipeline,
                schema,
                generator,
                metrics: Arc::new(metrics),
                alerts: Arc::new(alerts),
            })
        }
        _ => Err(Problems(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_every_problem_of_the_file_and_its_scripts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gen.rhai"), "#{ user: ").unwrap();
        std::fs::write(dir.path().join("m.rhai"), "#{ key: field(\"item_id\") ").unwrap();
        let text = format!(
            "{}[consumer]\nbatch_size = 0\n[[metric]]\nname = \"m\"\nscript = \"m.rhai\"\nreducer = \"count\"\nwindow = \"60s\"\n[[metric]]\nname = \"m\"\nscript = \"missing.rhai\"\nreducer = \"count\"\nwindow = \"60s\"\n",
            crate::config::tests::MINIMAL
        );
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        let problems = validate(&path).err().expect("broken file").0;
        let all = problems.join("\n");
        assert!(all.contains("consumer.batch_size"), "config check: {all}");
        assert!(all.contains("gen.rhai"), "generator script: {all}");
        assert!(all.contains("m.rhai:"), "first metric script: {all}");
        assert!(all.contains("used twice"), "duplicate name: {all}");
        assert!(all.contains("missing.rhai"), "missing script: {all}");
        assert!(problems.len() >= 5, "{problems:#?}");
    }
}
