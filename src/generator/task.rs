//! The generator's loop: pace, sample a batch, publish it; on stop, flush what was published.
//! A reloaded script, rate or batch size applies from the next batch, and a reload that moves
//! the transport hands over a new publisher, which takes over between two batches. Each batch
//! asks the traffic (profile and scenarios) for the rate and what the scenarios change.

use super::rate::batch_for;
use super::traffic::Bursts;
use super::{Generator, GeneratorScript, Pacer, Tick};
use crate::telemetry::Stats;
use crate::transport::Publisher;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// What a reload may change in a running generator.
#[derive(Clone)]
pub struct Settings {
    pub script: GeneratorScript,
    pub rate: f64,
    pub batch_size: usize,
}

/// A new publisher for the generator, and how it says it has moved over.
pub type Swap = (Box<dyn Publisher>, oneshot::Sender<()>);

/// A generator ready to run.
pub struct GeneratorTask {
    /// The settings in force; a new value applies from the next batch.
    pub settings: watch::Receiver<Settings>,
    pub publisher: Box<dyn Publisher>,
    /// Publishers to move to when a reload changes the transport.
    pub swaps: mpsc::Receiver<Swap>,
    pub seed: Option<u64>,
    /// Stop after this many events.
    pub max_events: Option<u64>,
    /// How long the last flush may take.
    pub flush_timeout: Duration,
    pub stats: Arc<Stats>,
}

impl GeneratorTask {
    /// Generates until `stop` or `max_events`, then flushes (every delivery report in).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let GeneratorTask {
            settings: mut live,
            mut publisher,
            mut swaps,
            seed,
            max_events,
            flush_timeout,
            stats,
        } = self;
        let current = live.borrow_and_update().clone();
        let mut base_rate = current.rate;
        let mut generator = Generator::new(current.script, seed);
        let mut pacer = Pacer::new(current.rate);
        let mut batch_size = current.batch_size;
        // The profile and scenarios are timed from here, across reloads.
        let started = tokio::time::Instant::now();
        let started_ms = chrono::Utc::now().timestamp_millis();
        let mut bursts = Bursts::new(seed);
        let mut scenarios_on: Vec<String> = Vec::new();
        let mut remaining = max_events.unwrap_or(u64::MAX);
        let mut result = Ok(());
        let mut reloaded = false;
        let mut swap: Option<Swap> = None;
        while remaining > 0 && !stop.is_cancelled() {
            if reloaded || live.has_changed().unwrap_or(false) {
                reloaded = false;
                let next = live.borrow_and_update().clone();
                generator.set_script(next.script);
                base_rate = next.rate;
                batch_size = next.batch_size;
                tracing::info!(rate = next.rate, batch_size, "generator reloaded");
            }
            if let Some((next, done)) = swap.take().or_else(|| swaps.try_recv().ok()) {
                // A reload changed the transport: what went to the old one is delivered first.
                if let Err(e) = publisher.flush(flush_timeout).await {
                    result = Err(e);
                    break;
                }
                publisher = next;
                let _ = done.send(());
                tracing::info!("generator moved to the reloaded transport");
            }
            let traffic = generator
                .traffic()
                .at(started_ms, started.elapsed(), &mut bursts);
            if traffic.scenarios != scenarios_on {
                for s in traffic
                    .scenarios
                    .iter()
                    .filter(|s| !scenarios_on.contains(s))
                {
                    tracing::info!(scenario = %s, "scenario change starts");
                }
                for s in scenarios_on
                    .iter()
                    .filter(|s| !traffic.scenarios.contains(s))
                {
                    tracing::info!(scenario = %s, "scenario change ends");
                }
                scenarios_on = traffic.scenarios.clone();
            }
            let Some(rate) = traffic.rate(base_rate) else {
                // The traffic is stopped (a scenario's rate 0, a profile at 0) for now.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            };
            pacer.set_rate(rate);
            let n = (batch_for(rate, batch_size) as u64).min(remaining) as usize;
            tokio::select! {
                _ = pacer.acquire(n) => {}
                // A slow rate may wait long for its next batch; a reload should not.
                _ = live.changed() => {
                    reloaded = true;
                    continue;
                }
                // The move happens at the top of the loop, between batches.
                Some(next) = swaps.recv() => {
                    swap = Some(next);
                    continue;
                }
                _ = stop.cancelled() => break,
            }
            let mut batch = Vec::with_capacity(n);
            let tick = Tick {
                now_ms: chrono::Utc::now().timestamp_millis(),
                rate,
                effects: &traffic.effects,
            };
            generator.fill_at(n, &tick, &mut batch);
            let sent = batch.len();
            if sent > 0 {
                if let Err(e) = publisher.publish(batch).await {
                    result = Err(e);
                    break;
                }
            }
            stats.generated(sent);
            // Records a scenario held back count against --events too: it bounds the work.
            remaining -= n as u64;
        }
        let flushed = publisher.flush(flush_timeout).await;
        stats.flushed();
        result.and(flushed)
    }
}
