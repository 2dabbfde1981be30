//! Delivery: log (log.rs), email (SMTP through lettre, email.rs), webhook (HTTP POST through
//! reqwest, webhook.rs) and Alertmanager (its API, alertmanager.rs); a channel is one file here,
//! one `ChannelConfig` variant and its arms in [`build`] and [`ChannelConfig::retry`].
//!
//! Each channel has its own queue and task, so a slow or failing channel never delays rule
//! evaluation or the other channels. A failed delivery is retried with doubling backoff; when
//! the retries run out it is reported (log line and counter), never silently dropped.

mod alertmanager;
mod email;
mod log;
mod webhook;

use super::config::{ChannelConfig, Retry};
use super::notification::Notification;
use crate::base::Backoff;
use crate::telemetry::Stats;
use anyhow::Context;
use async_trait::async_trait;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Notifications a channel may have waiting; past it the oldest waiting one is dropped (and
/// reported): the newest say what holds now.
const QUEUE: usize = 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest one notification is retried before it is given up (and reported), whatever its
/// `retry` says: the notifications behind it wait meanwhile.
const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// A channel's waiting notifications, oldest first, at most [`QUEUE`].
#[derive(Default)]
struct Queue {
    items: std::sync::Mutex<VecDeque<Arc<Notification>>>,
    ready: tokio::sync::Notify,
    closed: AtomicBool,
}

impl Queue {
    /// Adds `n`; returns the notification dropped to make room, if the queue was full.
    fn push(&self, n: Arc<Notification>, limit: usize) -> Option<Arc<Notification>> {
        let dropped = {
            let mut items = self.items.lock().unwrap();
            let dropped = if items.len() >= limit {
                items.pop_front()
            } else {
                None
            };
            items.push_back(n);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The oldest waiting notification; `None` once the queue is closed and empty.
    async fn pop(&self) -> Option<Arc<Notification>> {
        loop {
            if let Some(n) = self.items.lock().unwrap().pop_front() {
                return Some(n);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            // A notify before this wait is kept as a permit, so no push is missed.
            self.ready.notified().await;
        }
    }

    /// No more pushes: the channel's task delivers what waits, then ends.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

/// One way of sending a notification.
#[async_trait]
trait Channel: Send + Sync {
    /// One attempt; an error is retried by the dispatcher.
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()>;
}

/// A running channel: its config (to tell whether a reload changed it) and its queue.
struct Running {
    config: Option<ChannelConfig>,
    thresholds: BTreeMap<String, Value>,
    queue: Arc<Queue>,
    task: tokio::task::JoinHandle<()>,
}

/// Hands notifications to the channels they name.
pub struct Dispatcher {
    channels: BTreeMap<String, Running>,
    stats: Arc<Stats>,
}

impl Dispatcher {
    /// Starts a task per channel (`log` always among them).
    pub fn new(
        configs: &BTreeMap<String, ChannelConfig>,
        thresholds: &BTreeMap<String, Value>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Dispatcher> {
        let mut d = Dispatcher {
            channels: BTreeMap::new(),
            stats,
        };
        d.reconfigure(configs, thresholds)?;
        Ok(d)
    }

    /// Checks that every channel can be built (addresses parse, templates compile), without starting any.
    pub fn check(configs: &BTreeMap<String, ChannelConfig>) -> anyhow::Result<()> {
        for (name, c) in configs {
            build(c, &BTreeMap::new()).with_context(|| format!("alerting.channels.{name}"))?;
        }
        Ok(())
    }

    /// Restarts the channels whose config changed; unchanged ones keep their queues.
    pub fn reconfigure(
        &mut self,
        configs: &BTreeMap<String, ChannelConfig>,
        thresholds: &BTreeMap<String, Value>,
    ) -> anyhow::Result<()> {
        let mut wanted: BTreeMap<String, Option<ChannelConfig>> =
            BTreeMap::from([("log".to_string(), None)]);
        wanted.extend(configs.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        self.channels.retain(|name, running| {
            // Channels that render templates over thresholds are rebuilt when those change.
            let keep = wanted
                .get(name)
                .is_some_and(|c| *c == running.config && running.thresholds == *thresholds);
            if !keep {
                running.queue.close(); // its task delivers what waits, then ends
            }
            keep
        });
        for (name, config) in wanted {
            if self.channels.contains_key(&name) {
                continue;
            }
            let channel: Box<dyn Channel> = match &config {
                None => Box::new(log::LogChannel),
                Some(c) => {
                    build(c, thresholds).with_context(|| format!("alerting.channels.{name}"))?
                }
            };
            let retry = config.as_ref().map(ChannelConfig::retry).unwrap_or(Retry {
                retries: 0,
                backoff: Duration::ZERO,
            });
            let queue = Arc::new(Queue::default());
            let task = tokio::spawn(deliver_all(
                name.clone(),
                channel,
                retry,
                queue.clone(),
                self.stats.clone(),
            ));
            self.channels.insert(
                name,
                Running {
                    config,
                    thresholds: thresholds.clone(),
                    queue,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Queues the refreshes of still-firing alerts on those of their channels that want them
    /// (Alertmanager, which ends an alert that is not posted again); never waits.
    pub fn refresh(&self, firing: Vec<Notification>) {
        for n in firing {
            let n = Arc::new(n);
            for name in &n.channels {
                if let Some(c) = self
                    .channels
                    .get(name)
                    .filter(|c| matches!(c.config, Some(ChannelConfig::Alertmanager(_))))
                {
                    c.queue.push(n.clone(), QUEUE);
                }
            }
        }
    }

    /// Queues `n` on each of its channels; never waits.
    pub fn send(&self, n: Notification) {
        let n = Arc::new(n);
        for name in &n.channels {
            match self.channels.get(name) {
                Some(c) => {
                    if let Some(dropped) = c.queue.push(n.clone(), QUEUE) {
                        let why = format!("dropped notification {} ({}): the channel's queue is full (it has been failing or slow), so the oldest waiting one makes room", dropped.id, dropped.status);
                        self.stats.notification_failed(name, &dropped.alert, &why);
                    }
                }
                None => self
                    .stats
                    .notification_failed(name, &n.alert, &"no such channel"),
            }
        }
    }

    /// Lets every channel finish what it has queued, for at most `grace`.
    pub async fn close(self, grace: Duration) {
        let tasks: Vec<_> = self
            .channels
            .into_values()
            .map(|c| {
                c.queue.close();
                c.task
            })
            .collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("alert channels still delivering after {grace:?}; stopping them");
        }
    }
}

/// The HTTP client of a channel that POSTs: `timeout` per request, and no redirects (following
/// one would POST the notification, and its secret headers, to whatever host the answer names).
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot create the HTTP client")
}

/// `request` with a channel's configured headers (their values are secrets).
fn with_headers(
    mut request: reqwest::RequestBuilder,
    headers: &BTreeMap<String, crate::base::Secret>,
) -> reqwest::RequestBuilder {
    for (k, v) in headers {
        request = request.header(k, v.expose());
    }
    request
}

/// How much of a receiver's answer is read (its start is quoted in the error of a failure).
const ANSWER_BYTES: usize = 4096;

/// The start of an answer's body, read no further than [`ANSWER_BYTES`]: a receiver that
/// answers gigabytes (or never ends its body) costs a few kilobytes and the request timeout.
async fn answer_start(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(ANSWER_BYTES - body.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).chars().take(200).collect()
}

fn build(
    c: &ChannelConfig,
    thresholds: &BTreeMap<String, Value>,
) -> anyhow::Result<Box<dyn Channel>> {
    Ok(match c {
        ChannelConfig::Log => Box::new(log::LogChannel),
        ChannelConfig::Email(e) => Box::new(email::EmailChannel::new(e, thresholds)?),
        ChannelConfig::Webhook(w) => Box::new(webhook::WebhookChannel::new(w, thresholds)?),
        ChannelConfig::Alertmanager(a) => Box::new(alertmanager::AlertmanagerChannel::new(a)?),
    })
}

impl ChannelConfig {
    /// How a failed delivery is retried.
    fn retry(&self) -> Retry {
        match self {
            ChannelConfig::Log => Retry {
                retries: 0,
                backoff: Duration::ZERO,
            },
            ChannelConfig::Email(e) => e.retry.clone(),
            ChannelConfig::Webhook(w) => w.retry.clone(),
            ChannelConfig::Alertmanager(a) => a.retry.clone(),
        }
    }
}

/// One channel's loop: deliver each notification in order, retrying with backoff.
/// One notification is retried for at most [`RETRY_BUDGET`], so a receiver that is down holds
/// the notifications behind it back for seconds, not for the minutes a long backoff would.
async fn deliver_all(
    name: String,
    channel: Box<dyn Channel>,
    retry: Retry,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
) {
    while let Some(n) = queue.pop().await {
        let mut backoff = Backoff::new(retry.backoff, MAX_BACKOFF, Some(retry.retries as usize));
        let started = tokio::time::Instant::now();
        loop {
            match channel.deliver(&n).await {
                Ok(()) if n.change == crate::store::Change::Refresh => break,
                Ok(()) => {
                    stats.notification_sent();
                    tracing::debug!(channel = %name, alert = %n.alert, id = %n.id, attempt = backoff.retries() + 1, "notification delivered");
                    break;
                }
                Err(e) => match backoff
                    .next_wait()
                    .filter(|wait| started.elapsed() + *wait <= RETRY_BUDGET)
                {
                    Some(wait) => {
                        tracing::warn!(channel = %name, alert = %n.alert, attempt = backoff.retries(), retry_in = ?wait, error = %format!("{e:#}"), "notification failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        stats.notification_failed(
                            &name,
                            &n.alert,
                            &format!("{e:#} (after {} attempts)", backoff.retries() + 1),
                        );
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::webhook::WebhookChannel;
    use super::*;
    use crate::alert::config::WebhookConfig;
    use crate::base::Secret;
    use anyhow::bail;
    use std::sync::atomic::AtomicUsize;

    fn notification(id: &str) -> Notification {
        serde_json::from_value(serde_json::json!({
            "id": id, "pipeline": "p", "alert": "a", "status": "firing", "change": "firing", "severity": "info",
            "labels": {}, "value": null, "message": "m", "description": "", "fingerprint": "f",
            "starts_at": "2026-01-01T00:00:00Z", "ends_at": null, "at": "2026-01-01T00:00:00Z", "channels": ["hook"]
        }))
        .unwrap()
    }

    fn webhook(url: &str) -> WebhookChannel {
        let config = WebhookConfig {
            url: Secret::new(url),
            headers: BTreeMap::from([("Authorization".to_string(), Secret::new("Bearer s3cret"))]),
            body: None,
            timeout: Duration::from_secs(5),
            retry: Retry::default(),
        };
        WebhookChannel::new(&config, &BTreeMap::new()).unwrap()
    }

    /// A local HTTP server answering every request with `app`; its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn a_webhook_redirect_is_an_error_and_is_not_followed_with_the_secret_headers() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let elsewhere = serve(axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "got it" }
        }))
        .await;
        let target = format!("{elsewhere}/steal");
        let redirecting = serve(axum::Router::new().fallback(move || {
            let target = target.clone();
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, target)],
                )
            }
        }))
        .await;
        let err = webhook(&format!("{redirecting}/hook"))
            .deliver(&notification("n1"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("redirect"), "{err:#}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the other host got nothing");
    }

    #[tokio::test]
    async fn a_huge_error_answer_is_read_only_so_far() {
        let url = serve(axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "x".repeat(50 << 20),
            )
        }))
        .await;
        let err = format!(
            "{:#}",
            webhook(&format!("{url}/hook"))
                .deliver(&notification("n1"))
                .await
                .unwrap_err()
        );
        assert!(
            err.contains("500") && err.len() < 1000,
            "{} bytes",
            err.len()
        );
    }

    #[tokio::test]
    async fn a_webhook_body_template_is_what_is_posted_and_one_that_renders_no_json_is_refused() {
        let got = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let kept = got.clone();
        let url = serve(axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    let kind = headers[axum::http::header::CONTENT_TYPE].to_str().unwrap();
                    kept.lock().unwrap().push((kind.to_string(), body));
                    "ok"
                }
            },
        ))
        .await;
        let config = |body: &str| WebhookConfig {
            url: Secret::new(format!("{url}/hook")),
            headers: BTreeMap::new(),
            body: Some(body.to_string()),
            timeout: Duration::from_secs(5),
            retry: Retry::default(),
        };
        let thresholds = BTreeMap::from([("low".to_string(), serde_json::json!(10))]);
        let slack = WebhookChannel::new(
            &config(r#"{"text": "{{ alert }} is {{ status }} below {{ thresholds.low }}: {{ message }}"}"#),
            &thresholds,
        )
        .unwrap();
        let mut n = notification("n1");
        n.message = "traffic \"dropped\"".into();
        slack.deliver(&n).await.unwrap();
        let (kind, body) = got.lock().unwrap()[0].clone();
        assert_eq!(kind, "application/json");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["text"], "a is firing below 10: traffic \"dropped\"");
        let err = WebhookChannel::new(&config(r#"{"text": {{ message }}}"#), &thresholds)
            .err()
            .expect("a body that is not JSON is refused");
        assert!(format!("{err:#}").contains("renders no JSON"), "{err:#}");
    }

    #[test]
    fn a_plain_http_webhook_beyond_loopback_is_refused() {
        let config = WebhookConfig {
            url: Secret::new("http://hooks.example.com/x"),
            headers: BTreeMap::new(),
            body: None,
            timeout: Duration::from_secs(1),
            retry: Retry::default(),
        };
        assert!(WebhookChannel::new(&config, &BTreeMap::new()).is_err());
    }

    #[test]
    fn a_full_queue_drops_its_oldest_notification() {
        let q = Queue::default();
        assert!(q.push(Arc::new(notification("1")), 2).is_none());
        assert!(q.push(Arc::new(notification("2")), 2).is_none());
        let dropped = q.push(Arc::new(notification("3")), 2).expect("one dropped");
        assert_eq!(dropped.id, "1");
        let waiting: Vec<String> = q
            .items
            .lock()
            .unwrap()
            .iter()
            .map(|n| n.id.clone())
            .collect();
        assert_eq!(waiting, ["2", "3"]);
    }

    struct Failing(AtomicUsize);

    #[async_trait]
    impl Channel for Failing {
        async fn deliver(&self, _: &Notification) -> anyhow::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            bail!("receiver down")
        }
    }

    /// With `retries = 20` and a 10 s backoff, the first notification alone would hold the queue
    /// for many minutes; the budget gives it up after about 30 s (virtual time).
    #[tokio::test(start_paused = true)]
    async fn a_failing_receiver_holds_the_next_notification_back_for_at_most_the_retry_budget() {
        let queue = Arc::new(Queue::default());
        let stats = Stats::new();
        queue.push(Arc::new(notification("1")), QUEUE);
        queue.push(Arc::new(notification("2")), QUEUE);
        queue.close();
        let started = tokio::time::Instant::now();
        let channel = Box::new(Failing(AtomicUsize::new(0)));
        deliver_all(
            "hook".into(),
            channel,
            Retry {
                retries: 20,
                backoff: Duration::from_secs(10),
            },
            queue,
            stats.clone(),
        )
        .await;
        assert_eq!(
            stats.snapshot().notifications_failed,
            2,
            "both given up and reported"
        );
        assert!(
            started.elapsed() <= RETRY_BUDGET * 2,
            "{:?}",
            started.elapsed()
        );
    }
}
