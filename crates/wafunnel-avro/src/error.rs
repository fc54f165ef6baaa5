//! The one error type of this crate and its dead-letter reason codes.

use std::fmt;

use wafunnel_core::event::Rejection;

use crate::decoder::Format;

/// How the writer schema of a record is named in its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchemaId {
    /// A schema registry id (Confluent wire format).
    Registry(u32),
    /// A CRC-64-AVRO fingerprint (single-object encoding).
    Fingerprint(u64),
}

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaId::Registry(id) => write!(f, "registry id {id}"),
            SchemaId::Fingerprint(fp) => write!(f, "fingerprint {fp:#018x}"),
        }
    }
}

/// Why a record could not be encoded or decoded.
///
/// Every variant is either *fatal* for the record (it goes to the dead-letter
/// topic with [`Error::code`] as its reason) or *retryable* (the record is
/// fine, something it needs is not reachable now: retry it, never
/// dead-letter it). [`Error::is_retryable`] tells which.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fatal, `bad_avro`: the bytes are not a datum of their writer schema
    /// (truncated, corrupt, or followed by trailing bytes).
    #[error("bad Avro datum: {detail}")]
    BadAvro {
        /// What the decoder said.
        detail: String,
    },
    /// Fatal, `bad_avro`: the framing header is not the one of the topic's
    /// configured format (wrong magic byte, shorter than the header).
    #[error("not {format} framing: {detail}")]
    BadFraming {
        /// The format the topic is configured with.
        format: Format,
        /// What is wrong with the header.
        detail: String,
    },
    /// Fatal, `unknown_schema_id`: no writer schema is known under the id or
    /// fingerprint of the framing (the registry answered "not found", or the
    /// fingerprint is not one the codec knows).
    #[error("unknown writer schema ({0})")]
    UnknownSchemaId(SchemaId),
    /// Retryable, `schema_registry_unavailable`: the registry could not be
    /// asked or did not answer properly (connection error, timeout, 5xx,
    /// authentication failure, a 404 that is not its "schema not found").
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// Fatal, `bad_schema`: a writer schema that is not a valid Avro schema
    /// (or not Avro at all, e.g. a Protobuf schema under that id).
    #[error("bad writer schema: {detail}")]
    BadSchema {
        /// What is wrong with it.
        detail: String,
    },
    /// Fatal, `incompatible_schema`: a valid writer schema whose data cannot
    /// be read as `wafunnel.Event` by schema resolution.
    #[error("writer schema cannot be read as wafunnel.Event: {detail}")]
    IncompatibleSchema {
        /// Why resolution failed.
        detail: String,
    },
    /// Fatal, `schema_registry_rejected`: the registry refused to register a
    /// schema (409 incompatible with the subject, 422 invalid). Only
    /// [`HttpRegistry::register`](crate::HttpRegistry::register) returns it.
    #[error(
        "schema registry rejected the request: HTTP {status}, error_code {error_code:?}: {message}"
    )]
    RegistryRejected {
        /// The HTTP status.
        status: u16,
        /// The registry's `error_code`, when the body had one.
        error_code: Option<i64>,
        /// The registry's message or body.
        message: String,
    },
    /// Fatal, `config`: a setting is wrong (a registry URL that does not
    /// parse, the Confluent format without a registry). Never caused by a
    /// record; returned by constructors only.
    #[error("configuration error: {0}")]
    Config(String),
    /// Fatal, the rejection's own code (`unknown_type`, `missing_field`,
    /// `invalid_field`, `malformed`, …): the record decoded but is not a
    /// valid event, or a [`RawEvent`](wafunnel_core::event::RawEvent) lacks
    /// what the Avro schema requires to encode it.
    #[error(transparent)]
    Invalid(#[from] Rejection),
}

impl Error {
    /// The machine-readable dead-letter reason, stable across releases.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadAvro { .. } | Error::BadFraming { .. } => "bad_avro",
            Error::UnknownSchemaId(_) => "unknown_schema_id",
            Error::RegistryUnavailable(_) => "schema_registry_unavailable",
            Error::BadSchema { .. } => "bad_schema",
            Error::IncompatibleSchema { .. } => "incompatible_schema",
            Error::RegistryRejected { .. } => "schema_registry_rejected",
            Error::Config(_) => "config",
            Error::Invalid(rejection) => rejection.code(),
        }
    }

    /// True when the record itself is fine and must be retried later rather
    /// than dead-lettered.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::RegistryUnavailable(_))
    }

    /// The event field at fault, where there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Invalid(rejection) => rejection.field(),
            _ => None,
        }
    }

    pub(crate) fn bad_avro(detail: impl fmt::Display) -> Error {
        Error::BadAvro {
            detail: detail.to_string(),
        }
    }
}
