//! The records of the internal topic, as ingest writes them and sessionize
//! reads them.
//!
//! Contract:
//! - Ingest writes each record in the binary form of
//!   [`wafunnel_core::wire`]: format version first, the source (raw topic,
//!   partition, offset) inside the payload, no headers. An event is keyed by
//!   [`Event::write_partition_key`]; the marker of a valid input record with
//!   nothing to count by its source (`topic/partition`), so one source's
//!   markers share a partition.
//! - Sessionize reads that form and the one before it, which the internal
//!   topic of an upgraded pipeline still holds: an event as the JSON of
//!   [`Event`] with its source in the text headers [`kafka::SOURCE_TOPIC`],
//!   [`kafka::SOURCE_PARTITION`] and [`kafka::SOURCE_OFFSET`], and a marker
//!   as an empty payload with [`kafka::KIND`] `ignored`. JSON begins with
//!   `{`, never a version byte, so the first byte tells them apart.
//! - A record that is neither is [`Undecodable`], with its source when its
//!   headers name one ([`UNKNOWN_SOURCE`] otherwise), so it is still counted.

use wafunnel_core::event::Event;
use wafunnel_core::wire::{self, Content, Record, Source, WireError};
use wafunnel_runtime::kafka;

/// The source of a record that names none.
pub const UNKNOWN_SOURCE: Source<'static> = Source {
    topic: "unknown",
    partition: 0,
    offset: -1,
};

/// Why an internal record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a record of the binary format.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A record of the earlier form whose JSON is not an event.
    #[error("json record: {0}")]
    Json(#[from] serde_json::Error),
    /// An empty record without the marker header.
    #[error("empty record that is not an ignored-record marker")]
    Empty,
}

/// An internal record that cannot be read, and where it says it came from.
#[derive(Debug)]
pub struct Undecodable<'a> {
    /// Its source, [`UNKNOWN_SOURCE`] when it names none.
    pub source: Source<'a>,
    /// Why.
    pub error: DecodeError,
}

/// Decodes one internal record, of either form. `header` looks up one of
/// the record's headers as text; only records of the earlier form need it.
pub fn decode<'a>(
    payload: &'a [u8],
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<Record<'a>, Undecodable<'a>> {
    match payload.first() {
        None | Some(b'{') => decode_json_form(payload, header),
        Some(_) => wire::decode(payload).map_err(|e| Undecodable {
            source: UNKNOWN_SOURCE,
            error: e.into(),
        }),
    }
}

fn decode_json_form<'a>(
    payload: &'a [u8],
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<Record<'a>, Undecodable<'a>> {
    let source = Source {
        topic: header(kafka::SOURCE_TOPIC).unwrap_or(UNKNOWN_SOURCE.topic),
        partition: header(kafka::SOURCE_PARTITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(UNKNOWN_SOURCE.partition),
        offset: header(kafka::SOURCE_OFFSET)
            .and_then(|o| o.parse().ok())
            .unwrap_or(UNKNOWN_SOURCE.offset),
    };
    let content = if payload.is_empty() {
        if header(kafka::KIND) != Some(kafka::KIND_IGNORED) {
            return Err(Undecodable {
                source,
                error: DecodeError::Empty,
            });
        }
        Content::Ignored
    } else {
        match serde_json::from_slice::<Event>(payload) {
            Ok(event) => Content::Event(event),
            Err(e) => {
                return Err(Undecodable {
                    source,
                    error: e.into(),
                })
            }
        }
    };
    Ok(Record { source, content })
}

/// The key and payload of the record being written, in buffers reused from
/// one record to the next: forwarding allocates nothing per record.
#[derive(Debug, Default)]
pub struct Encoder {
    key: String,
    payload: Vec<u8>,
}

impl Encoder {
    /// The key and payload of `event`, decided from `source`.
    pub fn event(&mut self, source: &Source<'_>, event: &Event) -> (&[u8], &[u8]) {
        self.key.clear();
        event.write_partition_key(&mut self.key);
        self.payload.clear();
        wire::encode_event(source, event, &mut self.payload);
        (self.key.as_bytes(), &self.payload)
    }

    /// The key and payload of the marker of a valid record from `source`
    /// with nothing to count.
    pub fn ignored(&mut self, source: &Source<'_>) -> (&[u8], &[u8]) {
        use std::fmt::Write as _;
        self.key.clear();
        // Writing to a String cannot fail.
        let _ = write!(self.key, "{}/{}", source.topic, source.partition);
        self.payload.clear();
        wire::encode_ignored(source, &mut self.payload);
        (self.key.as_bytes(), &self.payload)
    }
}

#[cfg(test)]
mod tests;
