//! The counters as one value, and the one list of them every view reads.

/// A point-in-time copy of [`Stats`]. Its counters, listed once in [`Snapshot::counters`], are
/// what every view reads: the health API and alert conditions (as JSON, by field name) and the
/// Prometheus exporter (by counter name), so the views cannot drift apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Events the generator handed to the transport.
    pub generated: u64,
    /// Events the broker acknowledged (the embedded queue acknowledges on enqueue).
    pub delivered: u64,
    /// Events the broker finally refused after librdkafka's retries.
    pub delivery_failed: u64,
    /// Messages the consumer received, good or bad.
    pub consumed: u64,
    /// Events newly written to the store.
    pub stored: u64,
    /// Events the store already had (replays), skipped by the unique event_id.
    pub duplicates: u64,
    /// Messages that were not usable events, stored as dead letters.
    pub rejected: u64,
    /// Store writes that failed and were retried.
    pub store_retries: u64,
    /// Bytes of raw records sent to the store, as the store encodes them (BSON documents, or the
    /// embedded store's JSON rows); replays included.
    pub raw_bytes_written: u64,
    /// Bytes of metric partial state sent to the store by checkpoints (each changed pane's
    /// encoded state with its key).
    pub state_bytes_written: u64,
    /// Checkpoints: metric partials written, and the batches they include acknowledged (after
    /// every batch when caught up, at most once per `consumer.checkpoint_interval` when behind).
    pub checkpoints: u64,
    /// Events a metric script failed on (not counted in that metric).
    pub script_errors: u64,
    /// Events later than a metric's allowed lateness (not counted in that metric).
    pub late_events: u64,
    /// Alert notifications a channel accepted.
    pub notifications_sent: u64,
    /// Alert notifications given up after their channel's retries (or refused by a full queue).
    pub notifications_failed: u64,
    /// Alert rule evaluations that failed (script error, metrics unreadable, state not stored).
    pub alert_errors: u64,
}

/// One counter of a [`Snapshot`], with the names each view shows it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The field name in the health JSON and alert conditions (`health.<field>`).
    pub field: &'static str,
    /// The Prometheus name, without the `runner_` prefix and `_total` suffix.
    pub metric: &'static str,
    pub help: &'static str,
    pub value: u64,
}

impl Snapshot {
    /// Every counter, in one list (the destructuring makes a new field a compile error here).
    pub fn counters(&self) -> [Counter; 16] {
        let Snapshot {
            generated,
            delivered,
            delivery_failed,
            consumed,
            stored,
            duplicates,
            rejected,
            store_retries,
            raw_bytes_written,
            state_bytes_written,
            checkpoints,
            script_errors,
            late_events,
            notifications_sent,
            notifications_failed,
            alert_errors,
        } = *self;
        let c = |field, metric, help, value| Counter {
            field,
            metric,
            help,
            value,
        };
        [
            c(
                "generated",
                "events_generated",
                "Events the generator produced",
                generated,
            ),
            c(
                "delivered",
                "events_delivered",
                "Events the transport acknowledged",
                delivered,
            ),
            c(
                "delivery_failed",
                "events_delivery_failed",
                "Events the broker refused after retries",
                delivery_failed,
            ),
            c(
                "consumed",
                "messages_consumed",
                "Messages the consumer received",
                consumed,
            ),
            c(
                "stored",
                "events_stored",
                "Events newly written to the store",
                stored,
            ),
            c(
                "duplicates",
                "events_duplicate",
                "Replayed events the store already had",
                duplicates,
            ),
            c(
                "rejected",
                "messages_rejected",
                "Messages that were not usable events (dead-lettered)",
                rejected,
            ),
            c(
                "store_retries",
                "store_retries",
                "Store writes retried",
                store_retries,
            ),
            c(
                "raw_bytes_written",
                "store_raw_bytes_written",
                "Bytes of raw records sent to the store",
                raw_bytes_written,
            ),
            c(
                "state_bytes_written",
                "store_state_bytes_written",
                "Bytes of metric partial state sent to the store",
                state_bytes_written,
            ),
            c(
                "checkpoints",
                "checkpoints",
                "Metric partials written with the batches they include acknowledged",
                checkpoints,
            ),
            c(
                "script_errors",
                "script_errors",
                "Events a metric script failed on",
                script_errors,
            ),
            c(
                "late_events",
                "late_events",
                "Events later than a metric's allowed lateness",
                late_events,
            ),
            c(
                "notifications_sent",
                "alert_notifications_sent",
                "Alert notifications a channel accepted",
                notifications_sent,
            ),
            c(
                "notifications_failed",
                "alert_notifications_failed",
                "Alert notifications given up after retries",
                notifications_failed,
            ),
            c(
                "alert_errors",
                "alert_errors",
                "Alert rule evaluations that failed",
                alert_errors,
            ),
        ]
    }

    /// The counters as one JSON object, with the fields of `extra` (an object) added.
    pub fn json_with(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut all: serde_json::Map<String, serde_json::Value> = self
            .counters()
            .iter()
            .map(|c| (c.field.to_string(), serde_json::Value::from(c.value)))
            .collect();
        if let serde_json::Value::Object(extra) = extra {
            all.extend(extra);
        }
        serde_json::Value::Object(all)
    }
}
