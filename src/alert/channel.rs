//! Delivery: log, email (SMTP through lettre) and webhook (HTTP POST through reqwest).
//!
//! Each channel has its own queue and task, so a slow or failing channel never delays rule
//! evaluation or the other channels. A failed delivery is retried with doubling backoff; when
//! the retries run out it is reported (log line and counter), never silently dropped.

use super::config::{ChannelConfig, EmailConfig, Retry, SmtpSecurity, WebhookConfig};
use super::notification::Notification;
use crate::base::{Backoff, Secret};
use crate::telemetry::Stats;
use anyhow::{bail, Context};
use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Notifications a channel may have waiting before new ones are refused (and reported).
const QUEUE: usize = 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One way of sending a notification.
#[async_trait]
trait Channel: Send + Sync {
    /// One attempt; an error is retried by the dispatcher.
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()>;
}

struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        let labels = serde_json::to_string(&n.labels).unwrap_or_default();
        if n.status == "resolved" {
            tracing::info!(target: "runner::alert", alert = %n.alert, status = %n.status, severity = %n.severity, %labels, value = ?n.value, "{}", n.message);
        } else {
            tracing::warn!(target: "runner::alert", alert = %n.alert, status = %n.status, change = ?n.change, severity = %n.severity, %labels, value = ?n.value, "{}", n.message);
        }
        Ok(())
    }
}

struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: String,
    thresholds: BTreeMap<String, Value>,
}

impl EmailChannel {
    fn new(c: &EmailConfig, thresholds: &BTreeMap<String, Value>) -> anyhow::Result<Self> {
        let from: Mailbox = c.from.parse().with_context(|| format!("email from {:?} is not an address", c.from))?;
        let to = c
            .to
            .iter()
            .map(|a| a.parse::<Mailbox>().with_context(|| format!("email recipient {a:?} is not an address")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        minijinja::Environment::new().template_from_str(&c.subject).context("email subject template")?;
        let builder = match c.security {
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)?,
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)?,
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
        };
        let mut builder = builder.port(c.port).timeout(Some(c.timeout));
        if !c.username.is_empty() {
            builder = builder.credentials(Credentials::new(c.username.clone(), c.password.expose().to_string()));
        }
        Ok(EmailChannel { transport: builder.build(), from, to, subject: c.subject.clone(), thresholds: thresholds.clone() })
    }
}

#[async_trait]
impl Channel for EmailChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        let subject = n.render(&self.subject, &self.thresholds).context("email subject template")?;
        let mut message = Message::builder().from(self.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message.body(n.text()).context("cannot build the email")?;
        self.transport.send(message).await.context("SMTP delivery failed")?;
        Ok(())
    }
}

struct WebhookChannel {
    client: reqwest::Client,
    url: Secret,
    headers: BTreeMap<String, Secret>,
}

impl WebhookChannel {
    fn new(c: &WebhookConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(c.timeout).build().context("cannot create the HTTP client")?;
        Ok(WebhookChannel { client, url: c.url.clone(), headers: c.headers.clone() })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        let mut request = self.client.post(self.url.expose()).json(n).header("Idempotency-Key", &n.id);
        for (k, v) in &self.headers {
            request = request.header(k, v.expose());
        }
        // reqwest's errors name the URL; the URL is a secret.
        let response = request.send().await.map_err(|e| e.without_url()).with_context(|| format!("POST to webhook {} failed", redact_url(self.url.expose())))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("webhook {} answered {status}: {}", redact_url(self.url.expose()), body.chars().take(200).collect::<String>());
        }
        Ok(())
    }
}

/// A running channel: its config (to tell whether a reload changed it) and its queue.
struct Running {
    config: Option<ChannelConfig>,
    thresholds: BTreeMap<String, Value>,
    queue: mpsc::Sender<Arc<Notification>>,
    task: tokio::task::JoinHandle<()>,
}

/// Hands notifications to the channels they name.
pub struct Dispatcher {
    channels: BTreeMap<String, Running>,
    stats: Arc<Stats>,
}

