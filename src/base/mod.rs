//! Leaf helpers every component's config and code share, importing nothing else of the crate:
//! how durations and numbers are written in the pipeline file, secrets that never print, numbers
//! as people read them, the one stable hash, the one retry-with-backoff loop, a panic kept to its work, and the worker threads of CPU-heavy work.

mod backoff;
pub mod de;
mod guard;
mod hash;
mod secret;
mod short;
mod workers;

pub use backoff::Backoff;
pub use guard::catch_panic;
pub use hash::fnv1a;
pub use secret::Secret;
pub use short::{readable, readable_json, short};
pub use workers::{map_each, Workers};
