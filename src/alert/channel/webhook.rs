//! The webhook channel: an HTTP POST of the notification as JSON, through reqwest.

use super::Channel;
use crate::alert::config::WebhookConfig;
use crate::alert::notification::Notification;
use crate::base::Secret;
use anyhow::{bail, Context};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;

pub(super) struct WebhookChannel {
    client: reqwest::Client,
    url: Secret,
    headers: BTreeMap<String, Secret>,
    /// The body template, and the thresholds it sees; `None` sends the notification as JSON.
    body: Option<(String, BTreeMap<String, Value>)>,
}

impl WebhookChannel {
    pub(super) fn new(
        c: &WebhookConfig,
        thresholds: &BTreeMap<String, Value>,
    ) -> anyhow::Result<Self> {
        crate::alert::config::webhook_url(c.url.expose()).map_err(anyhow::Error::msg)?;
        if let Some(template) = &c.body {
            let sample = Notification::sample()
                .render_json(template, thresholds)
                .context("body template")?;
            serde_json::from_str::<Value>(&sample).with_context(|| {
                format!("body template: it renders no JSON for a sample notification: {sample}")
            })?;
        }
        let client = super::http_client(c.timeout)?;
        Ok(WebhookChannel {
            client,
            url: c.url.clone(),
            headers: c.headers.clone(),
            body: c.body.clone().map(|b| (b, thresholds.clone())),
        })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        let request = self.client.post(self.url.expose());
        let mut request = match &self.body {
            None => request.json(n),
            Some((template, thresholds)) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(
                    n.render_json(template, thresholds)
                        .context("webhook body template")?,
                ),
        }
        .header("Idempotency-Key", &n.id);
        request = super::with_headers(request, &self.headers);
        // reqwest's errors name the URL; the URL is a secret.
        let response = request
            .send()
            .await
            .map_err(|e| e.without_url())
            .with_context(|| format!("POST to webhook {} failed", redact_url(self.url.expose())))?;
        let status = response.status();
        if status.is_redirection() {
            bail!("webhook {} answered {status} (a redirect, which is not followed: configure the URL it points to)", redact_url(self.url.expose()));
        }
        if !status.is_success() {
            bail!(
                "webhook {} answered {status}: {}",
                redact_url(self.url.expose()),
                super::answer_start(response).await
            );
        }
        Ok(())
    }
}

/// A webhook URL for logs: its scheme and host only (the path and query often hold the
/// hook's credential).
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/***", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "***".to_string(),
    }
}
