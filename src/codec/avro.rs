//! Avro: one binary datum per message, of the record schema in `[event] schema` (an `.avsc`
//! file), plain or Confluent-framed (a zero byte and the writer schema's id first).
//!
//! Schemas are parsed and checked by `apache-avro`; the reader and writer are ours, compiled from
//! the parsed schema into a plan of the root record's fields with the record slot each one
//! fills, so a datum goes straight into a [`Record`] (the crate's generic `Value` tree would
//! allocate every field name of every record). Fields of a writer schema are matched to the
//! record's by name, so records written with an older or newer schema of the same record are read
//! (a field the writer lacks is missing, for the record's checks to judge).

use super::bytes_hex;
use crate::event::{iso, parse_time, FieldType, Framing, Naive, Origin, Record, Schema, Value};
use apache_avro::schema::{Name, Schema as Avro, UuidSchema};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Nesting deeper than this is refused: a recursive schema (a linked list) must not let a
/// hostile datum overflow the stack.
const MAX_DEPTH: usize = 64;

/// How long an id the registry could not give is not asked again.
const REGISTRY_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Parses an `.avsc` text; `origin` (the file) names it in the error.
pub fn parse(text: &str, origin: &str) -> Result<Avro, String> {
    Avro::parse_str(text).map_err(|e| format!("{origin}: not an Avro schema: {e}"))
}

/// The record fields an Avro record schema gives `[event]`, by name: the type each maps to and
/// whether it may be absent (a union with null), or `None` for a field that is not one value
/// (arrays, maps, nested records, bytes: kept as undeclared fields, in JSON).
pub fn fields(root: &Avro, origin: &str) -> Result<super::Derived, String> {
    let names = names_of(root);
    let Avro::Record(record) = root else {
        return Err(format!(
            "{origin}: the schema of a record must be an Avro record, not {root:?}"
        ));
    };
    Ok(record
        .fields
        .iter()
        .map(|f| (f.name.clone(), scalar(&f.schema, &names)))
        .collect())
}

/// The `[event]` type an Avro type maps to, and whether it is optional.
fn scalar(schema: &Avro, names: &HashMap<Name, Avro>) -> Option<(FieldType, bool)> {
    let ty = match schema {
        Avro::String | Avro::Uuid(UuidSchema::String) | Avro::Enum(_) => FieldType::String,
        Avro::Int | Avro::Long => FieldType::Int,
        Avro::Float | Avro::Double => FieldType::Float,
        Avro::Boolean => FieldType::Bool,
        Avro::TimestampMillis
        | Avro::TimestampMicros
        | Avro::TimestampNanos
        | Avro::LocalTimestampMillis
        | Avro::LocalTimestampMicros
        | Avro::LocalTimestampNanos => FieldType::Timestamp,
        Avro::Ref { name } => return scalar(names.get(name)?, names),
        Avro::Union(u) => {
            let variants = u.variants();
            let nulls = variants.iter().filter(|v| matches!(v, Avro::Null)).count();
            let others: Vec<&Avro> = variants
                .iter()
                .filter(|v| !matches!(v, Avro::Null))
                .collect();
            return match (nulls, others.as_slice()) {
                (_, [one]) => scalar(one, names).map(|(ty, optional)| (ty, optional || nulls > 0)),
                _ => None,
            };
        }
        _ => return None,
    };
    Some((ty, false))
}

/// An Avro record schema for records of `record` (string, long, double, boolean,
/// timestamp-millis; an optional field a union with null): what `runner bench` writes the same
/// records in, and a start for a user moving a JSON pipeline to Avro.
pub fn schema_for(record: &Schema, name: &str) -> String {
    let fields: Vec<serde_json::Value> = record
        .fields()
        .iter()
        .filter(|f| f.origin == Origin::Declared)
        .map(|f| {
            let ty = match f.spec.ty {
                FieldType::String => serde_json::json!("string"),
                FieldType::Int => serde_json::json!("long"),
                FieldType::Float => serde_json::json!("double"),
                FieldType::Bool => serde_json::json!("boolean"),
                FieldType::Timestamp => {
                    serde_json::json!({"type": "long", "logicalType": "timestamp-millis"})
                }
            };
            // The id may be missing (it is assigned), so it is optional on the wire too.
            match f.spec.optional || f.name == record.id_name() {
                true => serde_json::json!({"name": f.name, "type": ["null", ty], "default": null}),
                false => serde_json::json!({"name": f.name, "type": ty}),
            }
        })
        .collect();
    serde_json::json!({"type": "record", "name": name, "fields": fields}).to_string()
}

