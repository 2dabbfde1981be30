//! One render for many viewers. Every open event stream of the same view (range and metric
//! filter) subscribes to one feed: a task renders the panels once per refresh and hands the same
//! text to all of them, and stops when the last viewer leaves. Reads behind a render are memoised
//! for a refresh, so a page load, a poll and the feed share them too.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One rendering of the panels; `seq` counts renders of its feed from 1, so a viewer (and the
/// load test) can tell that it missed none.
#[derive(Clone, Default)]
pub(super) struct Frame {
    pub seq: u64,
    pub html: Arc<str>,
}

/// Which page a feed renders.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) struct FeedKey {
    pub range: &'static str,
    pub metric: String,
}

/// The open feeds and how many viewers hold one.
#[derive(Default)]
pub(super) struct Hub {
    feeds: Mutex<HashMap<FeedKey, Arc<watch::Sender<Frame>>>>,
    clients: AtomicUsize,
}

/// Held by a viewer for as long as its stream is open; counts it out on drop.
pub(super) struct Seat {
    hub: Arc<Hub>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.hub.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A viewer beyond `[dashboard] max_clients`.
#[derive(Debug)]
pub(super) struct Full {
    pub limit: usize,
}

impl Hub {
    /// Viewers with an open event stream.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Takes a seat if fewer than `limit` are taken.
    pub fn seat(self: &Arc<Self>, limit: usize) -> Result<Seat, Full> {
        self.clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .map(|_| Seat { hub: self.clone() })
            .map_err(|_| Full { limit })
    }

    /// The feed of `key`, started with `start` (given the sender to publish on) if none runs.
    /// A new viewer of a running feed sees its latest frame at once.
    pub fn subscribe(&self, key: FeedKey, start: impl FnOnce(Arc<watch::Sender<Frame>>)) -> watch::Receiver<Frame> {
        let mut feeds = self.feeds.lock().unwrap();
        if let Some(tx) = feeds.get(&key) {
            let mut rx = tx.subscribe();
            if rx.borrow().seq > 0 {
                rx.mark_changed();
            }
            return rx;
        }
        let tx = Arc::new(watch::Sender::new(Frame::default()));
        let rx = tx.subscribe();
        feeds.insert(key, tx.clone());
        start(tx);
        rx
    }

    /// Called by a feed after each frame: true when nobody watches any more, in which case the
    /// feed is removed (under the same lock a subscriber takes, so none can join a feed that is
    /// about to stop).
    pub fn retire_if_unwatched(&self, key: &FeedKey, tx: &watch::Sender<Frame>) -> bool {
        let mut feeds = self.feeds.lock().unwrap();
        if tx.receiver_count() > 0 {
            return false;
        }
        feeds.remove(key);
        true
    }

    /// Feeds running now.
    pub fn feeds(&self) -> usize {
        self.feeds.lock().unwrap().len()
    }
}

/// Values computed at most once per `ttl` per key; callers arriving while one is computed wait
/// for it instead of computing it again.
pub(super) struct Memo<K, V> {
    slots: Mutex<HashMap<K, Arc<tokio::sync::Mutex<Option<(Instant, V)>>>>>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo { slots: Mutex::new(HashMap::new()) }
    }
}

/// Entries unused this long are dropped (keys of a reloaded metric set, ranges nobody views).
const MEMO_IDLE: Duration = Duration::from_secs(600);

impl<K: Eq + Hash + Clone, V: Clone> Memo<K, V> {
    pub async fn get<F: Future<Output = V>>(&self, key: K, ttl: Duration, compute: impl FnOnce() -> F) -> V {
        let slot = {
            let mut slots = self.slots.lock().unwrap();
            if slots.len() > 64 {
                slots.retain(|_, s| s.try_lock().map(|v| v.as_ref().is_some_and(|(at, _)| at.elapsed() < MEMO_IDLE)).unwrap_or(true));
            }
            slots.entry(key).or_default().clone()
        };
        let mut value = slot.lock().await;
        if let Some((at, v)) = &*value {
            if at.elapsed() < ttl {
                return v.clone();
            }
        }
        let v = compute().await;
        *value = Some((Instant::now(), v.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn memo_computes_once_per_ttl_for_concurrent_callers() {
        let memo: Arc<Memo<&str, u32>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let calls = (0..20).map(|_| {
            let (memo, runs) = (memo.clone(), runs.clone());
            tokio::spawn(async move {
                memo.get("k", Duration::from_secs(60), || async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            })
        });
        for c in calls.collect::<Vec<_>>() {
            assert_eq!(c.await.unwrap(), 1);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(memo.get("k", Duration::ZERO, || async { 7 }).await, 7, "an expired value is computed again");
    }

    #[test]
    fn seats_beyond_the_limit_are_refused_and_given_back_on_drop() {
        let hub = Arc::new(Hub::default());
        let a = hub.seat(2).unwrap();
        let _b = hub.seat(2).unwrap();
        assert_eq!(hub.seat(2).err().map(|f| f.limit), Some(2));
        drop(a);
        assert!(hub.seat(2).is_ok());
    }

    #[test]
    fn one_feed_per_view_until_its_last_viewer_leaves() {
        let hub = Hub::default();
        let key = FeedKey { range: "5m", metric: String::new() };
        let mut started = Vec::new();
        let rx1 = hub.subscribe(key.clone(), |tx| started.push(tx));
        let rx2 = hub.subscribe(key.clone(), |_| panic!("a second feed for the same view"));
        assert_eq!((started.len(), hub.feeds()), (1, 1));
        let tx = started.pop().unwrap();
        assert!(!hub.retire_if_unwatched(&key, &tx));
        drop((rx1, rx2));
        assert!(hub.retire_if_unwatched(&key, &tx));
        assert_eq!(hub.feeds(), 0);
    }
}
