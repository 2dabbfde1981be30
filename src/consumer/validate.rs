//! `[consumer.validation]`: what a decoded event must satisfy beyond its shape. It runs in the
//! consumer, so every transport (Kafka and the embedded queue alike) applies the same rules.

use crate::base::de;
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::{iso, Record};
use crate::transport::{Batch, NO_PARTITION};
use chrono::Utc;
use serde::Deserialize;

/// `[consumer.validation]`: limits beyond the record's own `[event]` checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// Larger messages are dead-lettered unread.
    #[serde(default = "default_max_event_bytes", deserialize_with = "de::number")]
    pub max_event_bytes: usize,
    /// How far in the future a record's event time may be (clock skew), e.g. "5m".
    #[serde(default = "default_max_future", deserialize_with = "de::duration")]
    pub max_future: std::time::Duration,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            max_event_bytes: default_max_event_bytes(),
            max_future: default_max_future(),
        }
    }
}

fn default_max_event_bytes() -> usize {
    1 << 20
}
fn default_max_future() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

impl Validation {
    /// These rules as a backfill's screen, so history is judged as live batches are.
    pub fn screen(&self) -> crate::aggregate::backfill::Screen {
        let rules = self.clone();
        std::sync::Arc::new(move |batch| rules.apply(batch))
    }

    /// Moves the records of `batch` that break their schema or these limits to its dead letters
    /// (they are stored, and acknowledged with the batch, like any other dead letter).
    pub fn apply(&self, batch: &mut Batch) {
        // One clock reading per batch, not per record: the future-time check is on the hot path.
        let now = Utc::now().timestamp_millis();
        if batch.events.iter().all(|e| self.check_at(e, now).is_ok()) {
            return; // the common case: nothing to move, nothing copied
        }
        let events = std::mem::take(&mut batch.events);
        let sources = std::mem::take(&mut batch.sources);
        for (i, e) in events.into_iter().enumerate() {
            let source = sources.get(i).copied();
            match self.check_at(&e, now) {
                Ok(()) => {
                    batch.events.push(e);
                    batch.sources.extend(source);
                }
                Err((reason, detail)) => {
                    let at = source.unwrap_or((NO_PARTITION, -1));
                    batch.dead.push(DeadLetter::of_record(
                        e.id().to_string(),
                        reason,
                        detail,
                        at,
                        &e,
                    ));
                }
            }
        }
    }

    /// Whether one record keeps its schema and the limits; the error says which rule it breaks.
    pub fn check(&self, e: &Record) -> Result<(), (Reason, String)> {
        self.check_at(e, Utc::now().timestamp_millis())
    }

    /// [`Validation::check`] against a given "now" (ms).
    fn check_at(&self, e: &Record, now: i64) -> Result<(), (Reason, String)> {
        e.check().map_err(|(shape, why)| {
            (
                if shape {
                    Reason::InvalidEvent
                } else {
                    Reason::FailedValidation
                },
                why,
            )
        })?;
        let ahead = e.time_ms() - now;
        if ahead > self.max_future.as_millis() as i64 {
            let field = e.schema().time_name();
            return Err((
                Reason::FailedValidation,
                format!(
                    "field {field:?}: {} is {}s in the future (max_future {:?})",
                    iso(e.time_ms()),
                    ahead / 1000,
                    self.max_future
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Schema;
    use std::sync::Arc;

    fn schema() -> Arc<Schema> {
        let text = "fields = { id = \"string\", kind = { type = \"string\", values = [\"view\"] }, t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"";
        Arc::new(Schema::new(&toml::from_str(text).unwrap()).unwrap())
    }

    fn record(json: &str) -> Record {
        Record::from_json(&schema(), json.as_bytes()).unwrap()
    }

    #[test]
    fn records_that_break_a_rule_fail_with_the_rule() {
        let v = Validation::default();
        assert!(v
            .check(&record(r#"{"kind": "view", "t": "2026-01-01T00:00:00Z"}"#))
            .is_ok());
        let hover = v
            .check(&record(r#"{"kind": "hover", "t": "2026-01-01T00:00:00Z"}"#))
            .unwrap_err();
        assert_eq!(hover.0, Reason::FailedValidation);
        assert!(hover.1.contains("hover"), "{hover:?}");
        let future = v
            .check(&record(r#"{"kind": "view", "t": "2999-01-01T00:00:00Z"}"#))
            .unwrap_err();
        assert!(
            future.1.contains("\"t\"") && future.1.contains("future"),
            "{future:?}"
        );
        assert_eq!(
            v.check(&record(r#"{"t": "2026-01-01T00:00:00Z"}"#))
                .unwrap_err()
                .0,
            Reason::InvalidEvent
        );
    }

    /// A megabyte pasted into an id field would become a metric key and a pane too large to
    /// store: past the field's max_len (1024 bytes unless declared) the record is a dead letter.
    #[test]
    fn a_string_past_its_max_len_is_a_dead_letter_naming_the_field() {
        let v = Validation::default();
        let long = "x".repeat(1025);
        let err = v
            .check(&record(&format!(
                r#"{{"id": "{long}", "kind": "view", "t": "2026-01-01T00:00:00Z"}}"#
            )))
            .unwrap_err();
        assert_eq!(err.0, Reason::FailedValidation);
        assert!(
            err.1.contains("\"id\"") && err.1.contains("1025 bytes") && err.1.contains("max_len"),
            "{err:?}"
        );
        assert!(v
            .check(&record(&format!(
                r#"{{"id": "{}", "kind": "view", "t": "2026-01-01T00:00:00Z"}}"#,
                "x".repeat(1024)
            )))
            .is_ok());
    }

    #[test]
    fn a_batch_keeps_good_records_with_their_sources_and_dead_letters_the_rest() {
        let v = Validation::default();
        let mk = |id: &str, t: &str| {
            record(&format!(
                r#"{{"id": "{id}", "kind": "{t}", "t": "2026-01-01T00:00:00Z"}}"#
            ))
        };
        let mut batch = Batch {
            events: vec![mk("a", "view"), mk("b", "hover"), mk("c", "view")],
            sources: vec![(0, 1), (0, 2), (1, 7)],
            ..Batch::default()
        };
        v.apply(&mut batch);
        let ids: Vec<&str> = batch.events.iter().map(|e| e.id()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(batch.sources, vec![(0, 1), (1, 7)]);
        assert_eq!(batch.dead.len(), 1);
        assert_eq!(
            (
                batch.dead[0].id.as_str(),
                batch.dead[0].reason,
                batch.dead[0].offset
            ),
            ("b", Reason::FailedValidation, 2)
        );
    }
}