/// The named types of a schema, for its references.
fn names_of(root: &Avro) -> HashMap<Name, Avro> {
    fn walk(s: &Avro, out: &mut HashMap<Name, Avro>) {
        match s {
            Avro::Record(r) => {
                out.insert(r.name.clone(), s.clone());
                r.fields.iter().for_each(|f| walk(&f.schema, out));
            }
            Avro::Enum(e) => {
                out.insert(e.name.clone(), s.clone());
            }
            Avro::Fixed(f) => {
                out.insert(f.name.clone(), s.clone());
            }
            Avro::Array(a) => walk(&a.items, out),
            Avro::Map(m) => walk(&m.types, out),
            Avro::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(root, &mut out);
    out
}

/// One writer schema compiled for a record schema: the root's fields in order, each with the
/// slot it fills (or none: an undeclared field, kept in JSON).
#[derive(Debug)]
struct Plan {
    names: HashMap<Name, Avro>,
    fields: Vec<PlanField>,
}

#[derive(Debug)]
struct PlanField {
    name: String,
    schema: Avro,
    slot: Option<(usize, FieldType)>,
}

impl Plan {
    fn new(root: &Avro, record: &Schema, origin: &str) -> Result<Plan, String> {
        let Avro::Record(r) = root else {
            return Err(format!(
                "{origin}: the schema of a record must be an Avro record"
            ));
        };
        Ok(Plan {
            names: names_of(root),
            fields: r
                .fields
                .iter()
                .map(|f| PlanField {
                    name: f.name.clone(),
                    schema: f.schema.clone(),
                    slot: record
                        .slot(&f.name)
                        .map(|s| (s, record.fields()[s].spec.ty)),
                })
                .collect(),
        })
    }

    fn named(&self, name: &Name) -> Result<&Avro, String> {
        self.names
            .get(name)
            .ok_or_else(|| format!("the schema names type {name} but does not define it"))
    }

    fn read(&self, record: &Arc<Schema>, mut bytes: &[u8]) -> Result<Record, String> {
        let mut r = Record::new(record);
        let total = bytes.len();
        for f in &self.fields {
            let at = total - bytes.len();
            let read = match f.slot {
                Some((slot, ty)) => self
                    .scalar(&f.schema, &mut bytes, ty)
                    .map(|v| r.set(slot, v)),
                None => self
                    .json(&f.schema, &mut bytes, 0)
                    .map(|j| drop(r.extra_mut().insert(f.name.clone(), j))),
            };
            read.map_err(|why| format!("field {:?} (from byte {at}): {why}", f.name))?;
        }
        if !bytes.is_empty() {
            return Err(format!(
                "{} bytes are left after the record's {total}: not a record of this schema",
                bytes.len()
            ));
        }
        Ok(r)
    }

    /// A value for a declared field's slot.
    fn scalar(&self, s: &Avro, b: &mut &[u8], ty: FieldType) -> Result<Value, String> {
        Ok(match s {
            Avro::Null => Value::Missing,
            Avro::Boolean => Value::Bool(boolean(b)?),
            Avro::Int | Avro::Long => Value::of_int(long(b)?, ty),
            Avro::Float => Value::of_float(f32::from_le_bytes(take(b)?) as f64, ty),
            Avro::Double => Value::of_float(f64::from_le_bytes(take(b)?), ty),
            Avro::String | Avro::Uuid(UuidSchema::String) => Value::Text(text(b)?.into()),
            Avro::Enum(e) => Value::Text(symbol(&e.symbols, b)?.into()),
            Avro::TimestampMillis | Avro::LocalTimestampMillis => Value::Time(long(b)?),
            Avro::TimestampMicros | Avro::LocalTimestampMicros => {
                Value::Time(long(b)?.div_euclid(1000))
            }
            Avro::TimestampNanos | Avro::LocalTimestampNanos => {
                Value::Time(long(b)?.div_euclid(1_000_000))
            }
            Avro::Union(u) => self.scalar(variant(u.variants(), b)?, b, ty)?,
            Avro::Ref { name } => self.scalar(self.named(name)?, b, ty)?,
            // A writer schema that has the field as something else: the record's check names it.
            other => Value::Text(self.json(other, b, 0)?.to_string().into()),
        })
    }

    /// Any value, as JSON (undeclared fields).
    fn json(&self, s: &Avro, b: &mut &[u8], depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} deep"));
        }
        Ok(match s {
            Avro::Null => Json::Null,
            Avro::Boolean => Json::Bool(boolean(b)?),
            Avro::Int | Avro::Long | Avro::Date | Avro::TimeMillis | Avro::TimeMicros => {
                Json::from(long(b)?)
            }
            Avro::Float => number(f32::from_le_bytes(take(b)?) as f64),
            Avro::Double => number(f64::from_le_bytes(take(b)?)),
            Avro::String | Avro::Uuid(UuidSchema::String) => Json::String(text(b)?.to_string()),
            Avro::Enum(e) => Json::String(symbol(&e.symbols, b)?.to_string()),
            Avro::TimestampMillis | Avro::LocalTimestampMillis => Json::String(iso(long(b)?)),
            Avro::TimestampMicros | Avro::LocalTimestampMicros => {
                Json::String(iso(long(b)?.div_euclid(1000)))
            }
            Avro::TimestampNanos | Avro::LocalTimestampNanos => {
                Json::String(iso(long(b)?.div_euclid(1_000_000)))
            }
            Avro::Bytes | Avro::Decimal(_) | Avro::BigDecimal | Avro::Uuid(UuidSchema::Bytes) => {
                let n = length(b)?;
                Json::String(bytes_hex(split(b, n)?))
            }
            Avro::Fixed(f) | Avro::Duration(f) | Avro::Uuid(UuidSchema::Fixed(f)) => {
                Json::String(bytes_hex(split(b, f.size)?))
            }
            Avro::Array(a) => {
                let mut items = Vec::new();
                blocks(b, |b| {
                    items.push(self.json(&a.items, b, depth + 1)?);
                    Ok(())
                })?;
                Json::Array(items)
            }
            Avro::Map(m) => {
                let mut map = serde_json::Map::new();
                blocks(b, |b| {
                    let key = text(b)?.to_string();
                    map.insert(key, self.json(&m.types, b, depth + 1)?);
                    Ok(())
                })?;
                Json::Object(map)
            }
            Avro::Record(r) => {
                let mut map = serde_json::Map::new();
                for f in &r.fields {
                    map.insert(f.name.clone(), self.json(&f.schema, b, depth + 1)?);
                }
                Json::Object(map)
            }
            Avro::Union(u) => self.json(variant(u.variants(), b)?, b, depth + 1)?,
            Avro::Ref { name } => self.json(self.named(name)?, b, depth + 1)?,
        })
    }

    fn write(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        for f in &self.fields {
            let written = match f.slot {
                Some((slot, _)) => self.put_value(&f.schema, record.get(slot), out),
                None => self.put_json(
                    &f.schema,
                    record.extra().get(&f.name).unwrap_or(&Json::Null),
                    out,
                    0,
                ),
            };
            written.map_err(|why| format!("field {:?}: {why}", f.name))?;
        }
        Ok(())
    }

    fn put_value(&self, s: &Avro, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        match (s, v) {
            (Avro::Null, Value::Missing) => {}
            (Avro::Boolean, Value::Bool(x)) => out.push(*x as u8),
            (Avro::Int | Avro::Long, Value::Int(i)) => put_long(*i, out),
            (Avro::Float, Value::Float(_) | Value::Int(_)) => {
                out.extend((v.as_f64().unwrap_or_default() as f32).to_le_bytes())
            }
            (Avro::Double, Value::Float(_) | Value::Int(_)) => {
                out.extend(v.as_f64().unwrap_or_default().to_le_bytes())
            }
            (Avro::String | Avro::Uuid(UuidSchema::String), Value::Text(t)) => put_text(t, out),
            (Avro::Enum(e), Value::Text(t)) => match e.symbols.iter().position(|s| s == t.as_str())
            {
                Some(i) => put_long(i as i64, out),
                None => {
                    return Err(format!(
                        "{t:?} is not one of the enum's symbols ({})",
                        e.symbols.join(", ")
                    ))
                }
            },
            (Avro::TimestampMillis | Avro::LocalTimestampMillis, Value::Time(t)) => {
                put_long(*t, out)
            }
            (Avro::TimestampMicros | Avro::LocalTimestampMicros, Value::Time(t)) => {
                put_long(t.saturating_mul(1000), out)
            }
            (Avro::TimestampNanos | Avro::LocalTimestampNanos, Value::Time(t)) => {
                put_long(t.saturating_mul(1_000_000), out)
            }
            (Avro::Union(u), _) => {
                let fits = |s: &Avro| {
                    let mut probe = Vec::new();
                    self.put_value(s, v, &mut probe).ok().map(|()| probe)
                };
                let (i, bytes) = u
                    .variants()
                    .iter()
                    .enumerate()
                    .find_map(|(i, s)| Some((i, fits(s)?)))
                    .ok_or_else(|| format!("no type of the union takes {v:?}"))?;
                put_long(i as i64, out);
                out.extend(bytes);
            }
            (Avro::Ref { name }, _) => self.put_value(self.named(name)?, v, out)?,
            (Avro::Null, _) | (_, Value::Missing) => {
                return Err("missing, and the schema has no null for it".into())
            }
            (s, v) => return Err(format!("{v:?} cannot be written as {s:?}")),
        }
        Ok(())
    }

    fn put_json(&self, s: &Avro, j: &Json, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} deep"));
        }
        let scalar = match j {
            Json::Null => Some(Value::Missing),
            Json::Bool(b) => Some(Value::Bool(*b)),
            Json::Number(n) => Some(match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            }),
            Json::String(t) => Some(match parse_time(t, Naive::Utc) {
                Some(ms)
                    if matches!(
                        s,
                        Avro::TimestampMillis | Avro::TimestampMicros | Avro::TimestampNanos
                    ) =>
                {
                    Value::Time(ms)
                }
                _ => Value::Text(t.as_str().into()),
            }),
            _ => None,
        };
        match (s, j) {
            (Avro::Array(a), Json::Array(items)) => {
                if !items.is_empty() {
                    put_long(items.len() as i64, out);
                    for item in items {
                        self.put_json(&a.items, item, out, depth + 1)?;
                    }
                }
                out.push(0);
            }
            (Avro::Map(m), Json::Object(map)) => {
                if !map.is_empty() {
                    put_long(map.len() as i64, out);
                    for (k, v) in map {
                        put_text(k, out);
                        self.put_json(&m.types, v, out, depth + 1)?;
                    }
                }
                out.push(0);
            }
            (Avro::Record(r), Json::Object(map)) => {
                for f in &r.fields {
                    self.put_json(
                        &f.schema,
                        map.get(&f.name).unwrap_or(&Json::Null),
                        out,
                        depth + 1,
                    )?;
                }
            }
            (Avro::Union(u), _) => {
                let (i, bytes) = u
                    .variants()
                    .iter()
                    .enumerate()
                    .find_map(|(i, s)| {
                        let mut probe = Vec::new();
                        self.put_json(s, j, &mut probe, depth + 1)
                            .ok()
                            .map(|()| (i, probe))
                    })
                    .ok_or_else(|| format!("no type of the union takes {j}"))?;
                put_long(i as i64, out);
                out.extend(bytes);
            }
            (Avro::Ref { name }, _) => self.put_json(self.named(name)?, j, out, depth + 1)?,
            _ => match scalar {
                Some(v) => self.put_value(s, &v, out)?,
                None => return Err(format!("{j} cannot be written as {s:?}")),
            },
        }
        Ok(())
    }
}

