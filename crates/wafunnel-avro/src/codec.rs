//! [`AvroCodec`]: `RawEvent` to and from Avro datums, single-object
//! encoding and the Confluent wire format.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, OnceLock};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema;
use wafunnel_core::event::{decode_json, RawEvent, RawTime, Rejection};
use wafunnel_core::time::parse_rfc3339_ms;

use crate::fingerprint::fingerprint;
use crate::registry::{CachingRegistry, SchemaRegistry};
use crate::{Error, Format, SchemaId};

/// `schemas/avro/wafunnel.event.v1.avsc`: the reader schema.
pub const EVENT_V1_SCHEMA: &str = include_str!("../../../schemas/avro/wafunnel.event.v1.avsc");
/// `schemas/avro/wafunnel.event.v2.avsc`: adds `source`, drops `click_id`.
pub const EVENT_V2_SCHEMA: &str = include_str!("../../../schemas/avro/wafunnel.event.v2.avsc");

/// The first two bytes of a single-object encoded record.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// The first byte of a Confluent wire format record.
pub const CONFLUENT_MAGIC: u8 = 0x00;

const SINGLE_OBJECT_HEADER: usize = 10;
const CONFLUENT_HEADER: usize = 5;

fn builtin(cell: &'static OnceLock<Schema>, text: &str) -> &'static Schema {
    // The texts are compiled in and parsed by the tests: this cannot fail.
    cell.get_or_init(|| Schema::parse_str(text).expect("built-in schema parses"))
}

/// Version 1 of `wafunnel.Event`, parsed once.
pub fn event_v1() -> &'static Schema {
    static CELL: OnceLock<Schema> = OnceLock::new();
    builtin(&CELL, EVENT_V1_SCHEMA)
}

/// Version 2 of `wafunnel.Event`, parsed once.
pub fn event_v2() -> &'static Schema {
    static CELL: OnceLock<Schema> = OnceLock::new();
    builtin(&CELL, EVENT_V2_SCHEMA)
}

/// Splits a single-object encoded record into the writer schema's
/// fingerprint and the datum.
pub fn split_single_object(bytes: &[u8]) -> Result<(u64, &[u8]), Error> {
    let framing = |detail: String| Error::BadFraming {
        format: Format::AvroSingleObject,
        detail,
    };
    if bytes.len() < SINGLE_OBJECT_HEADER {
        return Err(framing(format!(
            "{} bytes, shorter than the 10-byte header",
            bytes.len()
        )));
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(framing(format!(
            "magic {:02x} {:02x}, expected c3 01",
            bytes[0], bytes[1]
        )));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..SINGLE_OBJECT_HEADER]);
    Ok((u64::from_le_bytes(fp), &bytes[SINGLE_OBJECT_HEADER..]))
}

/// Splits a Confluent wire format record into the schema id and the datum.
pub fn split_confluent(bytes: &[u8]) -> Result<(u32, &[u8]), Error> {
    let framing = |detail: String| Error::BadFraming {
        format: Format::AvroConfluent,
        detail,
    };
    if bytes.len() < CONFLUENT_HEADER {
        return Err(framing(format!(
            "{} bytes, shorter than the 5-byte header",
            bytes.len()
        )));
    }
    if bytes[0] != CONFLUENT_MAGIC {
        return Err(framing(format!("magic byte {:02x}, expected 00", bytes[0])));
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&bytes[1..CONFLUENT_HEADER]);
    Ok((u32::from_be_bytes(id), &bytes[CONFLUENT_HEADER..]))
}

/// Encodes and decodes `wafunnel.Event` records.
///
/// It holds the reader schema (version 1) and the writer schemas it knows by
/// fingerprint for single-object encoding (versions 1 and 2, plus any added
/// with [`AvroCodec::add_writer_schema`]). Cheap to share: put it in an
/// `Arc`.
#[derive(Clone, Debug)]
pub struct AvroCodec {
    reader: &'static Schema,
    reader_fingerprint: u64,
    known: HashMap<u64, Arc<Schema>>,
}

impl Default for AvroCodec {
    fn default() -> Self {
        AvroCodec::new()
    }
}

