//! Posting an account's batches to the Graph API, and what each export
//! ends as.
//!
//! Contract:
//! - The access token travels in the `Authorization: Bearer` header only:
//!   never in a URL, a log line or an error.
//! - 2xx: every event of the request is `sent`.
//! - 429, 5xx, a redirect (never followed: it would carry the token to
//!   another address), a network error, a timeout, or a 4xx Meta marks transient
//!   (`is_transient`, or a throttling code): the same request is retried,
//!   waiting `Retry-After` when the answer has one, else an exponential
//!   backoff with jitter between `capi.backoff_min` and `capi.backoff_max`;
//!   forever, until the stop is abandoned. Meanwhile the service is not ready.
//! - A refusal of the credential (HTTP 401 or 403, Graph API codes 190,
//!   102, 10 and 200-299: an invalid or expired token, a missing
//!   permission) is no verdict on the events: every export of the request,
//!   and of the account's requests not sent yet, is `waiting_credential`
//!   (without another request), to be sent again once the credential works.
//! - Any other 4xx refuses the request. A refusal of a single event makes
//!   it `rejected` with Meta's error code and message. A refusal that
//!   concerns the account and not its events (an unknown dataset, a 404)
//!   rejects every event of the request at once. Any other refusal of
//!   several events is bisected: each
//!   half is sent on its own, so one bad event costs its good neighbours
//!   at most a few more requests, never their delivery.
//! - Every export of a batch ends in exactly one outcome; `attempts` counts
//!   the requests that carried it.
//! - Meta's messages and the details of retries are scrubbed
//!   ([`wafunnel_runtime::scrub`]): Meta echoes a malformed token in its
//!   error message.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use wafunnel_core::export::ConversionExport;
use wafunnel_runtime::config::{CapiSettings, Secret};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::scrub;
use wafunnel_runtime::shutdown::Shutdown;

use crate::payload;

/// What an export ended as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Meta accepted it.
    Sent,
    /// Meta refused it, or its account has no dataset configured.
    Rejected,
    /// Meta refused its account's credential: it is sent again once the
    /// credential works (not final).
    WaitingCredential,
    /// The click was more than 7 days before the event.
    OutsideWindow,
    /// There was no click id.
    NoClickId,
}

impl Status {
    /// The `status` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Rejected => "rejected",
            Status::WaitingCredential => "waiting_credential",
            Status::OutsideWindow => "outside_window",
            Status::NoClickId => "no_click_id",
        }
    }
}

/// The final outcome of one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Its status.
    pub status: Status,
    /// Meta's error code (or `not_configured`), for a rejection.
    pub error_code: Option<String>,
    /// Meta's error message, for a rejection.
    pub error_message: Option<String>,
    /// Requests that carried it.
    pub attempts: u32,
}

impl Outcome {
    /// Waiting for the credential `refusal` refused.
    fn waiting(refusal: &Refusal, attempts: u32) -> Outcome {
        Outcome {
            status: Status::WaitingCredential,
            error_code: Some(refusal.code.clone()),
            error_message: Some(refusal.message.clone()),
            attempts,
        }
    }

    /// An outcome reached without a request.
    pub fn without_request(status: Status) -> Outcome {
        Outcome {
            status,
            error_code: None,
            error_message: None,
            attempts: 0,
        }
    }
}

/// The stop was abandoned before the batch had its outcomes.
#[derive(Debug, thiserror::Error)]
#[error("stopped before meta answered (the next run sends the batch again)")]
pub struct Abandoned;

/// Meta's refusal of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Meta's `error.code`, or `http_<status>` without an error body.
    pub code: String,
    /// Meta's message (with its subcode and user message when given).
    pub message: String,
    /// Whether it concerns the account (token, permission, dataset), not the events.
    pub account_wide: bool,
    /// Whether it refuses the credential (token, permission): the events
    /// wait for it to work.
    pub credential: bool,
}

/// The final answer to a request, after any retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Final {
    /// 2xx.
    Accepted,
    /// A 4xx no retry can fix.
    Refused(Refusal),
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Accepted,
    /// A 4xx no retry can fix.
    Refused(Refusal),
    /// Worth trying again.
    Retry {
        /// Why, for the log and the metric.
        reason: RetryReason,
        /// What `Retry-After` asked for.
        after: Option<Duration>,
        /// A short description (never the token).
        detail: String,
    },
}

/// Why a request is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// 429, or a throttling error code.
    Throttled,
    /// 5xx, or an error Meta marks transient.
    ServerError,
    /// No answer: connection refused or reset, timeout.
    Network,
}

