//! [`Format`], a topic's configured encoding, and [`Decoder`], which decodes
//! a topic's records in it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use wafunnel_core::event::{decode_json, RawEvent};

use crate::registry::{CachingRegistry, HttpRegistry, SchemaRegistry};
use crate::{AvroCodec, Error};

/// How a topic's records are encoded. Configured per topic, never guessed
/// from the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Canonical JSON, one event per record (`json`).
    Json,
    /// Confluent wire format: `0x00`, a big-endian 4-byte schema registry
    /// id, the Avro datum (`avro-confluent`).
    AvroConfluent,
    /// Avro single-object encoding: `0xC3 0x01`, the little-endian 8-byte
    /// CRC-64-AVRO fingerprint of the writer schema, the Avro datum
    /// (`avro-single-object`).
    AvroSingleObject,
    /// One WhatsApp Cloud API webhook body per record, as Meta posted it
    /// (`whatsapp-webhook`); it may hold many events.
    WhatsappWebhook,
    /// One Marketing API insights row per record, as JSON (`meta-insights`).
    MetaInsights,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 5] = [
        Format::Json,
        Format::AvroConfluent,
        Format::AvroSingleObject,
        Format::WhatsappWebhook,
        Format::MetaInsights,
    ];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::AvroConfluent => "avro-confluent",
            Format::AvroSingleObject => "avro-single-object",
            Format::WhatsappWebhook => "whatsapp-webhook",
            Format::MetaInsights => "meta-insights",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown format `{s}` (json, avro-confluent, avro-single-object, whatsapp-webhook, meta-insights)"
                ))
            })
    }
}

/// Decodes the records of one topic in its configured [`Format`].
#[derive(Debug)]
pub struct Decoder<R = HttpRegistry> {
    format: Format,
    codec: AvroCodec,
    registry: Option<CachingRegistry<R>>,
}

impl<R: SchemaRegistry> Decoder<R> {
    /// A decoder for `format`. [`Format::AvroConfluent`] needs a registry;
    /// the other formats ignore it.
    pub fn new(
        format: Format,
        codec: AvroCodec,
        registry: Option<CachingRegistry<R>>,
    ) -> Result<Self, Error> {
        if format == Format::AvroConfluent && registry.is_none() {
            return Err(Error::Config(
                "format avro-confluent needs a schema registry".into(),
            ));
        }
        Ok(Decoder {
            format,
            codec,
            registry,
        })
    }

    /// The configured format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The codec.
    pub fn codec(&self) -> &AvroCodec {
        &self.codec
    }

    /// Decodes one record. JSON borrows from `bytes`; Avro owns its strings.
    /// The result still has to be validated.
    pub async fn decode<'a>(&self, bytes: &'a [u8]) -> Result<RawEvent<'a>, Error> {
        match self.format {
            Format::Json => Ok(decode_json(bytes)?),
            Format::AvroSingleObject => self.codec.decode_single_object(bytes),
            Format::AvroConfluent => match &self.registry {
                Some(registry) => self.codec.decode_confluent(registry, bytes).await,
                None => Err(Error::Config(
                    "format avro-confluent needs a schema registry".into(),
                )),
            },
            // A record of these may hold several events: wafunnel-meta reads them.
            Format::WhatsappWebhook | Format::MetaInsights => Err(Error::Config(format!(
                "format {} is not a single-event format",
                self.format
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryRegistry;

    #[test]
    fn format_names_are_kebab_case() {
        for format in Format::ALL {
            let json = serde_json::to_string(&format).unwrap();
            assert_eq!(json, format!("\"{}\"", format.as_str()));
            assert_eq!(serde_json::from_str::<Format>(&json).unwrap(), format);
            assert_eq!(format.as_str().parse::<Format>().unwrap(), format);
        }
        assert_eq!(Format::AvroSingleObject.as_str(), "avro-single-object");
        assert_eq!("avro".parse::<Format>().unwrap_err().code(), "config");
    }

    #[test]
    fn decoding_can_run_on_any_tokio_worker() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: T) {}
        let decoder = Decoder::new(
            Format::AvroConfluent,
            AvroCodec::new(),
            Some(CachingRegistry::new(
                HttpRegistry::new("http://127.0.0.1:1").unwrap(),
            )),
        )
        .unwrap();
        assert_send_sync(&decoder);
        assert_send(decoder.decode(b""));
    }

    #[test]
    fn confluent_needs_a_registry() {
        let err = Decoder::<MemoryRegistry>::new(Format::AvroConfluent, AvroCodec::new(), None)
            .unwrap_err();
        assert_eq!(err.code(), "config");
    }

    #[tokio::test]
    async fn the_configured_format_decides() {
        let codec = AvroCodec::new();
        let line = br#"{"event_id":"wamid.2","type":"message_out","account_id":"act_1","user_id":"u1","event_time":1772445780000}"#;
        let single = codec
            .encode_json(line)
            .map(|d| {
                [
                    &[0xC3, 0x01][..],
                    &codec.reader_fingerprint().to_le_bytes(),
                    &d,
                ]
                .concat()
            })
            .unwrap();
        let registry = MemoryRegistry::default();
        registry.insert(7, codec.reader_schema().clone());
        let confluent = codec
            .encode_confluent(7, &decode_json(line).unwrap())
            .unwrap();

        let json = Decoder::<MemoryRegistry>::new(Format::Json, codec.clone(), None).unwrap();
        let so =
            Decoder::<MemoryRegistry>::new(Format::AvroSingleObject, codec.clone(), None).unwrap();
        let cf = Decoder::new(
            Format::AvroConfluent,
            codec.clone(),
            Some(CachingRegistry::new(registry)),
        )
        .unwrap();

        let expected = decode_json(line).unwrap();
        assert_eq!(json.decode(line).await.unwrap(), expected);
        assert_eq!(so.decode(&single).await.unwrap(), expected);
        assert_eq!(cf.decode(&confluent).await.unwrap(), expected);
        // Each decoder rejects the others' bytes instead of guessing.
        assert_eq!(json.decode(&single).await.unwrap_err().code(), "malformed");
        assert_eq!(so.decode(&confluent).await.unwrap_err().code(), "bad_avro");
        assert_eq!(cf.decode(&single).await.unwrap_err().code(), "bad_avro");
        assert_eq!(cf.decode(line).await.unwrap_err().code(), "bad_avro");
    }
}
