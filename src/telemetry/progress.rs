//! The progress line every few seconds.

use super::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Logs totals and rates every `every` until `stop` fires, then once more.
pub async fn report_progress(stats: Arc<Stats>, every: Duration, stop: CancellationToken) {
    let mut last = stats.snapshot();
    let mut last_at = Instant::now();
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.cancelled() => true,
        };
        let now = stats.snapshot();
        let secs = last_at.elapsed().as_secs_f64().max(1e-9);
        let rate = |a: u64, b: u64| ((a - b) as f64 / secs).round();
        tracing::info!(
            generated = now.generated,
            generated_per_s = rate(now.generated, last.generated),
            delivered = now.delivered,
            consumed = now.consumed,
            stored = now.stored,
            stored_per_s = rate(now.stored, last.stored),
            duplicates = now.duplicates,
            rejected = now.rejected,
            "progress"
        );
        if stopped {
            return;
        }
        last = now;
        last_at = Instant::now();
    }
}