impl Dispatcher {
    /// Starts a task per channel (`log` always among them).
    pub fn new(configs: &BTreeMap<String, ChannelConfig>, thresholds: &BTreeMap<String, Value>, stats: Arc<Stats>) -> anyhow::Result<Dispatcher> {
        let mut d = Dispatcher { channels: BTreeMap::new(), stats };
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
    pub fn reconfigure(&mut self, configs: &BTreeMap<String, ChannelConfig>, thresholds: &BTreeMap<String, Value>) -> anyhow::Result<()> {
        let mut wanted: BTreeMap<String, Option<ChannelConfig>> = BTreeMap::from([("log".to_string(), None)]);
        wanted.extend(configs.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        self.channels.retain(|name, running| {
            // Channels that render templates over thresholds are rebuilt when those change.
            wanted.get(name).is_some_and(|c| *c == running.config && running.thresholds == *thresholds)
        });
        for (name, config) in wanted {
            if self.channels.contains_key(&name) {
                continue;
            }
            let channel: Box<dyn Channel> = match &config {
                None => Box::new(LogChannel),
                Some(c) => build(c, thresholds).with_context(|| format!("alerting.channels.{name}"))?,
            };
            let retry = match &config {
                Some(ChannelConfig::Email(e)) => e.retry.clone(),
                Some(ChannelConfig::Webhook(w)) => w.retry.clone(),
                _ => Retry { retries: 0, backoff: Duration::ZERO },
            };
            let (queue, rx) = mpsc::channel(QUEUE);
            let task = tokio::spawn(deliver_all(name.clone(), channel, retry, rx, self.stats.clone()));
            self.channels.insert(name, Running { config, thresholds: thresholds.clone(), queue, task });
        }
        Ok(())
    }

    /// Queues `n` on each of its channels; never waits.
    pub fn send(&self, n: Notification) {
        let n = Arc::new(n);
        for name in &n.channels {
            match self.channels.get(name) {
                Some(c) => {
                    if c.queue.try_send(n.clone()).is_err() {
                        self.stats.notification_failed(name, &n.alert, &"the channel's queue is full (it has been failing or slow)");
                    }
                }
                None => self.stats.notification_failed(name, &n.alert, &"no such channel"),
            }
        }
    }

    /// Lets every channel finish what it has queued, for at most `grace`.
    pub async fn close(self, grace: Duration) {
        let tasks: Vec<_> = self.channels.into_values().map(|c| c.task).collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("alert channels still delivering after {grace:?}; stopping them");
        }
    }
}

fn build(c: &ChannelConfig, thresholds: &BTreeMap<String, Value>) -> anyhow::Result<Box<dyn Channel>> {
    Ok(match c {
        ChannelConfig::Log => Box::new(LogChannel),
        ChannelConfig::Email(e) => Box::new(EmailChannel::new(e, thresholds)?),
        ChannelConfig::Webhook(w) => Box::new(WebhookChannel::new(w)?),
    })
}

/// A webhook URL for logs: its scheme and host only (the path and query often hold the
/// hook's credential).
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/***", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "***".to_string(),
    }
}

/// One channel's loop: deliver each notification in order, retrying with backoff.
async fn deliver_all(name: String, channel: Box<dyn Channel>, retry: Retry, mut rx: mpsc::Receiver<Arc<Notification>>, stats: Arc<Stats>) {
    while let Some(n) = rx.recv().await {
        let mut backoff = Backoff::new(retry.backoff, MAX_BACKOFF, Some(retry.retries as usize));
        loop {
            match channel.deliver(&n).await {
                Ok(()) => {
                    stats.notification_sent();
                    tracing::debug!(channel = %name, alert = %n.alert, id = %n.id, attempt = backoff.retries() + 1, "notification delivered");
                    break;
                }
                Err(e) => match backoff.next_wait() {
                    Some(wait) => {
                        tracing::warn!(channel = %name, alert = %n.alert, attempt = backoff.retries(), retry_in = ?wait, error = %format!("{e:#}"), "notification failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        stats.notification_failed(&name, &n.alert, &format!("{e:#} (after {} attempts)", backoff.retries() + 1));
                        break;
                    }
                },
            }
        }
    }
}
