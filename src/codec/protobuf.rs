//! Protobuf: one message per payload, of the type `[event] message` in the `.proto` file
//! `[event] schema`, compiled when the pipeline loads (protox: no `protoc` needed), plain or
//! Confluent-framed (a zero byte, the schema id and the message indexes first).
//!
//! A message whose fields are all declared scalars (and Timestamps) is read straight from the
//! wire into the record's slots by a plan compiled from the descriptor: prost-reflect's dynamic
//! message allocates a map entry per field and was 2.8x JSON's decode cost. Any other message
//! (repeated, map or nested fields, an undeclared field, a wire type other than the
//! descriptor's) is read by descriptor (prost-reflect). Scalar fields fill the record's slots; a
//! field without presence (a proto3 scalar not marked `optional`) reads as its default when
//! absent, as every Protobuf reader does. `google.protobuf.Timestamp` is a timestamp. Repeated,
//! map and other message fields are kept as undeclared fields, in Protobuf's JSON mapping.

use crate::event::{iso, FieldType, Framing, Origin, Record, Schema, Value};
use prost::Message;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value as Proto,
};
use serde_json::Value as Json;
use std::path::Path;
use std::sync::Arc;

const TIMESTAMP: &str = "google.protobuf.Timestamp";

/// Compiles `file` (its folder is the import path; Google's well-known types are built in) and
/// finds `message` in it.
pub fn compile(file: &Path, message: &str) -> Result<MessageDescriptor, String> {
    let shown = file.display();
    let folder = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .ok_or_else(|| format!("{shown}: not a file"))?;
    let mut compiler = protox::Compiler::new([folder])
        .map_err(|e| format!("{shown}: cannot read the Protobuf schema: {e}"))?;
    compiler
        .include_imports(true)
        .open_file(name)
        .map_err(|e| format!("{shown}: {e}"))?;
    let pool = compiler.descriptor_pool();
    pool.get_message_by_name(message).ok_or_else(|| {
        let known: Vec<String> = pool
            .all_messages()
            .filter(|m| !m.full_name().starts_with("google.protobuf."))
            .map(|m| m.full_name().to_string())
            .collect();
        format!(
            "{shown}: no message {message:?} (the file has {}; name it with its package)",
            known.join(", ")
        )
    })
}

/// A proto3 file declaring `package.message` for records of `record` (string, int64, double,
/// bool, google.protobuf.Timestamp; an optional scalar marked `optional`): what `runner bench`
/// writes the same records in, and a start for a user moving a JSON pipeline to Protobuf.
pub fn proto_for(record: &Schema, package: &str, message: &str) -> String {
    let mut text = format!("syntax = \"proto3\";\npackage {package};\nimport \"google/protobuf/timestamp.proto\";\nmessage {message} {{\n");
    let declared = record
        .fields()
        .iter()
        .filter(|f| f.origin == Origin::Declared);
    for (i, f) in declared.enumerate() {
        let ty = match f.spec.ty {
            FieldType::String => "string",
            FieldType::Int => "int64",
            FieldType::Float => "double",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "google.protobuf.Timestamp",
        };
        let optional = f.spec.optional && f.spec.ty != FieldType::Timestamp;
        text += &format!(
            "  {}{ty} {} = {};\n",
            if optional { "optional " } else { "" },
            f.name,
            i + 1
        );
    }
    text + "}\n"
}

/// The record fields a message gives `[event]`: the type each maps to and whether it may be
/// absent, or `None` for a field that is not one value (repeated, maps, other messages). `time`
/// is the `[event] time` field: a Timestamp has presence, but the event time is required.
pub fn fields(message: &MessageDescriptor, time: &str) -> super::Derived {
    message
        .fields()
        .map(|f| {
            let ty = match f.kind() {
                _ if f.is_list() || f.is_map() => None,
                Kind::String | Kind::Enum(_) => Some(FieldType::String),
                Kind::Int32
                | Kind::Int64
                | Kind::Uint32
                | Kind::Uint64
                | Kind::Sint32
                | Kind::Sint64
                | Kind::Fixed32
                | Kind::Fixed64
                | Kind::Sfixed32
                | Kind::Sfixed64 => Some(FieldType::Int),
                Kind::Float | Kind::Double => Some(FieldType::Float),
                Kind::Bool => Some(FieldType::Bool),
                Kind::Message(m) if m.full_name() == TIMESTAMP => Some(FieldType::Timestamp),
                Kind::Message(_) | Kind::Bytes => None,
            };
            let optional = f.supports_presence() && f.name() != time;
            (f.name().to_string(), ty.map(|t| (t, optional)))
        })
        .collect()
}

