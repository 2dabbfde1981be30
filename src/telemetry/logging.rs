//! The process's log output: a level or `tracing` filter, human text or one JSON object per
//! line for log shippers, and colour only when a person is looking (a terminal).

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal only).
    #[default]
    Text,
    /// One JSON object per line (Vector, Fluent Bit, Loki and other shippers read it as is).
    Json,
}

/// Installs the global logger on stderr. An invalid filter is an error that quotes it, never a
/// silent fall-back to `info`.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = parse_filter(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
    Ok(())
}

fn parse_filter(filter: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    tracing_subscriber::EnvFilter::builder().parse(filter).map_err(|e| {
        format!("invalid log filter {filter:?} (--log / RUNNER_LOG): {e}; use error, warn, info, debug, trace, or a filter like runner=debug,rdkafka=warn")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_an_error_that_quotes_it() {
        assert!(parse_filter("debug").is_ok());
        assert!(parse_filter("runner=debug,rdkafka=warn").is_ok());
        let err = parse_filter("runner=loud").unwrap_err();
        assert!(
            err.contains("\"runner=loud\"") && err.contains("--log"),
            "{err}"
        );
    }
}
