//! # wafunnel-runtime
//!
//! What every wafunnel service shares, so that each behaves the same way
//! in a cluster:
//! - [`config`]: layered configuration (defaults, a TOML file, the
//!   environment), checked in full at startup, one error line per problem;
//! - [`kafka`]: clients with TLS and SASL, reaching the brokers with
//!   retries, topic administration;
//! - [`metrics`] and [`http`]: one Prometheus registry and the operator
//!   endpoints `/metrics`, `/healthz`, `/readyz`, served from the start;
//! - [`logging`]: plain text or JSON on standard error, through
//!   [`scrub`], which keeps every secret out of what the process writes;
//! - [`shutdown`]: SIGTERM and SIGINT take the same bounded graceful path;
//! - [`error`]: how failures are classified (retryable or fatal, and whose
//!   fault).
//!
//! Nothing here decides a number: the counting is in `wafunnel-core`, the
//! delivery guarantees in the services that use this crate.

pub mod config;
pub mod error;
pub mod http;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod scrub;
pub mod shutdown;
