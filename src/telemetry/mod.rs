//! Every observable event in the pipeline goes through here: one method bumps the counter and
//! writes the log line, so metrics and logs never drift apart.

mod latency;
pub mod logging;
pub mod memory;
mod progress;
mod reload;
mod snapshot;

pub use progress::report_progress;
pub use reload::ReloadStatus;
pub use snapshot::{Counter, Snapshot};

use crate::dead_letter::{DeadLetter, Reason};
use latency::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters shared by every component of one running pipeline.
#[derive(Debug, Default)]
pub struct Stats {
    generated: AtomicU64,
    delivered: AtomicU64,
    delivery_failed: AtomicU64,
    consumed: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    /// Replayed events not yet reported in a summary line.
    replays: std::sync::Mutex<Summary>,
    rejected: AtomicU64,
    store_retries: AtomicU64,
    raw_bytes_written: AtomicU64,
    state_bytes_written: AtomicU64,
    checkpoints: AtomicU64,
    script_errors: AtomicU64,
    late_events: AtomicU64,
    notifications_sent: AtomicU64,
    notifications_failed: AtomicU64,
    alert_errors: AtomicU64,
    /// Dead letters stored, by reason (indexed like `Reason::ALL`).
    dead_letters: [AtomicU64; Reason::ALL.len()],
    /// Since when store writes have been failing (cleared by the next success).
    store_failing_since: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// From the first message consumed to the last batch stored.
    busy: Span,
    /// From the first batch generated to the generator's last flush.
    publishing: Span,
    /// From an event's timestamp to the consumer reading it from the transport.
    read_latency: std::sync::Mutex<Histogram>,
    /// From an event's timestamp to its batch being durable in the store (raw and metrics).
    visible_latency: std::sync::Mutex<Histogram>,
    /// Each assigned Kafka partition's end offset and how far this consumer is behind it.
    lag: std::sync::Mutex<Vec<PartitionLag>>,
    /// The members of the consumer group as the broker last described them.
    group: std::sync::Mutex<Vec<GroupMember>>,
}

/// One assigned partition as the consumer last measured it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// The offset the next message written to the partition gets.
    pub end: i64,
    /// Messages between this consumer's position and `end`.
    pub lag: i64,
}

/// A member of the consumer group and the partitions it was assigned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupMember {
    pub id: String,
    pub client_id: String,
    pub host: String,
    pub partitions: Vec<i32>,
}

/// Counts of a repeated event, reported at most once per [`Summary::EVERY`]: the first
/// occurrence at once, the rest summed into the next line.
#[derive(Debug, Default)]
struct Summary {
    /// When the last line was written, and what was counted since.
    last: Option<Instant>,
    pending: u64,
}

impl Summary {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts `n`; returns what to report (the count and the time it covers) when a line is due.
    fn add(&mut self, n: u64, now: Instant) -> Option<(u64, Duration)> {
        self.pending += n;
        let since = self.last.map(|t| now.duration_since(t));
        if since.is_some_and(|s| s < Self::EVERY) {
            return None;
        }
        self.last = Some(now);
        Some((std::mem::take(&mut self.pending), since.unwrap_or_default()))
    }
}

/// When some work first started and last made progress.
#[derive(Debug, Default)]
struct Span(std::sync::Mutex<Option<(Instant, Instant)>>);

impl Span {
    fn begin(&self) {
        let mut span = self.0.lock().unwrap();
        if span.is_none() {
            let now = Instant::now();
            *span = Some((now, now));
        }
    }

    fn extend(&self) {
        if let Some((_, last)) = self.0.lock().unwrap().as_mut() {
            *last = Instant::now();
        }
    }

    fn length(&self) -> Duration {
        self.0
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |(first, last)| last - first)
    }
}

impl Stats {
    pub fn new() -> Arc<Self> {
        Arc::new(Stats::default())
    }

    pub fn generated(&self, n: usize) {
        self.generated.fetch_add(n as u64, Relaxed);
        self.publishing.begin();
    }

