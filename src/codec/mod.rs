//! Bytes to records and back: the codec a pipeline's messages are written in, built once from
//! the config and handed to everything that reads or writes a payload (the Kafka subscriber,
//! history and producer, `runner generate`, `runner init`), so bad input is classified the same
//! way whatever carried it. What a decoded record says is checked later, by the consumer's
//! validation.
//!
//! A format is one file here (`json.rs`) and one [`Format`] variant with its arms below.

mod json;

use crate::dead_letter::Reason;
use crate::event::{Record, Schema};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The encodings a payload may be in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per message (what the generator writes).
    #[default]
    Json,
}

impl Format {
    /// The format's name, as a dead letter's detail and the logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
        }
    }

    /// A payload as a plain object, without a schema (what `runner init` infers one from);
    /// `None` when it is not one.
    pub fn object(self, bytes: &[u8]) -> Option<Map<String, Value>> {
        match self {
            Format::Json => json::object(bytes),
        }
    }
}

/// Decodes payloads of one format into records of one schema, and encodes records back.
#[derive(Debug, Clone)]
pub struct Codec {
    format: Format,
    schema: Arc<Schema>,
    /// Larger payloads are refused unread (`[consumer.validation] max_event_bytes`).
    max_bytes: usize,
}

impl Codec {
    pub fn new(format: Format, schema: Arc<Schema>, max_bytes: usize) -> Codec {
        Codec {
            format,
            schema,
            max_bytes,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Decodes one message; a failure says why, in the words a dead letter keeps (the reason
    /// names the format: `not_json` for JSON). A panic while decoding (a bug some odd input
    /// meets) is that message's `internal_error`, not the end of the consumer.
    pub fn decode(&self, bytes: Option<&[u8]>) -> Result<Record, (Reason, String)> {
        crate::base::catch_panic(|| self.decode_unguarded(bytes)).unwrap_or_else(|panic| {
            Err((
                Reason::InternalError,
                format!("the decoder failed on this message: {panic}"),
            ))
        })
    }

    fn decode_unguarded(&self, bytes: Option<&[u8]>) -> Result<Record, (Reason, String)> {
        let bytes = match bytes {
            None | Some([]) => return Err((Reason::Empty, "the message has no payload".into())),
            Some(b) => b,
        };
        if bytes.len() > self.max_bytes {
            return Err((
                Reason::TooLarge,
                format!(
                    "{} bytes, more than max_event_bytes = {}",
                    bytes.len(),
                    self.max_bytes
                ),
            ));
        }
        match self.format {
            Format::Json => json::decode(&self.schema, bytes),
        }
    }

    /// Appends `record`'s encoding to `out` (reused across records to avoid an allocation each).
    pub fn encode(&self, record: &Record, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => record.write_json(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Arc<Schema> {
        let text = "fields = { id = \"string\", user = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"";
        Arc::new(Schema::new(&toml::from_str(text).unwrap()).unwrap())
    }

    fn decode(
        schema: &Arc<Schema>,
        bytes: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Record, (Reason, String)> {
        Codec::new(Format::Json, schema.clone(), max_bytes).decode(bytes)
    }

    fn reason(bytes: &[u8]) -> Reason {
        decode(&schema(), Some(bytes), 200).unwrap_err().0
    }

    #[test]
    fn every_kind_of_undecodable_message_gets_its_reason() {
        assert_eq!(decode(&schema(), None, 200).unwrap_err().0, Reason::Empty);
        assert_eq!(reason(&[b' '; 201]), Reason::TooLarge);
        assert_eq!(reason(b"{\"user\": \"\xff\"}"), Reason::InvalidUtf8);
        assert_eq!(reason(b"not json"), Reason::NotJson);
        assert_eq!(reason(b"{\"user\": \"u\""), Reason::NotJson);
        assert_eq!(
            reason(br#"{"user": {"a": 1}, "t": "2026-01-01T00:00:00Z"}"#),
            Reason::InvalidEvent
        );
        assert_eq!(reason(br#"["user", "t"]"#), Reason::InvalidEvent);
        assert!(decode(
            &schema(),
            Some(br#"{"user": "u", "t": "2026-01-01T00:00:00Z"}"#),
            200
        )
        .is_ok());
    }

    proptest::proptest! {
        /// Fuzzing the decoder: any bytes give an event or a reason, never a panic.
        #[test]
        fn any_bytes_decode_or_get_a_reason(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&schema(), Some(&bytes), 1 << 20);
        }

        /// Near-miss JSON (an event with one byte changed) as well.
        #[test]
        fn mutated_events_decode_or_get_a_reason(at in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut e = br#"{"id":"x","user":"u","t":"2026-01-01T00:00:00Z","value":1.5,"attributes":{"a":[1,2]}}"#.to_vec();
            let at = at % e.len();
            e[at] = byte;
            let _ = decode(&schema(), Some(&e), 1 << 20);
        }
    }
}
