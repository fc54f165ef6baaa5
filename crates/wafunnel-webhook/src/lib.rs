//! # wafunnel-webhook
//!
//! `wafunnel webhook`: the HTTP endpoint of a Meta webhook subscription for
//! WhatsApp Cloud API events.
//!
//! Contract (docs/SEMANTICS.md section 6.1):
//! - `GET <path_prefix>/webhook?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`
//!   answers 200 with `C` when `T` is the configured verify token (compared
//!   in constant time), else 403.
//! - `POST <path_prefix>/webhook` is accepted only with an
//!   `X-Hub-Signature-256: sha256=<hex>` header that is the HMAC-SHA256 of
//!   the exact raw body under the app secret (verified in constant time);
//!   otherwise 401, nothing is stored, and it is counted. A body over
//!   `webhook.max_body_bytes` is 413.
//! - Data minimization (section 9): once its signature is verified on the
//!   bytes received, a body is stored with only what the rules use
//!   (`wafunnel_meta::minimize`: ids, timestamps, referral, pricing,
//!   statuses, contacts, phone number ids); message contents, media,
//!   locations, shared contacts and profile names are dropped.
//!   `webhook.keep_message_contents` stores bodies byte for byte instead. A
//!   body that is not a JSON object cannot be minimized and is stored as
//!   received (ingest dead-letters it as `malformed`, without its bytes).
//! - Sizes are consistent end to end: the producer and the check of each
//!   body follow the topic's `max.message.bytes` (read at start), so a body
//!   whose stored form is larger than the topic accepts is answered 413 (a
//!   permanent refusal), never 503 forever.
//! - The stored form is produced to the raw topic by an idempotent producer
//!   with `acks=all`, and answered 200 only once Kafka acknowledged it; if
//!   it cannot be stored within
//!   `webhook.store_timeout_ms`, the answer is 503 and Meta retries. A
//!   retried body is stored again: its message ids make the events
//!   duplicates downstream, so no count changes.
//! - SIGTERM and SIGINT stop accepting connections and drain the requests
//!   in flight; `/metrics`, `/healthz` and `/readyz` are served on the
//!   operator port like every service (ready while the brokers answer,
//!   asked every 5 s).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hmac::{Hmac, Mac};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use wafunnel_runtime::config::{Config, ConfigError, Secret, WebhookSettings};
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::http::{self, BindError, Limits};
use wafunnel_runtime::kafka::{self, ConnectError, LogContext};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;

/// Why the receiver could not run.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A setting is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The brokers cannot be used with these settings.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The producer could not be built.
    #[error("kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    /// The port is taken.
    #[error(transparent)]
    Bind(#[from] BindError),
}