impl AvroCodec {
    /// A codec reading into version 1 and knowing versions 1 and 2.
    pub fn new() -> Self {
        let mut known = HashMap::new();
        let mut reader_fingerprint = 0;
        for (i, schema) in [event_v1(), event_v2()].into_iter().enumerate() {
            // Built-in schemas have a canonical form (tested).
            let fp = fingerprint(schema).expect("built-in schema has a canonical form");
            if i == 0 {
                reader_fingerprint = fp;
            }
            known.insert(fp, Arc::new(schema.clone()));
        }
        AvroCodec {
            reader: event_v1(),
            reader_fingerprint,
            known,
        }
    }

    /// The reader schema, version 1 of `wafunnel.Event`.
    pub fn reader_schema(&self) -> &Schema {
        self.reader
    }

    /// The reader schema's single-object fingerprint.
    pub fn reader_fingerprint(&self) -> u64 {
        self.reader_fingerprint
    }

    /// Makes `schema` a known single-object writer schema and returns its
    /// fingerprint. Fails if data written with it cannot be read as
    /// `wafunnel.Event`.
    pub fn add_writer_schema(&mut self, schema: Schema) -> Result<u64, Error> {
        SchemaCompatibility::can_read(&schema, self.reader).map_err(|e| {
            Error::IncompatibleSchema {
                detail: e.to_string(),
            }
        })?;
        let fp = fingerprint(&schema)?;
        self.known.insert(fp, Arc::new(schema));
        Ok(fp)
    }

    /// The known writer schema with this fingerprint.
    pub fn writer_schema(&self, fingerprint: u64) -> Option<&Arc<Schema>> {
        self.known.get(&fingerprint)
    }

    /// Encodes an event as a datum of the reader schema (version 1).
    ///
    /// `event_id`, `type`, `account_id` and `event_time` are required by the
    /// schema; an RFC 3339 `event_time` is converted to epoch milliseconds.
    pub fn encode_datum(&self, raw: &RawEvent<'_>) -> Result<Vec<u8>, Error> {
        apache_avro::to_avro_datum(self.reader, to_value(raw)?).map_err(Error::bad_avro)
    }

    /// Encodes an event as a datum of another writer schema: fields the
    /// writer lacks are left out, fields only the writer has get their
    /// defaults.
    pub fn encode_datum_with(&self, writer: &Schema, raw: &RawEvent<'_>) -> Result<Vec<u8>, Error> {
        let value = to_value(raw)?
            .resolve(writer)
            .map_err(|e| Error::IncompatibleSchema {
                detail: e.to_string(),
            })?;
        apache_avro::to_avro_datum(writer, value).map_err(Error::bad_avro)
    }

    /// Encodes one canonical JSON event as a datum of the reader schema.
    pub fn encode_json(&self, json: &[u8]) -> Result<Vec<u8>, Error> {
        self.encode_datum(&decode_json(json)?)
    }

