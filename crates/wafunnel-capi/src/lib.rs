//! # wafunnel-capi
//!
//! The Conversions API export (docs/SEMANTICS.md section 7): what the
//! sessionizer decided to tell Meta about leads and purchases, posted to
//! each account's dataset, and every export's outcome stored in ClickHouse.
//!
//! Contract:
//! - Input: the capi topic, one [`ConversionExport`] per record as JSON,
//!   keyed by its export id. The same export may appear more than once
//!   (the sessionizer replays after a crash): same id, same content.
//! - Every export ends in exactly one status of `capi_exports`: `sent`,
//!   `rejected` (with Meta's error code and message, or `not_configured`),
//!   `outside_window` or `no_click_id`; `capi_daily` counts them per
//!   account, day, event name and status. Until then an export Meta refused
//!   for its account's credential is `waiting_credential`, and is sent
//!   again once the credential works (see [`service`]).
//! - No secret reaches the table or the log, even when Meta echoes the
//!   token ([`wafunnel_runtime::scrub`]).
//! - Delivery is at least once, with the export id as Meta's `event_id`,
//!   so Meta keeps one event per export. Offsets are committed only after
//!   ClickHouse acknowledged the statuses of everything before them.
//! - Nothing about the person is sent: no phone number, user id or message
//!   text; only the business account, the click id and a purchase's value.
//! - [`payload::requests`] is a pure function from exports to the request
//!   bodies: what the service posts, what a dry run and an offline replay write.
//!
//! [`ConversionExport`]: wafunnel_core::export::ConversionExport

pub mod deliver;
pub mod payload;
pub mod service;
pub mod status;

pub use payload::{requests, Destination, Destinations, Request};
pub use service::{destinations, dry_run, run, CapiError, DryRun};
