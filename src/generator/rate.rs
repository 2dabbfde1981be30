//! Holds a generation rate without drift: batches are scheduled on an absolute timeline
//! (start + events sent / rate), so time spent producing a batch does not slow the rate down.

use std::time::Duration;
use tokio::time::Instant;

/// How far behind schedule the pacer may fall before it forgives the debt instead of bursting.
const MAX_BACKLOG: Duration = Duration::from_secs(1);

/// A token bucket expressed as a schedule.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    start: Instant,
    sent: f64,
}

impl Pacer {
    /// `rate` in events per second; 0 means as fast as possible.
    pub fn new(rate: f64) -> Self {
        Pacer { rate, start: Instant::now(), sent: 0.0 }
    }

    /// Changes the rate from now on, without a burst or a pause.
    pub fn set_rate(&mut self, rate: f64) {
        if rate != self.rate {
            *self = Pacer::new(rate);
        }
    }

    /// Waits until `n` more events may be sent.
    pub async fn acquire(&mut self, n: usize) {
        if self.rate <= 0.0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(self.sent / self.rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else if now - due > MAX_BACKLOG {
            // The consumer of our batches stalled; resume at the rate rather than catching up at once.
            self.start = now;
            self.sent = 0.0;
        }
        self.sent += n as f64;
    }
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
    async fn zero_rate_never_waits() {
        let mut p = Pacer::new(0.0);
        let t0 = Instant::now();
        p.acquire(1_000_000).await;
        assert_eq!(Instant::now(), t0);
    }
}