    /// Decodes a datum written with `writer`, resolving it against the
    /// reader schema. The datum must be the whole of `datum`.
    pub fn decode_datum(&self, writer: &Schema, datum: &[u8]) -> Result<RawEvent<'static>, Error> {
        let mut input = EofGuard {
            rest: datum,
            hit_eof: false,
        };
        let value =
            apache_avro::from_avro_datum(writer, &mut input, None).map_err(Error::bad_avro)?;
        if input.hit_eof {
            return Err(Error::bad_avro("truncated datum"));
        }
        if !input.rest.is_empty() {
            return Err(Error::bad_avro(format!(
                "{} trailing bytes after the datum",
                input.rest.len()
            )));
        }
        let value = value
            .resolve(self.reader)
            .map_err(|e| Error::IncompatibleSchema {
                detail: e.to_string(),
            })?;
        from_value(value)
    }

    /// Encodes an event in single-object encoding with the reader schema
    /// (version 1) as writer schema.
    pub fn encode_single_object(&self, raw: &RawEvent<'_>) -> Result<Vec<u8>, Error> {
        let datum = self.encode_datum(raw)?;
        Ok(frame_single_object(self.reader_fingerprint, &datum))
    }

    /// Encodes an event in single-object encoding with another writer schema.
    pub fn encode_single_object_with(
        &self,
        writer: &Schema,
        raw: &RawEvent<'_>,
    ) -> Result<Vec<u8>, Error> {
        let datum = self.encode_datum_with(writer, raw)?;
        Ok(frame_single_object(fingerprint(writer)?, &datum))
    }

    /// Decodes a single-object encoded record whose writer schema is one the
    /// codec knows; an unknown fingerprint is [`Error::UnknownSchemaId`].
    pub fn decode_single_object(&self, bytes: &[u8]) -> Result<RawEvent<'static>, Error> {
        let (fp, datum) = split_single_object(bytes)?;
        let writer = self
            .known
            .get(&fp)
            .ok_or(Error::UnknownSchemaId(SchemaId::Fingerprint(fp)))?;
        self.decode_datum(writer, datum)
    }

    /// Encodes an event in the Confluent wire format with the reader schema
    /// (version 1) as writer schema; `id` must be the registry id of that
    /// schema (see [`HttpRegistry::register`](crate::HttpRegistry::register)).
    pub fn encode_confluent(&self, id: u32, raw: &RawEvent<'_>) -> Result<Vec<u8>, Error> {
        Ok(frame_confluent(id, &self.encode_datum(raw)?))
    }

    /// Encodes an event in the Confluent wire format with another writer
    /// schema, registered under `id`.
    pub fn encode_confluent_with(
        &self,
        id: u32,
        writer: &Schema,
        raw: &RawEvent<'_>,
    ) -> Result<Vec<u8>, Error> {
        Ok(frame_confluent(id, &self.encode_datum_with(writer, raw)?))
    }

    /// Decodes a Confluent wire format record, fetching its writer schema
    /// through `registry` (each id at most once per successful fetch).
    pub async fn decode_confluent<R: SchemaRegistry>(
        &self,
        registry: &CachingRegistry<R>,
        bytes: &[u8],
    ) -> Result<RawEvent<'static>, Error> {
        let (id, datum) = split_confluent(bytes)?;
        let writer = registry.get(id).await?;
        self.decode_datum(&writer, datum)
    }
}

/// The datum being decoded, remembering whether the decoder ever read past
/// its end. `apache-avro` 0.20 turns an end of input where a union index, a
/// boolean or a string's bytes should be into a null instead of an error, so
/// a truncated datum would otherwise decode with its last fields missing.
struct EofGuard<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl Read for EofGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.hit_eof = true;
        }
        self.rest.read(buf)
    }
}

fn frame_single_object(fp: u64, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SINGLE_OBJECT_HEADER + datum.len());
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fp.to_le_bytes());
    out.extend_from_slice(datum);
    out
}

fn frame_confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONFLUENT_HEADER + datum.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

fn required_str(value: &Option<Cow<'_, str>>, field: &'static str) -> Result<Value, Error> {
    value
        .as_deref()
        .map(|s| Value::String(s.to_owned()))
        .ok_or(Error::Invalid(Rejection::MissingField(field)))
}

