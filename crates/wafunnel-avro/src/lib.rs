//! # wafunnel-avro
//!
//! Avro for wafunnel events: the `wafunnel.Event` schema of
//! `schemas/avro/`, and the three ways an Avro event can sit in a Kafka
//! message.
//!
//! Contract:
//! - One record schema, [`EVENT_V1_SCHEMA`], carries all six event types of
//!   docs/SEMANTICS.md section 1. Decoding always resolves the writer's schema
//!   against that reader schema, so data written with any compatible schema
//!   version (see `schemas/avro/README.md`) reads as the same
//!   [`RawEvent`](wafunnel_core::event::RawEvent). Validation is not done
//!   here: a decoded event goes through
//!   [`RawEvent::validate`](wafunnel_core::event::RawEvent::validate) exactly
//!   like one from JSON, so an Avro event and its canonical JSON line give the
//!   same [`Event`](wafunnel_core::event::Event).
//! - The topic's configured [`Format`] decides how its bytes are framed;
//!   nothing sniffs the bytes:
//!   - [`Format::Json`]: canonical JSON, one event per message;
//!   - [`Format::AvroConfluent`]: `0x00`, a 4-byte big-endian schema id, the
//!     datum; the writer schema comes from a [`SchemaRegistry`], each id
//!     fetched once through a [`CachingRegistry`];
//!   - [`Format::AvroSingleObject`]: `0xC3 0x01`, the 8-byte little-endian
//!     CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
//!     the datum; the writer schema must be one the [`AvroCodec`] knows
//!     (version 1 and 2 are built in).
//! - Bad bytes never panic: every failure is an [`Error`] whose
//!   [`Error::code`] is the dead-letter reason and whose
//!   [`Error::is_retryable`] says whether the record must be retried (the
//!   schema registry is unavailable) rather than dead-lettered.

#![warn(missing_docs)]

mod codec;
mod decoder;
mod error;
pub mod fingerprint;
mod registry;

pub use codec::{
    event_v1, event_v2, split_confluent, split_single_object, AvroCodec, CONFLUENT_MAGIC,
    EVENT_V1_SCHEMA, EVENT_V2_SCHEMA, SINGLE_OBJECT_MAGIC,
};
pub use decoder::{Decoder, Format};
pub use error::{Error, SchemaId};
pub use registry::{CachingRegistry, HttpRegistry, MemoryRegistry, SchemaRegistry};

/// The Avro schema type, re-exported so callers need no direct dependency.
pub use apache_avro::Schema;
