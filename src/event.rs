//! The interaction event: the one record type that flows from the generator to the store.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// One user interaction, in the seed's shape plus a runner-assigned `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; the store's unique index on it makes replays harmless.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_id: String,
    pub user_id: String,
    pub item_id: String,
    pub interaction_type: String,
    #[serde(with = "iso_millis")]
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub value: f64,
    /// Present only on purchases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    /// Seconds; present only on views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_duration: Option<f64>,
    /// Fields a generator hook or another producer added beyond the seed's shape.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// Decodes one JSON message; the error says which field is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Appends the JSON encoding to `out` (reused across events to avoid an allocation each).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("an Event always serializes");
    }
}

/// ISO 8601 in UTC with milliseconds (`2026-11-27T23:22:29.123Z`), as the seed wrote them.
mod iso_millis {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // The seed wrote naive ISO timestamps (no zone); those are UTC.
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
                    .map(|t| t.and_utc())
            })
            .map_err(|e| serde::de::Error::custom(format!("timestamp {text:?} is not ISO 8601: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut e = Event {
            event_id: "e1".into(),
            user_id: "user_1".into(),
            item_id: "item_2".into(),
            interaction_type: "purchase".into(),
            timestamp: "2026-11-27T10:00:00.123Z".parse().unwrap(),
            session_id: "s".into(),
            value: 1.25,
            price: Some(9.99),
            view_duration: None,
            attributes: Default::default(),
        };
        e.attributes.insert("channel".into(), "web".into());
        let mut buf = Vec::new();
        e.write_json(&mut buf);
        assert_eq!(Event::from_json(&buf).unwrap(), e);
        assert!(!String::from_utf8(buf).unwrap().contains("view_duration"));
    }

    #[test]
    fn naive_seed_timestamp_is_utc() {
        let e = Event::from_json(
            br#"{"user_id":"u","item_id":"i","interaction_type":"view","timestamp":"2026-01-02T03:04:05.5"}"#,
        )
        .unwrap();
        assert_eq!(e.timestamp.to_rfc3339(), "2026-01-02T03:04:05.500+00:00");
        assert!(e.event_id.is_empty());
    }

    #[test]
    fn wrong_shape_names_the_field() {
        let err = Event::from_json(br#"{"user_id":1}"#).unwrap_err().to_string();
        assert!(err.contains("user_id") || err.contains("string"), "{err}");
    }
}