fn opt(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn opt_str(value: &Option<Cow<'_, str>>) -> Value {
    opt(value.as_deref().map(|s| Value::String(s.to_owned())))
}

fn opt_long(value: Option<u64>, field: &'static str) -> Result<Value, Error> {
    value
        .map(|n| {
            i64::try_from(n).map(Value::Long).map_err(|_| {
                Error::Invalid(Rejection::InvalidField {
                    field,
                    detail: "larger than an Avro long".into(),
                })
            })
        })
        .transpose()
        .map(opt)
}

/// The record of the reader schema, fields in its order.
fn to_value(raw: &RawEvent<'_>) -> Result<Value, Error> {
    let event_time = match &raw.event_time {
        None => return Err(Error::Invalid(Rejection::MissingField("event_time"))),
        Some(RawTime::Millis(ms)) => *ms,
        Some(RawTime::Text(text)) => {
            parse_rfc3339_ms(text).ok_or(Error::Invalid(Rejection::InvalidField {
                field: "event_time",
                detail: "not RFC 3339 or epoch milliseconds".into(),
            }))?
        }
    };
    let fields = vec![
        ("event_id", required_str(&raw.event_id, "event_id")?),
        ("type", required_str(&raw.event_type, "type")?),
        ("account_id", required_str(&raw.account_id, "account_id")?),
        ("event_time", Value::TimestampMillis(event_time)),
        ("user_id", opt_str(&raw.user_id)),
        ("ad_id", opt_str(&raw.ad_id)),
        ("adset_id", opt_str(&raw.adset_id)),
        ("campaign_id", opt_str(&raw.campaign_id)),
        ("click_id", opt_str(&raw.click_id)),
        ("referral_ad_id", opt_str(&raw.referral_ad_id)),
        ("automated", opt(raw.automated.map(Value::Boolean))),
        ("template", opt(raw.template.map(Value::Boolean))),
        ("value", opt_str(&raw.value)),
        ("currency", opt_str(&raw.currency)),
        ("order_id", opt_str(&raw.order_id)),
        ("date", opt_str(&raw.date)),
        ("spend", opt_str(&raw.spend)),
        ("impressions", opt_long(raw.impressions, "impressions")?),
        ("clicks", opt_long(raw.clicks, "clicks")?),
        (
            "reported_conversations",
            opt_long(raw.reported_conversations, "reported_conversations")?,
        ),
    ];
    Ok(Value::Record(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    ))
}

fn unexpected(field: &str, value: &Value) -> Error {
    Error::bad_avro(format!("field `{field}` resolved to unexpected {value:?}"))
}

/// A union branch's value, or the value itself.
fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn take_str(field: &str, value: Value) -> Result<Option<Cow<'static, str>>, Error> {
    match unwrap_union(value) {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(Cow::Owned(s))),
        other => Err(unexpected(field, &other)),
    }
}

fn take_bool(field: &str, value: Value) -> Result<Option<bool>, Error> {
    match unwrap_union(value) {
        Value::Null => Ok(None),
        Value::Boolean(b) => Ok(Some(b)),
        other => Err(unexpected(field, &other)),
    }
}

fn take_count(field: &'static str, value: Value) -> Result<Option<u64>, Error> {
    match unwrap_union(value) {
        Value::Null => Ok(None),
        Value::Long(n) => u64::try_from(n).map(Some).map_err(|_| {
            Error::Invalid(Rejection::InvalidField {
                field,
                detail: format!("negative: {n}"),
            })
        }),
        other => Err(unexpected(field, &other)),
    }
}

/// A record already resolved against the reader schema.
fn from_value(value: Value) -> Result<RawEvent<'static>, Error> {
    let Value::Record(fields) = value else {
        return Err(Error::bad_avro(format!(
            "resolved to a non-record {value:?}"
        )));
    };
    let mut raw = RawEvent::default();
    for (name, value) in fields {
        match name.as_str() {
            "event_id" => raw.event_id = take_str(&name, value)?,
            "type" => raw.event_type = take_str(&name, value)?,
            "account_id" => raw.account_id = take_str(&name, value)?,
            "event_time" => {
                raw.event_time = match unwrap_union(value) {
                    Value::Null => None,
                    Value::TimestampMillis(ms) | Value::Long(ms) => Some(RawTime::Millis(ms)),
                    other => return Err(unexpected(&name, &other)),
                }
            }
            "user_id" => raw.user_id = take_str(&name, value)?,
            "ad_id" => raw.ad_id = take_str(&name, value)?,
            "adset_id" => raw.adset_id = take_str(&name, value)?,
            "campaign_id" => raw.campaign_id = take_str(&name, value)?,
            "click_id" => raw.click_id = take_str(&name, value)?,
            "referral_ad_id" => raw.referral_ad_id = take_str(&name, value)?,
            "automated" => raw.automated = take_bool(&name, value)?,
            "template" => raw.template = take_bool(&name, value)?,
            // Not in wafunnel's schema; read when a writer schema adds it.
            "billable" => raw.billable = take_bool(&name, value)?,
            "value" => raw.value = take_str(&name, value)?,
            "currency" => raw.currency = take_str(&name, value)?,
            "order_id" => raw.order_id = take_str(&name, value)?,
            "date" => raw.date = take_str(&name, value)?,
            "spend" => raw.spend = take_str(&name, value)?,
            "impressions" => raw.impressions = take_count("impressions", value)?,
            "clicks" => raw.clicks = take_count("clicks", value)?,
            "reported_conversations" => {
                raw.reported_conversations = take_count("reported_conversations", value)?
            }
            _ => {}
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests;