/// The Protobuf side of a codec.
#[derive(Debug)]
pub(super) struct ProtobufCodec {
    record: Arc<Schema>,
    message: MessageDescriptor,
    framing: Framing,
    /// Each field of the message with the slot it fills, or none (kept as JSON).
    fields: Vec<(FieldDescriptor, Option<usize>)>,
    /// The fast path's plan, by field number: the declared scalar fields.
    fast: Vec<Option<Fast>>,
    /// The values of declared fields without presence, set before reading (proto3 leaves a
    /// field at its default off the wire).
    defaults: Vec<(usize, Value)>,
}

/// How the fast path reads one field number.
#[derive(Debug)]
struct Fast {
    slot: usize,
    ty: FieldType,
    wire: Wire,
}

/// A scalar's encoding on the wire.
#[derive(Debug)]
enum Wire {
    /// int32 / int64 / uint32 / uint64 / bool.
    Varint {
        signed32: bool,
        unsigned: bool,
        boolean: bool,
    },
    /// sint32 / sint64.
    ZigZag,
    /// An enum, by number: its values' names.
    Enum(Vec<(i32, String)>),
    Fixed64 {
        float: bool,
        signed: bool,
    },
    Fixed32 {
        float: bool,
        signed: bool,
    },
    Text,
    Timestamp,
}

impl Wire {
    fn of(f: &FieldDescriptor) -> Option<Wire> {
        if f.is_list() || f.is_map() {
            return None;
        }
        Some(match f.kind() {
            Kind::Int32 => Wire::Varint {
                signed32: true,
                unsigned: false,
                boolean: false,
            },
            Kind::Int64 => Wire::Varint {
                signed32: false,
                unsigned: false,
                boolean: false,
            },
            Kind::Uint32 | Kind::Uint64 => Wire::Varint {
                signed32: false,
                unsigned: true,
                boolean: false,
            },
            Kind::Bool => Wire::Varint {
                signed32: false,
                unsigned: false,
                boolean: true,
            },
            Kind::Sint32 | Kind::Sint64 => Wire::ZigZag,
            Kind::Enum(e) => Wire::Enum(
                e.values()
                    .map(|v| (v.number(), v.name().to_string()))
                    .collect(),
            ),
            Kind::Double => Wire::Fixed64 {
                float: true,
                signed: false,
            },
            Kind::Fixed64 => Wire::Fixed64 {
                float: false,
                signed: false,
            },
            Kind::Sfixed64 => Wire::Fixed64 {
                float: false,
                signed: true,
            },
            Kind::Float => Wire::Fixed32 {
                float: true,
                signed: false,
            },
            Kind::Fixed32 => Wire::Fixed32 {
                float: false,
                signed: false,
            },
            Kind::Sfixed32 => Wire::Fixed32 {
                float: false,
                signed: true,
            },
            Kind::String => Wire::Text,
            Kind::Message(m) if m.full_name() == TIMESTAMP => Wire::Timestamp,
            Kind::Message(_) | Kind::Bytes => return None,
        })
    }

    /// The wire type the descriptor's encoding has.
    fn wire_type(&self) -> u64 {
        match self {
            Wire::Varint { .. } | Wire::ZigZag | Wire::Enum(_) => 0,
            Wire::Fixed64 { .. } => 1,
            Wire::Text | Wire::Timestamp => 2,
            Wire::Fixed32 { .. } => 5,
        }
    }
}

