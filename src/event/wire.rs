//! How `[event]` records are written on the wire: the declaration only (format, schema file,
//! framing); `codec/` reads and writes it.
//!
//! ```toml
//! [event]
//! format = "avro"                         # json (default), avro or protobuf
//! schema = "../schemas/interaction.avsc"  # fields come from it: no `fields` needed
//! framing = "confluent"                   # a zero byte and a 4-byte schema id before each record
//! schemas = { 1 = "../schemas/interaction.avsc" }  # writer schemas by id
//! ```

use super::schema::EventConfig;
use serde::Deserialize;
use std::path::PathBuf;

/// The encodings a payload may be in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per message (what the generator writes by default).
    #[default]
    Json,
    /// One Avro datum per message, of the record schema in `schema` (an `.avsc` file).
    Avro,
    /// One Protobuf message per message, of the type `message` in `schema` (a `.proto` file).
    Protobuf,
}

impl Format {
    /// The format's name, as a dead letter's detail and the logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Avro => "Avro",
            Format::Protobuf => "Protobuf",
        }
    }
}

/// What comes before each record's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Nothing: the payload is the record.
    #[default]
    None,
    /// Confluent's wire format: a zero byte, the writer schema's id (4 bytes, big-endian), then
    /// the record (for Protobuf, the message indexes first).
    Confluent,
}

impl EventConfig {
    /// What does not fit together, each starting with `event.<key>`.
    pub fn wire_check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (self.format, &self.schema) {
            (Format::Json, Some(_)) => problems.push("event.schema: a schema file is read for format = \"avro\" or \"protobuf\"; JSON records are declared in `fields`".to_string()),
            (Format::Avro | Format::Protobuf, None) => problems.push(format!("event.format: {} records need their schema file: schema = \"path/to/file.{}\"", self.format.name(), match self.format { Format::Avro => "avsc", _ => "proto" })),
            _ => {}
        }
        match (self.format, &self.message) {
            (Format::Protobuf, None) => problems.push("event.message: name the Protobuf message type of a record, with its package (message = \"shop.Interaction\")".to_string()),
            (Format::Json | Format::Avro, Some(_)) => problems.push("event.message: applies to format = \"protobuf\"".to_string()),
            _ => {}
        }
        if self.framing == Framing::Confluent && self.format == Format::Json {
            problems.push(
                "event.framing: confluent framing applies to Avro and Protobuf records".to_string(),
            );
        }
        if (!self.schemas.is_empty() || self.registry.is_some())
            && !(self.framing == Framing::Confluent && self.format == Format::Avro)
        {
            problems.push("event.schemas: writer schemas by id (schemas, registry) apply to format = \"avro\" with framing = \"confluent\"".to_string());
        }
        for id in self.schemas.keys() {
            if id.parse::<u32>().is_err() {
                problems.push(format!(
                    "event.schemas: {id:?} is not a schema id (a whole number)"
                ));
            }
        }
        problems
    }

    /// The writer schemas by id, for those whose id parses ([`EventConfig::wire_check`] names the others).
    pub fn schemas_by_id(&self) -> impl Iterator<Item = (u32, &PathBuf)> {
        self.schemas
            .iter()
            .filter_map(|(id, path)| Some((id.parse().ok()?, path)))
    }
}
