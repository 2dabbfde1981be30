//! A Confluent schema registry, asked for the writer schema of an id the pipeline file does not
//! list (`GET /schemas/ids/{id}`). Each id is asked once: the Avro codec keeps the answer.

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

    /// The schema text of `id`. Decoding runs on the consumer's threads, some inside the async
    /// runtime where a blocking client may not run, so the request runs on a thread of its own
    /// (once per id: the answer is kept).
    pub(super) fn schema(&self, id: u32) -> Result<String, String> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        std::thread::scope(|s| {
            s.spawn(|| {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())?;
                let answer = client
                    .get(&url)
                    .send()
                    .map_err(|e| format!("schema registry {url}: {e}"))?;
                let status = answer.status();
                let body: serde_json::Value = answer
                    .json()
                    .map_err(|e| format!("schema registry {url}: not a JSON answer ({e})"))?;
                match (
                    status.is_success(),
                    body.get("schema").and_then(|s| s.as_str()),
                ) {
                    (true, Some(text)) => Ok(text.to_string()),
                    _ => Err(format!("schema registry {url}: {status}: {body}")),
                }
            })
            .join()
            .unwrap_or_else(|_| Err(format!("schema registry {url}: the request failed")))
        })
    }
}
