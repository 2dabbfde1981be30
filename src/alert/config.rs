//! `[alerting]` (evaluation interval, thresholds, channels) and `[[alert]]` (one rule each).

use crate::base::{de, Secret};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[alerting]`: how often rules are evaluated, the thresholds scripts see, and where alerts go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Evaluate alert rules at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often every rule is evaluated against the current metric values.
    #[serde(default = "default_interval", deserialize_with = "de::duration")]
    pub interval: Duration,
    /// Named values every alert script sees as `thresholds.<name>`; editing one is a reload.
    #[serde(default)]
    pub thresholds: BTreeMap<String, Value>,
    /// Channels used by rules that name none.
    #[serde(default = "default_channels")]
    pub default_channels: Vec<String>,
    /// Named delivery channels; `log` always exists.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Where the notifications of rules that name no `channels` go, grouped (Alertmanager's
    /// route tree) [default: none; such rules send each notification to `default_channels`].
    #[serde(default)]
    pub route: Option<RouteConfig>,
}

/// `[alerting.route]` and its `[[alerting.route.routes]]`: Alertmanager's routing tree. A
/// notification goes down the first child route whose `matchers` all match its labels (and on to
/// the next matching sibling too when that child sets `continue = true`), as deep as a match
/// goes; where no child matches, the route itself takes it. Its alerts are grouped by the
/// `group_by` labels' values: one notification per group carries every alert of it. A child
/// takes what it does not set from its parent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label matchers, as `runner silence` takes them: `['severity = "critical"']` (child
    /// routes only: the top route takes everything).
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Where the groups of this route are sent [top route's default: `default_channels`].
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// The labels whose values make a group (`["alertname"]`: one group per rule; `["..."]`:
    /// every label, no grouping) [top route's default: none, one group for the route].
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first notification [top: 30s].
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub group_wait: Option<Duration>,
    /// How long a group waits after a notification before sending what changed since [top: 5m].
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub group_interval: Option<Duration>,
    /// How long a group with firing alerts and no change waits before it is sent again [top: 4h].
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub repeat_interval: Option<Duration>,
    /// Go on to the next sibling route after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// Child routes, tried in order; each has the keys of `[alerting.route]` (and `routes` of
    /// its own, to any depth).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            enabled: true,
            interval: default_interval(),
            thresholds: BTreeMap::new(),
            default_channels: default_channels(),
            channels: BTreeMap::new(),
            route: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_channels() -> Vec<String> {
    vec!["log".to_string()]
}

/// One delivery channel, by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelConfig {
    /// A structured log line (tracing) per notification.
    Log,
    /// Email over SMTP.
    Email(EmailConfig),
    /// An HTTP POST of the notification as JSON.
    Webhook(WebhookConfig),
    /// Alerts handed to a Prometheus Alertmanager (`POST /api/v2/alerts`), which groups,
    /// silences and routes them as it is configured to.
    Alertmanager(AlertmanagerConfig),
}

/// `type = "alertmanager"`: Alertmanager's API, as Prometheus uses it. A firing alert is posted
/// with `endsAt` four `resend` intervals ahead and posted again every `resend` while it fires
/// (Alertmanager resolves an alert that is not renewed), a resolved one with its end.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The Alertmanager's base URL, e.g. `http://127.0.0.1:9093` (a secret: it may carry
    /// credentials).
    pub url: Secret,
    /// Extra request headers (`Authorization = "Bearer ${AM_TOKEN}"`); their values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// How often a firing alert is posted again (Prometheus's `resend_delay`).
    #[serde(default = "default_resend", deserialize_with = "de::duration")]
    pub resend: Duration,
    /// The link Alertmanager shows as the alert's source [default: the dashboard,
    /// `http://<[dashboard] listen>/`].
    #[serde(default)]
    pub generator_url: Option<String>,
    /// Per attempt.
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// How a failed delivery is retried.
    #[serde(default)]
    pub retry: Retry,
}

fn default_resend() -> Duration {
    Duration::from_secs(60)
}

/// `type = "email"`: SMTP delivery through lettre.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server (a relay or the mail provider's submission host).
    pub host: String,
    /// Its port: 587 for `starttls`, 465 for `tls`.
    #[serde(default = "default_smtp_port", deserialize_with = "de::number")]
    pub port: u16,
    /// `starttls` (upgrade a plain connection, port 587), `tls` (TLS from the start, port 465),
    /// or `none` (plain text; loopback relays and tests only).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Credentials; use `${SMTP_USERNAME}` / `${SMTP_PASSWORD}` so they stay out of the file.
    #[serde(default)]
    pub username: String,
    /// The password (a secret: `***` in logs).
    #[serde(default)]
    pub password: Secret,
    /// The sender address.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// Subject line, a minijinja template over the notification.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Per attempt.
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// How a failed delivery is retried.
    #[serde(default)]
    pub retry: Retry,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    #[default]
    Starttls,
    Tls,
    None,
}

