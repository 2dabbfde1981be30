//! Messages the pipeline cannot use, kept instead of dropped: each becomes a [`DeadLetter`] with
//! its reason, where it came from and (the start of) what it said, stored beside the raw events
//! before its offset is committed. Deciding what is unusable is [`crate::codec`]'s job (bytes)
//! and the consumer's validation (values).

use crate::event::Record;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// Not an Avro record of the pipeline's schema (or an unknown schema id).
    NotAvro,
    /// Not a Protobuf message of the pipeline's type.
    NotProtobuf,
    /// JSON, but not an event: a field missing or of the wrong type.
    InvalidEvent,
    /// An event that breaks the pipeline's `[consumer.validation]` rules.
    FailedValidation,
    /// Later than a metric's allowed lateness (the raw event is stored; that metric leaves it out).
    Late,
    /// A valid event the store refused for good (MongoDB cannot hold it: a key with a NUL byte,
    /// over 16 MiB, an `_id` it rejects). Metrics count it; its raw copy is this dead letter.
    StoreRejected,
    /// A stored metric state that cannot be read back (written by a broken or older version, or
    /// damaged): its pane is quarantined whole under the metric's `#quarantined` key and starts
    /// again empty, instead of the consumer retrying the load forever.
    CorruptState,
    /// A record whose id is already stored with other content (a producer that reuses ids): the
    /// store keeps the first, the metrics count both, and this dead letter is the second's copy.
    DuplicateId,
    /// A record or batch the runner itself failed on (a panic while decoding or applying it):
    /// the message says where; the rest of the stream goes on.
    InternalError,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Empty,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::NotJson,
        Reason::NotAvro,
        Reason::NotProtobuf,
        Reason::InvalidEvent,
        Reason::FailedValidation,
        Reason::Late,
        Reason::StoreRejected,
        Reason::CorruptState,
        Reason::InternalError,
        Reason::DuplicateId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::NotJson => "not_json",
            Reason::NotAvro => "not_avro",
            Reason::NotProtobuf => "not_protobuf",
            Reason::InvalidEvent => "invalid_event",
            Reason::FailedValidation => "failed_validation",
            Reason::Late => "late",
            Reason::StoreRejected => "store_rejected",
            Reason::CorruptState => "corrupt_state",
            Reason::InternalError => "internal_error",
            Reason::DuplicateId => "duplicate_id",
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
    pub fn new(
        id: String,
        reason: Reason,
        detail: String,
        (partition, offset): (i32, i64),
        payload: &[u8],
    ) -> DeadLetter {
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

    /// The id of a dead letter about record `e` at `(partition, offset)`: `<kind>:<partition>:<offset>`
    /// where it has a position (the same on a replay, so storing it again keeps one, and distinct
    /// for two records that reuse an event id), else `<kind>:<event id>@<time>`.
    pub fn record_id(kind: &str, e: &Record, (partition, offset): (i32, i64)) -> String {
        match offset >= 0 {
            true => format!("{kind}:{partition}:{offset}"),
            false => format!("{kind}:{}@{}", e.id(), e.time_ms()),
        }
    }

    /// A dead letter for a decoded record, its payload the record as JSON.
    pub fn of_record(
        id: String,
        reason: Reason,
        detail: String,
        at: (i32, i64),
        record: &Record,
    ) -> DeadLetter {
        let mut json = Vec::new();
        record.write_json(&mut json);
        DeadLetter::new(id, reason, detail, at, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_start_of_a_huge_message_and_its_size() {
        let d = DeadLetter::new(
            "t:0:1".into(),
            Reason::TooLarge,
            "big".into(),
            (0, 1),
            &vec![b'x'; 100_000],
        );
        assert_eq!((d.payload.len(), d.payload_bytes), (KEEP_BYTES, 100_000));
    }
}
