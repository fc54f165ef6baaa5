//! How the services classify their errors: whose fault a failure is, and
//! whether doing the same thing again can succeed.
//!
//! Every error type of a service implements [`Classify`]. A retryable
//! error keeps the service alive (and not ready) while it retries with
//! backoff; a fatal one ends it with a non-zero exit and one line that
//! names the setting or the address to fix.

/// Whose fault a failure is: who has to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operator's: a setting, a credential, a missing topic or database.
    User,
    /// A system wafunnel talks to: Kafka, ClickHouse, a registry, Meta.
    External,
    /// wafunnel's own: a bug, or data it wrote itself that it cannot read.
    Internal,
}

impl Fault {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::User => "user",
            Fault::External => "external",
            Fault::Internal => "internal",
        }
    }
}

/// Implemented by every service error.
pub trait Classify {
    /// Whose fault it is.
    fn fault(&self) -> Fault;
    /// Whether retrying the same operation later can succeed.
    fn is_retryable(&self) -> bool;
}
