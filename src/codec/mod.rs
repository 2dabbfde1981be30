//! Bytes to records and back: the codec a pipeline's messages are written in, built once from
//! `[event]` and handed to everything that reads or writes a payload (the Kafka subscriber,
//! history and producer, the file source, `runner generate`, `runner init`), so bad input is
//! classified the same way whatever carried it. What a decoded record says is checked later, by
//! the consumer's validation.
//!
//! A format is one file here (`json.rs`, `avro.rs`, `protobuf.rs`), one [`Format`] variant
//! (declared in `event/wire.rs`) and its arms below: [`Codec::build`], [`derive_fields`], decode,
//! encode, and its dead-letter reason.

pub mod avro;
mod json;
pub mod protobuf;
mod registry;
mod result;

use crate::dead_letter::Reason;
use crate::event::{EventConfig, FieldSpec, Record, Schema};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;

pub use crate::event::Format;
pub use result::{register_result_schema, ResultEncoder, ResultFormat, RESULT_SCHEMA};

/// A payload as a plain JSON object, without a schema (what `runner init` infers one from);
/// `None` when it is not one.
pub fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    json::object(bytes)
}

/// The schema id of a Confluent-framed payload (a zero byte and 4 bytes, big-endian), and the
/// bytes after it.
pub fn confluent_header(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [first, ..] if *first != 0 => Err(format!(
            "not Confluent-framed: the first byte is 0x{first:02x}, not the magic 0x00{}",
            if *first == b'{' {
                " (a JSON object?)"
            } else {
                ""
            }
        )),
        _ => Err(format!(
            "{} bytes, too short for the Confluent header (5)",
            bytes.len()
        )),
    }
}

/// Bytes as lowercase hex (dead letters, and bytes values in JSON).
pub fn bytes_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Appends one payload to a stream of them, as a file source reads it: a JSON record as a
/// line, an Avro or Protobuf one after its length (a varint, as Protobuf's delimited streams).
pub fn write_delimited(format: Format, payload: &[u8], out: &mut Vec<u8>) {
    match format {
        Format::Json => {
            out.extend_from_slice(payload);
            out.push(b'\n');
        }
        Format::Avro | Format::Protobuf => {
            prost::encoding::encode_varint(payload.len() as u64, out);
            out.extend_from_slice(payload);
        }
    }
}

/// How many of a payload's first bytes a dead letter's detail shows, in hex.
const SHOWN_BYTES: usize = 16;

/// Fills `[event] fields` from an Avro or Protobuf schema file (the paths already resolved
/// against the pipeline file): every field the schema has as one value, typed from it. A field
/// the section declares keeps its checks; one the schema lacks or types otherwise is a problem,
/// as `event.fields.<name>: ...` so the config can point at its line.
pub fn derive_fields(event: &mut EventConfig) -> Vec<String> {
    let Some(file) = event.schema.clone() else {
        return Vec::new();
    };
    let shown = file.display().to_string();
    let derived = match event.format {
        Format::Json => return Vec::new(),
        Format::Avro => std::fs::read_to_string(&file)
            .map_err(|e| format!("event.schema: cannot read {shown}: {e}"))
            .and_then(|text| avro::fields(&avro::parse(&text, &shown)?, &shown)),
        Format::Protobuf => match &event.message {
            Some(m) => protobuf::compile(&file, m).map(|d| protobuf::fields(&d, &event.time)),
            None => return Vec::new(),
        },
    };
    let derived = match derived {
        Ok(d) => d,
        Err(why) => return vec![format!("event.schema: {why}")],
    };
    let mut problems = Vec::new();
    for (name, spec) in &event.fields {
        match derived.iter().find(|(n, _)| n == name) {
            None => problems.push(format!(
                "event.fields.{name}: declared, but {shown} has no field {name:?} (it has {})",
                derived.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            )),
            Some((_, None)) => problems.push(format!(
                "event.fields.{name}: {shown} has {name:?} as a value that is not one string, number, boolean or timestamp; leave it undeclared (it is kept as JSON)"
            )),
            Some((_, Some((ty, _)))) if *ty != spec.ty => problems.push(format!(
                "event.fields.{name}: declared {}, but {shown} has it as {}",
                spec.ty.name(),
                ty.name()
            )),
            Some(_) => {}
        }
    }
    for (name, found) in derived {
        if let (Some((ty, optional)), false) = (found, event.fields.contains_key(&name)) {
            event.fields.insert(name, FieldSpec::of(ty, optional));
        }
    }
    problems
}

