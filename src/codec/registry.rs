//! A Confluent schema registry: asked for the writer schema of an id the pipeline file does not
//! list (`GET /schemas/ids/{id}`; each id once, the Avro codec keeps the answer), and given the
//! results' schema to learn its id (`POST /subjects/{subject}/versions`, once at start).

use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(super) struct Registry {
    url: String,
}

impl Registry {
    pub(super) fn new(url: &str) -> Registry {
        Registry {
            url: url.trim_end_matches('/').to_string(),
        }
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The schema text of `id`.
    pub(super) fn schema(&self, id: u32) -> Result<String, String> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let body = ask(&url, |client| client.get(&url))?;
        body.get("schema")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("schema registry {url}: no schema in the answer {body}"))
    }

    /// The id of `schema` (Avro) under `subject`, registering it if the subject lacks it.
    pub(super) fn register(&self, subject: &str, schema: &str) -> Result<u32, String> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let request = serde_json::json!({ "schema": schema }).to_string();
        let body = ask(&url, |client| {
            client
                .post(&url)
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(request.clone())
        })?;
        body.get("id")
            .and_then(|id| id.as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| format!("schema registry {url}: no schema id in the answer {body}"))
    }
}

/// Sends one request and reads its JSON answer. Decoding runs on the consumer's threads, some
/// inside the async runtime where a blocking client may not run, so the request runs on a
/// thread of its own (rarely: answers are kept).
fn ask(
    url: &str,
    request: impl Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder + Sync,
) -> Result<Value, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let answer = request(&client)
                .send()
                .map_err(|e| format!("schema registry {url}: {e}"))?;
            let status = answer.status();
            let body: Value = answer
                .json()
                .map_err(|e| format!("schema registry {url}: not a JSON answer ({e})"))?;
            match status.is_success() {
                true => Ok(body),
                false => Err(format!("schema registry {url}: {status}: {body}")),
            }
        })
        .join()
        .unwrap_or_else(|_| Err(format!("schema registry {url}: the request failed")))
    })
}
