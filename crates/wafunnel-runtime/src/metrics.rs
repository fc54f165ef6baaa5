//! Every operator metric of every service, declared here and nowhere else,
//! in one Prometheus registry served on `/metrics`. Labels are few and
//! fixed (stage, outcome, operation, result, source): never an account, an
//! ad, a user or a topic name, so the series count does not grow with the
//! traffic.
//!
//! Hot paths hold the labelled counters directly (one atomic add); nothing
//! is looked up per record.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Records {
    stage: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    result: &'static str,
}

/// `wafunnel_webhook_requests_total{result}`.
#[derive(Debug)]
pub struct WebhookCounters {
    /// POSTs verified and stored, answered 200.
    pub stored: Counter,
    /// POSTs with a missing or wrong signature, answered 401.
    pub bad_signature: Counter,
    /// POSTs over the size limit, answered 413.
    pub too_large: Counter,
    /// Verified POSTs that could not be stored, answered 503.
    pub unavailable: Counter,
    /// Handshakes answered with the challenge.
    pub verified: Counter,
    /// Handshakes refused (wrong token or mode), answered 403.
    pub refused: Counter,
}

/// `wafunnel_capi_exports_total{status}`, `wafunnel_capi_requests_total{result}`
/// and the capi stage of `wafunnel_records_total`.
#[derive(Debug)]
pub struct CapiCounters {
    /// Exports stored as sent.
    pub exports_sent: Counter,
    /// Exports stored as rejected (by Meta, or not configured).
    pub exports_rejected: Counter,
    /// Exports stored as outside the click window.
    pub exports_outside_window: Counter,
    /// Exports stored as without a click id.
    pub exports_no_click_id: Counter,
    /// Requests Meta accepted (2xx).
    pub requests_sent: Counter,
    /// Requests Meta refused (4xx).
    pub requests_rejected: Counter,
    /// Requests throttled (429 or a throttling code), retried.
    pub requests_throttled: Counter,
    /// Requests that failed on Meta's side (5xx, transient), retried.
    pub requests_server_error: Counter,
    /// Requests without an answer (network, timeout), retried.
    pub requests_network: Counter,
    /// Export records whose export id was already stored or in flight.
    pub duplicates: Counter,
    /// Records of the capi topic that are not exports, skipped.
    pub undecodable: Counter,
    /// Exports waiting for their account's credential to work (not final).
    pub waiting_credential: Gauge,
    /// Accounts whose credential Meta refuses.
    pub refused_credentials: Gauge,
}

impl CapiCounters {
    /// Counts one stored export of `status` (the column value). A waiting
    /// export is not final: it is counted by the gauge, and here once it
    /// is sent.
    pub fn stored(&self, status: &str) {
        match status {
            "sent" => self.exports_sent.inc(),
            "rejected" => self.exports_rejected.inc(),
            "outside_window" => self.exports_outside_window.inc(),
            "waiting_credential" => return,
            _ => self.exports_no_click_id.inc(),
        };
    }
}

/// A dead letter's `wafunnel.reason`: one of the fixed codes ingest writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportStatus {
    status: &'static str,
}

