//! Latency percentiles for the health API and the bench.

/// Latency percentiles without keeping samples: an HDR histogram of milliseconds, 3 significant
/// digits, from 1 ms up to an hour (a larger value counts as an hour).
#[derive(Debug)]
pub(super) struct Histogram(hdrhistogram::Histogram<u64>);

/// The longest latency told apart, in ms.
const LATENCY_MAX_MS: u64 = 3_600_000;

impl Default for Histogram {
    fn default() -> Self {
        Histogram(
            hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_MS, 3)
                .expect("valid histogram bounds"),
        )
    }
}

impl Histogram {
    /// Adds the milliseconds from each timestamp (Unix ms) to now.
    pub(super) fn record_since(&mut self, timestamps: impl Iterator<Item = i64>) {
        let now = chrono::Utc::now().timestamp_millis();
        for t in timestamps {
            self.0
                .saturating_record((now - t).clamp(0, LATENCY_MAX_MS as i64) as u64);
        }
    }

    pub(super) fn p50_p99(&self) -> Option<(u64, u64)> {
        if self.0.is_empty() {
            return None;
        }
        Some((
            self.0.value_at_quantile(0.50),
            self.0.value_at_quantile(0.99),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_the_recorded_values() {
        let mut h = Histogram::default();
        assert_eq!(h.p50_p99(), None);
        let now = chrono::Utc::now().timestamp_millis();
        // 99 events 10 ms old, one 5 s old, one older than the histogram's range.
        h.record_since(
            (0..98)
                .map(|_| now - 10)
                .chain([now - 5_000, now - 10 * LATENCY_MAX_MS as i64]),
        );
        let (p50, p99) = h.p50_p99().unwrap();
        assert!((10..=12).contains(&p50), "p50 {p50}");
        assert!((4_990..=5_020).contains(&p99), "p99 {p99}");
        assert_eq!(
            h.0.max(),
            h.0.highest_equivalent(LATENCY_MAX_MS),
            "an hour or more counts as an hour"
        );
    }
}
