//! Messages the pipeline cannot use, kept instead of dropped: each becomes a [`DeadLetter`] with
//! its reason, where it came from and (the start of) what it said, stored beside the raw events
//! before its offset is committed. Decoding lives here too, so every transport classifies bad
//! input the same way.

use crate::config::de;
use crate::event::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How much of a bad message is kept (its size is kept too).
pub const KEEP_BYTES: usize = 4096;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No payload at all.
    Empty,
    /// Larger than `[consumer.validation] max_event_bytes`.
    TooLarge,
    /// The bytes are not UTF-8.
    InvalidUtf8,
    /// Not JSON.
    NotJson,
    /// JSON, but not an event: a field missing or of the wrong type.
    InvalidEvent,
    /// An event that breaks the pipeline's `[consumer.validation]` rules.
    FailedValidation,
    /// Later than a metric's allowed lateness (the raw event is stored; that metric leaves it out).
    Late,
}

impl Reason {
    pub const ALL: [Reason; 7] =
        [Reason::Empty, Reason::TooLarge, Reason::InvalidUtf8, Reason::NotJson, Reason::InvalidEvent, Reason::FailedValidation, Reason::Late];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::NotJson => "not_json",
            Reason::InvalidEvent => "invalid_event",
            Reason::FailedValidation => "failed_validation",
            Reason::Late => "late",
        }
    }
}

/// One message the pipeline could not use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `topic:partition:offset` (Kafka), or the event id (late events): storing it twice keeps one.
    pub id: String,
    pub reason: Reason,
    /// What exactly was wrong (the decoder's or validator's message).
    pub detail: String,
    pub partition: i32,
    pub offset: i64,
    /// The first [`KEEP_BYTES`] of the message, invalid UTF-8 replaced.
    pub payload: String,
    /// The message's full size.
    pub payload_bytes: usize,
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
}

impl DeadLetter {
    pub fn new(id: String, reason: Reason, detail: String, (partition, offset): (i32, i64), payload: &[u8]) -> DeadLetter {
        let kept = &payload[..payload.len().min(KEEP_BYTES)];
        DeadLetter {
            id,
            reason,
            detail,
            partition,
            offset,
            payload: String::from_utf8_lossy(kept).into_owned(),
            payload_bytes: payload.len(),
            at: Utc::now(),
        }
    }
}

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
    /// Decodes and checks one message; a failure says why, in the words a dead letter keeps.
    pub fn decode(&self, bytes: Option<&[u8]>) -> Result<Event, (Reason, String)> {
        let bytes = match bytes {
            None | Some([]) => return Err((Reason::Empty, "the message has no payload".into())),
            Some(b) => b,
        };
        if bytes.len() > self.max_event_bytes {
            return Err((Reason::TooLarge, format!("{} bytes, more than max_event_bytes = {}", bytes.len(), self.max_event_bytes)));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| (Reason::InvalidUtf8, e.to_string()))?;
        let event = Event::from_json(text.as_bytes()).map_err(|e| {
            let reason = if e.is_syntax() || e.is_eof() { Reason::NotJson } else { Reason::InvalidEvent };
            (reason, e.to_string())
        })?;
        self.check(&event).map_err(|m| (Reason::FailedValidation, m))?;
        Ok(event)
    }

    fn check(&self, e: &Event) -> Result<(), String> {
        if e.user_id.is_empty() || e.item_id.is_empty() {
            return Err("user_id and item_id must not be empty".into());
        }
        if !self.interaction_types.is_empty() && !self.interaction_types.contains(&e.interaction_type) {
            let allowed: Vec<&str> = self.interaction_types.iter().map(String::as_str).collect();
            return Err(format!("interaction_type {:?} is not one of {}", e.interaction_type, allowed.join(", ")));
        }
        let ahead = e.timestamp - Utc::now();
        if ahead.to_std().is_ok_and(|d| d > self.max_future) {
            return Err(format!("timestamp {} is {}s in the future (max_future {:?})", e.timestamp, ahead.num_seconds(), self.max_future));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(v: &Validation, bytes: &[u8]) -> Reason {
        v.decode(Some(bytes)).unwrap_err().0
    }

    #[test]
    fn every_kind_of_bad_message_gets_its_reason() {
        let v = Validation { max_event_bytes: 200, interaction_types: ["view".to_string()].into(), ..Validation::default() };
        assert_eq!(v.decode(None).unwrap_err().0, Reason::Empty);
        assert_eq!(reason(&v, &[b' '; 201]), Reason::TooLarge);
        assert_eq!(reason(&v, b"{\"user_id\": \"\xff\"}"), Reason::InvalidUtf8);
        assert_eq!(reason(&v, b"not json"), Reason::NotJson);
        assert_eq!(reason(&v, b"{\"user_id\": \"u\""), Reason::NotJson);
        assert_eq!(reason(&v, br#"{"user_id": 1, "item_id": "i", "interaction_type": "view", "timestamp": "2026-01-01T00:00:00Z"}"#), Reason::InvalidEvent);
        assert_eq!(reason(&v, br#"{"item_id": "i", "interaction_type": "view", "timestamp": "2026-01-01T00:00:00Z"}"#), Reason::InvalidEvent);
        assert_eq!(reason(&v, br#"{"user_id": "u", "item_id": "i", "interaction_type": "hover", "timestamp": "2026-01-01T00:00:00Z"}"#), Reason::FailedValidation);
        assert_eq!(reason(&v, br#"{"user_id": "u", "item_id": "i", "interaction_type": "view", "timestamp": "2999-01-01T00:00:00Z"}"#), Reason::FailedValidation);
        assert!(v.decode(Some(br#"{"user_id": "u", "item_id": "i", "interaction_type": "view", "timestamp": "2026-01-01T00:00:00Z"}"#)).is_ok());
    }

    #[test]
    fn a_dead_letter_keeps_the_start_of_a_huge_message_and_its_size() {
        let d = DeadLetter::new("t:0:1".into(), Reason::TooLarge, "big".into(), (0, 1), &vec![b'x'; 100_000]);
        assert_eq!((d.payload.len(), d.payload_bytes), (KEEP_BYTES, 100_000));
    }

    proptest::proptest! {
        /// Fuzzing the decoder: any bytes give an event or a reason, never a panic.
        #[test]
        fn any_bytes_decode_or_get_a_reason(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Validation::default().decode(Some(&bytes));
        }

        /// Near-miss JSON (an event with one byte changed) as well.
        #[test]
        fn mutated_events_decode_or_get_a_reason(at in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut e = br#"{"user_id":"u","item_id":"i","interaction_type":"view","timestamp":"2026-01-01T00:00:00Z","value":1.5,"attributes":{"a":[1,2]}}"#.to_vec();
            let at = at % e.len();
            e[at] = byte;
            let _ = Validation::default().decode(Some(&e));
        }
    }
}