/// The metrics of all services.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Raw records forwarded to the internal topic by ingest.
    pub ingest_forwarded: Counter,
    /// Raw records sent to the dead-letter topic by ingest.
    pub ingest_dead_lettered: Counter,
    /// Internal records applied by sessionize.
    pub sessionize_applied: Counter,
    /// Internal records that repeated an applied event.
    pub sessionize_duplicate: Counter,
    /// Internal records older than the watermark minus the allowed lateness.
    pub sessionize_late: Counter,
    /// Dead letters counted by sessionize.
    pub sessionize_dead_lettered: Counter,
    /// Valid input records with nothing to count (webhook bodies of receipts).
    pub sessionize_ignored: Counter,
    /// Ingest transactions aborted and retried.
    pub kafka_transaction_retries: Counter,
    /// ClickHouse writes retried.
    pub clickhouse_write_retries: Counter,
    /// Attempts to reach the Kafka brokers that failed and were retried.
    pub kafka_connect_retries: Counter,
    /// Deliveries of Conversions API exports to the capi topic retried.
    pub capi_export_retries: Counter,
    /// Raw partitions paused because they ran ahead in event time.
    pub paused_partitions: Gauge,
    /// Conversations held in memory over all partitions.
    pub open_conversations: Gauge,
    /// Records of the internal topic not yet consumed by this instance.
    pub consumer_lag: Gauge,
    /// Batches written to ClickHouse, and how long each took.
    pub flush_seconds: Histogram,
    /// State snapshots written.
    pub snapshots_written: Counter,
    /// State snapshots that failed (retried at the next interval).
    pub snapshots_failed: Counter,
    /// Bytes of state written in snapshots.
    pub snapshot_bytes: Counter,
    /// Partitions restored from a snapshot.
    pub restores_from_snapshot: Counter,
    /// Partitions rebuilt by replaying from their beginning.
    pub restores_from_beginning: Counter,
    /// Time spent reading partitions' snapshots back.
    pub restore_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Webhook requests by result.
    pub webhook: WebhookCounters,
    /// Conversions API exports and requests.
    pub capi: CapiCounters,
    /// Dead letters counted by sessionize, by reason.
    dead_letters: Family<Reason, Counter>,
    /// 1 while the service is ready (consuming, and its outputs acknowledged).
    ready: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("wafunnel");
        let records = Family::<Records, Counter>::default();
        registry.register(
            "records",
            "Input records by stage and outcome",
            records.clone(),
        );
        let record = |stage, outcome| records.get_or_create(&Records { stage, outcome }).clone();
        let retries = Family::<Operation, Counter>::default();
        registry.register(
            "retries",
            "Operations retried after a failure",
            retries.clone(),
        );
        let retry = |operation| retries.get_or_create(&Operation { operation }).clone();
        let snapshots = Family::<Result_, Counter>::default();
        registry.register("snapshots", "State snapshots by result", snapshots.clone());
        let restores = Family::<Source, Counter>::default();
        registry.register(
            "restores",
            "Partitions whose state was restored on assignment, by source",
            restores.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let seconds = |registry: &mut Registry, name: &str, help: &str| {
            let h = Histogram::new(exponential_buckets(0.005, 2.0, 14));
            registry.register(name, help, h.clone());
            h
        };
        let requests = Family::<Request, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by result",
            requests.clone(),
        );
        let request = |result| requests.get_or_create(&Request { result }).clone();
        let webhook = WebhookCounters {
            stored: request("stored"),
            bad_signature: request("bad_signature"),
            too_large: request("too_large"),
            unavailable: request("unavailable"),
            verified: request("verified"),
            refused: request("refused"),
        };
        let exports = Family::<ExportStatus, Counter>::default();
        registry.register(
            "capi_exports",
            "Conversions API exports stored, by final status",
            exports.clone(),
        );
        let export = |status| exports.get_or_create(&ExportStatus { status }).clone();
        let capi_requests = Family::<Request, Counter>::default();
        registry.register(
            "capi_requests",
            "Conversions API requests, by result",
            capi_requests.clone(),
        );
        let capi_request = |result| capi_requests.get_or_create(&Request { result }).clone();
        let waiting_credential = Gauge::default();
        registry.register(
            "capi_waiting_credential_exports",
            "Conversions API exports waiting for their account's credential to work",
            waiting_credential.clone(),
        );
        let refused_credentials = Gauge::default();
        registry.register(
            "capi_refused_credentials",
            "Accounts whose Conversions API credential Meta refuses",
            refused_credentials.clone(),
        );
        let capi = CapiCounters {
            exports_sent: export("sent"),
            exports_rejected: export("rejected"),
            exports_outside_window: export("outside_window"),
            exports_no_click_id: export("no_click_id"),
            requests_sent: capi_request("sent"),
            requests_rejected: capi_request("rejected"),
            requests_throttled: capi_request("throttled"),
            requests_server_error: capi_request("server_error"),
            requests_network: capi_request("network"),
            duplicates: record("capi", "duplicate"),
            undecodable: record("capi", "undecodable"),
            waiting_credential,
            refused_credentials,
        };
        let dead_letters = Family::<Reason, Counter>::default();
        registry.register(
            "dead_letters",
            "Dead letters counted by sessionize, by reason",
            dead_letters.clone(),
        );
        // An empty family is not rendered: one series from the start, so
        // the family is served before the first dead letter.
        drop(dead_letters.get_or_create(&Reason {
            reason: "other".into(),
        }));
        let snapshot_bytes = Counter::default();
        registry.register(
            "snapshot_bytes",
            "Bytes of state written in snapshots",
            snapshot_bytes.clone(),
        );
        let snapshots_written = snapshots
            .get_or_create(&Result_ { result: "written" })
            .clone();
        let snapshots_failed = snapshots
            .get_or_create(&Result_ { result: "failed" })
            .clone();
        let restores_from_snapshot = restores
            .get_or_create(&Source { source: "snapshot" })
            .clone();
        let restores_from_beginning = restores
            .get_or_create(&Source {
                source: "beginning",
            })
            .clone();
        Metrics {
            webhook,
            capi,
            dead_letters,
            snapshots_written,
            snapshots_failed,
            restores_from_snapshot,
            restores_from_beginning,
            ingest_forwarded: record("ingest", "forwarded"),
            ingest_dead_lettered: record("ingest", "dead_lettered"),
            sessionize_applied: record("sessionize", "applied"),
            sessionize_duplicate: record("sessionize", "duplicate"),
            sessionize_late: record("sessionize", "late"),
            sessionize_dead_lettered: record("sessionize", "dead_lettered"),
            sessionize_ignored: record("sessionize", "ignored"),
            kafka_transaction_retries: retry("kafka_transaction"),
            clickhouse_write_retries: retry("clickhouse_write"),
            kafka_connect_retries: retry("kafka_connect"),
            capi_export_retries: retry("capi_export"),
            snapshot_bytes,
            paused_partitions: gauge(
                &mut registry,
                "paused_partitions",
                "Raw partitions paused for running ahead in event time",
            ),
            open_conversations: gauge(
                &mut registry,
                "open_conversations",
                "Conversations held in memory",
            ),
            consumer_lag: gauge(
                &mut registry,
                "consumer_lag_records",
                "Records of the internal topic not yet consumed by this instance",
            ),
            ready: gauge(
                &mut registry,
                "ready",
                "1 while the service is consuming and its outputs are acknowledged",
            ),
            flush_seconds: seconds(
                &mut registry,
                "flush_seconds",
                "Time to write one batch to ClickHouse",
            ),
            restore_seconds: {
                let c = Counter::<f64, std::sync::atomic::AtomicU64>::default();
                registry.register(
                    "restore_seconds",
                    "Time spent reading state snapshots back",
                    c.clone(),
                );
                c
            },
            registry,
        }
    }

    /// The counter of dead letters of `reason` (`wafunnel_dead_letters_total`).
    /// A reason that is not a code (lowercase letters and underscores, at
    /// most 40) is counted as `other`, so no header can add series at will.
    pub fn dead_letters(&self, reason: &str) -> Counter {
        let code = !reason.is_empty()
            && reason.len() <= 40
            && reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        let reason = if code { reason } else { "other" };
        self.dead_letters
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .clone()
    }

    /// Marks the service ready or not (`/readyz` and `wafunnel_ready`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// The registry in the Prometheus text format (OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The metric families `/metrics` serves, as they appear in the text format
