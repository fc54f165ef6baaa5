//! A local HTTP server standing in for the Graph API's events endpoint
//! (Meta's API cannot be reached from the test machines). It records every
//! request and answers as the test says. Shared by the capi service tests
//! and the end-to-end chaos test; each uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) authorization: String,
    pub(crate) event_ids: Vec<String>,
    pub(crate) click_ids: Vec<String>,
    pub(crate) at: Instant,
}

pub(crate) type Respond = dyn Fn(&Seen, usize) -> Response + Send + Sync;

/// The Graph API stand-in: records every request, answers with `respond`
/// (given the request and how many came before it to the same path).
#[derive(Clone)]
pub(crate) struct Graph {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Arc<Respond>,
    delay: Duration,
}

impl Graph {
    pub(crate) fn new(respond: impl Fn(&Seen, usize) -> Response + Send + Sync + 'static) -> Graph {
        Graph {
            seen: Arc::default(),
            respond: Arc::new(respond),
            delay: Duration::ZERO,
        }
    }

    /// Every answer comes this late.
    pub(crate) fn slow(mut self, delay: Duration) -> Graph {
        self.delay = delay;
        self
    }

    pub(crate) async fn serve_on(&self, addr: SocketAddr) {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let router = Router::new().fallback(handle).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn handle(State(graph): State<Graph>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let events = value["data"].as_array().cloned().unwrap_or_default();
    let text = |event: &serde_json::Value, pointer: &str| {
        event
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let seen = Seen {
        path: uri.to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        event_ids: events.iter().map(|e| text(e, "/event_id")).collect(),
        click_ids: events
            .iter()
            .map(|e| text(e, "/user_data/ctwa_clid"))
            .collect(),
        at: Instant::now(),
    };
    let before = {
        let mut all = graph.seen.lock().expect("lock");
        let before = all.iter().filter(|s| s.path == seen.path).count();
        all.push(seen.clone());
        before
    };
    tokio::time::sleep(graph.delay).await;
    (graph.respond)(&seen, before)
}

pub(crate) fn ok() -> Response {
    (StatusCode::OK, r#"{"events_received":1,"fbtrace_id":"x"}"#).into_response()
}

pub(crate) fn refused(code: i64, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!(r#"{{"error":{{"message":"{message}","type":"OAuthException","code":{code},"fbtrace_id":"x"}}}}"#),
    )
        .into_response()
}

pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// `text` percent-encoded as in a query string.
pub(crate) fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Meta's answer to a malformed token, echoing it as Meta does (in the
/// message), and in every other way an answer could: URL-encoded, in a
/// URL's query, escaped as JSON escapes `/`.
pub(crate) fn malformed_token(token: &str) -> Response {
    let escaped = token.replace('/', "\\/");
    let body = format!(
        r#"{{"error":{{"message":"Malformed access token {escaped}","type":"OAuthException","code":190,"error_subcode":463,"error_user_msg":"see https:\/\/graph.facebook.com\/debug_token?input_token={encoded}&access_token={encoded}","fbtrace_id":"x"}}}}"#,
        encoded = url_encoded(token),
    );
    (StatusCode::BAD_REQUEST, body).into_response()
}

/// A transient error that echoes the token (retried).
pub(crate) fn transient_echo(token: &str) -> Response {
    let body = format!(
        r#"{{"error":{{"message":"Temporary failure for token {token} ({encoded})","code":2,"is_transient":true}}}}"#,
        encoded = url_encoded(token),
    );
    (StatusCode::BAD_REQUEST, body).into_response()
}

/// A 5xx whose body echoes the token.
pub(crate) fn server_error_echo(token: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("<html>upstream failed for Bearer {token}</html>"),
    )
        .into_response()
}

/// A redirect to a URL carrying the token.
pub(crate) fn redirect_echo(token: &str) -> Response {
    let to = format!(
        "https://graph.example.com/v21.0/events?access_token={}",
        url_encoded(token)
    );
    (
        StatusCode::FOUND,
        [("location", to.clone())],
        format!("moved to {to}"),
    )
        .into_response()
}
