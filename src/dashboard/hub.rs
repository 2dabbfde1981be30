//! One render for many viewers. Every open event stream of the same view (range and metric
//! filter) subscribes to one feed: a task renders the panels once per refresh and hands the same
//! text to all of them, and stops when the last viewer leaves. Reads behind a render are memoised
//! for a refresh, so a page load, a poll and the feed share them too.

use bytes::Bytes;
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
    /// The server-sent event carrying it, encoded once for every viewer: each stream sends the
    /// same buffer. Encoding a copy per viewer (a frame is ~130 KB at 10,000 events/s) made
    /// 200 viewers cost ~25 MB of short-lived copies every refresh.
    pub event: Bytes,
}

impl Frame {
    pub fn new(seq: u64, html: &str) -> Frame {
        Frame {
            seq,
            event: sse_event("panels", seq, html),
        }
    }
}

/// A server-sent event (`event`, `id`, one `data:` line per line of `data`).
fn sse_event(name: &str, id: u64, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + data.len() / 16 + 64);
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\nid: ");
    out.push_str(&id.to_string());
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
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
        Feed {
            tx: broadcast::channel(BACKLOG).0,
            latest: Mutex::new(Frame::default()),
        }
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
        Viewer {
            first: (latest.seq > 0).then(|| latest.clone()),
            rx: self.tx.subscribe(),
        }
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
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
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
/// for it instead of computing it again (or, with [`Memo::get_or_stale`], take the previous one).
pub(super) struct Memo<K, V> {
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

/// One memoised value and when it was computed, and a lock held while it is computed.
struct Slot<V> {
    value: Mutex<Option<(Instant, V)>>,
    computing: Arc<tokio::sync::Mutex<()>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            value: Mutex::new(None),
            computing: Arc::default(),
        }
    }
}

impl<V: Clone> Slot<V> {
    /// The value if it is younger than `age`.
    fn younger_than(&self, age: Duration) -> Option<V> {
        self.value
            .lock()
            .unwrap()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < age)
            .map(|(_, v)| v.clone())
    }

    fn set(&self, v: V) {
        *self.value.lock().unwrap() = Some((Instant::now(), v));
    }
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

/// Entries unused this long are dropped (keys of a reloaded metric set, ranges nobody views).
const MEMO_IDLE: Duration = Duration::from_secs(600);

impl<K: Eq + Hash + Clone, V: Clone> Memo<K, V> {
    fn slot(&self, key: K) -> Arc<Slot<V>> {
        let mut slots = self.slots.lock().unwrap();
        if slots.len() > 64 {
            slots.retain(|_, s| Arc::strong_count(s) > 1 || s.younger_than(MEMO_IDLE).is_some());
        }
        slots.entry(key).or_default().clone()
    }

    pub async fn get<F: Future<Output = V>>(
        &self,
        key: K,
        ttl: Duration,
        compute: impl FnOnce() -> F,
    ) -> V {
        let slot = self.slot(key);
        if let Some(v) = slot.younger_than(ttl) {
            return v;
        }
        let _computing = slot.computing.lock().await;
        // Whoever held the lock before may have just computed it.
        if let Some(v) = slot.younger_than(ttl) {
            return v;
        }
        let v = compute().await;
        slot.set(v.clone());
        v
    }
}

impl<K: Eq + Hash + Clone, V: Clone + Send + 'static> Memo<K, V> {
    /// Like [`Memo::get`], but a value older than `ttl` and younger than `stale` is returned at
    /// once while a fresh one is computed in the background: once there is a value, no caller
    /// waits for a slow computation (an API read at p99 waited for the whole read of every
    /// metric under load), and values are at most `ttl` plus one computation old while asked for.
    pub async fn get_or_stale<F>(
        &self,
        key: K,
        ttl: Duration,
        stale: Duration,
        compute: impl FnOnce() -> F,
    ) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let slot = self.slot(key.clone());
        if let Some(v) = slot.younger_than(ttl) {
            return v;
        }
        let Some(v) = slot.younger_than(stale) else {
            return self.get(key, ttl, compute).await;
        };
        // Already being computed: the running computation will refresh it.
        if let Ok(computing) = slot.computing.clone().try_lock_owned() {
            let fresh = compute();
            tokio::spawn(async move {
                let v = fresh.await;
                slot.set(v);
                drop(computing);
            });
        }
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
        assert_eq!(
            memo.get("k", Duration::ZERO, || async { 7 }).await,
            7,
            "an expired value is computed again"
        );
    }

    #[tokio::test]
    async fn a_stale_value_is_served_at_once_while_a_fresh_one_is_computed() {
        let memo: Arc<Memo<&str, u32>> = Arc::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            memo.get_or_stale("k", Duration::ZERO, hour, || async { 1 })
                .await,
            1,
            "nothing yet: the caller waits"
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let slow = || async move {
            rx.await.ok();
            2
        };
        assert_eq!(
            memo.get_or_stale("k", Duration::ZERO, hour, slow).await,
            1,
            "the old value, without waiting"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            memo.get_or_stale("k", Duration::ZERO, hour, || async {
                panic!("computed twice at once")
            })
            .await,
            1
        );
        tx.send(()).unwrap();
        for _ in 0..100 {
            if memo.get_or_stale("k", hour, hour, || async { 0 }).await == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the background computation never landed");
    }

    #[tokio::test]
    async fn a_value_past_the_stale_limit_is_waited_for() {
        let memo: Arc<Memo<&str, u32>> = Arc::default();
        memo.get("k", Duration::ZERO, || async { 1 }).await;
        assert_eq!(
            memo.get_or_stale("k", Duration::ZERO, Duration::ZERO, || async { 2 })
                .await,
            2
        );
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
        let key = FeedKey {
            range: "5m",
            metric: String::new(),
        };
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
        let key = FeedKey {
            range: "5m",
            metric: String::new(),
        };
        let mut started = Vec::new();
        let mut early = hub.subscribe(key.clone(), |f| started.push(f));
        let feed = started.pop().unwrap();
        let frame = |seq: u64| Frame::new(seq, &format!("<p>{seq}</p>"));
        for seq in 1..=5 {
            feed.publish(frame(seq));
        }
        let mut late = hub.subscribe(key.clone(), |_| panic!("one feed"));
        feed.publish(frame(6));
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(early.next().await.unwrap().seq);
        }
        assert_eq!(
            got,
            [1, 2, 3, 4, 5, 6],
            "a viewer slower than the renders still gets each one"
        );
        assert_eq!(
            (
                late.next().await.unwrap().seq,
                late.next().await.unwrap().seq
            ),
            (5, 6)
        );
    }

    #[test]
    fn a_frame_is_one_server_sent_event_with_a_data_line_per_line() {
        let f = Frame::new(7, "<div>\r\n  <p>a</p>\n</div>");
        assert_eq!(
            &f.event[..],
            b"event: panels\nid: 7\ndata: <div>\ndata:   <p>a</p>\ndata: </div>\n\n"
        );
    }
}