/// (the README lists them; a test scrapes a running service for each).
pub const FAMILIES: &[&str] = &[
    "wafunnel_records_total",
    "wafunnel_retries_total",
    "wafunnel_snapshots_total",
    "wafunnel_restores_total",
    "wafunnel_snapshot_bytes_total",
    "wafunnel_paused_partitions",
    "wafunnel_open_conversations",
    "wafunnel_consumer_lag_records",
    "wafunnel_ready",
    "wafunnel_flush_seconds",
    "wafunnel_restore_seconds_total",
    "wafunnel_webhook_requests_total",
    "wafunnel_capi_exports_total",
    "wafunnel_capi_requests_total",
    "wafunnel_capi_waiting_credential_exports",
    "wafunnel_capi_refused_credentials",
    "wafunnel_dead_letters_total",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_the_text_format() {
        let m = metrics();
        m.ingest_forwarded.inc_by(3);
        m.flush_seconds.observe(0.25);
        m.set_ready(true);
        let text = m.render();
        for family in FAMILIES {
            let base = family.trim_end_matches("_total");
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "{family} missing in {text}"
            );
        }
        assert!(text.contains("wafunnel_records_total{stage=\"ingest\",outcome=\"forwarded\"} "));
        assert!(text.contains("wafunnel_ready 1"), "{text}");
        assert!(text.contains("wafunnel_flush_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn dead_letters_are_counted_by_reason_code_and_anything_else_as_other() {
        let m = metrics();
        m.dead_letters("unknown_phone_number").inc();
        m.dead_letters("unknown_phone_number").inc();
        m.dead_letters("Not A Code 5511999999999").inc();
        m.dead_letters(&"x".repeat(41)).inc();
        let text = m.render();
        assert!(
            text.contains("wafunnel_dead_letters_total{reason=\"unknown_phone_number\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wafunnel_dead_letters_total{reason=\"other\"} 2"),
            "{text}"
        );
        assert!(!text.contains("5511999999999"), "{text}");
    }
}
