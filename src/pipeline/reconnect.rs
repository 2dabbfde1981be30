//! Connection settings changed by a reload (`[kafka]`, `[mongodb]`, `[embedded]`, `[consumer]`)
//! rebuild only the parts that hold those connections, draining them first:
//!
//! 1. connect what is new (broker, store) while the old keeps running, so a bad setting changes
//!    nothing and is reported like any rejected reload;
//! 2. hand the generator its new publisher; it flushes the old one between two batches;
//! 3. drain the consumer: it reads until caught up, stores, commits and leaves the group;
//! 4. switch the store and start a consumer on the new settings, which resumes from the
//!    committed offsets (and reloads metric state from the store).
//!
//! The generator itself keeps running (its sequence, rate and count carry on), as do the
//! dashboard and alerting, which read through the [`Switchable`] store.

use super::backends::{self, connect_transport, kafka_subscriber};
use super::diff::{Diff, Reconnects};
use super::Components;
use crate::aggregate::{backfill, Aggregator, MetricSet};
use crate::config::{Pipeline, PipelineConfig};
use crate::consumer::{self, StopWhen};
use crate::generator::Swap;
use crate::store::Switchable;
use crate::telemetry::ReloadStatus;
use crate::telemetry::Stats;
use crate::transport::Subscriber;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the consuming side needs, and the settings it runs with now.
pub(super) struct Plane {
    pub config: PipelineConfig,
    pub components: Components,
    pub stats: Arc<Stats>,
    pub store: Arc<Switchable>,
    pub metrics: watch::Receiver<Arc<MetricSet>>,
    /// The run's own stop conditions.
    pub until: StopWhen,
    /// New publishers for the generator (none without a generator in this process).
    pub publishers: Option<mpsc::Sender<Swap>>,
    pub reload_status: Arc<Mutex<ReloadStatus>>,
}

struct RunningConsumer {
    task: JoinHandle<anyhow::Result<()>>,
    drain: CancellationToken,
}

/// Runs the consumer (if any) until the run ends, rebuilding it when a reload changes its
/// connection settings.
pub(super) async fn supervise(
    mut plane: Plane,
    first: Option<Box<dyn Subscriber>>,
    mut reloads: watch::Receiver<Pipeline>,
) -> anyhow::Result<()> {
    let mut consumer = first.map(|s| start_consumer(&plane, s));
    let mut reloads_open = true;
    loop {
        tokio::select! {
            finished = wait(&mut consumer, &plane) => return finished,
            changed = reloads.changed(), if reloads_open => {
                if changed.is_err() {
                    reloads_open = false;
                    continue;
                }
                let next = reloads.borrow_and_update().config.clone();
                let what = Diff::of(&plane.config, &next).reconnects();
                if what == Reconnects::default() {
                    continue;
                }
                match rebuild(&mut plane, &mut consumer, next, &what).await {
                    Ok(()) => tracing::info!(?what, "reconnected with the reloaded settings"),
                    // The old consumer failed while draining: that is the pipeline's failure.
                    Err(e) if consumer.is_none() && plane.components.consumer => return Err(e),
                    Err(e) => {
                        let error = format!("cannot apply the new connection settings ({e:#}); the running connections stay");
                        tracing::error!("{error}");
                        let mut s = plane.reload_status.lock().unwrap();
                        s.failures += 1;
                        s.last_error = Some(error);
                    }
                }
            }
        }
    }
}

/// Waits for the consumer to end on its own; with no consumer, for the run to end.
async fn wait(consumer: &mut Option<RunningConsumer>, plane: &Plane) -> anyhow::Result<()> {
    match consumer {
        Some(c) => (&mut c.task).await?,
        None if plane.components.consumer => std::future::pending().await,
        None => {
            tokio::select! {
                _ = plane.until.stop.cancelled() => {}
                _ = plane.until.producers_done.cancelled() => {}
            }
            Ok(())
        }
    }
}

fn start_consumer(plane: &Plane, subscriber: Box<dyn Subscriber>) -> RunningConsumer {
    let drain = CancellationToken::new();
    let until = StopWhen {
        drain: drain.clone(),
        ..plane.until.clone()
    };
    let opened = plane.store.opened();
    let store = opened.store.clone();
    let stats = plane.stats.clone();
    let cfg = plane.config.consumer.clone();
    let metrics = plane.metrics.clone();
    let mut aggregator = Aggregator::new(metrics.borrow().clone(), stats.clone())
        .with_session_tables_every(cfg.session_state_interval);
    // The backfill lives as long as this consumer: the next one resumes it from the store.
    let backfill_stop = CancellationToken::new();
    let history = match plane.config.backfill.enabled {
        true => backends::history(&plane.config, &opened)
            .inspect_err(|why| tracing::warn!("metrics added while running start empty: {why}"))
            .ok(),
        false => None,
    };
    if let Some(history) = history {
        let (backfiller, _) = backfill::spawn(
            history,
            store.clone(),
            cfg.validation.screen(),
            plane.config.backfill.clone(),
            backfill_stop.clone(),
        );
        aggregator = aggregator.with_backfill(backfiller);
    }
    let task = tokio::spawn(async move {
        let result = consumer::run(
            subscriber,
            store,
            Some(aggregator),
            Some(metrics),
            stats,
            &cfg,
            until,
        )
        .await;
        backfill_stop.cancel();
        result
    });
    RunningConsumer { task, drain }
}

async fn rebuild(
    plane: &mut Plane,
    consumer: &mut Option<RunningConsumer>,
    next: PipelineConfig,
    what: &Reconnects,
) -> anyhow::Result<()> {
    // 1. Connect first: a broker or store that cannot be reached leaves everything as it was.
    let new_store = match what.store && plane.components.consumer {
        true => Some(backends::open_store(&next).await?),
        false => None,
    };
    let in_process = backends::in_process(&next);
    let rebuild_transport = what.transport || (what.consumer && in_process);
    let (publisher, embedded_subscriber) = match rebuild_transport {
        // The embedded queue connects both ends at once; Kafka's consumer joins its group later,
        // once the old one has left, so the two never split the partitions.
        true => connect_transport(&next, plane.components, &plane.stats, in_process).await?,
        false => (None, None),
    };

    // 2. The generator moves to the new transport between two batches, flushing the old one.
    if let (Some(publisher), Some(swaps)) = (publisher, &plane.publishers) {
        let (done, swapped) = oneshot::channel();
        if swaps.send((publisher, done)).await.is_ok() {
            let _ = swapped.await; // an error means the generator has finished: nothing to move
        }
    }

    // 3. Drain the consumer: everything published so far is stored and committed.
    let consumer_changes = what.store || what.consumer || rebuild_transport;
    if consumer_changes {
        if let Some(c) = consumer.take() {
            c.drain.cancel();
            c.task.await??;
        }
    }

    // 4. Switch the store, and consume with the new settings.
    if let Some(s) = new_store {
        plane.store.replace(s);
    }
    plane.config = next;
    if consumer_changes && plane.components.consumer && !plane.until.stop.is_cancelled() {
        let subscriber = match embedded_subscriber {
            Some(s) => s,
            None => kafka_subscriber(&plane.config, &plane.stats)?,
        };
        *consumer = Some(start_consumer(plane, subscriber));
    }
    Ok(())
}
