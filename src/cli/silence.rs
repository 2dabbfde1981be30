//! `runner silence add|list|expire`: silences made, listed and expired through a running
//! runner's dashboard API (`/api/silences`), as `amtool silence` does with Alertmanager. The
//! runner stores them, so every replica and a restart see them.

use crate::alert::silence::{parse_matcher, show};
use crate::store::Silence;
use anyhow::Context;
use serde_json::{json, Value};
use std::io::Write;

/// Where the running runner is.
pub struct Api {
    /// The dashboard's address, e.g. `http://127.0.0.1:8050`.
    pub url: String,
    /// A dashboard token (an operator's, to add or expire).
    pub token: Option<String>,
}

impl Api {
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot create the HTTP client")?;
        let mut req = client.request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Ok(req)
    }

    /// Sends `req` and reads its JSON answer; a refusal is an error carrying the runner's reason.
    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the runner at {} ({what}); is it running, and is --url (RUNNER_URL) its dashboard?", self.url))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("{what}: the runner answered {status}: {}", body.trim());
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: the answer is not JSON"))
    }
}

/// Makes a silence of `matchers` (`alertname=traffic_drop`, `severity=~"page|critical"`) for
/// `duration` from now; prints its id.
pub async fn add(
    api: &Api,
    matchers: &[String],
    duration: &str,
    comment: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for m in matchers {
        parse_matcher(m).map_err(anyhow::Error::msg)?;
    }
    let body = json!({"matchers": matchers, "duration": duration, "comment": comment});
    let answer = api
        .call(
            api.request(reqwest::Method::POST, "/api/silences")?
                .json(&body),
            "making the silence",
        )
        .await?;
    let s: Silence = serde_json::from_value(answer).context("the answer is not a silence")?;
    writeln!(out, "{}", s.id)?;
    Ok(())
}

/// Lists the silences (active and pending, and with `expired` those ended in the last days).
pub async fn list(api: &Api, expired: bool, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let answer = api
        .call(
            api.request(reqwest::Method::GET, "/api/silences")?,
            "listing silences",
        )
        .await?;
    let all: Vec<Value> = serde_json::from_value(answer).context("the answer is not a list")?;
    let shown: Vec<&Value> = all
        .iter()
        .filter(|s| expired || s["state"] != "expired")
        .collect();
    if json {
        serde_json::to_writer_pretty(&mut *out, &shown)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<8}  {:<20}  {:<12}  MATCHERS  COMMENT",
        "ID", "STATE", "ENDS (UTC)", "BY"
    )?;
    for v in shown {
        let s: Silence = serde_json::from_value(v.clone()).context("a listed silence")?;
        let matchers: Vec<String> = s.matchers.iter().map(show).collect();
        writeln!(
            out,
            "{:<36}  {:<8}  {:<20}  {:<12}  {}  {}",
            s.id,
            v["state"].as_str().unwrap_or(""),
            s.ends_at.format("%Y-%m-%d %H:%M:%S"),
            s.created_by,
            matchers.join(","),
            s.comment
        )?;
    }
    Ok(())
}

/// Ends silence `id` now.
pub async fn expire(api: &Api, id: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = format!("/api/silences/{}", urlencoding(id));
    api.call(
        api.request(reqwest::Method::DELETE, &path)?,
        &format!("expiring silence {id}"),
    )
    .await?;
    writeln!(out, "expired {id}")?;
    Ok(())
}

/// `id` safe in a URL path segment.
fn urlencoding(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
