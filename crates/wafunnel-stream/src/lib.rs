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
//! - **sessionize** instances share the internal and dead-letter topics in
//!   one consumer group and read them with `read_committed`. A partition's
//!   state is a pure function of its records: on assignment it is restored
//!   from the newest snapshot in the compacted state topic and the records
//!   after it are replayed (from the beginning if there is none), so a crash,
//!   restart or rebalance at any point yields the same state. Output rows are
//!   full state, versioned by offset, so rewriting them changes nothing.
//!   ClickHouse acknowledges a batch before its offsets are committed and
//!   before any snapshot of the state it holds is written.
//!   The Conversions API exports a batch emits are then produced to the
//!   capi topic and acknowledged, also before the offsets and the snapshot
//!   ([`exports`]): a crash re-emits them (the same exports), never loses
//!   one.

pub mod check;
pub mod dead_letter;
pub mod exports;
pub mod forward;
pub mod grants;
mod in_flight;
pub mod ingest;
pub mod internal;
pub mod redrive;
pub mod sessionize;
pub mod sink;
pub mod state;
