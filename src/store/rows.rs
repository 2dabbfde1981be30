//! The rows the store keeps besides raw events: metric partial states and alert history. They
//! live here, not in the components that fill them, so the store depends on no component.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The pane start of rows that belong to no time slot (a metric's watermark records): past every
/// retention cutoff, so retention never deletes them.
pub const TIMELESS_PANE: i64 = i64::MAX - 1;

/// The largest partial state a store is given, in bytes: MongoDB holds documents up to 16 MiB,
/// and the pane's other fields and the write's envelope need some room.
pub const MAX_STATE_BYTES: usize = 15 << 20;

/// One stored partial state.
#[derive(Debug, Clone, PartialEq)]
pub struct PaneRecord {
    pub metric: String,
    /// Pane start, ms since the epoch.
    pub pane_start: i64,
    pub partition: i32,
    /// Highest offset of `partition` included (-1: none, or no offsets).
    pub offset: i64,
    pub state: StateJson,
}

impl PaneRecord {
    /// Bytes it sends to a store: the encoded state, the metric's key and three numbers.
    pub fn bytes(&self) -> u64 {
        (self.state.as_str().len() + self.metric.len() + 8 + 4 + 8) as u64
    }
}

/// A partial state as both stores keep it: JSON text. Its writer encodes it straight to text
/// and its reader parses it straight from text; going through a `serde_json::Value` (a map node
/// and a key copy per entry, for a pane of 35,000 session keys every batch) cost the consumer
/// more than applying the events did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateJson(String);

impl StateJson {
    /// Encodes a state.
    pub fn encode<T: Serialize + ?Sized>(state: &T) -> StateJson {
        StateJson(serde_json::to_string(state).expect("a partial state always serializes"))
    }

    /// Text read back from a store; checked only when parsed.
    pub fn stored(text: String) -> StateJson {
        StateJson(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The state parsed into `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }

    /// The state as a JSON value (for tests and tools; readers parse into their own types).
    pub fn to_value(&self) -> serde_json::Result<Value> {
        self.parse()
    }

    /// The state as a number (watermarks and marks store a time).
    pub fn as_i64(&self) -> Option<i64> {
        self.0.trim().parse().ok()
    }
}

impl From<Value> for StateJson {
    fn from(v: Value) -> StateJson {
        StateJson(v.to_string())
    }
}

impl From<i64> for StateJson {
    fn from(v: i64) -> StateJson {
        StateJson(v.to_string())
    }
}

impl std::fmt::Display for StateJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A metric's final value over one window, as the results collection holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub metric: String,
    /// The window, `[window_start, window_end)` in ms since the epoch.
    pub window_start: i64,
    pub window_end: i64,
    pub value: Value,
}

/// An alert instance's identity: the labels its condition returned (an item id, a partition...).
pub type Labels = BTreeMap<String, String>;

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Pending → firing.
    Firing,
    /// Still firing after `repeat_interval`.
    Repeat,
    /// Firing → no longer holding.
    Resolved,
    /// Still firing, handed again to channels that must hear of it while it lasts
    /// (Alertmanager); not a notification to people, not kept as history.
    Refresh,
}

/// One notification, as sent to every channel of its rule (webhook bodies are this, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per notification: receivers may de-duplicate retries by it (`Idempotency-Key`).
    pub id: String,
    pub pipeline: String,
    pub alert: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// Why it is sent: `firing`, `repeat` or `resolved`.
    pub change: Change,
    pub severity: String,
    /// `alertname`, `severity`, the rule's labels and the instance's labels.
    pub labels: Labels,
    pub value: Option<f64>,
    /// The rule's message template, rendered.
    pub message: String,
    pub description: String,
    /// The instance's identity within its rule (its labels).
    pub fingerprint: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    /// When it was raised.
    pub at: DateTime<Utc>,
    pub channels: Vec<String>,
    /// The silence that kept it from being sent (it is kept as history all the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
    /// The alerts of a group notification (a route's `group_by`), each as its own notification;
    /// empty for a notification of one instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Notification>,
}

/// One label matcher, as Alertmanager's API writes it: `name` equal to `value` (or not, with
/// `is_equal = false`), or matching it as an anchored regular expression with `is_regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub is_regex: bool,
    #[serde(default = "equal")]
    pub is_equal: bool,
}

fn equal() -> bool {
    true
}

/// A silence (Alertmanager's): while `starts_at <= now < ends_at`, every alert instance whose
/// labels all of `matchers` match still changes state, but nothing is sent for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// The dashboard token's name that made it.
    pub created_by: String,
    pub comment: String,
    /// When it was made or last changed (expired early).
    pub updated_at: DateTime<Utc>,
    /// The token's name that expired it before its end, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}
