//! The Alertmanager channel: alerts posted to a Prometheus Alertmanager's API
//! (`POST /api/v2/alerts`) as Prometheus posts them, for teams that already route, group and
//! silence there.
//!
//! Alertmanager resolves an alert whose `endsAt` passes, so a firing alert is posted with
//! `endsAt` four `resend` intervals ahead and posted again every `resend` while it fires: the
//! evaluator hands every firing instance to the channel on each tick ([`Change::Refresh`]) and
//! the channel posts those it has not posted for `resend`. If the runner stops, the alert ends
//! by itself a few minutes later, as a Prometheus that stopped would leave it.

use super::Channel;
use crate::alert::config::AlertmanagerConfig;
use crate::alert::notification::Notification;
use crate::base::Secret;
use crate::store::Change;
use anyhow::{bail, Context};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) struct AlertmanagerChannel {
    client: reqwest::Client,
    /// `<url>/api/v2/alerts`.
    alerts_url: Secret,
    headers: BTreeMap<String, Secret>,
    resend: Duration,
    generator_url: String,
    /// When each firing alert (rule and fingerprint) was last posted.
    posted: Mutex<HashMap<(String, String), Instant>>,
}

impl AlertmanagerChannel {
    pub(super) fn new(c: &AlertmanagerConfig) -> anyhow::Result<Self> {
        let base =
            crate::alert::config::alertmanager_url(c.url.expose()).map_err(anyhow::Error::msg)?;
        let alerts_url = format!("{}/api/v2/alerts", base.as_str().trim_end_matches('/'));
        let client = super::http_client(c.timeout)?;
        Ok(AlertmanagerChannel {
            client,
            alerts_url: Secret::new(alerts_url),
            headers: c.headers.clone(),
            resend: c.resend,
            generator_url: c.generator_url.clone().unwrap_or_default(),
            posted: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `n` is a refresh of an alert posted less than `resend` ago (nothing to post).
    fn fresh(&self, n: &Notification) -> bool {
        let id = (n.alert.clone(), n.fingerprint.clone());
        let mut posted = self.posted.lock().unwrap();
        match n.change {
            Change::Resolved => {
                posted.remove(&id);
                false
            }
            Change::Refresh if posted.get(&id).is_some_and(|t| t.elapsed() < self.resend) => true,
            _ => {
                posted.insert(id, Instant::now());
                false
            }
        }
    }

    /// The alert as Alertmanager's API takes it.
    fn alert(&self, n: &Notification) -> Value {
        let ends_at = n.ends_at.unwrap_or(n.at + self.resend * 4);
        let mut annotations = serde_json::Map::new();
        annotations.insert("summary".into(), json!(n.message));
        if !n.description.is_empty() {
            annotations.insert("description".into(), json!(n.description));
        }
        if let Some(v) = n.value {
            annotations.insert("value".into(), json!(v.to_string()));
        }
        let mut alert = json!({
            "labels": labels(&n.labels, &n.pipeline),
            "annotations": annotations,
            "startsAt": n.starts_at.to_rfc3339(),
            "endsAt": ends_at.to_rfc3339(),
        });
        if !self.generator_url.is_empty() {
            alert["generatorURL"] = json!(self.generator_url);
        }
        alert
    }
}

/// The labels as Alertmanager accepts them: names of letters, digits and `_` not starting with a
/// digit (others mapped to `_`, as Prometheus maps metric names), no empty values (Alertmanager
/// drops them), and the pipeline's name as `pipeline` unless a rule set one.
fn labels(labels: &BTreeMap<String, String>, pipeline: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let mut name: String = k
                .chars()
                .map(|c| match c.is_ascii_alphanumeric() || c == '_' {
                    true => c,
                    false => '_',
                })
                .collect();
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                name.insert(0, '_');
            }
            (name, v.clone())
        })
        .collect();
    out.entry("pipeline".into())
        .or_insert_with(|| pipeline.to_string());
    out
}

#[async_trait]
impl Channel for AlertmanagerChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        // A group notification (a route's) posts each of its alerts: Alertmanager groups them
        // again by its own routes.
        let alerts: Vec<Value> = match n.alerts.is_empty() {
            true if self.fresh(n) => return Ok(()),
            true => vec![self.alert(n)],
            false => n
                .alerts
                .iter()
                .filter(|a| !self.fresh(a))
                .map(|a| self.alert(a))
                .collect(),
        };
        if alerts.is_empty() {
            return Ok(());
        }
        let request = self.client.post(self.alerts_url.expose()).json(&alerts);
        let response = super::with_headers(request, &self.headers)
            .send()
            .await
            .map_err(|e| e.without_url())
            .context("POST to Alertmanager failed")?;
        let status = response.status();
        if !status.is_success() {
            let body = super::answer_start(response).await;
            if n.change != Change::Resolved {
                // Not posted: the next refresh tries again.
                self.posted
                    .lock()
                    .unwrap()
                    .remove(&(n.alert.clone(), n.fingerprint.clone()));
            }
            bail!("Alertmanager answered {status}: {body}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_made_valid_for_alertmanager_and_carry_the_pipeline() {
        let got = labels(
            &BTreeMap::from([
                ("alertname".into(), "a".into()),
                ("item.id".into(), "i7".into()),
                ("1st".into(), "x".into()),
                ("empty".into(), String::new()),
            ]),
            "shop",
        );
        assert_eq!(
            got,
            BTreeMap::from([
                ("alertname".into(), "a".into()),
                ("item_id".into(), "i7".into()),
                ("_1st".into(), "x".into()),
                ("pipeline".into(), "shop".into()),
            ])
        );
    }

    #[test]
    fn a_refresh_is_posted_once_per_resend_and_a_firing_alert_ends_four_resends_ahead() {
        let channel = AlertmanagerChannel::new(&AlertmanagerConfig {
            url: Secret::new("http://127.0.0.1:9093"),
            headers: BTreeMap::new(),
            resend: Duration::from_secs(60),
            generator_url: Some("http://127.0.0.1:8080/".into()),
            timeout: Duration::from_secs(1),
            retry: Default::default(),
        })
        .unwrap();
        let mut n = Notification::sample();
        assert!(!channel.fresh(&n), "a firing alert is posted");
        n.change = Change::Refresh;
        assert!(channel.fresh(&n), "its refresh within resend is not");
        n.change = Change::Resolved;
        assert!(!channel.fresh(&n), "its end is posted");
        n.change = Change::Refresh;
        assert!(!channel.fresh(&n), "a refresh of an alert not posted is");
        let alert = channel.alert(&Notification::sample());
        assert_eq!(alert["endsAt"], "1970-01-01T00:04:00+00:00");
        assert_eq!(alert["generatorURL"], "http://127.0.0.1:8080/");
        assert_eq!(alert["labels"]["pipeline"], "pipeline");
    }
}