impl RetryReason {
    /// The `result` label of `wafunnel_capi_requests_total`.
    fn as_str(self) -> &'static str {
        match self {
            RetryReason::Throttled => "throttled",
            RetryReason::ServerError => "server_error",
            RetryReason::Network => "network",
        }
    }

    fn counter(self) -> &'static prometheus_client::metrics::counter::Counter {
        let capi = &metrics().capi;
        match self {
            RetryReason::Throttled => &capi.requests_throttled,
            RetryReason::ServerError => &capi.requests_server_error,
            RetryReason::Network => &capi.requests_network,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: MetaError,
}

#[derive(Debug, Deserialize)]
struct MetaError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    error_user_msg: Option<String>,
    #[serde(default)]
    is_transient: Option<bool>,
}

/// Graph API error codes of throttling: retried like a 429.
const THROTTLING_CODES: &[i64] = &[4, 17, 32, 613, 80004];
/// Error codes about the token or the permissions, not the events: 190
/// (invalid or expired access token), 102 (session), 10 and 200-299
/// (permission).
const CREDENTIAL_CODES: &[i64] = &[10, 102, 190];
/// `error_subcode` of "Object with ID ... does not exist, cannot be loaded
/// due to missing permissions": a wrong dataset id, not a bad event.
const UNKNOWN_OBJECT_SUBCODE: i64 = 33;

/// What a 4xx answer with `body` means.
pub fn classify_refusal(status: StatusCode, body: &str) -> Answer {
    let http_credential = matches!(status.as_u16(), 401 | 403);
    let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) else {
        // Scrubbed before it is cut: a cut could leave a part too short
        // to be recognised.
        let message = scrub::scrub(body);
        return Answer::Refused(Refusal {
            code: format!("http_{}", status.as_u16()),
            message: message
                .chars()
                .take(300)
                .collect::<String>()
                .trim()
                .to_owned(),
            account_wide: http_credential || status == StatusCode::NOT_FOUND,
            credential: http_credential,
        });
    };
    let code = error.code.unwrap_or(0);
    let credential =
        http_credential || CREDENTIAL_CODES.contains(&code) || (200..300).contains(&code);
    let account_wide = credential || error.error_subcode == Some(UNKNOWN_OBJECT_SUBCODE);
    if error.is_transient == Some(true) || THROTTLING_CODES.contains(&code) {
        return Answer::Retry {
            reason: if THROTTLING_CODES.contains(&code) {
                RetryReason::Throttled
            } else {
                RetryReason::ServerError
            },
            after: None,
            detail: scrub::scrubbed(format!("{} (code {code})", error.message)),
        };
    }
    let mut message = error.message;
    if let Some(subcode) = error.error_subcode {
        message.push_str(&format!(" (subcode {subcode})"));
    }
    if let Some(user) = error.error_user_msg.filter(|m| !m.is_empty()) {
        message.push_str(&format!(": {user}"));
    }
    Answer::Refused(Refusal {
        code: error
            .code
            .map_or_else(|| format!("http_{}", status.as_u16()), |c| c.to_string()),
        message: scrub::scrubbed(message),
        account_wide,
        credential,
    })
}

