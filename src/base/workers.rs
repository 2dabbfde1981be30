//! The threads a consumer gives its CPU-heavy work per batch (encoding for the store, applying
//! the metrics, encoding their partials), so one process uses every core it is given. The async
//! runtime's threads only wait for them: a long computation on a runtime thread would hold up
//! the tasks queued behind it there (the consumer's reader and writer hand batches to each other,
//! and the runtime keeps such a pair on one thread), so nothing would run side by side.

use std::sync::Arc;

/// A pool of worker threads, or none (all work on the caller's thread). Cheap to clone.
#[derive(Clone, Default)]
pub struct Workers(Option<Arc<rayon::ThreadPool>>);

impl Workers {
    /// `threads` worker threads; 0 or 1: none, the caller does the work. A pool that cannot
    /// start is reported, and the caller does the work.
    pub fn new(threads: usize) -> Workers {
        if threads <= 1 {
            return Workers(None);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("worker-{i}"))
            .build();
        match pool {
            Ok(pool) => Workers(Some(Arc::new(pool))),
            Err(e) => {
                tracing::warn!("cannot start {threads} worker threads ({e}); the consumer does its work on its own threads");
                Workers(None)
            }
        }
    }

    /// How many threads share the work.
    pub fn threads(&self) -> usize {
        self.0.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Runs `f` on the pool and waits for it (told whether it runs there, so it can split its
    /// work with rayon's parallel iterators); without a pool, on this thread. On the
    /// multi-threaded runtime the wait hands this thread's other tasks to another thread first.
    pub fn run<R: Send>(&self, f: impl FnOnce(bool) -> R + Send) -> R {
        let Some(pool) = &self.0 else { return f(false) };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        match multi_thread {
            true => tokio::task::block_in_place(|| pool.install(|| f(true))),
            false => pool.install(|| f(true)),
        }
    }
}

/// `f` of each of `items`, in order: side by side on the pool running this (`parallel`, as
/// [`Workers::run`] tells it), else one after the other on this thread.
pub fn map_each<T: Sync, R: Send>(
    parallel: bool,
    items: &[T],
    f: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    match parallel {
        true => items.par_iter().with_min_len(64).map(f).collect(),
        false => items.iter().map(f).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_pool_only_when_there_is_one() {
        let on_pool =
            |w: &Workers| w.run(|parallel| (parallel, rayon::current_thread_index().is_some()));
        assert_eq!(on_pool(&Workers::new(1)), (false, false));
        assert_eq!(on_pool(&Workers::new(2)), (true, true));
        assert_eq!(Workers::new(3).threads(), 3);
    }

    /// The consumer's reader and writer hand batches to each other and so share a runtime
    /// thread; one waiting for the pool must not hold up the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_runtime_thread_waiting_for_the_pool_lets_its_other_tasks_run() {
        let waited = tokio::spawn(async {
            let workers = Workers::new(2);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // Queued on this runtime's only thread, which then waits for the pool.
            let other = tokio::spawn(async move { tx.send(()).unwrap() });
            let waited =
                workers.run(move |_| rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
            other.await.unwrap();
            waited
        });
        assert!(
            waited.await.unwrap(),
            "the queued task never ran while the pool worked"
        );
    }
}