/// A JSON number, or null for a value JSON cannot hold (NaN, infinity).
fn number(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn take<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], String> {
    let (head, rest) = b
        .split_first_chunk::<N>()
        .ok_or_else(|| format!("the record ends inside a {N}-byte value"))?;
    *b = rest;
    Ok(*head)
}

fn split<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if n > b.len() {
        return Err(format!("a length of {n} bytes, but {} are left", b.len()));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// A zig-zag varint (Avro's int and long).
fn long(b: &mut &[u8]) -> Result<i64, String> {
    let mut n: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        n |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            *b = &b[i + 1..];
            return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
        }
    }
    Err("a number that does not end (a varint of more than 10 bytes, or cut short)".into())
}

fn put_long(i: i64, out: &mut Vec<u8>) {
    let mut n = ((i << 1) ^ (i >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn length(b: &mut &[u8]) -> Result<usize, String> {
    let n = long(b)?;
    usize::try_from(n).map_err(|_| format!("a negative length ({n})"))
}

fn boolean(b: &mut &[u8]) -> Result<bool, String> {
    match take::<1>(b)? {
        [0] => Ok(false),
        [1] => Ok(true),
        [x] => Err(format!("a boolean byte of {x}")),
    }
}

fn text<'a>(b: &mut &'a [u8]) -> Result<&'a str, String> {
    let n = length(b)?;
    std::str::from_utf8(split(b, n)?).map_err(|e| format!("a string that is not UTF-8 ({e})"))
}

fn put_text(t: &str, out: &mut Vec<u8>) {
    put_long(t.len() as i64, out);
    out.extend_from_slice(t.as_bytes());
}

fn symbol<'a>(symbols: &'a [String], b: &mut &[u8]) -> Result<&'a str, String> {
    let i = long(b)?;
    usize::try_from(i)
        .ok()
        .and_then(|i| symbols.get(i))
        .map(String::as_str)
        .ok_or_else(|| format!("enum symbol {i} of {}", symbols.len()))
}

