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
use tokio::sync::broadcast;

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

/// Frames a viewer may fall behind by before it skips some (it then gets the newest).
const BACKLOG: usize = 16;

/// One view's renders, as they are published.
pub(super) struct Feed {
    tx: broadcast::Sender<Frame>,
    /// The newest frame, for a viewer that joins between two renders.
    latest: Mutex<Frame>,
}

impl Feed {
    fn new() -> Feed {
        Feed { tx: broadcast::channel(BACKLOG).0, latest: Mutex::new(Frame::default()) }
    }

    /// Sends a frame to every viewer.
    pub fn publish(&self, frame: Frame) {
        let mut latest = self.latest.lock().unwrap();
        *latest = frame.clone();
        let _ = self.tx.send(frame);
    }

    fn join(&self) -> Viewer {
        // Under the same lock as publish: the newest frame and the frames after it, none twice.
        let latest = self.latest.lock().unwrap();
        Viewer { first: (latest.seq > 0).then(|| latest.clone()), rx: self.tx.subscribe() }
    }
}

/// A viewer's side of a feed: every frame from the newest at joining on, in order.
pub(super) struct Viewer {
    first: Option<Frame>,
    rx: broadcast::Receiver<Frame>,
}

impl Viewer {
    /// The next frame; `None` once the feed has stopped.
    pub async fn next(&mut self) -> Option<Frame> {
        if let Some(f) = self.first.take() {
            return Some(f);
        }
        loop {
            match self.rx.recv().await {
                Ok(f) => return Some(f),
                // Too slow for the backlog: it skips to what is still buffered.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The open feeds and how many viewers hold one.
#[derive(Default)]
pub(super) struct Hub {
    feeds: Mutex<HashMap<FeedKey, Arc<Feed>>>,
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

    /// Joins the feed of `key`, started with `start` (given the feed to publish on) if none
    /// runs. A new viewer of a running feed gets its latest frame at once.
    pub fn subscribe(&self, key: FeedKey, start: impl FnOnce(Arc<Feed>)) -> Viewer {
        let mut feeds = self.feeds.lock().unwrap();
        if let Some(feed) = feeds.get(&key) {
            return feed.join();
        }
        let feed = Arc::new(Feed::new());
        let viewer = feed.join();
        feeds.insert(key, feed.clone());
        start(feed);
        viewer
    }

    /// Called by a feed after each frame: true when nobody watches any more, in which case the
    /// feed is removed (under the same lock a subscriber takes, so none can join a feed that is
    /// about to stop).
    pub fn retire_if_unwatched(&self, key: &FeedKey, feed: &Feed) -> bool {
        let mut feeds = self.feeds.lock().unwrap();
        if feed.tx.receiver_count() > 0 {
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
    slots: Mutex<HashMap<K, Slot<V>>>,
}

/// One memoised value and when it was computed; locked while it is computed.
type Slot<V> = Arc<tokio::sync::Mutex<Option<(Instant, V)>>>;

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
        let feed = started.pop().unwrap();
        assert!(!hub.retire_if_unwatched(&key, &feed));
        drop((rx1, rx2));
        assert!(hub.retire_if_unwatched(&key, &feed));
        assert_eq!(hub.feeds(), 0);
    }

    #[tokio::test]
    async fn a_viewer_gets_every_frame_in_order_and_a_late_one_starts_at_the_newest() {
        let hub = Hub::default();
        let key = FeedKey { range: "5m", metric: String::new() };
        let mut started = Vec::new();
        let mut early = hub.subscribe(key.clone(), |f| started.push(f));
        let feed = started.pop().unwrap();
        let frame = |seq: u64| Frame { seq, html: format!("<p>{seq}</p>").into() };
        for seq in 1..=5 {
            feed.publish(frame(seq));
        }
        let mut late = hub.subscribe(key.clone(), |_| panic!("one feed"));
        feed.publish(frame(6));
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(early.next().await.unwrap().seq);
        }
        assert_eq!(got, [1, 2, 3, 4, 5, 6], "a viewer slower than the renders still gets each one");
        assert_eq!((late.next().await.unwrap().seq, late.next().await.unwrap().seq), (5, 6));
    }
}
