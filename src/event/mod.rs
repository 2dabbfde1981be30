//! The record that flows from the generator to the store, shaped by the pipeline's `[event]`
//! section: nothing about any one kind of record is compiled in.

mod json;
mod record;
mod schema;
mod wire;

pub use json::DecodeError;
pub use record::{iso, parse_time, Record, Text, Value};
pub use schema::{
    derived_type, DerivedField, EventConfig, Extra, Field, FieldSpec, FieldType, Naive, Origin,
    Schema, DEFAULT_MAX_LEN,
};
pub use wire::{Format, Framing};

/// A schema from the text of an `[event]` section (unit tests).
#[cfg(test)]
pub(crate) fn schema_of(text: &str) -> std::sync::Arc<Schema> {
    std::sync::Arc::new(
        Schema::new(&toml::from_str(text).expect("[event] parses")).expect("[event] is valid"),
    )
}
