//! One shutdown for every task of a running pipeline, in a stated order (as mini-redis passes one
//! `Shutdown` to every connection). The order is what keeps data whole:
//!
//! 1. **generator**: stops generating and flushes (every delivery report in);
//! 2. **consumer**: stores what it read, commits, leaves the group;
//! 3. **dashboard**: serves until then, so the last values are visible;
//! 4. **alerting**: evaluates until the consumer's last batch is in, so it sees final values;
//! 5. **reload**: applies new versions until nothing is left to apply them to;
//! 6. **progress**: logs its final line last, with the final totals.
//!
//! A stop request (Ctrl-C, `--for`, a failing task) reaches steps 1 to 3 at once; the later steps
//! are told only once every step before them has finished.

use anyhow::Context;
use std::future::Future;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A task's place in the shutdown order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Generator,
    Consumer,
    Dashboard,
    Results,
    Alerting,
    Reload,
    Progress,
}

impl Step {
    /// The order tasks are stopped and awaited in.
    pub const ORDER: [Step; 7] = [
        Step::Generator,
        Step::Consumer,
        Step::Dashboard,
        Step::Results,
        Step::Alerting,
        Step::Reload,
        Step::Progress,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Generator => "generator",
            Step::Consumer => "consumer",
            Step::Results => "results",
            Step::Dashboard => "dashboard",
            Step::Alerting => "alerting",
            Step::Reload => "reload",
            Step::Progress => "progress",
        }
    }

    /// Whether a stop request reaches this step directly (the others wait for their turn).
    fn stops_on_request(self) -> bool {
        self <= Step::Dashboard
    }
}

/// What every task is handed to learn when to stop.
#[derive(Clone)]
pub struct Shutdown {
    requested: CancellationToken,
    /// One token per step that stops in turn (results, alerting, reload, progress).
    in_turn: [CancellationToken; 4],
}

impl Shutdown {
    /// A shutdown that starts when `requested` fires (or a task fails).
    pub fn new(requested: CancellationToken) -> Shutdown {
        Shutdown {
            requested,
            in_turn: Default::default(),
        }
    }

    /// The signal `step`'s task stops on.
    pub fn signal(&self, step: Step) -> CancellationToken {
        match step {
            s if s.stops_on_request() => self.requested.clone(),
            Step::Results => self.in_turn[0].clone(),
            Step::Alerting => self.in_turn[1].clone(),
            Step::Reload => self.in_turn[2].clone(),
            _ => self.in_turn[3].clone(),
        }
    }

    /// Asks every task to stop, in order.
    pub fn request(&self) {
        self.requested.cancel();
    }

    fn release(&self, step: Step) {
        if !step.stops_on_request() {
            self.signal(step).cancel();
        }
    }
}

/// The tasks of one run, stopped and awaited in [`Step::ORDER`].
pub struct Tasks {
    shutdown: Shutdown,
    tasks: Vec<(Step, JoinHandle<anyhow::Result<()>>)>,
}

impl Tasks {
    pub fn new(shutdown: Shutdown) -> Tasks {
        Tasks {
            shutdown,
            tasks: Vec::new(),
        }
    }

    /// Runs `task` as `step`; it should return when `shutdown.signal(step)` fires.
    pub fn spawn(
        &mut self,
        step: Step,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.push((step, tokio::spawn(task)));
    }

    /// Whether a task runs as `step`.
    pub fn has(&self, step: Step) -> bool {
        self.tasks.iter().any(|(s, _)| *s == step)
    }

    /// Waits for the generator and consumer to finish (on their own bounds or a stop request),
    /// then stops the rest in order. The first failure is returned, naming its step; a failure
    /// also requests the stop, so the process ends with it.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        // The dashboard serves until stopped; a pipeline that ended on its own stops it too.
        let moves_events = self.has(Step::Generator) || self.has(Step::Consumer);
        let mut first_error = None;
        for step in Step::ORDER {
            if step == Step::Dashboard && moves_events {
                self.shutdown.request();
            }
            self.shutdown.release(step);
            let (now, later): (Vec<_>, Vec<_>) =
                self.tasks.into_iter().partition(|(s, _)| *s == step);
            self.tasks = later;
            for (_, task) in now {
                let result = task
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
                    .with_context(|| format!("{} failed", step.name()));
                if let Err(e) = result {
                    self.shutdown.request();
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn tasks_stop_in_the_stated_order() {
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let shutdown = Shutdown::new(CancellationToken::new());
        let mut tasks = Tasks::new(shutdown.clone());
        for step in [
            Step::Progress,
            Step::Reload,
            Step::Alerting,
            Step::Results,
            Step::Dashboard,
            Step::Consumer,
        ] {
            let (signal, stopped) = (shutdown.signal(step), stopped.clone());
            tasks.spawn(step, async move {
                signal.cancelled().await;
                if step == Step::Consumer {
                    // A consumer storing its last batches: alerting must still wait for it.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                stopped.lock().unwrap().push(step);
                Ok(())
            });
        }
        shutdown.request();
        tasks.finish().await.unwrap();
        let stopped = stopped.lock().unwrap().clone();
        // A stop request reaches the consumer and the dashboard at once; the rest stop in turn.
        assert_eq!(
            stopped[2..],
            [Step::Results, Step::Alerting, Step::Reload, Step::Progress],
            "{stopped:?}"
        );
        assert!(
            stopped[..2].contains(&Step::Consumer) && stopped[..2].contains(&Step::Dashboard),
            "{stopped:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_task_stops_the_others_and_its_error_names_the_step() {
        let shutdown = Shutdown::new(CancellationToken::new());
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn(Step::Generator, async { anyhow::bail!("broker refused") });
        let consumer = shutdown.signal(Step::Consumer);
        tasks.spawn(Step::Consumer, async move {
            consumer.cancelled().await;
            Ok(())
        });
        let err = tasks.finish().await.unwrap_err();
        assert_eq!(format!("{err:#}"), "generator failed: broker refused");
    }
}