fn default_smtp_port() -> u16 {
    587
}
fn default_subject() -> String {
    "[{{ status | upper }}] {{ alert }}{% if labels.item %} {{ labels.item }}{% endif %} ({{ severity }})".to_string()
}

/// `type = "webhook"`: POST the notification as JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A secret: hook URLs often carry their credential in the path (`***` in logs).
    pub url: Secret,
    /// Extra request headers (for example `Authorization = "Bearer ${HOOK_TOKEN}"`); their
    /// values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The request body: a minijinja template over the notification that renders JSON, every
    /// value written into it JSON-escaped (`{"text": "{{ alert }} is {{ status }}: {{ message }}"}`
    /// for Slack, Mattermost or Teams; `{{ labels | tojson }}` writes a whole value). Checked at
    /// load on a sample notification [default: the notification as JSON].
    #[serde(default)]
    pub body: Option<String>,
    /// Per attempt.
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// How a failed delivery is retried.
    #[serde(default)]
    pub retry: Retry,
}

/// `retry = { retries = 5, backoff = "1s" }`: how a failed delivery is retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts after the first before the notification is given up (and reported).
    #[serde(default = "default_retries", deserialize_with = "de::number")]
    pub retries: u32,
    /// Wait before the first retry; doubles each time, up to a minute.
    #[serde(default = "default_backoff", deserialize_with = "de::duration")]
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            retries: default_retries(),
            backoff: default_backoff(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retries() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}

/// `[[alert]]`: one rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Unique name; the `alertname` label.
    pub name: String,
    /// An inline Rhai expression (`metrics.active_users < 10`) ...
    #[serde(default)]
    pub condition: Option<String>,
    /// ... or a Rhai file (relative to the pipeline file); exactly one of the two.
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// `critical`, `warning` or `info` (free text; shown and sent as a label).
    #[serde(default = "default_severity")]
    pub severity: String,
    /// How long the condition must hold before the alert fires (pending until then).
    #[serde(rename = "for", default, deserialize_with = "de::duration")]
    pub for_: Duration,
    /// How long a firing alert stays quiet before it is sent again.
    #[serde(default = "default_repeat", deserialize_with = "de::duration")]
    pub repeat_interval: Duration,
    /// How long a firing alert keeps firing after its condition stops holding, so a condition
    /// that flaps is one alert, not many (Prometheus's `keep_firing_for`) [default: 0s].
    #[serde(default, deserialize_with = "de::duration")]
    pub keep_firing_for: Duration,
    /// Extra labels sent with every notification of this rule.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Channel names; unset uses `[alerting] default_channels`.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// The notification's text, a minijinja template over the notification
    /// (`alert`, `status`, `severity`, `labels`, `value`, `thresholds`).
    #[serde(default = "default_message")]
    pub message: String,
    /// Longer explanation, sent with the message.
    #[serde(default)]
    pub description: String,
    /// What the rule is when every metric it reads has no data in its window (no record was
    /// counted): `no_data` (an instance labelled `alert_state = "no_data"`, pending for `for`,
    /// then firing), `alerting` (its instances hold, or one without labels), or `ok` (nothing
    /// holds) — Grafana's options. Rules that read no metric always have data.
    #[serde(default)]
    pub no_data: NoData,
    /// What the rule is when its condition fails (a script error, a missing threshold):
    /// `error` (an instance labelled `alert_state = "error"`, its message the error), `alerting`
    /// or `ok`, as for `no_data`.
    #[serde(default)]
    pub on_error: OnError,
}

/// `no_data`: a rule whose metrics have no data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    #[default]
    NoData,
    Alerting,
    Ok,
}

/// `on_error`: a rule whose condition fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Error,
    Alerting,
    Ok,
}

fn default_severity() -> String {
    "warning".to_string()
}
fn default_repeat() -> Duration {
    Duration::from_secs(3600)
}
fn default_message() -> String {
    "{{ alert }} is {{ status }}{% for k, v in labels | items %} {{ k }}={{ v }}{% endfor %}{% if value is not none %} (value {{ value }}){% endif %}".to_string()
}

