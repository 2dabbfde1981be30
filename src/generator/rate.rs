//! Holds a generation rate without drift: each batch is due when the one before it was due plus
//! its size / rate, so time spent producing a batch does not slow the rate down, and a rate that
//! changes from batch to batch (a profile, a scenario) is followed without a burst or a pause.

use std::time::Duration;
use tokio::time::Instant;

/// How far behind schedule the pacer may fall before it forgives the debt instead of bursting.
const MAX_BACKLOG: Duration = Duration::from_secs(1);

/// A token bucket expressed as a schedule.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    /// When the next batch may go.
    due: Instant,
}

impl Pacer {
    /// `rate` in events per second; 0 means as fast as possible.
    pub fn new(rate: f64) -> Self {
        Pacer {
            rate,
            due: Instant::now(),
        }
    }

    /// Changes the rate from the next batch on, without a burst or a pause.
    pub fn set_rate(&mut self, rate: f64) {
        self.rate = rate;
    }

    /// Waits until `n` more events may be sent.
    pub async fn acquire(&mut self, n: usize) {
        if self.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        if self.due > now {
            tokio::time::sleep_until(self.due).await;
        } else if now - self.due > MAX_BACKLOG {
            // The consumer of our batches stalled; resume at the rate rather than catching up at once.
            self.due = now;
        }
        self.due += Duration::from_secs_f64(n as f64 / self.rate);
    }
}

/// How many events a batch at `rate` holds: at most `batch_size`, and about a tenth of a
/// second's worth, so a slow rate sends small batches often rather than a large one rarely.
pub fn batch_for(rate: f64, batch_size: usize) -> usize {
    if rate <= 0.0 {
        return batch_size;
    }
    ((rate / 10.0).ceil() as usize).clamp(1, batch_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_across_batches() {
        let mut p = Pacer::new(1000.0);
        let t0 = Instant::now();
        for _ in 0..11 {
            p.acquire(100).await;
        }
        // 1,100 events at 1,000/s: the 11th batch may start at 1.0 s.
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_rate_applies_from_the_next_batch_without_a_burst() {
        let mut p = Pacer::new(1000.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            p.acquire(100).await;
        }
        p.set_rate(100.0);
        for _ in 0..10 {
            p.acquire(100).await;
        }
        // 1,000 events at 1,000/s (the tenth batch due at 0.9 s), then ten of 100 at 100/s: the
        // first of them due at 1.0 s, the last at 1.0 + 9 s.
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    }

    #[test]
    fn slow_rates_send_small_batches() {
        assert_eq!(batch_for(1000.0, 100), 100);
        assert_eq!(batch_for(50.0, 100), 5);
        assert_eq!(batch_for(0.5, 100), 1);
        assert_eq!(batch_for(0.0, 100), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_never_waits() {
        let mut p = Pacer::new(0.0);
        let t0 = Instant::now();
        p.acquire(1_000_000).await;
        assert_eq!(Instant::now(), t0);
    }
}
