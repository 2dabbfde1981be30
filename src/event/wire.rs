//! How `[event]` records are written on the wire: the declaration only (format, schema file,
//! framing); `codec/` reads and writes it, and `schema.rs` checks the `[event]` keys that
//! declare it (`EventConfig::wire_check`).
//!
//! ```toml
//! [event]
//! format = "avro"                         # json (default), avro or protobuf
//! schema = "../schemas/interaction.avsc"  # fields come from it: no `fields` needed
//! framing = "confluent"                   # a zero byte and a 4-byte schema id before each record
//! schemas = { 1 = "../schemas/interaction.avsc" }  # writer schemas by id
//! ```

use serde::Deserialize;

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
