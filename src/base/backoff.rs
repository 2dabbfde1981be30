//! The one retry schedule every retry loop uses (connecting to Kafka and MongoDB, store writes,
//! alert deliveries): waits that double from a first wait up to a cap, without jitter (one
//! process retries one thing at a time), from `backon`'s exponential backoff. The loops stay
//! plain `loop`s: what they retry often borrows state mutably, which a retry combinator taking
//! a closure cannot hold across attempts.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// Doubling waits, counted.
#[derive(Debug)]
pub struct Backoff {
    waits: ExponentialBackoff,
    retries: u32,
}

impl Backoff {
    /// Waits from `first`, doubling up to `max`; `retries` of them at most (none: no end).
    pub fn new(first: Duration, max: Duration, retries: Option<usize>) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0);
        let builder = match retries {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        };
        Backoff {
            waits: builder.build(),
            retries: 0,
        }
    }

    /// The wait before the next attempt, or `None` once the retries are used up.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.waits.next()?;
        self.retries += 1;
        Some(wait)
    }

    /// Retries taken so far (the attempt under way is `retries() + 1`).
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stop_after_the_retries() {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(5),
        );
        let waits: Vec<u64> = std::iter::from_fn(|| b.next_wait()).map(ms).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        assert_eq!(b.retries(), 5);
        let mut endless = Backoff::new(Duration::from_secs(1), Duration::from_secs(10), None);
        assert_eq!(
            std::iter::from_fn(|| endless.next_wait()).take(100).count(),
            100
        );
    }
}
