//! Bytes to events: the one decoder every transport uses, so bad input is classified the same
//! way whatever carried it. What the bytes say is checked later, by the consumer's validation.

use crate::dead_letter::Reason;
use crate::event::{Record, Schema};
use std::sync::Arc;

/// Decodes one message of at most `max_bytes` under `schema`; a failure says why, in the words a
/// dead letter keeps.
/// A panic while decoding (a bug some odd input meets) is that message's `internal_error`,
/// not the end of the consumer.
pub fn decode(
    schema: &Arc<Schema>,
    bytes: Option<&[u8]>,
    max_bytes: usize,
) -> Result<Record, (Reason, String)> {
    crate::base::catch_panic(|| decode_unguarded(schema, bytes, max_bytes)).unwrap_or_else(
        |panic| {
            Err((
                Reason::InternalError,
                format!("the decoder failed on this message: {panic}"),
            ))
        },
    )
}

fn decode_unguarded(
    schema: &Arc<Schema>,
    bytes: Option<&[u8]>,
    max_bytes: usize,
) -> Result<Record, (Reason, String)> {
    let bytes = match bytes {
        None | Some([]) => return Err((Reason::Empty, "the message has no payload".into())),
        Some(b) => b,
    };
    if bytes.len() > max_bytes {
        return Err((
            Reason::TooLarge,
            format!(
                "{} bytes, more than max_event_bytes = {max_bytes}",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| (Reason::InvalidUtf8, e.to_string()))?;
    Record::from_json_str(schema, text).map_err(|e| {
        let reason = if e.syntax {
            Reason::NotJson
        } else {
            Reason::InvalidEvent
        };
        (reason, e.message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Arc<Schema> {
        let text = "fields = { id = \"string\", user = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"";
        Arc::new(Schema::new(&toml::from_str(text).unwrap()).unwrap())
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
