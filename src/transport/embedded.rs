//! The in-process transport: a bounded queue of batches between the generator and the consumer
//! of one process. A full queue makes the generator wait, so nothing is ever dropped.

use super::{Acknowledge, Batch, Checkpoint, Poll, Publisher, Subscriber};
use crate::event::Record;
use crate::telemetry::Stats;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A connected publisher/subscriber pair holding at most `capacity` batches in flight.
pub fn channel(
    capacity: usize,
    batch_size: usize,
    stats: Arc<Stats>,
) -> (EmbeddedPublisher, EmbeddedSubscriber) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        EmbeddedPublisher {
            tx,
            stats: stats.clone(),
        },
        EmbeddedSubscriber {
            rx,
            batch_size,
            pending: None,
            stats,
        },
    )
}

/// Generator side of the embedded queue.
pub struct EmbeddedPublisher {
    tx: mpsc::Sender<Vec<Record>>,
    stats: Arc<Stats>,
}

#[async_trait]
impl Publisher for EmbeddedPublisher {
    async fn publish(&mut self, batch: Vec<Record>) -> anyhow::Result<()> {
        let n = batch.len();
        self.tx
            .send(batch)
            .await
            .map_err(|_| anyhow::anyhow!("the embedded consumer has stopped; cannot publish"))?;
        self.stats.delivered(n);
        Ok(())
    }

    async fn flush(&mut self, _timeout: Duration) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Consumer side of the embedded queue.
pub struct EmbeddedSubscriber {
    rx: mpsc::Receiver<Vec<Record>>,
    batch_size: usize,
    /// A batch taken off the queue that did not fit the last poll.
    pending: Option<Vec<Record>>,
    stats: Arc<Stats>,
}

struct NoCommit;
impl Acknowledge for NoCommit {
    // Nothing to commit: a batch leaves the queue once, and the queue is not durable.
    fn acknowledge(&self, _: &Checkpoint) {}
}

#[async_trait]
impl Subscriber for EmbeddedSubscriber {
    async fn poll_batch(&mut self, wait: Duration) -> anyhow::Result<Poll> {
        let mut events = match self.pending.take() {
            Some(events) => events,
            None => match tokio::time::timeout(wait, self.rx.recv()).await {
                Err(_) => return Ok(Poll::Empty),
                Ok(None) => return Ok(Poll::Closed),
                Ok(Some(events)) => events,
            },
        };
        // Coalesce small generator batches up to the consumer's batch size.
        while events.len() < self.batch_size {
            match self.rx.try_recv() {
                Ok(more) if events.len() + more.len() <= self.batch_size => events.extend(more),
                Ok(more) => {
                    self.pending = Some(more);
                    break;
                }
                Err(_) => break,
            }
        }
        self.stats.consumed(events.len());
        Ok(Poll::Batch(Batch {
            events,
            sources: Vec::new(),
            revoked: Vec::new(),
            dead: Vec::new(),
            checkpoint: Checkpoint::default(),
        }))
    }

    fn acknowledger(&self) -> Arc<dyn Acknowledge> {
        Arc::new(NoCommit)
    }

    async fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}
