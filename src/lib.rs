//! # runner
//!
//! Runs a streaming analytics pipeline described by one TOML file. The modules follow the data:
//!
//! - [`config`]: loads the pipeline file (env-var interpolation, unknown keys rejected, errors
//!   with file:line) into typed sections that each component owns.
//! - [`script`]: the sandboxed Rhai engine every script runs in, and script errors with positions.
//! - [`generator`]: turns the generator script into a sampling plan and produces events in Rust,
//!   rate-limited by a token bucket.
//! - [`transport`]: moves batches of events from the generator to the consumer, through Kafka
//!   ([`transport::kafka`]) or the in-process [`transport::embedded`] queue.
//! - [`consumer`]: the transport-independent consumer: take a batch, store it, then acknowledge it.
//! - [`aggregate`]: windowed metrics described by Rhai scripts, with partial states per pane and
//!   Kafka partition that stay exact under replays and merge across runners.
//! - [`dead_letter`]: decoding and validation of incoming messages; what fails is kept as a
//!   dead letter with its reason and source.
//! - [`store`]: where raw events land: MongoDB ([`store::mongo`]) or the embedded SQLite store
//!   ([`store::embedded`]), behind one [`store::EventStore`] interface.
//! - [`reload`]: hot reload: watch the pipeline file and scripts, compile, check, then swap.
//! - [`alert`]: alert rules in Rhai, pending → firing → resolved, delivered to log, email and
//!   webhook channels, with state and history in the store.
//! - [`dashboard`]: the live page (axum + minijinja templates, server-sent events), JSON API and
//!   Prometheus metrics.
//! - [`pipeline`]: wires the components chosen on the command line and runs them until done.
//! - [`telemetry`]: the counters and log lines every component reports through.
//! - [`bench`]: `runner bench`, each stage's throughput beside its baseline.
//! - [`commands`]: the subcommands (`validate`, `generate`) as library calls.
//! - [`testing`]: `runner test`, pipeline tests of the metrics on given events.
//! - [`event`]: the interaction event, the one type every stage shares.

pub mod aggregate;
pub mod alert;
pub mod bench;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod dashboard;
pub mod dead_letter;
pub mod event;
pub mod generator;
pub mod pipeline;
pub mod reload;
pub mod script;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod transport;