/// Field numbers above this are left to the dynamic reader.
const FAST_NUMBERS: usize = 128;

impl ProtobufCodec {
    pub(super) fn new(
        record: Arc<Schema>,
        message: MessageDescriptor,
        framing: Framing,
    ) -> ProtobufCodec {
        let fields: Vec<(FieldDescriptor, Option<usize>)> = message
            .fields()
            .map(|f| {
                let slot = record.slot(f.name());
                (f, slot)
            })
            .collect();
        let mut fast: Vec<Option<Fast>> = (0..FAST_NUMBERS).map(|_| None).collect();
        let mut defaults = Vec::new();
        for (f, slot) in &fields {
            let (Some(slot), Some(wire)) = (slot, Wire::of(f)) else {
                continue;
            };
            let ty = record.fields()[*slot].spec.ty;
            if !f.supports_presence() {
                defaults.push((*slot, value(&f.default_value(), f, ty)));
            }
            if let Some(at) = fast.get_mut(f.number() as usize) {
                *at = Some(Fast {
                    slot: *slot,
                    ty,
                    wire,
                });
            }
        }
        ProtobufCodec {
            record,
            message,
            framing,
            fields,
            fast,
            defaults,
        }
    }

    pub(super) fn decode(&self, bytes: &[u8]) -> Result<Record, String> {
        let body = match self.framing {
            Framing::None => bytes,
            Framing::Confluent => message_indexes(super::confluent_header(bytes)?.1)?,
        };
        match self.read_fast(body) {
            Some(r) => Ok(r),
            None => self.read_dynamic(body),
        }
    }

    /// Any message, by descriptor.
    fn read_dynamic(&self, body: &[u8]) -> Result<Record, String> {
        let m = DynamicMessage::decode(self.message.clone(), body)
            .map_err(|e| format!("not a {} message: {e}", self.message.full_name()))?;
        let mut r = Record::new(&self.record);
        for (f, slot) in &self.fields {
            let present = m.has_field(f);
            match slot {
                Some(slot) if present || !f.supports_presence() => {
                    let ty = self.record.fields()[*slot].spec.ty;
                    r.set(*slot, value(&m.get_field(f), f, ty));
                }
                Some(_) => {}
                None if present => {
                    r.extra_mut()
                        .insert(f.name().to_string(), json(&m.get_field(f), f)?);
                }
                None => {}
            }
        }
        Ok(r)
    }

    /// The record, when every field on the wire is a declared scalar of the descriptor's
    /// encoding; `None` sends the message to the dynamic reader (which also says what is wrong
    /// with a broken one).
    fn read_fast(&self, mut b: &[u8]) -> Option<Record> {
        let mut r = Record::new(&self.record);
        for (slot, v) in &self.defaults {
            r.set(*slot, v.clone());
        }
        while !b.is_empty() {
            let tag = varint(&mut b)?;
            let f = self.fast.get((tag >> 3) as usize)?.as_ref()?;
            if tag & 7 != f.wire.wire_type() {
                return None;
            }
            let v = match &f.wire {
                Wire::Varint {
                    signed32,
                    unsigned,
                    boolean,
                } => {
                    let n = varint(&mut b)?;
                    match (signed32, unsigned, boolean) {
                        (_, _, true) => Value::Bool(n != 0),
                        (true, _, _) => Value::of_int(n as i32 as i64, f.ty),
                        (_, true, _) => match i64::try_from(n) {
                            Ok(i) => Value::of_int(i, f.ty),
                            Err(_) => Value::Float(n as f64),
                        },
                        _ => Value::of_int(n as i64, f.ty),
                    }
                }
                Wire::ZigZag => {
                    let n = varint(&mut b)?;
                    Value::of_int((n >> 1) as i64 ^ -((n & 1) as i64), f.ty)
                }
                Wire::Enum(names) => {
                    let n = varint(&mut b)? as i32;
                    Value::Text(match names.iter().find(|(k, _)| *k == n) {
                        Some((_, name)) => name.as_str().into(),
                        None => n.to_string().into(),
                    })
                }
                Wire::Fixed64 { float, signed } => {
                    let bits = u64::from_le_bytes(take(&mut b)?);
                    match (float, signed) {
                        (true, _) => Value::of_float(f64::from_bits(bits), f.ty),
                        (_, true) => Value::of_int(bits as i64, f.ty),
                        _ => match i64::try_from(bits) {
                            Ok(i) => Value::of_int(i, f.ty),
                            Err(_) => Value::Float(bits as f64),
                        },
                    }
                }
                Wire::Fixed32 { float, signed } => {
                    let bits = u32::from_le_bytes(take(&mut b)?);
                    match (float, signed) {
                        (true, _) => Value::of_float(f32::from_bits(bits) as f64, f.ty),
                        (_, true) => Value::of_int(bits as i32 as i64, f.ty),
                        _ => Value::of_int(bits as i64, f.ty),
                    }
                }
                Wire::Text => Value::Text(std::str::from_utf8(delimited(&mut b)?).ok()?.into()),
                Wire::Timestamp => {
                    let mut t = delimited(&mut b)?;
                    let (mut seconds, mut nanos) = (0i64, 0i64);
                    while !t.is_empty() {
                        match varint(&mut t)? {
                            0x08 => seconds = varint(&mut t)? as i64,
                            0x10 => nanos = varint(&mut t)? as i32 as i64,
                            _ => return None,
                        }
                    }
                    Value::Time(
                        seconds
                            .saturating_mul(1000)
                            .saturating_add(nanos / 1_000_000),
                    )
                }
            };
            r.set(f.slot, v);
        }
        Some(r)
    }

