//! The HTTP stack of every service: axum routers served by hyper with a
//! connection limit, a header read timeout, a request timeout and a
//! graceful stop that drains the requests in flight.
//!
//! The operator endpoints, served from a service's first moment:
//! - `/metrics`: the Prometheus registry of [`crate::metrics`];
//! - `/healthz`: 200 while the process runs (a liveness probe);
//! - `/readyz`: 200 only while the service is consuming and its outputs
//!   are acknowledged, 503 otherwise (a readiness probe).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::metrics;
use crate::shutdown::Shutdown;

/// Limits of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a request may take, body included, before it is answered 408.
    pub request_timeout: Duration,
    /// Time the graceful stop waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Limits {
    /// Limits for the operator endpoints: a few scrapers and probes.
    pub const OPERATOR: Limits = Limits {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(1),
    };
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (`{setting}`)")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The setting it came from.
    pub setting: &'static str,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Binds `addr` now, so that a port in use is a startup error naming `setting`.
pub async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        setting,
        source,
    })
}

/// Serves `router` on `listener` until `shutdown` stops, then drains the
/// requests in flight for at most `limits.drain_timeout`.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: Shutdown) {
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.stopping() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.stopping() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain timeout");
    }
}

/// The router of `/metrics`, `/healthz` and `/readyz`.
pub fn operator_router() -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        labels_scrubbed(metrics().render()),
    )
}

/// The metrics text with every secret out of its names and labels. The
/// values are left alone: a number is no secret, and a short numeric
/// password must not turn a sample into text Prometheus cannot read.
fn labels_scrubbed(text: String) -> String {
    if let std::borrow::Cow::Borrowed(_) = crate::scrub::scrub(&text) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.trim_end().rsplit_once(' ') {
            Some((series, _)) if !line.starts_with('#') => {
                out.push_str(&crate::scrub::scrub(series));
                out.push_str(&line[series.len()..]);
            }
            _ => out.push_str(&crate::scrub::scrub(line)),
        }
    }
    out
}

async fn readiness() -> impl IntoResponse {
    if metrics().is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Starts the operator endpoints on `addr` (from `setting`) in the background.
/// They answer until the process ends, so probes see a stopping service as
/// alive and not ready.
pub async fn start_operator(
    addr: SocketAddr,
    setting: &'static str,
) -> Result<SocketAddr, BindError> {
    let listener = bind(addr, setting).await?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    tokio::spawn(serve(
        listener,
        operator_router(),
        Limits::OPERATOR,
        Shutdown::new(),
    ));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[test]
    fn metric_labels_are_scrubbed_and_values_kept() {
        crate::scrub::register(["label-secret-77aa41", "4242"]);
        let text =
            "# HELP x label-secret-77aa41\nx{a=\"label-secret-77aa41\"} 4242\nx_total 4242\n";
        assert_eq!(
            labels_scrubbed(text.to_owned()),
            "# HELP x <redacted>\nx{a=\"<redacted>\"} 4242\nx_total 4242\n"
        );
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let addr = start_operator("127.0.0.1:0".parse().expect("addr"), "metrics.listen")
            .await
            .expect("start");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        metrics().set_ready(false);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        metrics().set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/metrics")
            .await
            .contains("wafunnel_open_conversations"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn a_port_in_use_names_the_setting() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let err = bind(taken.local_addr().expect("addr"), "metrics.listen")
            .await
            .expect_err("in use");
        assert!(err.to_string().contains("`metrics.listen`"), "{err}");
    }

    #[tokio::test]
    async fn a_client_that_never_sends_its_headers_is_dropped() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "test")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::OPERATOR
        };
        tokio::spawn(serve(listener, operator_router(), limits, Shutdown::new()));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept a slow client forever");
    }
}
