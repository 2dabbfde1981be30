//! The Rhai side: one sandboxed engine setup for every script, and script errors that say where.
//!
//! Scripts are user code that runs inside the pipeline, so the engine has no module loading
//! (hence no file access), no `eval`, and hard limits on work and sizes: a runaway script fails
//! with an error instead of stalling the pipeline.

mod record;

pub use record::{record_from_map, record_map, record_map_of, value_to_dynamic, MapFields};

use rhai::{Engine, EvalAltResult, Position, AST};
use std::fmt;
use std::path::{Path, PathBuf};

/// Limits applied to every script call.
#[derive(Debug, Clone, Copy)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Wall time one call may take, whatever its operation count (a call into a slow
    /// built-in, or a machine under load).
    pub max_call_time: std::time::Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 5_000_000,
            max_call_levels: 32,
            max_string_size: 1 << 20,
            max_array_size: 1 << 20,
            max_map_size: 1 << 16,
            max_call_time: std::time::Duration::from_secs(1),
        }
    }
}

/// A fresh engine with the sandbox and limits applied; callers register their own functions.
pub fn sandboxed_engine(limits: ScriptLimits) -> Engine {
    let mut engine = Engine::new();
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_expr_depths(64, 32);
    // Rhai counts operations per call from 1, so the first report starts this call's clock.
    let limit = limits.max_call_time;
    engine.on_progress(move |ops| {
        thread_local!(static STARTED: std::cell::Cell<std::time::Instant> = std::cell::Cell::new(std::time::Instant::now()));
        if ops <= 1 {
            STARTED.with(|s| s.set(std::time::Instant::now()));
        } else if ops.is_multiple_of(1024) && STARTED.with(|s| s.get().elapsed()) > limit {
            return Some(format!("the script ran longer than {limit:?} (max_call_time) and was stopped").into());
        }
        None
    });
    engine
}

/// A JSON value as the Rhai value a script reads (`metrics.busiest_item[0].count`, an
/// undeclared field of a record); what has no Rhai form is `()`.
pub fn json_to_dynamic(value: &serde_json::Value) -> rhai::Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(rhai::Dynamic::UNIT)
}

/// A script that failed to compile or run, with its file and position.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl ScriptError {
    fn new(path: &Path, pos: Position, message: String) -> Self {
        ScriptError {
            path: path.to_path_buf(),
            line: pos.line(),
            column: pos.position(),
            message,
        }
    }

    /// An error raised while running `path`, positioned where Rhai says it happened.
    pub fn from_eval(path: &Path, err: &EvalAltResult) -> Self {
        // Rhai appends " (line N, position M)" to its Display; the position is reported separately.
        let message = match err {
            // Stopped by a limit of ours (max_call_time): the token says which.
            EvalAltResult::ErrorTerminated(token, _) => token.to_string(),
            other => other.to_string(),
        };
        let message = match message.rfind(" (line ") {
            Some(cut) if message.ends_with(')') => message[..cut].to_string(),
            _ => message,
        };
        Self::new(path, err.position(), message)
    }

    /// A syntax error in the script at `path`.
    pub fn from_parse(path: &Path, err: &rhai::ParseError) -> Self {
        Self::new(path, err.position(), err.err_type().to_string())
    }

    /// An error at a position of the script at `path` (a call whose arguments do not fit).
    pub fn at(path: &Path, pos: Position, message: impl Into<String>) -> Self {
        Self::new(path, pos, message.into())
    }

    /// An error about the script that is not tied to a position (a missing function, a bad value).
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, Position::NONE, message.into())
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ScriptError {}

/// Reads and compiles a script file; syntax errors carry file:line:column.
pub fn compile_file(engine: &Engine, path: &Path) -> Result<AST, ScriptError> {
    compile_source(engine, path, &read_script(path)?)
}

/// Reads a script file's text.
pub fn read_script(path: &Path) -> Result<String, ScriptError> {
    std::fs::read_to_string(path)
        .map_err(|e| ScriptError::whole_file(path, format!("cannot read the script: {e}")))
}

/// Compiles the text of the script at `path` (for callers that also look at the text).
pub fn compile_source(engine: &Engine, path: &Path, source: &str) -> Result<AST, ScriptError> {
    let mut ast = engine
        .compile(source)
        .map_err(|e| ScriptError::from_parse(path, &e))?;
    ast.set_source(path.display().to_string());
    Ok(ast)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let f = write("let a = 1;\nlet b = ;\n");
        let err = compile_file(&sandboxed_engine(ScriptLimits::default()), f.path()).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.to_string()
                .contains(&format!("{}:2:", f.path().display())),
            "{err}"
        );
    }

    #[test]
    fn runaway_loop_is_stopped_by_the_operation_limit() {
        let engine = sandboxed_engine(ScriptLimits {
            max_operations: 10_000,
            ..Default::default()
        });
        let err = engine.eval::<()>("loop { }").unwrap_err();
        assert!(err.to_string().contains("operations"), "{err}");
    }

    #[test]
    fn slow_call_is_stopped_by_the_time_limit() {
        let limits = ScriptLimits {
            max_operations: u64::MAX / 2,
            max_call_time: std::time::Duration::from_millis(50),
            ..Default::default()
        };
        let engine = sandboxed_engine(limits);
        let t = std::time::Instant::now();
        let err = engine.eval::<()>("loop { }").unwrap_err();
        let err = ScriptError::from_eval(Path::new("s.rhai"), &err);
        assert!(err.to_string().contains("max_call_time"), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        // The next call gets its own clock.
        assert_eq!(
            engine
                .eval::<i64>("let n = 0; for i in 0..10000 { n += i } n")
                .unwrap(),
            49_995_000
        );
    }

    #[test]
    fn huge_allocations_are_refused() {
        let engine = sandboxed_engine(ScriptLimits::default());
        assert!(engine
            .eval::<()>(r#"let s = "x"; loop { s += s; }"#)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        assert!(engine
            .eval::<()>("let a = []; a.pad(100000000, 0);")
            .is_err());
        assert!(engine
            .eval::<()>("let m = #{}; for i in 0..1000000 { m[`k${i}`] = i; }")
            .is_err());
    }

    #[test]
    fn scripts_have_no_file_network_or_process_access() {
        let engine = sandboxed_engine(ScriptLimits::default());
        assert!(engine.eval::<()>(r#"import "/etc/passwd" as p;"#).is_err());
        assert!(engine.eval::<i64>(r#"eval("1")"#).is_err());
        for call in [
            r#"open_file("/etc/passwd")"#,
            r#"read_file("/etc/passwd")"#,
            r#"system("id")"#,
            r#"http_get("http://127.0.0.1/")"#,
            r#"exec("ls")"#,
        ] {
            let err = engine.eval::<rhai::Dynamic>(call).unwrap_err().to_string();
            assert!(err.contains("Function not found"), "{call}: {err}");
        }
    }
}
