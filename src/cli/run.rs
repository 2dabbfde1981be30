//! `runner run`'s command-line choices as library calls: the components a list of names asks
//! for, and the settings applied over the pipeline file (again after every reload).

use crate::config::PipelineConfig;
use crate::pipeline::Components;
use std::path::PathBuf;

/// A component named on the command line (`--components generator,consumer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ComponentName {
    /// Generates events and publishes them.
    Generator,
    /// The original Python pipeline's name for the generator.
    Producer,
    /// Consumes events, stores them and keeps the metrics.
    Consumer,
    /// Serves the live dashboard, JSON API and /metrics.
    Dashboard,
    /// Evaluates the alert rules against the store and sends notifications.
    Alerting,
    /// Every component.
    All,
}

/// The components `names` ask for. A consumer also evaluates the alert rules (it sees its own
/// lag and errors).
pub fn components(names: &[ComponentName]) -> Components {
    use ComponentName::*;
    let has = |wanted: &[ComponentName]| names.iter().any(|n| *n == All || wanted.contains(n));
    Components {
        generator: has(&[Generator, Producer]),
        consumer: has(&[Consumer]),
        dashboard: has(&[Dashboard]),
        alerting: has(&[Alerting, Consumer]),
    }
}

/// Where the pipeline's broker and store are, over what the file says.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Kafka bootstrap servers (host:port,...), or `embedded` [default: kafka.bootstrap_servers].
    #[arg(long)]
    pub kafka: Option<String>,
    /// MongoDB connection string, or `embedded` [default: mongodb.uri].
    #[arg(long)]
    pub mongodb: Option<String>,
    /// Folder for the embedded store [default: embedded.data_dir, ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Connection {
    /// Puts the given addresses over the file's.
    pub fn apply(&self, c: &mut PipelineConfig) {
        if let Some(k) = &self.kafka {
            c.kafka.bootstrap_servers = k.clone();
        }
        if let Some(m) = &self.mongodb {
            c.mongodb.uri = m.clone();
        }
        if let Some(d) = &self.data_dir {
            c.embedded.data_dir = d.clone();
        }
    }
}

/// `--scenario NAME`s join the file's `[generator] scenarios`.
pub fn add_scenarios(c: &mut PipelineConfig, names: &[String]) {
    for n in names {
        if !c.generator.scenarios.contains(n) {
            c.generator.scenarios.push(n.clone());
        }
    }
}

/// `NAME=VALUE` of `--param`.
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ComponentName::*;

    #[test]
    fn a_consumer_also_evaluates_alerts_and_all_is_every_component() {
        assert_eq!(
            components(&[Consumer]),
            Components {
                generator: false,
                consumer: true,
                dashboard: false,
                alerting: true
            }
        );
        assert_eq!(
            components(&[Producer]),
            Components {
                generator: true,
                consumer: false,
                dashboard: false,
                alerting: false
            }
        );
        assert_eq!(
            components(&[All]),
            Components {
                generator: true,
                consumer: true,
                dashboard: true,
                alerting: true
            }
        );
    }

    #[test]
    fn a_param_is_name_equals_value() {
        assert_eq!(
            parse_param(" USERS =500"),
            Ok(("USERS".to_string(), "500".to_string()))
        );
        assert_eq!(
            parse_param("A=b=c"),
            Ok(("A".to_string(), "b=c".to_string()))
        );
        assert!(parse_param("=5").is_err() && parse_param("USERS").is_err());
    }
}
