//! The subcommands behind the CLI, as library functions so tests can call them directly.

use crate::config::Pipeline;
use crate::generator::{Generator, GeneratorScript};
use std::io::Write;
use std::path::Path;

/// Loads the pipeline file and compiles every script it references, without connecting to
/// anything. Returns every problem found, each naming its file and line.
pub fn validate(path: &Path) -> Result<Pipeline, Vec<String>> {
    let pipeline = Pipeline::load(path).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    if let Err(e) = GeneratorScript::load(&pipeline.config.generator) {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Ok(pipeline)
    } else {
        Err(problems)
    }
}

/// Writes `count` generated events to `out` as JSON lines (no transport involved).
pub fn generate(pipeline: &Pipeline, count: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    let script = GeneratorScript::load(&pipeline.config.generator)?;
    let mut generator = Generator::new(script, pipeline.config.generator.seed);
    let mut batch = Vec::with_capacity(1000);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut left = count;
    while left > 0 {
        let n = left.min(1000) as usize;
        batch.clear();
        generator.fill(n, &mut batch);
        buf.clear();
        for e in &batch {
            e.write_json(&mut buf);
            buf.push(b'\n');
        }
        out.write_all(&buf)?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}
