//! The rows the store keeps besides raw events: metric partial states and alert history. They
//! live here, not in the components that fill them, so the store depends on no component.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The pane start of rows that belong to no time slot (a metric's watermark records): past every
/// retention cutoff, so retention never deletes them.
pub const TIMELESS_PANE: i64 = i64::MAX - 1;

/// One stored partial state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaneRecord {
    pub metric: String,
    /// Pane start, ms since the epoch.
    pub pane_start: i64,
    pub partition: i32,
    /// Highest offset of `partition` included (-1: none, or no offsets).
    pub offset: i64,
    pub state: Value,
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
}