fn variant<'a>(variants: &'a [Avro], b: &mut &[u8]) -> Result<&'a Avro, String> {
    let i = long(b)?;
    usize::try_from(i)
        .ok()
        .and_then(|i| variants.get(i))
        .ok_or_else(|| format!("union branch {i} of {}", variants.len()))
}

/// Array and map blocks: a count (negative: followed by the block's size), items, until 0.
fn blocks(
    b: &mut &[u8],
    mut item: impl FnMut(&mut &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let mut count = long(b)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            count = count.checked_neg().ok_or("a block count of i64::MIN")?;
            length(b)?;
        }
        // Items of zero bytes (nulls) are possible, so the count is bounded by the bytes left
        // with room for those: a hostile count must not loop for ever.
        if count as u64 > b.len() as u64 + 4096 {
            return Err(format!("a block of {count} items in {} bytes", b.len()));
        }
        for _ in 0..count {
            item(b)?;
        }
    }
}

/// The Avro side of a codec: the record schema's plan, and the writer schemas by id of
/// Confluent framing (from `[event] schemas` files, and the registry for others).
#[derive(Debug)]
pub(super) struct AvroCodec {
    record: Arc<Schema>,
    own: Arc<Plan>,
    framing: Framing,
    write_id: Option<u32>,
    by_id: RwLock<HashMap<u32, Arc<Plan>>>,
    registry: Option<super::registry::Registry>,
    /// Ids the registry could not give, when it was asked, and why.
    misses: Mutex<HashMap<u32, (std::time::Instant, String)>>,
}

