//! The `capi_exports` table (migration 0007): one row per export and
//! write, the latest (highest `version`) wins.
//!
//! Contract: [`write`] returns only once ClickHouse acknowledged every row;
//! the caller commits its Kafka offsets after that. Rows of a replayed
//! export are written again with a later version, so the table, read with
//! `FINAL`, and the `capi_daily` view hold each export once.

use clickhouse::Client;
use serde::Serialize;
use wafunnel_core::export::ConversionExport;
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::sink::{self, SinkError};

use crate::deliver::Outcome;

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
    /// `sent`, `rejected`, `outside_window` or `no_click_id`.
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
            error_message: outcome.error_message.clone(),
            attempts: outcome.attempts,
            updated_at: now,
            version: u64::try_from(now).unwrap_or(0),
        }
    }
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
