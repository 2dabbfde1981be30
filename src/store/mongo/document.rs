//! The raw document layout, both ways.

use crate::event::Event;
use anyhow::Context;
use mongodb::bson::{self, doc, Bson, Document};

/// Raw document layout: the event's fields, with timestamp as a BSON date (TTL indexes and
/// range queries need a date, not a string).
pub fn to_document(e: &Event) -> Document {
    let mut d = doc! {
        "event_id": &e.event_id,
        "user_id": &e.user_id,
        "item_id": &e.item_id,
        "interaction_type": &e.interaction_type,
        "timestamp": bson::DateTime::from_millis(e.timestamp.timestamp_millis()),
        "session_id": &e.session_id,
        "value": e.value,
    };
    if let Some(p) = e.price {
        d.insert("price", p);
    }
    if let Some(v) = e.view_duration {
        d.insert("view_duration", v);
    }
    if !e.attributes.is_empty() {
        let attrs = Bson::try_from(serde_json::Value::Object(e.attributes.clone())).unwrap_or(Bson::Null);
        d.insert("attributes", attrs);
    }
    d
}

pub(super) fn from_document(mut d: Document) -> anyhow::Result<Event> {
    let millis = d.get_datetime("timestamp").context("raw document without a date timestamp")?.timestamp_millis();
    let ts = chrono::DateTime::from_timestamp_millis(millis).context("raw document timestamp out of range")?;
    d.remove("_id");
    d.insert("timestamp", ts.to_rfc3339());
    let json: serde_json::Value = Bson::Document(d).into_relaxed_extjson();
    serde_json::from_value(json).context("raw document is not an event")
}
