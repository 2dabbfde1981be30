//! The JSON format: one object per message. The reader and writer themselves are the record's
//! (`event/json.rs`); this is what the codec adds: UTF-8 first, and the dead-letter reasons.

use crate::dead_letter::Reason;
use crate::event::{Record, Schema};
use serde_json::{Map, Value};
use std::sync::Arc;

/// One JSON object as a record of `schema`: `invalid_utf8`, `not_json` (not JSON at all) or
/// `invalid_event` (JSON of the wrong shape) when it is not one.
pub(super) fn decode(schema: &Arc<Schema>, bytes: &[u8]) -> Result<Record, (Reason, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| (Reason::InvalidUtf8, e.to_string()))?;
    Record::from_json_str(schema, text).map_err(|e| {
        let reason = match e.syntax {
            true => Reason::NotJson,
            false => Reason::InvalidEvent,
        };
        (reason, e.message)
    })
}

/// A JSON object, whatever its keys.
pub(super) fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}
