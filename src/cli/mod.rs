//! The command line as library calls `main.rs` makes: `runner run`'s choices ([`run`]), `runner generate` and
//! `metrics` ([`commands`]), `runner test` ([`testing`]), `runner init` ([`init`]), `runner top`
//! ([`top`]), `runner silence` ([`silence`]), `runner bench` ([`bench`]) and `runner docs` ([`docs`]).

pub mod bench;
pub mod commands;
pub mod docs;
pub mod init;
pub mod run;
pub mod silence;
pub mod testing;
pub mod top;
