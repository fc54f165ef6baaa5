//! # wafunnel-stream
//!
//! The streaming services: `ingest` (raw topics → validated, re-keyed events
//! and dead letters) and `sessionize` (internal topic → one sessionizer per
//! partition → ClickHouse), plus migrations and the end-to-end `check`.
//!
//! Delivery contract:
//! - **ingest** reads raw records and writes, in one Kafka transaction, the
//!   validated events to the internal topic (keyed so that a contact's events,
//!   and an ad's spend, share a partition), the rejected records to the
//!   dead-letter topic, and the consumed offsets. A record is forwarded or
//!   dead-lettered exactly once, or not at all if the transaction aborts
//!   (then it is read again).
//! - **sessionize** reads the internal and dead-letter topics with
//!   `read_committed`. On start it rebuilds each partition's state by
//!   replaying the partition from its beginning: the state is a pure
//!   function of the partition's records, so a restart at any point yields
//!   the same state. Output rows are full state, versioned by offset, so
//!   rewriting them during the replay changes nothing. Offsets are committed
//!   only after ClickHouse acknowledged the rows they produced; they mark
//!   progress for monitoring and never decide what the state is.

pub mod check;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod sessionize;
pub mod sink;
