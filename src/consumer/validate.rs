//! `[consumer.validation]`: what a decoded event must satisfy beyond its shape. It runs in the
//! consumer, so every transport (Kafka and the embedded queue alike) applies the same rules.

use crate::base::de;
use crate::dead_letter::{DeadLetter, Reason};
use crate::event::Event;
use crate::transport::{Batch, NO_PARTITION};
use chrono::Utc;
use serde::Deserialize;
use std::collections::BTreeSet;

/// `[consumer.validation]`: what a decoded event must satisfy beyond its JSON shape.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// Larger messages are dead-lettered unread.
    #[serde(default = "default_max_event_bytes", deserialize_with = "de::number")]
    pub max_event_bytes: usize,
    /// Allowed `interaction_type` values; empty allows any.
    #[serde(default)]
    pub interaction_types: BTreeSet<String>,
    /// How far in the future an event's timestamp may be (clock skew), e.g. "5m".
    #[serde(default = "default_max_future", deserialize_with = "de::duration")]
    pub max_future: std::time::Duration,
}

impl Default for Validation {
    fn default() -> Self {
        Validation { max_event_bytes: default_max_event_bytes(), interaction_types: BTreeSet::new(), max_future: default_max_future() }
    }
}

fn default_max_event_bytes() -> usize {
    1 << 20
}
fn default_max_future() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

impl Validation {
    /// Moves the events of `batch` that break the rules to its dead letters (they are stored,
    /// and acknowledged with the batch, like any other dead letter).
    pub fn apply(&self, batch: &mut Batch) {
        // One clock reading per batch, not per event: the future-timestamp check is on the hot path.
        let now = Utc::now();
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
                Err(detail) => {
                    let mut json = Vec::new();
                    e.write_json(&mut json);
                    let at = source.unwrap_or((NO_PARTITION, -1));
                    batch.dead.push(DeadLetter::new(e.event_id.clone(), Reason::FailedValidation, detail, at, &json));
                }
            }
        }
    }

    /// Whether one event keeps the rules; the error says which it breaks.
    pub fn check(&self, e: &Event) -> Result<(), String> {
        self.check_at(e, Utc::now())
    }

    /// [`Validation::check`] against a given "now".
    fn check_at(&self, e: &Event, now: chrono::DateTime<Utc>) -> Result<(), String> {
        if e.user_id.is_empty() || e.item_id.is_empty() {
            return Err("user_id and item_id must not be empty".into());
        }
        if !self.interaction_types.is_empty() && !self.interaction_types.contains(&e.interaction_type) {
            let allowed: Vec<&str> = self.interaction_types.iter().map(String::as_str).collect();
            return Err(format!("interaction_type {:?} is not one of {}", e.interaction_type, allowed.join(", ")));
        }
        let ahead = e.timestamp - now;
        if ahead.to_std().is_ok_and(|d| d > self.max_future) {
            return Err(format!("timestamp {} is {}s in the future (max_future {:?})", e.timestamp, ahead.num_seconds(), self.max_future));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        Event::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn events_that_break_a_rule_fail_with_the_rule() {
        let v = Validation { interaction_types: ["view".to_string()].into(), ..Validation::default() };
        assert!(v.check(&event(r#"{"user_id": "u", "item_id": "i", "interaction_type": "view", "timestamp": "2026-01-01T00:00:00Z"}"#)).is_ok());
        let hover = v.check(&event(r#"{"user_id": "u", "item_id": "i", "interaction_type": "hover", "timestamp": "2026-01-01T00:00:00Z"}"#));
        assert!(hover.unwrap_err().contains("hover"));
        assert!(v.check(&event(r#"{"user_id": "u", "item_id": "i", "interaction_type": "view", "timestamp": "2999-01-01T00:00:00Z"}"#)).is_err());
        assert!(v.check(&event(r#"{"user_id": "", "item_id": "i", "interaction_type": "view", "timestamp": "2026-01-01T00:00:00Z"}"#)).is_err());
    }

    #[test]
    fn a_batch_keeps_good_events_with_their_sources_and_dead_letters_the_rest() {
        let v = Validation { interaction_types: ["view".to_string()].into(), ..Validation::default() };
        let mk = |id: &str, t: &str| event(&format!(r#"{{"event_id": "{id}", "user_id": "u", "item_id": "i", "interaction_type": "{t}", "timestamp": "2026-01-01T00:00:00Z"}}"#));
        let mut batch = Batch { events: vec![mk("a", "view"), mk("b", "hover"), mk("c", "view")], sources: vec![(0, 1), (0, 2), (1, 7)], ..Batch::default() };
        v.apply(&mut batch);
        let ids: Vec<&str> = batch.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(batch.sources, vec![(0, 1), (1, 7)]);
        assert_eq!(batch.dead.len(), 1);
        assert_eq!((batch.dead[0].id.as_str(), batch.dead[0].reason, batch.dead[0].offset), ("b", Reason::FailedValidation, 2));
    }
}
