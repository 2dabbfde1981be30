//! Final window results as messages of a results topic: JSON, or Avro of the record in
//! `schemas/result.avsc` (plain, or Confluent-framed with the id of that schema). Results are one
//! message per window of a metric, not per event, so the Avro datum is written by `apache-avro`'s
//! own writer from its generic value tree.

use super::registry::Registry;
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::Value as Json;
use std::collections::HashMap;

/// The Avro schema of a result, shipped as `schemas/result.avsc` for readers of the topic.
pub const RESULT_SCHEMA: &str = include_str!("../../schemas/result.avsc");

/// How deep a value nests in Avro; below this a value is written as its JSON text (a string), so
/// a script's deeply nested result is still published whole.
const MAX_DEPTH: usize = 32;

/// `[results] format`: how a result is written on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultFormat {
    /// `{"metric", "window_start", "window_end", "value"}` as JSON, the times in RFC 3339.
    Json,
    /// The `runner.Result` record of `schemas/result.avsc`, the times as timestamp-millis.
    Avro,
}

/// Writes results in one format, built once for the results topic.
pub enum ResultEncoder {
    Json,
    Avro {
        schema: Box<Schema>,
        /// The Confluent header (magic byte and schema id) before each datum, when framed.
        header: Option<[u8; 5]>,
    },
}

impl ResultEncoder {
    /// JSON results.
    pub fn json() -> ResultEncoder {
        ResultEncoder::Json
    }

    /// Avro results; Confluent-framed with `schema_id` when given.
    pub fn avro(schema_id: Option<u32>) -> ResultEncoder {
        let schema = Schema::parse_str(RESULT_SCHEMA).expect("schemas/result.avsc is valid Avro");
        let header = schema_id.map(|id| {
            let mut h = [0u8; 5];
            h[1..].copy_from_slice(&id.to_be_bytes());
            h
        });
        ResultEncoder::Avro {
            schema: Box::new(schema),
            header,
        }
    }

    /// The message of one result.
    pub fn encode(
        &self,
        metric: &str,
        window_start: i64,
        window_end: i64,
        value: &Json,
    ) -> Result<Vec<u8>, String> {
        match self {
            ResultEncoder::Json => Ok(serde_json::json!({
                "metric": metric,
                "window_start": crate::event::iso(window_start),
                "window_end": crate::event::iso(window_end),
                "value": value,
            })
            .to_string()
            .into_bytes()),
            ResultEncoder::Avro { schema, header } => {
                let datum = Avro::Record(vec![
                    ("metric".into(), Avro::String(metric.to_string())),
                    ("window_start".into(), Avro::TimestampMillis(window_start)),
                    ("window_end".into(), Avro::TimestampMillis(window_end)),
                    ("value".into(), avro_value(value, 0)),
                ]);
                let mut out = header.map(Vec::from).unwrap_or_default();
                apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                    .build()
                    .and_then(|w| w.write_value(&mut out, datum))
                    .map_err(|e| format!("result of {metric} not writable as Avro: {e}"))?;
                Ok(out)
            }
        }
    }
}

/// A JSON value as the `runner.Value` record: the branch of its union, numbers that are whole
/// and fit as `long`, other numbers as `double`.
fn avro_value(value: &Json, depth: usize) -> Avro {
    let branch = match value {
        _ if depth >= MAX_DEPTH && (value.is_array() || value.is_object()) => {
            (4, Avro::String(value.to_string()))
        }
        Json::Null => (0, Avro::Null),
        Json::Bool(b) => (1, Avro::Boolean(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => (2, Avro::Long(i)),
            None => (3, Avro::Double(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => (4, Avro::String(s.clone())),
        Json::Array(items) => (
            5,
            Avro::Array(items.iter().map(|v| avro_value(v, depth + 1)).collect()),
        ),
        Json::Object(map) => (
            6,
            Avro::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), avro_value(v, depth + 1)))
                    .collect::<HashMap<_, _>>(),
            ),
        ),
    };
    Avro::Record(vec![(
        "v".into(),
        Avro::Union(branch.0, Box::new(branch.1)),
    )])
}

/// The id of `schemas/result.avsc` in the registry at `url`, registered under `subject` (as
/// Confluent's serializers do with `auto.register.schemas`; registering a schema again returns
/// its id).
pub fn register_result_schema(url: &str, subject: &str) -> Result<u32, String> {
    Registry::new(url).register(subject, RESULT_SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(encoder: &ResultEncoder, bytes: &[u8]) -> Avro {
        let ResultEncoder::Avro { schema, header } = encoder else {
            unreachable!()
        };
        let mut body = &bytes[header.map_or(0, |h| h.len())..];
        apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut body)
            .unwrap()
    }

    /// The JSON a `runner.Value` record stands for.
    fn json_of(v: &Avro) -> Json {
        let Avro::Record(fields) = v else {
            panic!("{v:?}")
        };
        let Avro::Union(_, inner) = &fields[0].1 else {
            panic!("{v:?}")
        };
        match &**inner {
            Avro::Null => Json::Null,
            Avro::Boolean(b) => Json::Bool(*b),
            Avro::Long(i) => Json::from(*i),
            Avro::Double(f) => Json::from(*f),
            Avro::String(s) => Json::String(s.clone()),
            Avro::Array(items) => Json::Array(items.iter().map(json_of).collect()),
            Avro::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), json_of(v))).collect()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_avro_result_reads_back_as_the_json_value_it_was_written_from() {
        let value = serde_json::json!({
            "count": 3, "mean": 2.5, "big": 1e308, "top": [["item_1", 4], ["item_2", 1]],
            "none": null, "ok": true, "name": "x",
        });
        let encoder = ResultEncoder::avro(Some(258));
        let bytes = encoder.encode("m", 1_000, 61_000, &value).unwrap();
        assert_eq!(
            &bytes[..5],
            &[0, 0, 0, 1, 2],
            "Confluent header with id 258"
        );
        let Avro::Record(fields) = read(&encoder, &bytes) else {
            panic!()
        };
        assert_eq!(fields[0].1, Avro::String("m".into()));
        assert_eq!(fields[1].1, Avro::TimestampMillis(1_000));
        assert_eq!(fields[2].1, Avro::TimestampMillis(61_000));
        assert_eq!(json_of(&fields[3].1), value);
    }

    #[test]
    fn a_value_nested_deeper_than_the_limit_is_kept_as_its_json_text() {
        let mut value = serde_json::json!(1);
        for _ in 0..100 {
            value = serde_json::json!([value]);
        }
        let encoder = ResultEncoder::avro(None);
        let bytes = encoder.encode("m", 0, 1, &value).unwrap();
        let Avro::Record(fields) = read(&encoder, &bytes) else {
            panic!()
        };
        let mut v = json_of(&fields[3].1);
        for _ in 0..MAX_DEPTH {
            v = v[0].clone();
        }
        let inner: Json = serde_json::from_str(v.as_str().unwrap()).unwrap();
        let mut expected = serde_json::json!(1);
        for _ in 0..100 - MAX_DEPTH {
            expected = serde_json::json!([expected]);
        }
        assert_eq!(
            inner, expected,
            "the rest of the value, whole, as JSON text"
        );
    }
}
