//! # wafunnel-core
//!
//! The pure engine of wafunnel: the event model, its validation, and the
//! conversation sessionizer that turns events into the tables of
//! docs/SEMANTICS.md. Nothing here touches Kafka, ClickHouse, files, or the
//! clock: every input (including the "now" used to reject future
//! timestamps) is an argument, so the same input log always gives the same
//! output, and every rule is unit- and property-testable.
//!
//! Contract:
//! - [`event`] decodes the canonical JSON and validates it; a rejection has a
//!   stable machine-readable code that becomes the dead-letter reason.
//! - [`sessionizer::Sessionizer`] holds the state of one partition. It accepts
//!   events in arrival order; within the allowed lateness any arrival order
//!   yields the same tables as the total order of docs/SEMANTICS.md section 1.
//!   Each input ends in exactly one [`sessionizer::Outcome`].
//! - Its output is a stream of partition-scoped full-state rows
//!   ([`rows`]) that are idempotent to re-apply: the last row per key wins.
//!   [`tables::Tables`] merges the rows of any number of partitions into the
//!   three BI tables exactly as the ClickHouse views do.
//! - Raw user ids never get past validation: only a keyed hash is stored.
//! - [`wire`] is the versioned binary form of a validated event on the
//!   internal topic; `decode(encode(e)) == e`.

pub mod config;
pub mod event;
pub mod export;
pub mod money;
pub mod rows;
pub mod sessionizer;
pub mod tables;
pub mod time;
pub mod wire;
