//! # wafunnel-meta
//!
//! Meta's own payloads, normalized into the canonical events of
//! docs/SEMANTICS.md section 1 by the rules of section 6. Pure: no I/O, no
//! clock (an insights row's time comes from its `fetched_at` or from the
//! caller, which passes the Kafka record's timestamp).
//!
//! - [`webhook`]: one WhatsApp Cloud API webhook body → zero or more raw
//!   events (zero: a valid body with nothing to count, *ignored*), or one
//!   rejection for the whole body.
//! - [`insights`]: one Marketing API insights row → one `ad_spend` raw
//!   event, or a rejection.
//! - [`minimize`]: a webhook body with only what the rules use (section 9),
//!   as the receiver stores it and as a dead letter shows it.
//!
//! The raw events then go through the same validation as any other input
//! (section 4), each on its own.

pub mod insights;
pub mod minimize;
pub mod webhook;

pub use insights::insights_row;
pub use minimize::{minimize, NotAnObject};
pub use webhook::{normalize_webhook, PhoneNumbers};