/// The fields a schema file gives `[event]`, by name: the type each maps to and whether it may be
/// absent, or `None` for a field that is not one value (kept as an undeclared field, in JSON).
pub type Derived = Vec<(String, Option<(crate::event::FieldType, bool)>)>;

/// The format-specific half of a codec.
#[derive(Debug)]
enum Wire {
    Json,
    Avro(avro::AvroCodec),
    Protobuf(protobuf::ProtobufCodec),
}

/// Decodes payloads of one format into records of one schema, and encodes records back.
#[derive(Debug, Clone)]
pub struct Codec {
    format: Format,
    schema: Arc<Schema>,
    wire: Arc<Wire>,
    /// Larger payloads are refused unread (`[consumer.validation] max_event_bytes`).
    max_bytes: usize,
}

impl Codec {
    /// A JSON codec (tests, and records that are JSON whatever the pipeline's format).
    pub fn json(schema: Arc<Schema>, max_bytes: usize) -> Codec {
        Codec {
            format: Format::Json,
            schema,
            wire: Arc::new(Wire::Json),
            max_bytes,
        }
    }

    /// The codec `[event]` declares, reading its schema files (paths resolved).
    pub fn build(
        event: &EventConfig,
        schema: Arc<Schema>,
        max_bytes: usize,
    ) -> Result<Codec, String> {
        let file = || {
            event.schema.as_deref().ok_or_else(|| {
                format!(
                    "[event] format = {:?} needs a schema file",
                    event.format.name()
                )
            })
        };
        let wire = match event.format {
            Format::Json => Wire::Json,
            Format::Avro => {
                let read = |path: &Path| -> Result<(apache_avro::Schema, String), String> {
                    let shown = path.display().to_string();
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {shown}: {e}"))?;
                    Ok((avro::parse(&text, &shown)?, shown))
                };
                let own = file()?;
                let (own_schema, shown) = read(own)?;
                let mut by_id = Vec::new();
                let mut write_id = None;
                for (id, path) in event.schemas_by_id() {
                    let (s, shown) = read(path)?;
                    if path == own {
                        write_id = Some(id);
                    }
                    by_id.push((id, s, shown));
                }
                let registry = event.registry.as_deref().map(registry::Registry::new);
                Wire::Avro(avro::AvroCodec::new(
                    schema.clone(),
                    (&own_schema, &shown),
                    event.framing,
                    by_id,
                    write_id,
                    registry,
                )?)
            }
            Format::Protobuf => {
                let message = event
                    .message
                    .as_deref()
                    .ok_or("[event] format = \"protobuf\" needs message = \"package.Message\"")?;
                let descriptor = protobuf::compile(file()?, message)?;
                Wire::Protobuf(protobuf::ProtobufCodec::new(
                    schema.clone(),
                    descriptor,
                    event.framing,
                ))
            }
        };
        Ok(Codec {
            format: event.format,
            schema,
            wire: Arc::new(wire),
            max_bytes,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Decodes one message; a failure says why, in the words a dead letter keeps (the reason
    /// names the format: `not_json`, `not_avro`, `not_protobuf`; the latter two with the
    /// payload's first bytes in hex). A panic while decoding (a bug some odd input meets) is
    /// that message's `internal_error`, not the end of the consumer.
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
        let shown = |why: String| {
            format!(
                "{why}; first bytes: {}",
                bytes_hex(&bytes[..bytes.len().min(SHOWN_BYTES)])
            )
        };
        match &*self.wire {
            Wire::Json => json::decode(&self.schema, bytes),
            Wire::Avro(a) => a.decode(bytes).map_err(|why| (Reason::NotAvro, shown(why))),
            Wire::Protobuf(p) => p
                .decode(bytes)
                .map_err(|why| (Reason::NotProtobuf, shown(why))),
        }
    }

    /// Appends `record`'s encoding to `out` (reused across records to avoid an allocation
    /// each); a record the format's schema cannot hold (a value of another type in a field the
    /// schema has) is an error naming the field.
    pub fn encode(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        match &*self.wire {
            Wire::Json => {
                record.write_json(out);
                Ok(())
            }
            Wire::Avro(a) => a.encode(record, out),
            Wire::Protobuf(p) => p.encode(record, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Framing;

    fn schema() -> Arc<Schema> {
        let text = "fields = { id = \"string\", user = \"string\", t = \"timestamp\" }\nid = \"id\"\ntime = \"t\"";
        Arc::new(Schema::new(&toml::from_str(text).unwrap()).unwrap())
    }

    fn decode(
        schema: &Arc<Schema>,
        bytes: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Record, (Reason, String)> {
        Codec::json(schema.clone(), max_bytes).decode(bytes)
    }

    fn reason(bytes: &[u8]) -> Reason {
        decode(&schema(), Some(bytes), 200).unwrap_err().0
    }

    /// A codec of `format` for the schema above, from schema files written for it.
    fn built(format: Format, framing: Framing) -> (tempfile::TempDir, Codec) {
        let dir = tempfile::tempdir().unwrap();
        let avsc = dir.path().join("r.avsc");
        std::fs::write(&avsc, avro::schema_for(&schema(), "R")).unwrap();
        let proto = dir.path().join("r.proto");
        std::fs::write(&proto, protobuf::proto_for(&schema(), "t", "R")).unwrap();
        let mut event: EventConfig = toml::from_str("id = \"id\"\ntime = \"t\"").unwrap();
        (event.format, event.framing) = (format, framing);
        match format {
            Format::Avro => event.schema = Some(avsc.clone()),
            Format::Protobuf => {
                event.schema = Some(proto);
                event.message = Some("t.R".into());
            }
            Format::Json => {}
        }
        event.schemas.insert("5".into(), avsc);
        let codec = Codec::build(&event, schema(), 200).unwrap();
        (dir, codec)
    }

    #[test]
    fn binary_formats_name_themselves_and_show_the_first_bytes_in_hex() {
        let (_d, avro) = built(Format::Avro, Framing::None);
        let (reason, detail) = avro.decode(Some(&[0x02, 0xff, 0xfe])).unwrap_err();
        assert_eq!(reason, Reason::NotAvro);
        assert!(detail.ends_with("first bytes: 02fffe"), "{detail}");
        let (_d, framed) = built(Format::Avro, Framing::Confluent);
        let (reason, detail) = framed.decode(Some(b"{\"id\": 1}")).unwrap_err();
        assert_eq!(reason, Reason::NotAvro);
        assert!(
            detail.contains("0x7b, not the magic 0x00 (a JSON object?)"),
            "{detail}"
        );
        let (_, detail) = framed.decode(Some(&[0, 0, 0, 0, 6, 1])).unwrap_err();
        assert!(
            detail.contains("schema id 6 is not in [event] schemas (ids 5)"),
            "{detail}"
        );
        let (_d, proto) = built(Format::Protobuf, Framing::None);
        let (reason, detail) = proto.decode(Some(&[0x0a, 0x09, 0x41])).unwrap_err();
        assert_eq!(reason, Reason::NotProtobuf);
        assert!(
            detail.contains("not a t.R message") && detail.ends_with("0a0941"),
            "{detail}"
        );
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