impl Classify for WebhookError {
    fn fault(&self) -> Fault {
        match self {
            WebhookError::Config(_) | WebhookError::Kafka(_) | WebhookError::Bind(_) => Fault::User,
            WebhookError::Connect(e) => e.fault(),
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

/// Limits of the public endpoint: many of Meta's connections at once,
/// slow clients dropped.
const LIMITS: Limits = Limits {
    max_connections: 1024,
    header_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
    drain_timeout: Duration::from_secs(15),
};

/// Kafka's default `max.message.bytes`, assumed when the topic's cannot be read.
const BROKER_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// How often readiness asks the brokers whether they answer.
const READINESS_EVERY: Duration = Duration::from_secs(5);

/// What the handlers share.
pub struct Receiver {
    producer: FutureProducer<LogContext>,
    topic: String,
    verify_token: Secret,
    app_secret: Secret,
    max_body_bytes: usize,
    max_stored_bytes: usize,
    keep_message_contents: bool,
    store_timeout: Duration,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("topic", &self.topic)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_stored_bytes", &self.max_stored_bytes)
            .field("keep_message_contents", &self.keep_message_contents)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver storing to `settings.topic`, which accepts record batches
    /// of `topic_max_bytes`, through a producer for `cfg`.
    pub fn new(
        cfg: &Config,
        settings: &WebhookSettings,
        topic_max_bytes: usize,
    ) -> Result<Self, WebhookError> {
        let max_stored_bytes = topic_max_bytes
            .saturating_sub(kafka::RECORD_OVERHEAD)
            .max(1);
        // A body not acknowledged in time is answered 503, and the producer
        // gives up on it too, so a late copy is not stored after Meta was
        // told to retry (a retry is a duplicate anyway).
        let mut client = kafka::durable_producer_config(&cfg.kafka, settings.store_timeout);
        // Batches of several bodies stay within what the topic accepts, and
        // the largest body is not refused by the producer's own limit.
        client
            .set("batch.size", max_stored_bytes.to_string())
            .set("message.max.bytes", topic_max_bytes.max(1000).to_string());
        Ok(Receiver {
            producer: kafka::create(&client)?,
            topic: settings.topic.clone(),
            verify_token: settings.verify_token.clone(),
            app_secret: settings.app_secret.clone(),
            max_body_bytes: settings.max_body_bytes,
            max_stored_bytes,
            keep_message_contents: settings.keep_message_contents,
            store_timeout: settings.store_timeout,
        })
    }

    /// What is stored of a verified body.
    fn stored<'b>(&self, body: &'b [u8]) -> Cow<'b, [u8]> {
        if self.keep_message_contents {
            return Cow::Borrowed(body);
        }
        match wafunnel_meta::minimize(body, &|contact| contact.clone()) {
            Ok(minimized) => Cow::Owned(minimized),
            Err(wafunnel_meta::NotAnObject) => Cow::Borrowed(body),
        }
    }
}

/// The router of the webhook path.
pub fn router(receiver: Arc<Receiver>, path: &str) -> Router {
    Router::new()
        .route(path, get(handshake).post(deliver))
        .with_state(receiver)
}

#[derive(Debug, Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn handshake(State(r): State<Arc<Receiver>>, Query(q): Query<Handshake>) -> Response {
    let token_ok = q
        .verify_token
        .as_deref()
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(r.verify_token.expose().as_bytes())));
    match (q.mode.as_deref(), token_ok, q.challenge) {
        (Some("subscribe"), true, Some(challenge)) => {
            metrics().webhook.verified.inc();
            tracing::info!("webhook subscription verified");
            (StatusCode::OK, challenge).into_response()
        }
        _ => {
            metrics().webhook.refused.inc();
            tracing::warn!("webhook handshake refused");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

/// Whether `header` is `sha256=` and the HMAC-SHA256 of `body` under `secret`.
pub fn signature_ok(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_digest) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn deliver(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    let bytes: Bytes = match axum::body::to_bytes(body, r.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            metrics().webhook.too_large.inc();
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature_ok(r.app_secret.expose().as_bytes(), &bytes, signature) {
        metrics().webhook.bad_signature.inc();
        tracing::warn!(
            present = signature.is_some(),
            "webhook post with a bad signature"
        );
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let stored = r.stored(&bytes);
    if stored.len() > r.max_stored_bytes {
        return too_large(stored.len(), r.max_stored_bytes);
    }
    let record = FutureRecord::<(), [u8]>::to(&r.topic).payload(&stored);
    match r.producer.send(record, r.store_timeout).await {
        Ok(_) => {
            metrics().webhook.stored.inc();
            StatusCode::OK.into_response()
        }
        // The topic's limit was lowered since the start: as permanent.
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
            too_large(stored.len(), r.max_stored_bytes)
        }
        Err((e, _)) => {
            metrics().webhook.unavailable.inc();
            tracing::warn!(error = %e, topic = r.topic, "cannot store a webhook body, answering 503");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// 413 for a verified body the topic cannot hold: Meta's retries of it
/// would fail the same way.
fn too_large(size: usize, max: usize) -> Response {
    metrics().webhook.too_large.inc();
    tracing::warn!(
        size,
        max,
        "a verified webhook body is larger than its topic accepts, answering 413"
    );
    StatusCode::PAYLOAD_TOO_LARGE.into_response()
}

/// Runs the receiver until `shutdown` stops it (the requests in flight are
/// answered first).
pub async fn run(cfg: &Config, shutdown: Shutdown) -> Result<(), WebhookError> {
    let settings = cfg.webhook_settings()?;
    let listener = http::bind(settings.listen, "webhook.listen").await?;
    let topics = match kafka::connect(&cfg.kafka, &shutdown).await {
        Ok(topics) => topics,
        Err(ConnectError::Stopped(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !topics.contains_key(&settings.topic) {
        return Err(ConfigError::Invalid {
            setting: "webhook.topic".into(),
            detail: format!(
                "topic {} does not exist (create it, e.g. with `wafunnel check --create-topics`)",
                settings.topic
            ),
        }
        .into());
    }
    let topic_max_bytes = match kafka::topic_max_message_bytes(&cfg.kafka, &settings.topic).await {
        Ok(max) => max,
        Err(e) => {
            tracing::warn!(error = %e, topic = settings.topic, assumed = BROKER_DEFAULT_MAX_MESSAGE_BYTES, "cannot read the topic's max.message.bytes");
            BROKER_DEFAULT_MAX_MESSAGE_BYTES
        }
    };
    let receiver = Arc::new(Receiver::new(cfg, &settings, topic_max_bytes)?);
    if receiver.max_stored_bytes < settings.max_body_bytes {
        tracing::warn!(
            topic = settings.topic,
            max_message_bytes = topic_max_bytes,
            max_body_bytes = settings.max_body_bytes,
            "the topic holds less than webhook.max_body_bytes: bodies whose stored form is larger are answered 413; raise the topic's max.message.bytes to max_body_bytes + {}",
            kafka::RECORD_OVERHEAD
        );
    }
    metrics().set_ready(true);
    // Readiness follows the brokers, asked in the background: a failed
    // store must not take every replica out of rotation until a request
    // that never comes succeeds.
    let probe: rdkafka::consumer::BaseConsumer<LogContext> =
        kafka::create(&kafka::client_config(&cfg.kafka))?;
    let probing = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while shutdown.sleep(READINESS_EVERY).await && !shutdown.is_stopping() {
                let ok = kafka::blocking(|| {
                    rdkafka::consumer::Consumer::fetch_metadata(
                        &probe,
                        None,
                        Duration::from_secs(3),
                    )
                    .is_ok()
                });
                metrics().set_ready(ok);
            }
        })
    };
    tracing::info!(addr = %settings.listen, path = settings.path, topic = settings.topic, "webhook receiver started");
    http::serve(listener, router(receiver, &settings.path), LIMITS, shutdown).await;
    probing.abort();
    metrics().set_ready(false);
    tracing::info!("webhook receiver stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_meta_s_hmac_sha256_of_the_raw_body() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").expect("key");
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(b"app-secret", body, Some(&good)));
        assert!(!signature_ok(b"other-secret", body, Some(&good)));
        assert!(
            !signature_ok(b"app-secret", b"{}", Some(&good)),
            "another body"
        );
        assert!(!signature_ok(b"app-secret", body, None));
        assert!(!signature_ok(
            b"app-secret",
            body,
            Some(&good.replace("sha256=", "sha1="))
        ));
        assert!(!signature_ok(b"app-secret", body, Some("sha256=zz")));
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// The forgeries an attacker who has seen signed deliveries but not the
    /// app secret can try: each is refused.
    #[test]
    fn forged_signatures_are_refused() {
        let secret = b"app-secret";
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1"}]}"#;
        let good = sign(secret, body);
        let digest = good.strip_prefix("sha256=").expect("prefix");
        let mut other_body = body.to_vec();
        other_body.extend_from_slice(b" ");
        let forgeries: Vec<(&str, Vec<u8>, Option<String>)> = vec![
            ("no header", body.to_vec(), None),
            ("empty header", body.to_vec(), Some(String::new())),
            ("prefix only", body.to_vec(), Some("sha256=".into())),
            ("no prefix", body.to_vec(), Some(digest.into())),
            ("sha1 prefix", body.to_vec(), Some(format!("sha1={digest}"))),
            (
                "upper-case prefix",
                body.to_vec(),
                Some(format!("SHA256={digest}")),
            ),
            (
                "space after prefix",
                body.to_vec(),
                Some(format!("sha256= {digest}")),
            ),
            (
                "truncated digest",
                body.to_vec(),
                Some(format!("sha256={}", &digest[..62])),
            ),
            (
                "first half only",
                body.to_vec(),
                Some(format!("sha256={}", &digest[..32])),
            ),
            ("extended digest", body.to_vec(), Some(format!("{good}00"))),
            (
                "zero digest",
                body.to_vec(),
                Some(format!("sha256={}", "0".repeat(64))),
            ),
            (
                "digest of the body",
                body.to_vec(),
                Some(format!(
                    "sha256={}",
                    hex::encode(<Sha256 as sha2::Digest>::digest(body))
                )),
            ),
            ("empty secret", body.to_vec(), Some(sign(b"", body))),
            (
                "signature of another body",
                body.to_vec(),
                Some(sign(secret, b"{}")),
            ),
            ("body with a byte appended", other_body, Some(good.clone())),
            ("empty body", Vec::new(), Some(good.clone())),
        ];
        for (what, forged_body, header) in forgeries {
            assert!(
                !signature_ok(secret, &forged_body, header.as_deref()),
                "{what} was accepted"
            );
        }
        assert!(
            signature_ok(secret, body, Some(&good)),
            "the real one passes"
        );
    }

    proptest::proptest! {
        /// Any change of one byte of the body, or of one hex digit of the
        /// signature, is refused.
        #[test]
        fn one_changed_byte_is_refused(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..512),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
            digit in 0usize..64,
        ) {
            let secret = b"app-secret";
            let good = sign(secret, &body);
            let mut forged = body.clone();
            let i = at.index(forged.len());
            forged[i] ^= flip;
            proptest::prop_assert!(!signature_ok(secret, &forged, Some(&good)));
            let mut header = good.into_bytes();
            let j = "sha256=".len() + digit;
            header[j] = if header[j] == b'0' { b'1' } else { b'0' };
            let header = String::from_utf8(header).expect("ascii");
            proptest::prop_assert!(!signature_ok(secret, &body, Some(&header)));
        }
    }
}