/// `Retry-After` in seconds (Meta sends seconds; a date is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The Graph API client.
#[derive(Debug, Clone)]
pub struct Graph {
    http: reqwest::Client,
    base_url: String,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Graph {
    /// A client with the settings' timeout and backoff.
    pub fn new(settings: &CapiSettings) -> Result<Graph, reqwest::Error> {
        Ok(Graph {
            http: reqwest::Client::builder()
                .timeout(settings.request_timeout)
                .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
                // A redirect would carry the token to another address.
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base_url: settings.base_url.clone(),
            backoff_min: settings.backoff_min,
            backoff_max: settings.backoff_max,
        })
    }

    /// Posts `body` to `path` once.
    pub async fn post(&self, path: &str, token: &Secret, body: &str) -> Answer {
        let sent = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(token.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Answer::Retry {
                    reason: RetryReason::Network,
                    after: None,
                    // Without the URL: it is the configured one, and short.
                    detail: scrub::scrubbed(e.without_url().to_string()),
                };
            }
        };
        let status = response.status();
        let after = retry_after(response.headers());
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                return Answer::Retry {
                    reason: RetryReason::Network,
                    after: None,
                    detail: scrub::scrubbed(e.without_url().to_string()),
                }
            }
        };
        if status.is_success() {
            return Answer::Accepted;
        }
        // A redirect is not followed (it would carry the token elsewhere)
        // and says nothing about the events: retried like a 5xx.
        if status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || status.is_redirection()
        {
            return Answer::Retry {
                reason: if status == StatusCode::TOO_MANY_REQUESTS {
                    RetryReason::Throttled
                } else {
                    RetryReason::ServerError
                },
                after,
                detail: format!("http {}", status.as_u16()),
            };
        }
        match classify_refusal(status, &text) {
            Answer::Retry { reason, detail, .. } => Answer::Retry {
                reason,
                after,
                detail,
            },
            answer => answer,
        }
    }

    /// Posts until the answer is final (accepted or refused); returns it
    /// and how many requests it took. Gives up only when the stop is abandoned.
    pub async fn post_until_final(
        &self,
        path: &str,
        token: &Secret,
        body: &str,
        shutdown: &Shutdown,
    ) -> Result<(Final, u32), Abandoned> {
        let mut backoff = self.backoff_min;
        let mut requests = 0u32;
        loop {
            requests += 1;
            let answer = tokio::select! {
                answer = self.post(path, token, body) => answer,
                () = shutdown.abandoned() => return Err(Abandoned),
            };
            let (reason, after, detail) = match answer {
                Answer::Retry {
                    reason,
                    after,
                    detail,
                } => (reason, after, detail),
                Answer::Accepted => {
                    metrics().capi.requests_sent.inc();
                    metrics().set_ready(true);
                    return Ok((Final::Accepted, requests));
                }
                Answer::Refused(refusal) => {
                    metrics().capi.requests_rejected.inc();
                    metrics().set_ready(true);
                    return Ok((Final::Refused(refusal), requests));
                }
            };
            reason.counter().inc();
            metrics().set_ready(false);
            // Jitter: between half and all of the backoff, so that many
            // instances do not come back at once.
            let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            let wait = after.map_or(jittered, |after| after.max(self.backoff_min));
            tracing::warn!(
                path,
                reason = reason.as_str(),
                detail,
                retry_in_ms = wait.as_millis() as u64,
                "conversions api request failed, retrying"
            );
            if !shutdown.sleep(wait).await {
                return Err(Abandoned);
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    /// Delivers one account's exports (at most `max_batch` per request) and
    /// returns their outcomes, in their order.
    pub async fn deliver(
        &self,
        path: &str,
        token: &Secret,
        waba_id: &str,
        exports: &[&ConversionExport],
        max_batch: usize,
        shutdown: &Shutdown,
    ) -> Result<Vec<Outcome>, Abandoned> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; exports.len()];
        let mut attempts = vec![0u32; exports.len()];
        let mut refused_credential: Option<Refusal> = None;
        // Ranges still to send, the next one last.
        let mut pending: Vec<(usize, usize)> = (0..exports.len())
            .step_by(max_batch.max(1))
            .map(|start| (start, (start + max_batch.max(1)).min(exports.len())))
            .rev()
            .collect();
        while let Some((start, end)) = pending.pop() {
            if let Some(refusal) = &refused_credential {
                // The credential was refused: the rest waits without a request.
                for i in start..end {
                    outcomes[i] = Some(Outcome::waiting(refusal, attempts[i]));
                }
                continue;
            }
            let body = payload::body(&exports[start..end], waba_id);
            let (answer, requests) = self.post_until_final(path, token, &body, shutdown).await?;
            for a in &mut attempts[start..end] {
                *a += requests;
            }
            match answer {
                Final::Refused(refusal) if refusal.credential => {
                    // Said once per account by the service, not per request.
                    tracing::debug!(
                        path,
                        events = end - start,
                        code = refusal.code,
                        "conversions api refused the credential"
                    );
                    for i in start..end {
                        outcomes[i] = Some(Outcome::waiting(&refusal, attempts[i]));
                    }
                    refused_credential = Some(refusal);
                }
                Final::Refused(refusal) if end - start > 1 && !refusal.account_wide => {
                    let middle = start + (end - start) / 2;
                    tracing::info!(
                        path,
                        events = end - start,
                        code = refusal.code,
                        "conversions api refused a batch, sending its halves on their own"
                    );
                    pending.push((middle, end));
                    pending.push((start, middle));
                }
                Final::Refused(refusal) => {
                    tracing::warn!(
                        path,
                        events = end - start,
                        code = refusal.code,
                        message = refusal.message,
                        "conversions api rejected events"
                    );
                    for i in start..end {
                        outcomes[i] = Some(Outcome {
                            status: Status::Rejected,
                            error_code: Some(refusal.code.clone()),
                            error_message: Some(refusal.message.clone()),
                            attempts: attempts[i],
                        });
                    }
                }
                Final::Accepted => {
                    for i in start..end {
                        outcomes[i] = Some(Outcome {
                            attempts: attempts[i],
                            ..Outcome::without_request(Status::Sent)
                        });
                    }
                }
            }
        }
        // Every range was answered or split in two, down to single events,
        // which are always answered: each export has its outcome.
        let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
        debug_assert_eq!(outcomes.len(), exports.len());
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_errors_are_classified() {
        let bad = StatusCode::BAD_REQUEST;
        let invalid = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804003,"error_user_msg":"ctwa_clid is malformed","fbtrace_id":"A1"}}"#;
        assert_eq!(
            classify_refusal(bad, invalid),
            Answer::Refused(Refusal {
                code: "100".into(),
                message: "Invalid parameter (subcode 2804003): ctwa_clid is malformed".into(),
                account_wide: false,
                credential: false,
            })
        );
        let token = r#"{"error":{"message":"Error validating access token","type":"OAuthException","code":190}}"#;
        assert!(matches!(
            classify_refusal(bad, token),
            Answer::Refused(Refusal { account_wide: true, credential: true, ref code, .. }) if code == "190"
        ));
        for (status, body) in [
            (
                bad,
                r#"{"error":{"message":"(#10) Application does not have permission","code":10}}"#,
            ),
            (
                bad,
                r#"{"error":{"message":"Session key invalid","code":102}}"#,
            ),
            (
                StatusCode::FORBIDDEN,
                r#"{"error":{"message":"(#200) Permissions error","code":200}}"#,
            ),
            (
                bad,
                r#"{"error":{"message":"(#294) Managing advertisements requires ads_management","code":294}}"#,
            ),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            (
                StatusCode::FORBIDDEN,
                r#"{"error":{"message":"forbidden","code":1}}"#,
            ),
        ] {
            assert!(
                matches!(
                    classify_refusal(status, body),
                    Answer::Refused(Refusal {
                        credential: true,
                        ..
                    })
                ),
                "{status} {body}"
            );
        }
        let no_dataset = r#"{"error":{"message":"Unsupported post request. Object with ID '999' does not exist","type":"GraphMethodException","code":100,"error_subcode":33}}"#;
        assert!(matches!(
            classify_refusal(bad, no_dataset),
            Answer::Refused(Refusal { account_wide: true, credential: false, ref code, .. }) if code == "100"
        ));
        let throttled = r#"{"error":{"message":"Application request limit reached","code":4}}"#;
        assert!(matches!(
            classify_refusal(bad, throttled),
            Answer::Retry {
                reason: RetryReason::Throttled,
                ..
            }
        ));
        let transient = r#"{"error":{"message":"An unexpected error has occurred","code":2,"is_transient":true}}"#;
        assert!(matches!(
            classify_refusal(bad, transient),
            Answer::Retry {
                reason: RetryReason::ServerError,
                ..
            }
        ));
        assert_eq!(
            classify_refusal(StatusCode::NOT_FOUND, "<html>not here</html>"),
            Answer::Refused(Refusal {
                code: "http_404".into(),
                message: "<html>not here</html>".into(),
                account_wide: true,
                credential: false,
            })
        );
    }

    #[test]
    fn an_echoed_token_is_scrubbed_from_every_answer() {
        let token = "EAAtest0echo0token0abcdef123456";
        scrub::register([token]);
        let malformed = format!(
            r#"{{"error":{{"message":"Malformed access token {token}","type":"OAuthException","code":190,"fbtrace_id":"A"}}}}"#
        );
        let Answer::Refused(refusal) = classify_refusal(StatusCode::BAD_REQUEST, &malformed) else {
            panic!("not refused");
        };
        assert_eq!(refusal.message, "Malformed access token <redacted>");
        assert!(refusal.credential);
        let transient = format!(
            r#"{{"error":{{"message":"retry with access_token={token}","code":2,"is_transient":true}}}}"#
        );
        let Answer::Retry { detail, .. } = classify_refusal(StatusCode::BAD_REQUEST, &transient)
        else {
            panic!("not retried");
        };
        assert!(!detail.contains(token), "{detail}");
        let html = format!("<a href=\"https://x/?access_token={token}\">{token}</a>");
        let Answer::Refused(refusal) = classify_refusal(StatusCode::UNAUTHORIZED, &html) else {
            panic!("not refused");
        };
        assert!(
            !refusal.message.contains("EAAtest0echo"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