impl AvroCodec {
    /// `own` is `[event] schema`; `by_id` the files of `[event] schemas`.
    pub(super) fn new(
        record: Arc<Schema>,
        own: (&Avro, &str),
        framing: Framing,
        by_id: Vec<(u32, Avro, String)>,
        write_id: Option<u32>,
        registry: Option<super::registry::Registry>,
    ) -> Result<AvroCodec, String> {
        let plans = by_id
            .iter()
            .map(|(id, s, origin)| Ok((*id, Arc::new(Plan::new(s, &record, origin)?))))
            .collect::<Result<_, String>>()?;
        Ok(AvroCodec {
            own: Arc::new(Plan::new(own.0, &record, own.1)?),
            record,
            framing,
            write_id,
            by_id: RwLock::new(plans),
            registry,
            misses: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn decode(&self, bytes: &[u8]) -> Result<Record, String> {
        match self.framing {
            Framing::None => self.own.read(&self.record, bytes),
            Framing::Confluent => {
                let (id, body) = super::confluent_header(bytes)?;
                self.plan(id)?.read(&self.record, body)
            }
        }
    }

    /// The writer plan of a schema id: known, or fetched from the registry once. An id the
    /// registry could not give is not asked again for a minute, so a stream of records with an
    /// unknown id costs one request a minute, not one per record.
    fn plan(&self, id: u32) -> Result<Arc<Plan>, String> {
        if let Some(p) = self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(p.clone());
        }
        let listed = || {
            let ids = self.by_id.read().unwrap_or_else(|e| e.into_inner());
            let mut ids: Vec<String> = ids.keys().map(u32::to_string).collect();
            ids.sort();
            format!(
                "schema id {id} is not in [event] schemas (ids {})",
                ids.join(", ")
            )
        };
        let Some(registry) = &self.registry else {
            return Err(format!("{}, and no registry is set", listed()));
        };
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, why)) = misses.get(&id) {
            if at.elapsed() < REGISTRY_RETRY {
                return Err(format!("{}, and {why}", listed()));
            }
        }
        let origin = format!("schema id {id} of {}", registry.url());
        let fetched = registry
            .schema(id)
            .and_then(|text| Plan::new(&parse(&text, &origin)?, &self.record, &origin));
        match fetched {
            Ok(plan) => {
                misses.remove(&id);
                let plan = Arc::new(plan);
                self.by_id
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, plan.clone());
                Ok(plan)
            }
            Err(why) => {
                misses.insert(id, (std::time::Instant::now(), why.clone()));
                Err(format!("{}, and {why}", listed()))
            }
        }
    }

    pub(super) fn encode(&self, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        if self.framing == Framing::Confluent {
            let id = self.write_id.ok_or("writing Confluent-framed Avro needs the id of [event] schema: list the same file in [event] schemas with its id")?;
            out.push(0);
            out.extend(id.to_be_bytes());
        }
        self.own.write(record, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "Interaction", "namespace": "shop", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["view", "click"]}},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "price", "type": ["null", "double"], "default": null},
        {"name": "n", "type": "int"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "next", "type": ["null", "Interaction"], "default": null}
    ]}"#;

    fn record_schema() -> Arc<Schema> {
        crate::event::schema_of("id = \"event_id\"\ntime = \"timestamp\"\n[fields]\nevent_id = \"string\"\nuser_id = \"string\"\nkind = \"string\"\ntimestamp = \"timestamp\"\nprice = \"float?\"\nn = \"int\"")
    }

    fn codec() -> AvroCodec {
        let avro = parse(SCHEMA, "t.avsc").unwrap();
        AvroCodec::new(
            record_schema(),
            (&avro, "t.avsc"),
            Framing::None,
            vec![],
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn fields_map_avro_types_with_null_unions_optional() {
        let avro = parse(SCHEMA, "t.avsc").unwrap();
        let f: HashMap<String, Option<(FieldType, bool)>> =
            fields(&avro, "t.avsc").unwrap().into_iter().collect();
        assert_eq!(f["kind"], Some((FieldType::String, false)));
        assert_eq!(f["timestamp"], Some((FieldType::Timestamp, false)));
        assert_eq!(f["price"], Some((FieldType::Float, true)));
        assert_eq!(f["n"], Some((FieldType::Int, false)));
        assert_eq!((f["tags"], f["next"]), (None, None));
    }

    #[test]
    fn a_written_record_reads_back_with_nested_values_as_json() {
        let c = codec();
        let mut r = Record::new(&record_schema());
        r.set_id("e1");
        r.set(r.schema().slot("user_id").unwrap(), Value::Text("u".into()));
        r.set(
            r.schema().slot("kind").unwrap(),
            Value::Text("click".into()),
        );
        r.set_time_ms(1_700_000_000_123);
        r.set(r.schema().slot("n").unwrap(), Value::Int(-7));
        r.extra_mut()
            .insert("tags".into(), serde_json::json!(["a", "b"]));
        r.extra_mut().insert("next".into(), serde_json::json!(null));
        let mut out = Vec::new();
        c.encode(&r, &mut out).unwrap();
        let back = c.decode(&out).unwrap();
        assert_eq!(back, r);
        assert!(back.check().is_ok());
    }

    #[test]
    fn cut_or_padded_records_say_where() {
        let c = codec();
        let mut r = Record::new(&record_schema());
        r.set_id("e1");
        r.set(r.schema().slot("user_id").unwrap(), Value::Text("u".into()));
        r.set(r.schema().slot("kind").unwrap(), Value::Text("view".into()));
        r.set(r.schema().slot("n").unwrap(), Value::Int(1));
        r.set_time_ms(0);
        r.extra_mut().insert("tags".into(), serde_json::json!([]));
        let mut out = Vec::new();
        c.encode(&r, &mut out).unwrap();
        let cut = c.decode(&out[..out.len() - 2]).unwrap_err();
        assert!(
            cut.contains("field \"tags\"") || cut.contains("field \"next\""),
            "{cut}"
        );
        out.push(9);
        assert!(c.decode(&out).unwrap_err().contains("1 bytes are left"));
    }

    proptest::proptest! {
        /// Any bytes give a record or a reason, never a panic or a hang (recursive schema included).
        #[test]
        fn any_bytes_decode_or_get_a_reason(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = codec().decode(&bytes);
        }
    }
}