impl AlertConfig {
    /// Problems a parse cannot catch.
    pub fn check(
        &self,
        channels: &BTreeMap<String, ChannelConfig>,
        default_channels: &[String],
    ) -> Option<String> {
        let mut p = Vec::new();
        if self.name.is_empty() || self.name.starts_with('(') {
            p.push(format!(
                "alert {:?}: a rule's name must not be empty or start with '(' (the runner's own rows are named so)",
                self.name
            ));
        }
        match (&self.condition, &self.script) {
            (Some(_), Some(_)) => p.push(format!(
                "alert {:?}: give either condition or script, not both",
                self.name
            )),
            (None, None) => p.push(format!(
                "alert {:?}: needs a condition (inline Rhai) or a script file",
                self.name
            )),
            _ => {}
        }
        for c in self.channels.as_deref().unwrap_or(default_channels) {
            if c != "log" && !channels.contains_key(c) {
                let known: Vec<&str> = std::iter::once("log")
                    .chain(channels.keys().map(String::as_str))
                    .collect();
                p.push(format!(
                    "alert {:?}: no channel named {c:?} (known: {})",
                    self.name,
                    known.join(", ")
                ));
            }
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

impl AlertingConfig {
    /// Alertmanager channels that name no `generator_url` link to the dashboard at `listen`.
    pub fn link_dashboard(&mut self, listen: &str) {
        for c in self.channels.values_mut() {
            if let ChannelConfig::Alertmanager(a) = c {
                a.generator_url
                    .get_or_insert_with(|| format!("http://{listen}/"));
            }
        }
    }

    /// Problems a parse cannot catch.
    pub fn check(&self) -> Option<String> {
        let mut p = Vec::new();
        if self.interval.is_zero() {
            p.push("alerting.interval must be more than 0s".to_string());
        }
        if let Some(route) = &self.route {
            route.unknown_channels("route", &self.channels, &mut p);
        }
        for (name, c) in &self.channels {
            match c {
                ChannelConfig::Email(e) if e.to.is_empty() => {
                    p.push(format!("alerting.channels.{name}: `to` lists no recipient"))
                }
                ChannelConfig::Webhook(w) => {
                    if let Err(e) = webhook_url(w.url.expose()) {
                        p.push(format!("alerting.channels.{name}: {e}"));
                    }
                }
                ChannelConfig::Alertmanager(a) => {
                    if let Err(e) = alertmanager_url(a.url.expose()) {
                        p.push(format!("alerting.channels.{name}: {e}"));
                    }
                    if a.resend.is_zero() {
                        p.push(format!(
                            "alerting.channels.{name}: resend must be more than 0s"
                        ));
                    }
                }
                _ => {}
            }
        }
        (!p.is_empty()).then(|| p.join("; "))
    }
}

impl RouteConfig {
    /// A problem for each channel a route at `path` (or below) names that does not exist.
    fn unknown_channels(
        &self,
        path: &str,
        channels: &BTreeMap<String, ChannelConfig>,
        out: &mut Vec<String>,
    ) {
        for c in self.channels.iter().flatten() {
            if c != "log" && !channels.contains_key(c) {
                out.push(format!("alerting.{path}.channels: no channel named {c:?}"));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.unknown_channels(&format!("{path}.routes[{i}]"), channels, out);
        }
    }
}

/// Checks a webhook URL: `https`, or plain `http` only to this machine (127.0.0.0/8, `::1`,
/// `localhost`): a notification and its secret headers never cross a network in clear text.
pub fn webhook_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        "http" => Err(
            "url must be https:// (plain http:// only to a loopback address such as 127.0.0.1)"
                .to_string(),
        ),
        _ => Err("url must start with https:// (or http:// to a loopback address)".to_string()),
    }
}

/// Checks an Alertmanager's base URL: `http` or `https` (Alertmanager is usually reached over
/// the cluster's own network, as Prometheus reaches it).
pub fn alertmanager_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(format!(
            "url must start with http:// or https://, not {other}:"
        )),
    }
}

#[cfg(test)]
mod webhook_url_tests {
    use super::webhook_url;

    #[test]
    fn a_webhook_is_https_or_plain_http_only_to_loopback() {
        for ok in [
            "https://hooks.example.com/x",
            "http://127.0.0.1:9/hook",
            "http://localhost/h",
            "http://[::1]:80/",
        ] {
            assert!(webhook_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/x",
            "http://10.0.0.1/h",
            "ftp://127.0.0.1/",
            "hooks.example.com",
        ] {
            assert!(webhook_url(bad).is_err(), "{bad}");
        }
    }
}
