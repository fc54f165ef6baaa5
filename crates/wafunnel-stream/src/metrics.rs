//! Operator metrics, all declared here, served as Prometheus text on
//! `/metrics`, with `/healthz` (the process answers) and `/readyz` (the
//! service is consuming and its outputs are being acknowledged). Labels are
//! few and fixed: stage and outcome, never an account, ad or user.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Raw records forwarded to the internal topic by ingest.
pub static INGEST_FORWARDED: Counter = Counter::new();
/// Raw records sent to the dead-letter topic by ingest.
pub static INGEST_DEAD_LETTERED: Counter = Counter::new();
/// Ingest transactions aborted and retried.
pub static INGEST_RETRIES: Counter = Counter::new();
/// Raw partitions paused because they ran ahead in event time.
pub static INGEST_PAUSED_PARTITIONS: Gauge = Gauge::new();
/// Internal records applied by sessionize.
pub static SESSIONIZE_APPLIED: Counter = Counter::new();
/// Internal records that repeated an applied event.
pub static SESSIONIZE_DUPLICATE: Counter = Counter::new();
/// Internal records older than the watermark minus the allowed lateness.
pub static SESSIONIZE_LATE: Counter = Counter::new();
/// Dead letters counted by sessionize.
pub static SESSIONIZE_DEAD_LETTERED: Counter = Counter::new();
/// Conversations held in memory over all partitions.
pub static OPEN_CONVERSATIONS: Gauge = Gauge::new();
/// Records not yet consumed by sessionize (high watermark minus position, all partitions).
pub static CONSUMER_LAG: Gauge = Gauge::new();
/// Batches written to ClickHouse.
pub static FLUSHES: Counter = Counter::new();
/// Total time spent writing batches, in milliseconds.
pub static FLUSH_MILLIS: Counter = Counter::new();
/// ClickHouse writes retried.
pub static CLICKHOUSE_RETRIES: Counter = Counter::new();
/// State snapshots written, by result.
pub static SNAPSHOTS_WRITTEN: Counter = Counter::new();
/// State snapshots that failed (retried at the next interval).
pub static SNAPSHOTS_FAILED: Counter = Counter::new();
/// Bytes of state written in snapshots.
pub static SNAPSHOT_BYTES: Counter = Counter::new();
/// Partitions restored from a snapshot.
pub static RESTORES_FROM_SNAPSHOT: Counter = Counter::new();
/// Partitions rebuilt by replaying from their beginning (no usable snapshot).
pub static RESTORES_FROM_BEGINNING: Counter = Counter::new();
/// Time spent reading snapshots back, in milliseconds.
pub static RESTORE_MILLIS: Counter = Counter::new();
/// Whether the service is ready.
pub static READY: AtomicBool = AtomicBool::new(false);

/// The metrics as Prometheus text.
pub fn render() -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let records = |stage: &str, outcome: &str, c: &Counter| {
        (
            format!("{{stage=\"{stage}\",outcome=\"{outcome}\"}}"),
            c.get().to_string(),
        )
    };
    let by_outcome = [
        records("ingest", "forwarded", &INGEST_FORWARDED),
        records("ingest", "dead_lettered", &INGEST_DEAD_LETTERED),
        records("sessionize", "applied", &SESSIONIZE_APPLIED),
        records("sessionize", "duplicate", &SESSIONIZE_DUPLICATE),
        records("sessionize", "late", &SESSIONIZE_LATE),
        records("sessionize", "dead_lettered", &SESSIONIZE_DEAD_LETTERED),
    ];
    let by_outcome: Vec<(&str, String)> = by_outcome
        .iter()
        .map(|(l, v)| (l.as_str(), v.clone()))
        .collect();
    family(
        "wafunnel_records_total",
        "counter",
        "Input records by stage and outcome.",
        &by_outcome,
    );
    family(
        "wafunnel_retries_total",
        "counter",
        "Operations retried after a failure.",
        &[
            (
                "{operation=\"kafka_transaction\"}",
                INGEST_RETRIES.get().to_string(),
            ),
            (
                "{operation=\"clickhouse_write\"}",
                CLICKHOUSE_RETRIES.get().to_string(),
            ),
        ],
    );
    family(
        "wafunnel_open_conversations",
        "gauge",
        "Conversations held in memory.",
        &[("", OPEN_CONVERSATIONS.get().to_string())],
    );
    family(
        "wafunnel_consumer_lag_records",
        "gauge",
        "Records of the internal topic not yet consumed.",
        &[("", CONSUMER_LAG.get().to_string())],
    );
    family(
        "wafunnel_paused_partitions",
        "gauge",
        "Raw partitions paused for running ahead in event time.",
        &[("", INGEST_PAUSED_PARTITIONS.get().to_string())],
    );
    family(
        "wafunnel_flushes_total",
        "counter",
        "Batches written to ClickHouse.",
        &[("", FLUSHES.get().to_string())],
    );
    let seconds = |millis: u64| format!("{}.{:03}", millis / 1000, millis % 1000);
    family(
        "wafunnel_flush_seconds_total",
        "counter",
        "Time spent writing batches to ClickHouse.",
        &[("", seconds(FLUSH_MILLIS.get()))],
    );
    family(
        "wafunnel_snapshots_total",
        "counter",
        "State snapshots by result.",
        &[
            ("{result=\"written\"}", SNAPSHOTS_WRITTEN.get().to_string()),
            ("{result=\"failed\"}", SNAPSHOTS_FAILED.get().to_string()),
        ],
    );
    family(
        "wafunnel_snapshot_bytes_total",
        "counter",
        "Bytes of state written in snapshots.",
        &[("", SNAPSHOT_BYTES.get().to_string())],
    );
    family(
        "wafunnel_restores_total",
        "counter",
        "Partitions whose state was restored on assignment, by source.",
        &[
            (
                "{source=\"snapshot\"}",
                RESTORES_FROM_SNAPSHOT.get().to_string(),
            ),
            (
                "{source=\"beginning\"}",
                RESTORES_FROM_BEGINNING.get().to_string(),
            ),
        ],
    );
    family(
        "wafunnel_restore_seconds_total",
        "counter",
        "Time spent reading state snapshots back.",
        &[("", seconds(RESTORE_MILLIS.get()))],
    );
    out
}

fn response(status: &str, body: &str, content_type: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics and health");
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let reply = match path {
                "/metrics" => response("200 OK", &render(), "text/plain; version=0.0.4"),
                "/healthz" => response("200 OK", "ok\n", "text/plain"),
                "/readyz" if READY.load(Ordering::Relaxed) => {
                    response("200 OK", "ready\n", "text/plain")
                }
                "/readyz" => response("503 Service Unavailable", "not ready\n", "text/plain"),
                _ => response("404 Not Found", "not found\n", "text/plain"),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        FLUSH_MILLIS.add(1234);
        let text = render();
        assert!(text.contains("# TYPE wafunnel_records_total counter"));
        assert!(text.contains("wafunnel_records_total{stage=\"ingest\",outcome=\"forwarded\"} "));
        assert!(
            text.contains("wafunnel_flush_seconds_total 1.234"),
            "{text}"
        );
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.split_whitespace().count() == 2),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        tokio::spawn(serve(addr));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                        .await
                        .expect("write");
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.expect("read");
                    return out;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("metrics server did not start");
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        READY.store(false, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        READY.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics")
            .await
            .contains("wafunnel_open_conversations"));
    }
}