    pub fn delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Relaxed);
    }

    /// The generator's flush returned: every event it published has its delivery report.
    pub fn flushed(&self) {
        self.publishing.extend();
    }

    /// A message the broker would not take, after librdkafka's own retries.
    pub fn delivery_failed(&self, error: &dyn std::fmt::Display) {
        let n = self.delivery_failed.fetch_add(1, Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::error!(%error, failed_so_far = n, "kafka refused a message after retries");
        }
    }

    pub fn consumed(&self, n: usize) {
        self.consumed.fetch_add(n as u64, Relaxed);
        self.busy.begin();
    }

    /// Bytes sent to the store: `raw` of raw records, `state` of metric partials.
    pub fn bytes_written(&self, raw: u64, state: u64) {
        self.raw_bytes_written.fetch_add(raw, Relaxed);
        self.state_bytes_written.fetch_add(state, Relaxed);
    }

    /// A checkpoint was written (metric partials stored, its batches acknowledged).
    pub fn checkpointed(&self) {
        self.checkpoints.fetch_add(1, Relaxed);
        // A batch is done once its checkpoint is: the busy span runs to the last one.
        self.busy.extend();
    }

    /// A batch written: `stored` new events, `duplicates` already present.
    pub fn stored(&self, stored: u64, duplicates: u64) {
        self.stored.fetch_add(stored, Relaxed);
        if let Some(since) = self.store_failing_since.lock().unwrap().take() {
            tracing::info!(down_for = ?(chrono::Utc::now() - since).to_std().unwrap_or_default(), "the store is back; writes succeed again");
        }
        self.busy.extend();
        if duplicates > 0 {
            self.duplicates.fetch_add(duplicates, Relaxed);
            // A replay spans many batches: one summary line per interval, not one per batch.
            if let Some((skipped, over)) =
                self.replays.lock().unwrap().add(duplicates, Instant::now())
            {
                tracing::info!(skipped, over = ?over, total = self.duplicates.load(Relaxed), "skipped events already stored (replayed after a restart or rebalance)");
            }
        }
    }

    /// A message stored as a dead letter (after the store accepted it); never fatal.
    pub fn dead_lettered(&self, d: &DeadLetter) {
        let i = Reason::ALL
            .iter()
            .position(|r| *r == d.reason)
            .expect("every reason is listed");
        self.dead_letters[i].fetch_add(1, Relaxed);
        if d.reason == Reason::Late {
            return; // already reported by late_event
        }
        let n = self.rejected.fetch_add(1, Relaxed) + 1;
        if n <= 100 || n.is_power_of_two() {
            tracing::warn!(partition = d.partition, offset = d.offset, reason = d.reason.as_str(), detail = %d.detail,
                rejected_so_far = n, "a message that is not a usable event went to the dead letters");
        }
    }

    /// Since when store writes have been failing, if they are.
    pub fn store_failing_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self.store_failing_since.lock().unwrap()
    }

    /// Dead letters stored so far, per reason.
    pub fn dead_letters(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.dead_letters)
            .map(|(r, n)| (*r, n.load(Relaxed)))
            .collect()
    }

    /// A store write failed and will be retried.
    pub fn store_retry(&self, attempt: u32, wait: Duration, error: &dyn std::fmt::Display) {
        self.store_retries.fetch_add(1, Relaxed);
        self.store_failing_since
            .lock()
            .unwrap()
            .get_or_insert_with(chrono::Utc::now);
        tracing::warn!(attempt, retry_in = ?wait, %error, "store write failed; retrying (offsets are not committed until it succeeds)");
    }

    /// A metric script failed on an event; the event is left out of that metric only.
    pub fn script_error(&self, metric: &str, event_id: &str, error: &dyn std::fmt::Display) {
        let n = self.script_errors.fetch_add(1, Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::warn!(metric, event_id, %error, errors_so_far = n, "metric script failed on an event; the event is not counted in this metric");
        }
    }

    /// A `[[derive]]` failed on an event (counted with the script errors); the derived field is
    /// missing in that event, which goes on to the store and the metrics.
    pub fn derive_error(&self, field: &str, event_id: &str, error: &dyn std::fmt::Display) {
        let n = self.script_errors.fetch_add(1, Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::warn!(derived_field = field, event_id, %error, errors_so_far = n, "derivation failed on an event; the derived field is missing in it");
        }
    }

    /// An event arrived later than a metric's allowed lateness; that metric leaves it out.
    pub fn late_event(&self, metric: &str, event_id: &str, late_by_ms: i64) {
        let n = self.late_events.fetch_add(1, Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::warn!(
                metric,
                event_id,
                late_by_ms,
                late_so_far = n,
                "event later than the allowed lateness; not counted in this metric"
            );
        }
    }

    /// A channel accepted an alert notification.
    pub fn notification_sent(&self) {
        self.notifications_sent.fetch_add(1, Relaxed);
    }

    /// An alert notification could not be delivered on `channel`, after its retries.
    pub fn notification_failed(&self, channel: &str, alert: &str, error: &dyn std::fmt::Display) {
        let n = self.notifications_failed.fetch_add(1, Relaxed) + 1;
        tracing::error!(channel, alert, %error, failed_so_far = n, "alert notification not delivered");
    }

    /// Evaluating alert rule `rule` failed; its alerts keep their state until it works again.
    pub fn alert_error(&self, rule: &str, error: &dyn std::fmt::Display) {
        let n = self.alert_errors.fetch_add(1, Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::error!(rule, %error, errors_so_far = n, "alert rule evaluation failed; its alerts keep their state");
        }
    }

    /// A batch was read from the transport: records each event's latency from its own timestamp.
    pub fn read(&self, timestamps: impl Iterator<Item = i64>) {
        self.read_latency.lock().unwrap().record_since(timestamps);
    }

    /// A batch became durable: records each event's latency from its own timestamp.
    pub fn visible(&self, timestamps: impl Iterator<Item = i64>) {
        self.visible_latency
            .lock()
            .unwrap()
            .record_since(timestamps);
    }

    /// The consumer's lag per assigned partition, as last measured.
    pub fn set_lag(&self, lag: Vec<PartitionLag>) {
        *self.lag.lock().unwrap() = lag;
    }

    /// Messages behind the end of each assigned partition: (partition, lag).
    pub fn lag(&self) -> Vec<(i32, i64)> {
        self.lag
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.partition, p.lag))
            .collect()
    }

    /// Each assigned partition's end offset and lag, as last measured.
    pub fn partitions(&self) -> Vec<PartitionLag> {
        self.lag.lock().unwrap().clone()
    }

    /// The consumer group's members, as last described by the broker.
    pub fn set_group(&self, members: Vec<GroupMember>) {
        *self.group.lock().unwrap() = members;
    }

    pub fn group(&self) -> Vec<GroupMember> {
        self.group.lock().unwrap().clone()
    }

    /// Forgets the latencies recorded so far (to measure a steady state).
    pub fn reset_latency(&self) {
        *self.read_latency.lock().unwrap() = Histogram::default();
        *self.visible_latency.lock().unwrap() = Histogram::default();
    }

    /// Percentiles (ms) of event timestamp to read by the consumer: (p50, p99), if any.
    pub fn read_latency_ms(&self) -> Option<(u64, u64)> {
        self.read_latency.lock().unwrap().p50_p99()
    }

    /// Percentiles (ms) of event timestamp to durable in the store: (p50, p99), if any.
    pub fn visible_latency_ms(&self) -> Option<(u64, u64)> {
        self.visible_latency.lock().unwrap().p50_p99()
    }

    /// From the first message consumed to the last batch stored and checkpointed (zero before any).
    pub fn busy_span(&self) -> Duration {
        self.busy.length()
    }

    /// From the first batch generated to the generator's last flush (zero before any).
    pub fn publishing_span(&self) -> Duration {
        self.publishing.length()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generated: self.generated.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            delivery_failed: self.delivery_failed.load(Relaxed),
            consumed: self.consumed.load(Relaxed),
            stored: self.stored.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            store_retries: self.store_retries.load(Relaxed),
            raw_bytes_written: self.raw_bytes_written.load(Relaxed),
            state_bytes_written: self.state_bytes_written.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            script_errors: self.script_errors.load(Relaxed),
            late_events: self.late_events.load(Relaxed),
            notifications_sent: self.notifications_sent.load(Relaxed),
            notifications_failed: self.notifications_failed.load(Relaxed),
            alert_errors: self.alert_errors.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_summed_into_one_line_per_interval() {
        let mut s = Summary::default();
        let t0 = Instant::now();
        assert_eq!(
            s.add(5, t0),
            Some((5, Duration::ZERO)),
            "the first replay is reported at once"
        );
        let lines: Vec<_> = (1..=99)
            .filter_map(|i| s.add(1, t0 + Duration::from_millis(i * 50)))
            .collect();
        assert!(lines.is_empty(), "99 batches within 5 s: no line each");
        assert_eq!(
            s.add(1, t0 + Summary::EVERY),
            Some((100, Summary::EVERY)),
            "then one line with the sum"
        );
    }
}
