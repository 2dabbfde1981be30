//! One alert evaluator per pipeline, however many processes run it: evaluating takes a lease in
//! the store (a MongoDB document or an SQLite row with a holder and an expiry). The holder renews
//! it every half interval; the others try to take it as often, and one of them gets it once it
//! expires, so a dead evaluator is replaced within two intervals. The new holder reads the saved
//! rule states first, so it resumes where the last one stopped and re-sends nothing. Expiry is
//! the store's clock's business, and how long this process may act on the lease its monotonic
//! clock's: no replica's wall clock takes part, so a skewed one cannot hold the lease beside another.

//!
//! The lease is renewed by a task of its own ([`keep`]), beside the evaluation: an evaluation
//! that takes longer than the lease (many metrics on a slow store) must not let it lapse, or the
//! evaluator would drop what that evaluation found and start again from the stored states,
//! never firing a rule whose `for` is longer than one evaluation.

use super::AlertSet;
use crate::store::StateStore;
use crate::telemetry::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// This process's claim to the evaluator lease of one pipeline.
pub struct Lease {
    name: String,
    holder: String,
    /// Until when (by this process's monotonic clock) the lease is surely held, if it is.
    held_until: Option<Instant>,
    /// How many times this process has taken the lease.
    term: u64,
}

/// The lease as the evaluator reads it while [`keep`] renews it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    until: Option<Instant>,
    /// Changes each time this process takes the lease anew: the evaluator then reads the
    /// stored rule states, which another holder may have moved on meanwhile.
    pub term: u64,
}

impl Holding {
    /// Whether the lease is surely still this process's (see [`Lease::held`]).
    pub fn held(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() < t)
    }
}

impl Lease {
    /// The lease of `pipeline`'s alert evaluation.
    pub fn new(pipeline: &str) -> Lease {
        let holder = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Lease {
            name: format!("alerting:{pipeline}"),
            holder,
            held_until: None,
            term: 0,
        }
    }

    /// What the evaluator needs to know of this lease now.
    pub fn holding(&self) -> Holding {
        Holding {
            until: self.held_until,
            term: self.term,
        }
    }

    /// Renewed every half interval, a lease of one and a half intervals survives two missed
    /// renewals; once its holder is gone it expires within 1.5 intervals, and a standby trying
    /// every half interval takes it by two.
    pub fn ttl(interval: Duration) -> Duration {
        interval * 3 / 2
    }

    /// How often to renew (or try to take) the lease.
    pub fn every(interval: Duration) -> Duration {
        (interval / 2).max(Duration::from_millis(50))
    }

    /// Takes or renews the lease; true when this process holds it now. `Ok(true)` after
    /// `Ok(false)` means this process just became the evaluator.
    pub async fn renew(
        &mut self,
        store: &dyn StateStore,
        interval: Duration,
    ) -> anyhow::Result<bool> {
        let ttl = Self::ttl(interval);
        let asked = Instant::now();
        let held = store
            .take_lease(&self.name, &self.holder, ttl.as_millis() as i64)
            .await?;
        let was = self.held();
        // Counted from before the request: the store's copy may expire that early.
        self.held_until = held.then_some(asked + ttl);
        match (was, held) {
            (false, true) => {
                self.term += 1;
                tracing::info!(lease = %self.name, holder = %self.holder, "this process now evaluates the alert rules")
            }
            (true, false) => {
                tracing::warn!(lease = %self.name, "another process took the alert lease; this one stands by")
            }
            _ => {}
        }
        Ok(held)
    }

    /// Whether the lease is surely still this process's: notifications are sent only then, so
    /// a holder that stalled past its lease does not send beside the one that took over.
    pub fn held(&self) -> bool {
        self.held_until.is_some_and(|t| Instant::now() < t)
    }

    /// Gives the lease up (at shutdown), so a standby takes over at its next try.
    pub async fn release(&mut self, store: &dyn StateStore) {
        if self.held_until.take().is_some() {
            if let Err(e) = store.take_lease(&self.name, &self.holder, 0).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot give the alert lease up; a standby takes it when it expires");
            }
        }
    }
}

/// Renews `lease` every [`Lease::every`] of the rules' interval while there are active rules,
/// publishing what it holds, until `stop`; then gives it up.
pub fn keep(
    mut lease: Lease,
    store: Arc<dyn StateStore>,
    mut rules: watch::Receiver<Arc<AlertSet>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> (watch::Receiver<Holding>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(lease.holding());
    let task = tokio::spawn(async move {
        let mut interval = rules.borrow_and_update().config.interval;
        let mut ticker = super::ticker(Lease::every(interval));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let set = rules.borrow_and_update().clone();
            if set.config.interval != interval {
                interval = set.config.interval;
                ticker = super::ticker(Lease::every(interval));
            }
            if !set.is_active() {
                continue;
            }
            // Failing, the lease lapses by itself if this goes on; meanwhile nothing changes.
            if let Err(e) = lease.renew(&*store, interval).await {
                stats.alert_error("(alert lease)", &format!("{e:#}"));
            }
            tx.send_replace(lease.holding());
        }
        lease.release(&*store).await;
        tx.send_replace(lease.holding());
    });
    (rx, task)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_holder_is_replaced_within_two_intervals() {
        let interval = Duration::from_secs(5);
        // The worst case: the holder dies just after renewing; its lease runs out after the ttl,
        // and a standby's next try comes at most one renewal period later.
        assert!(Lease::ttl(interval) + Lease::every(interval) <= interval * 2);
        // It survives two missed renewals before it lapses.
        assert!(Lease::ttl(interval) > Lease::every(interval) * 2);
    }
}
