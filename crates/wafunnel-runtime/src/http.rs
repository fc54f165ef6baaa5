//! The HTTP stack of every service: axum routers served by hyper with a
//! connection limit, a header read timeout, a request timeout and a
//! graceful stop that drains the requests in flight.
//!
//! Slow or idle clients cannot starve the others: when every connection
//! slot is taken, a new connection takes the slot of the connection that
//! has waited longest without giving the server work, that is idle (before
//! its first request or between keep-alive requests) or still sending its
//! request's headers or body, since it opened or its last request began or
//! ended. A connection whose request was read whole (a handler at work) is
//! never evicted: only when all are at work does a new one wait. So a
//! thousand connections trickling a body at a byte a second, or a probe
//! port flooded with idle sockets, delay a real request by one eviction.
//!
//! The operator endpoints, served from a service's first moment:
//! - `/metrics`: the Prometheus registry of [`crate::metrics`];
//! - `/healthz`: 200 while the process runs (a liveness probe);
//! - `/readyz`: 200 only while the service is consuming and its outputs
//!   are acknowledged, 503 otherwise (a readiness probe).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::metrics;
use crate::shutdown::Shutdown;

/// Limits of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; a further one takes the slot of the
    /// connection waiting longest without work, or waits if all work.
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

/// One connection, as the eviction sees it.
struct Connection {
    /// Since when it has given the server no work: its opening, or the
    /// start or end of its last request.
    waiting_since: Mutex<Instant>,
    /// Whether a handler works on a request read whole.
    working: AtomicBool,
    /// Told to close.
    evict: Notify,
}

impl Connection {
    fn wait_from_now(&self) {
        *self
            .waiting_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.working.store(false, Ordering::Release);
    }
}

/// The open connections by id.
type Open = Arc<Mutex<HashMap<u64, Arc<Connection>>>>;

/// Closes the connection that has waited longest without giving work;
/// false when every connection is at work.
fn evict_longest_waiting(open: &Open) -> bool {
    let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
    let longest = open
        .iter()
        .filter(|(_, c)| !c.working.load(Ordering::Acquire))
        .min_by_key(|(_, c)| {
            *c.waiting_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        })
        .map(|(id, _)| *id);
    let Some(connection) = longest.and_then(|id| open.remove(&id)) else {
        return false;
    };
    connection.evict.notify_one();
    true
}

/// A request body that marks its connection at work once read whole.
struct Watched {
    body: Incoming,
    connection: Arc<Connection>,
}

impl Body for Watched {
    type Data = <Incoming as Body>::Data;
    type Error = <Incoming as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.connection.working.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` stops, then drains the
/// requests in flight for at most `limits.drain_timeout`.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: Shutdown) {
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open: Open = Arc::default();
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    for id in 0u64.. {
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
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if evict_longest_waiting(&open) {
                    tracing::debug!(
                        "every connection slot taken, the longest waiting connection closed"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = shutdown.stopping() => break,
                }
            }
        };
        let connection = Arc::new(Connection {
            waiting_since: Mutex::new(Instant::now()),
            working: AtomicBool::new(false),
            evict: Notify::new(),
        });
        open.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&connection));
        let service = {
            let (router, connection) = (router.clone(), Arc::clone(&connection));
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let (router, connection) = (router.clone(), Arc::clone(&connection));
                async move {
                    connection.wait_from_now();
                    let request = request.map(|body| {
                        if body.is_end_stream() {
                            connection.working.store(true, Ordering::Release);
                        }
                        axum::body::Body::new(Watched {
                            body,
                            connection: Arc::clone(&connection),
                        })
                    });
                    let response = router.oneshot(request).await;
                    connection.wait_from_now();
                    response
                }
            })
        };
        let served = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            tokio::select! {
                _ = served => {}
                () = connection.evict.notified() => {}
            }
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
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
    async fn idle_and_slow_connections_give_way_to_a_new_request() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "test")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            max_connections: 8,
            ..Limits::OPERATOR
        };
        let router = operator_router().route("/upload", axum::routing::post(|| async { "ok\n" }));
        tokio::spawn(serve(listener, router, limits, Shutdown::new()));
        let mut held = Vec::new();
        for i in 0..16 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            if i % 2 == 0 {
                // A body that never ends.
                s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nab")
                    .await
                    .expect("write");
            }
            held.push(s);
        }
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(1), get(addr, "/healthz"))
            .await
            .expect("answered within 1 s");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1));
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
