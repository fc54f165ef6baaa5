//! The `capi_exports` table (migration 0007): one row per export and
//! write, the latest (highest `version`) wins.
//!
//! Contract: [`write`] returns only once ClickHouse acknowledged every row;
//! the caller commits its Kafka offsets after that. Rows of a replayed
//! export are written again with a later version, so the table, read with
//! `FINAL`, and the `capi_daily` view hold each export once.
//!
//! A `waiting_credential` row keeps the export itself (migration 0012), so
//! that [`waiting`] gives them back to a later run; the row that ends the
//! wait (`sent`, with a later version) replaces it. The error message of
//! every row is scrubbed of secrets.

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use wafunnel_core::export::ConversionExport;
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::sink::{self, SinkError};

use wafunnel_runtime::scrub;

use crate::deliver::{Outcome, Status};

/// One row of `capi_exports`.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct StatusRow {
    /// The export id (the `event_id` sent to Meta).
    pub export_id: String,
    /// The ad account.
    pub account_id: String,
    /// The account-local day, as days since 1970-01-01.
    pub day: u16,
    /// `LeadSubmitted` or `Purchase`.
    pub event_name: String,
    /// Epoch ms.
    pub event_time: i64,
    /// `sent`, `rejected`, `outside_window`, `no_click_id` or `waiting_credential`.
    pub status: String,
    /// Meta's error code, or `not_configured`.
    pub error_code: Option<String>,
    /// Meta's error message.
    pub error_message: Option<String>,
    /// Requests that carried it.
    pub attempts: u32,
    /// When this row was written, epoch ms.
    pub updated_at: i64,
    /// The write's version (its time): a later write wins.
    pub version: u64,
    /// The export as JSON while it waits for a credential, else empty.
    pub export: String,
}

impl StatusRow {
    /// The row of `export`'s `outcome`, written at `now` (epoch ms).
    pub fn new(export: &ConversionExport, outcome: &Outcome, now: i64) -> StatusRow {
        StatusRow {
            export_id: export.export_id.clone(),
            account_id: export.account_id.to_string(),
            day: u16::try_from(export.day.0).unwrap_or(0),
            event_name: export.event_name.as_str().to_owned(),
            event_time: export.event_time,
            status: outcome.status.as_str().to_owned(),
            error_code: outcome.error_code.clone(),
            error_message: outcome
                .error_message
                .as_deref()
                .map(|m| scrub::scrub(m).into_owned()),
            attempts: outcome.attempts,
            updated_at: now,
            version: u64::try_from(now).unwrap_or(0),
            export: if outcome.status == Status::WaitingCredential {
                // Serializing an export (strings and numbers) cannot fail.
                serde_json::to_string(export).unwrap_or_default()
            } else {
                String::new()
            },
        }
    }
}

/// An export waiting for its account's credential, as stored.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// The export.
    pub export: ConversionExport,
    /// Requests that carried it so far.
    pub attempts: u32,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct WaitingRow {
    export: String,
    attempts: u32,
}

/// Every export whose latest status is `waiting_credential`, oldest first.
pub async fn waiting(db: &Client) -> Result<Vec<Waiting>, SinkError> {
    let rows = db
        .query(
            "SELECT export, attempts FROM capi_exports FINAL \
             WHERE status = 'waiting_credential' ORDER BY event_time, export_id",
        )
        .fetch_all::<WaitingRow>()
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| match serde_json::from_str(&row.export) {
            Ok(export) => Some(Waiting {
                export,
                attempts: row.attempts,
            }),
            Err(e) => {
                // Only this service writes the column.
                tracing::error!(error = %e, "a waiting export in capi_exports cannot be read, skipped");
                None
            }
        })
        .collect())
}

/// Writes `rows` in one INSERT.
async fn write_once(db: &Client, rows: &[StatusRow]) -> Result<(), SinkError> {
    let mut insert = db.insert::<StatusRow>("capi_exports").await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Writes `rows`, retrying with backoff while ClickHouse is unavailable
/// (the service is not ready meanwhile) until the stop is abandoned. A
/// refusal no retry can fix is returned at once.
pub async fn write(db: &Client, rows: &[StatusRow], shutdown: &Shutdown) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    sink::retry_write("export statuses", shutdown, || write_once(db, rows)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use wafunnel_core::export::{ConversionName, ExportDecision};
    use wafunnel_core::time::Day;

    fn export() -> ConversionExport {
        ConversionExport {
            export_id: "e1".into(),
            account_id: Arc::from("act_1"),
            event_name: ConversionName::Purchase,
            event_time: 1,
            day: Day(20_000),
            click_id: Some(Arc::from("clid")),
            value: None,
            currency: None,
            decision: ExportDecision::Send,
        }
    }

    #[test]
    fn a_row_keeps_no_secret_and_a_waiting_row_keeps_its_export() {
        scrub::register(["row-token-8c1d5e7f2a"]);
        let outcome = Outcome {
            status: Status::WaitingCredential,
            error_code: Some("190".into()),
            error_message: Some("Malformed access token row-token-8c1d5e7f2a".into()),
            attempts: 2,
        };
        let row = StatusRow::new(&export(), &outcome, 5);
        assert_eq!(
            row.error_message.as_deref(),
            Some("Malformed access token <redacted>")
        );
        let kept: ConversionExport = serde_json::from_str(&row.export).expect("export");
        assert_eq!(kept, export());
        let sent = StatusRow::new(&export(), &Outcome::without_request(Status::Sent), 6);
        assert!(sent.export.is_empty());
    }
}