    pub(super) fn encode(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        let extras: serde_json::Map<String, Json> = record
            .extra()
            .iter()
            .filter(|(k, _)| self.message.get_field_by_name(k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut m = DynamicMessage::deserialize(self.message.clone(), Json::Object(extras))
            .map_err(|e| format!("undeclared fields do not fit the message: {e}"))?;
        for (f, slot) in &self.fields {
            let Some(slot) = slot else { continue };
            match record.get(*slot) {
                Value::Missing => {}
                v => m.set_field(
                    f,
                    proto(v, f).ok_or_else(|| {
                        format!(
                            "field {:?}: {v:?} cannot be written as {:?}",
                            f.name(),
                            f.kind()
                        )
                    })?,
                ),
            }
        }
        if self.framing == Framing::Confluent {
            // Magic byte, schema id 0 (the runner's own), and the message indexes [0] as one 0.
            out.extend([0, 0, 0, 0, 0, 0]);
        }
        m.encode(out).map_err(|e| e.to_string())
    }
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(b).ok()
}

fn take<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = b.split_first_chunk::<N>()?;
    *b = rest;
    Some(*head)
}

/// A length-delimited value's bytes.
fn delimited<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = usize::try_from(varint(b)?).ok()?;
    if n > b.len() {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

/// Skips Confluent's message indexes (a zig-zag count, then that many indexes; a lone 0 means
/// the first message): the message is `[event] message` whichever the indexes name.
fn message_indexes(mut b: &[u8]) -> Result<&[u8], String> {
    let mut next = || -> Result<i64, String> {
        let n = prost::encoding::decode_varint(&mut b)
            .map_err(|_| "the message indexes are cut short".to_string())?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    };
    let count = next()?;
    if !(0..=100).contains(&count) {
        return Err(format!(
            "{count} message indexes: not Confluent-framed Protobuf"
        ));
    }
    for _ in 0..count {
        next()?;
    }
    Ok(b)
}

/// A field's value for its slot.
fn value(v: &Proto, f: &FieldDescriptor, ty: FieldType) -> Value {
    match v {
        Proto::Bool(b) => Value::Bool(*b),
        Proto::I32(i) => Value::of_int(*i as i64, ty),
        Proto::I64(i) => Value::of_int(*i, ty),
        Proto::U32(i) => Value::of_int(*i as i64, ty),
        Proto::U64(i) => match i64::try_from(*i) {
            Ok(i) => Value::of_int(i, ty),
            Err(_) => Value::Float(*i as f64),
        },
        Proto::F32(x) => Value::of_float(*x as f64, ty),
        Proto::F64(x) => Value::of_float(*x, ty),
        Proto::String(s) => Value::Text(s.as_str().into()),
        Proto::EnumNumber(n) => Value::Text(enum_name(f, *n).into()),
        Proto::Message(m) if m.descriptor().full_name() == TIMESTAMP => {
            Value::Time(timestamp_ms(m))
        }
        other => Value::Text(format!("{other:?}").into()),
    }
}

fn enum_name(f: &FieldDescriptor, n: i32) -> String {
    match f.kind() {
        Kind::Enum(e) => e
            .get_value(n)
            .map_or_else(|| n.to_string(), |v| v.name().to_string()),
        _ => n.to_string(),
    }
}

fn timestamp_ms(m: &DynamicMessage) -> i64 {
    let seconds = m
        .get_field_by_name("seconds")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let nanos = m
        .get_field_by_name("nanos")
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    seconds
        .saturating_mul(1000)
        .saturating_add(nanos as i64 / 1_000_000)
}

/// An undeclared field in Protobuf's JSON mapping.
fn json(v: &Proto, f: &FieldDescriptor) -> Result<Json, String> {
    Ok(match v {
        Proto::Message(m) if m.descriptor().full_name() == TIMESTAMP => {
            Json::String(iso(timestamp_ms(m)))
        }
        Proto::Message(m) => serde_json::to_value(m).map_err(|e| e.to_string())?,
        Proto::List(items) => {
            Json::Array(items.iter().map(|i| json(i, f)).collect::<Result<_, _>>()?)
        }
        Proto::Map(map) => {
            let mut m = DynamicMessage::new(f.parent_message().clone());
            m.set_field(f, Proto::Map(map.clone()));
            return serde_json::to_value(&m)
                .map_err(|e| e.to_string())
                .map(|j| j.get(f.json_name()).cloned().unwrap_or(Json::Null));
        }
        Proto::EnumNumber(n) => Json::String(enum_name(f, *n)),
        Proto::Bytes(b) => Json::String(super::bytes_hex(b)),
        Proto::String(s) => Json::String(s.clone()),
        Proto::Bool(b) => Json::Bool(*b),
        Proto::I32(i) => Json::from(*i),
        Proto::I64(i) => Json::from(*i),
        Proto::U32(i) => Json::from(*i),
        Proto::U64(i) => Json::from(*i),
        Proto::F32(x) => serde_json::Number::from_f64(*x as f64).map_or(Json::Null, Json::Number),
        Proto::F64(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
    })
}

/// A slot's value as the field's Protobuf value.
fn proto(v: &Value, f: &FieldDescriptor) -> Option<Proto> {
    let int = || match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    Some(match f.kind() {
        Kind::String => Proto::String(v.as_text()?.into_owned()),
        Kind::Enum(e) => Proto::EnumNumber(e.get_value_by_name(&v.as_text()?)?.number()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Proto::I32(int()?.try_into().ok()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Proto::I64(int()?),
        Kind::Uint32 | Kind::Fixed32 => Proto::U32(int()?.try_into().ok()?),
        Kind::Uint64 | Kind::Fixed64 => Proto::U64(int()?.try_into().ok()?),
        Kind::Float => Proto::F32(v.as_f64()? as f32),
        Kind::Double => Proto::F64(v.as_f64()?),
        Kind::Bool => match v {
            Value::Bool(b) => Proto::Bool(*b),
            _ => return None,
        },
        Kind::Message(m) if m.full_name() == TIMESTAMP => {
            let Value::Time(ms) = v else { return None };
            let mut t = DynamicMessage::new(m);
            t.set_field_by_name("seconds", Proto::I64(ms.div_euclid(1000)));
            t.set_field_by_name(
                "nanos",
                Proto::I32((ms.rem_euclid(1000) * 1_000_000) as i32),
            );
            Proto::Message(t)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, ProtobufCodec) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("i.proto");
        std::fs::write(&file, "syntax = \"proto3\";\npackage shop;\nimport \"google/protobuf/timestamp.proto\";\nenum Kind { VIEW = 0; CLICK = 1; }\nmessage Interaction { string event_id = 1; string user_id = 2; Kind kind = 3; google.protobuf.Timestamp ts = 4; optional double price = 5; int64 n = 6; repeated string tags = 7; map<string, int32> counts = 8; }\n").unwrap();
        let m = compile(&file, "shop.Interaction").unwrap();
        let schema = crate::event::schema_of("id = \"event_id\"\ntime = \"ts\"\n[fields]\nevent_id = \"string\"\nuser_id = \"string\"\nkind = \"string\"\nts = \"timestamp\"\nprice = \"float?\"\nn = \"int\"");
        (dir, ProtobufCodec::new(schema, m, Framing::None))
    }

    #[test]
    fn fields_map_proto_types_with_presence_optional() {
        let (_dir, c) = setup();
        let f: std::collections::HashMap<_, _> = fields(&c.message, "ts").into_iter().collect();
        assert_eq!(f["kind"], Some((FieldType::String, false)));
        assert_eq!(f["ts"], Some((FieldType::Timestamp, false)));
        assert_eq!(f["price"], Some((FieldType::Float, true)));
        assert_eq!(f["n"], Some((FieldType::Int, false)));
        assert_eq!((f["tags"], f["counts"]), (None, None));
    }

    #[test]
    fn a_written_record_reads_back_with_repeated_and_map_fields_as_json() {
        let (_dir, c) = setup();
        let s = c.record.clone();
        let mut r = Record::new(&s);
        r.set_id("e1");
        r.set(s.slot("user_id").unwrap(), Value::Text("u".into()));
        r.set(s.slot("kind").unwrap(), Value::Text("CLICK".into()));
        r.set_time_ms(1_700_000_000_123);
        r.set(s.slot("n").unwrap(), Value::Int(-7));
        r.set(s.slot("price").unwrap(), Value::Float(2.5));
        r.extra_mut()
            .insert("tags".into(), serde_json::json!(["a", "b"]));
        r.extra_mut()
            .insert("counts".into(), serde_json::json!({"x": 3}));
        let mut out = Vec::new();
        c.encode(&r, &mut out).unwrap();
        let back = c.decode(&out).unwrap();
        assert_eq!(back, r);
        r.set(s.slot("price").unwrap(), Value::Missing);
        out.clear();
        c.encode(&r, &mut out).unwrap();
        assert_eq!(
            c.decode(&out).unwrap().field("price"),
            Some(&Value::Missing)
        );
    }

    #[test]
    fn the_fast_reader_reads_scalar_messages_as_the_dynamic_one_and_leaves_others_to_it() {
        let (_dir, c) = setup();
        let s = c.record.clone();
        let mut r = Record::new(&s);
        r.set_id("e1");
        r.set(s.slot("kind").unwrap(), Value::Text("CLICK".into()));
        r.set_time_ms(-1_700_000_000_123);
        r.set(s.slot("n").unwrap(), Value::Int(i64::MIN));
        r.set(s.slot("price").unwrap(), Value::Float(-0.5));
        let mut out = Vec::new();
        c.encode(&r, &mut out).unwrap();
        let fast = c.read_fast(&out).expect("scalars only: the fast path");
        assert_eq!(fast, c.read_dynamic(&out).unwrap());
        assert_eq!(
            fast.field("user_id"),
            Some(&Value::Text("".into())),
            "proto3 default"
        );
        r.extra_mut()
            .insert("tags".into(), serde_json::json!(["a"]));
        out.clear();
        c.encode(&r, &mut out).unwrap();
        assert!(
            c.read_fast(&out).is_none(),
            "a repeated field: the dynamic reader"
        );
        assert_eq!(
            c.decode(&out).unwrap().extra()["tags"],
            serde_json::json!(["a"])
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_get_a_reason(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let (_dir, c) = setup();
            let _ = c.decode(&bytes);
        }
    }
}
