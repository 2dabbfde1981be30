//! # runner
//!
//! Runs a streaming analytics pipeline described by one TOML file. The modules follow the data,
//! and each may use only the modules listed above it (`tests/module_layers.rs` checks this):
//!
//! - [`base`]: leaf helpers every component shares: durations and numbers as the pipeline file
//!   writes them, [`base::Secret`], and the one retry [`base::Backoff`].
//! - [`event`]: the interaction event, the record every stage carries.
//! - [`dead_letter`]: a message the pipeline could not use, with its reason and source.
//! - [`script`]: the sandboxed Rhai engine every script runs in, and script errors with positions.
//! - [`codec`]: the format payloads are in (JSON), built once: bytes to records and back, the
//!   same for every transport and command.
//! - [`telemetry`]: the counters, latency and reload status every component reports through, and
//!   the progress log.
//! - [`transport`]: moves batches from the generator to the consumer, through Kafka
//!   ([`transport::kafka`]) or the in-process [`transport::embedded`] queue, and reads history
//!   back for a backfill ([`transport::History`]).
//! - [`store`]: where raw events, metric partials, alert history and dead letters land: MongoDB
//!   ([`store::mongo`]) or the embedded SQLite store ([`store::embedded`]), by role
//!   ([`store::RawEvents`], [`store::StateStore`]; the embedded store is also a history
//!   replay), with the row types it keeps.
//! - [`generator`]: turns the generator script into a sampling plan and runs the generating
//!   loop, paced by a token bucket.
//! - [`aggregate`]: windowed metrics described by Rhai scripts: the write side absorbs a batch
//!   into partial states per pane and partition that stay exact under replays; the query side
//!   merges them into a window's value.
//! - [`consumer`]: the transport-independent consumer: take a batch, validate it, store it with
//!   its metric partials and dead letters, then acknowledge it.
//! - [`alert`]: alert rules in Rhai, pending → firing → resolved, delivered to log, email and
//!   webhook channels, with state and history in the store.
//! - [`dashboard`]: the live page (axum + minijinja templates, server-sent events), JSON API and
//!   Prometheus exporter.
//! - [`config`]: loads the pipeline file (env-var interpolation, unknown keys rejected, errors
//!   with file:line) into the typed sections the components own.
//! - [`pipeline`]: the one compile step, the wiring of the components chosen on the command line,
//!   hot reload (one diff table of what applies live, reconnects or needs a restart) and the
//!   ordered shutdown.
//! - [`cli`]: the commands beside `runner run` as library calls: `runner generate` / `metrics`,
//!   `runner test`, `runner init`, `runner bench`, `runner top` (a terminal view of a running
//!   runner read from its API) and `runner docs` (the configuration reference generated from
//!   the config types' doc comments).

pub mod base;
pub mod event;

pub mod dead_letter;
pub mod script;

pub mod codec;
pub mod telemetry;

pub mod store;
pub mod transport;

pub mod generator;

pub mod aggregate;

pub mod alert;
pub mod consumer;

pub mod dashboard;

pub mod config;

pub mod pipeline;

pub mod cli;
