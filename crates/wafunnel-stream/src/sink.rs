//! ClickHouse: migrations and the sink of partition rows.
//!
//! Contract: every row written is full state, versioned by the offset of
//! the input that produced it (per partition, only growing), into a
//! `ReplacingMergeTree`. Writing a batch twice, or rows of a replayed batch,
//! leaves the views unchanged. A batch is acknowledged only when every
//! `INSERT` of it returned; the caller commits Kafka offsets after that.

use std::time::Duration;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use wafunnel_core::config::Accounts;
use wafunnel_core::rows::{Changes, ConversationChange, ConversationRow};
use wafunnel_core::time::{Day, DayClock};

use wafunnel_runtime::config::ClickHouseConfig;
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;

/// A ClickHouse failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The server is unreachable, overloaded or failed the request: retry later.
    #[error("clickhouse unavailable: {0}")]
    Unavailable(clickhouse::error::Error),
    /// The server refused the request in a way retrying cannot fix: an
    /// unknown database, table or user, a wrong password, missing rights.
    #[error("clickhouse refused the request (code {code}): {detail} (check clickhouse.url, clickhouse.database, clickhouse.user, clickhouse.password; run `wafunnel migrate`)")]
    Refused {
        /// ClickHouse's error code.
        code: u32,
        /// Its message.
        detail: String,
    },
    /// A migration already applied has changed: fatal, the schema is not what this build expects.
    #[error("migration {version} ({name}) was applied with another checksum")]
    MigrationChanged {
        /// Its number.
        version: u32,
        /// Its name.
        name: String,
    },
    /// The database lacks migrations this build needs.
    #[error("the database lacks migrations (run `wafunnel migrate`)")]
    NotMigrated,
    /// The stop was abandoned while the write was still being retried.
    #[error("stopped before clickhouse acknowledged the batch (the next run writes it again)")]
    Abandoned,
}

/// ClickHouse error codes no retry can fix: the request, the schema or the
/// credentials are wrong. Anything else (network, timeouts, too many parts,
/// memory) is retried.
const FATAL_CODES: &[u32] = &[
    16,  // NO_SUCH_COLUMN_IN_TABLE
    47,  // UNKNOWN_IDENTIFIER
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    81,  // UNKNOWN_DATABASE
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    291, // DATABASE_ACCESS_DENIED
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// The code in a ClickHouse error text (`Code: 81. DB::Exception: ...`).
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl From<clickhouse::error::Error> for SinkError {
    fn from(e: clickhouse::error::Error) -> Self {
        if let clickhouse::error::Error::BadResponse(text) = &e {
            if let Some(code) = error_code(text).filter(|c| FATAL_CODES.contains(c)) {
                return SinkError::Refused {
                    code,
                    detail: text.lines().next().unwrap_or_default().trim().to_owned(),
                };
            }
        }
        SinkError::Unavailable(e)
    }
}

impl Classify for SinkError {
    fn fault(&self) -> Fault {
        match self {
            SinkError::Unavailable(_) | SinkError::Abandoned => Fault::External,
            SinkError::Refused { .. } | SinkError::NotMigrated => Fault::User,
            SinkError::MigrationChanged { .. } => Fault::Internal,
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable(_))
    }
}

/// The versioned migrations, in order.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "core_tables",
        include_str!("../../../schemas/clickhouse/0001_core_tables.sql"),
    ),
    (
        2,
        "bi_views",
        include_str!("../../../schemas/clickhouse/0002_bi_views.sql"),
    ),
    (
        3,
        "spend_snapshots_and_outcomes",
        include_str!("../../../schemas/clickhouse/0003_spend_snapshots_and_outcomes.sql"),
    ),
    (
        4,
        "check_canaries",
        include_str!("../../../schemas/clickhouse/0004_check_canaries.sql"),
    ),
    (
        5,
        "ignored_records",
        include_str!("../../../schemas/clickhouse/0005_ignored_records.sql"),
    ),
    (
        6,
        "billable_and_messaging_contacts",
        include_str!("../../../schemas/clickhouse/0006_billable_and_messaging_contacts.sql"),
    ),
    (
        7,
        "capi_exports",
        include_str!("../../../schemas/clickhouse/0007_capi_exports.sql"),
    ),
    (
        8,
        "conversation_click_id",
        include_str!("../../../schemas/clickhouse/0008_conversation_click_id.sql"),
    ),
    (
        9,
        "account_day_and_currency",
        include_str!("../../../schemas/clickhouse/0009_account_day_and_currency.sql"),
    ),
    (
        10,
        "dead_letters_daily",
        include_str!("../../../schemas/clickhouse/0010_dead_letters_daily.sql"),
    ),
    (
        11,
        "revenue_by_purchase_day",
        include_str!("../../../schemas/clickhouse/0011_revenue_by_purchase_day.sql"),
    ),
    (
        12,
        "capi_waiting_exports",
        include_str!("../../../schemas/clickhouse/0012_capi_waiting_exports.sql"),
    ),
    (
        13,
        "unknown_phone_numbers",
        include_str!("../../../schemas/clickhouse/0013_unknown_phone_numbers.sql"),
    ),
];

/// Splits a migration into statements: each ends with `;` at the end of a line.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            if !statement.is_empty() {
                out.push(statement);
            }
            current.clear();
        }
    }
    out
}

/// `(table, column)` of an `ALTER TABLE t ADD COLUMN c ...` statement.
/// ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`: the runner skips the
/// statement when the column exists, so that a migration interrupted after
/// it (and not yet recorded) applies again.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let head: Vec<&str> = words.by_ref().take(2).collect();
    if !head
        .iter()
        .map(|w| w.to_ascii_uppercase())
        .eq(["ALTER", "TABLE"])
    {
        return None;
    }
    let table = words.next()?;
    let add: Vec<String> = words
        .by_ref()
        .take(2)
        .map(str::to_ascii_uppercase)
        .collect();
    if add != ["ADD", "COLUMN"] {
        return None;
    }
    Some((table, words.next()?))
}

fn checksum(sql: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(sql.as_bytes()))
}

/// A client for the configured database (created by [`migrate`]).
pub fn client(cfg: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password.0)
        .with_database(&cfg.database)
        // The server in the test suite (18.16) cannot describe row types.
        .with_validation(false)
        // 18.16 answers `compress=1` SELECTs with an empty body (and logs a
        // Poco `!_pStream` assertion), so every fetch would find no row.
        .with_compression(clickhouse::Compression::None)
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct AppliedMigration {
    version: u32,
    name: String,
    checksum: String,
    applied_at: i64,
}

/// Creates the database and applies the migrations not applied yet, in
/// order, recording each in `schema_migrations`. Returns how many it applied.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<usize, SinkError> {
    let server = client(cfg).with_database("default");
    server
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`",
            cfg.database.replace('`', "")
        ))
        .execute()
        .await?;
    let db = client(cfg);
    let bootstrap = statements(MIGRATIONS[0].2);
    // schema_migrations itself is created by the first migration.
    for statement in bootstrap.iter().filter(|s| s.contains("schema_migrations")) {
        db.query(statement).execute().await?;
    }
    let applied: Vec<AppliedMigration> = db
        .query("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await?;
    let mut count = 0;
    for &(version, name, sql) in MIGRATIONS {
        let sum = checksum(sql);
        if let Some(done) = applied.iter().find(|m| m.version == version) {
            if done.checksum != sum {
                return Err(SinkError::MigrationChanged {
                    version,
                    name: name.to_owned(),
                });
            }
            continue;
        }
        for statement in statements(sql) {
            if let Some((table, column)) = added_column(&statement) {
                let present: u64 = db
                    .query(
                        "SELECT count() FROM system.columns \
                         WHERE database = currentDatabase() AND table = ? AND name = ?",
                    )
                    .bind(table)
                    .bind(column)
                    .fetch_one()
                    .await?;
                if present > 0 {
                    continue;
                }
            }
            db.query(&statement).execute().await?;
        }
        let mut insert = db.insert::<AppliedMigration>("schema_migrations").await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        insert
            .write(&AppliedMigration {
                version,
                name: name.to_owned(),
                checksum: sum,
                applied_at: now,
            })
            .await?;
        insert.end().await?;
        tracing::info!(version, name, "applied migration");
        count += 1;
    }
    Ok(count)
}

/// Waits until ClickHouse answers and has every migration, retrying while
/// it is unavailable until the stop is abandoned. A refusal (unknown
/// database, wrong password) or a missing migration is fatal.
pub async fn wait_until_migrated(
    cfg: &ClickHouseConfig,
    shutdown: &Shutdown,
) -> Result<(), SinkError> {
    let db = client(cfg);
    let mut delay = Duration::from_millis(200);
    loop {
        match is_migrated(&db).await {
            Ok(true) => return Ok(()),
            Ok(false) => return Err(SinkError::NotMigrated),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "clickhouse unavailable, retrying");
                if !shutdown.sleep(delay).await || shutdown.is_stopping() {
                    return Err(SinkError::Abandoned);
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether every migration is applied.
pub async fn is_migrated(db: &Client) -> Result<bool, SinkError> {
    let n: u64 = db
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await?;
    Ok(n as usize >= MIGRATIONS.len())
}

fn day16(day: Day) -> u16 {
    u16::try_from(day.0).unwrap_or(0)
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize, PartialEq)]
#[allow(missing_docs)]
pub struct ConversationCh {
    pub account_id: String,
    pub ad_id: String,
    pub user_hash: String,
    pub started_at: i64,
    pub last_activity_at: i64,
    pub clicks: u32,
    pub first_click_at: Option<i64>,
    pub inbound_messages: u32,
    pub first_inbound_at: Option<i64>,
    pub outbound_messages: u32,
    pub first_reply_at: Option<i64>,
    pub first_response_ms: Option<i64>,
    pub response_bucket: Option<String>,
    pub free_window_ends_at: Option<i64>,
    pub outbound_in_free_window: u32,
    pub outbound_after_free_window: u32,
    pub followups_in_free_window: u32,
    pub over_messaged: u8,
    pub qualified_at: Option<i64>,
    pub purchases: u32,
    pub revenue: i64,
    pub first_purchase_at: Option<i64>,
    pub time_to_close_ms: Option<i64>,
    pub click_id: Option<String>,
}

impl From<&ConversationRow> for ConversationCh {
    fn from(r: &ConversationRow) -> Self {
        ConversationCh {
            account_id: r.account_id.to_string(),
            ad_id: r.ad_id.to_string(),
            user_hash: r.user_hash.to_string(),
            started_at: r.started_at,
            last_activity_at: r.last_activity_at,
            clicks: r.clicks,
            first_click_at: r.first_click_at,
            inbound_messages: r.inbound_messages,
            first_inbound_at: r.first_inbound_at,
            outbound_messages: r.outbound_messages,
            first_reply_at: r.first_reply_at,
            first_response_ms: r.first_response_ms,
            response_bucket: r.response_bucket.map(|b| b.as_str().to_owned()),
            free_window_ends_at: r.free_window_ends_at,
            outbound_in_free_window: r.outbound_in_free_window,
            outbound_after_free_window: r.outbound_after_free_window,
            followups_in_free_window: r.followups_in_free_window,
            over_messaged: u8::from(r.over_messaged),
            qualified_at: r.qualified_at,
            purchases: r.purchases,
            revenue: r.revenue.0,
            first_purchase_at: r.first_purchase_at,
            time_to_close_ms: r.time_to_close_ms,
            click_id: r.click_id.as_deref().map(str::to_owned),
        }
    }
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct ConversationWrite {
    account_id: String,
    ad_id: String,
    user_hash: String,
    started_at: i64,
    last_activity_at: i64,
    clicks: u32,
    first_click_at: Option<i64>,
    inbound_messages: u32,
    first_inbound_at: Option<i64>,
    outbound_messages: u32,
    first_reply_at: Option<i64>,
    first_response_ms: Option<i64>,
    response_bucket: Option<String>,
    free_window_ends_at: Option<i64>,
    outbound_in_free_window: u32,
    outbound_after_free_window: u32,
    followups_in_free_window: u32,
    over_messaged: u8,
    qualified_at: Option<i64>,
    purchases: u32,
    revenue: i64,
    first_purchase_at: Option<i64>,
    time_to_close_ms: Option<i64>,
    click_id: Option<String>,
    partition: u32,
    version: u64,
    is_deleted: u8,
    start_day: u16,
    currency: String,
}

impl ConversationWrite {
    fn new(
        r: ConversationCh,
        (partition, version, is_deleted): (u32, u64, u8),
        account: &mut AccountDays,
    ) -> Self {
        let (start_day, currency) = account.day_and_currency(&r.account_id, r.started_at);
        ConversationWrite {
            account_id: r.account_id,
            ad_id: r.ad_id,
            user_hash: r.user_hash,
            started_at: r.started_at,
            last_activity_at: r.last_activity_at,
            clicks: r.clicks,
            first_click_at: r.first_click_at,
            inbound_messages: r.inbound_messages,
            first_inbound_at: r.first_inbound_at,
            outbound_messages: r.outbound_messages,
            first_reply_at: r.first_reply_at,
            first_response_ms: r.first_response_ms,
            response_bucket: r.response_bucket,
            free_window_ends_at: r.free_window_ends_at,
            outbound_in_free_window: r.outbound_in_free_window,
            outbound_after_free_window: r.outbound_after_free_window,
            followups_in_free_window: r.followups_in_free_window,
            over_messaged: r.over_messaged,
            qualified_at: r.qualified_at,
            purchases: r.purchases,
            revenue: r.revenue,
            first_purchase_at: r.first_purchase_at,
            time_to_close_ms: r.time_to_close_ms,
            click_id: r.click_id,
            partition,
            version,
            is_deleted,
            start_day,
            currency,
        }
    }
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct FunnelWrite {
    account_id: String,
    ad_id: String,
    day: u16,
    partition: u32,
    clicks: i64,
    inbound_messages: i64,
    conversations_started: i64,
    conversations_messaged: i64,
    replied: i64,
    replied_le_5m: i64,
    replied_le_1h: i64,
    replied_le_24h: i64,
    replied_gt_24h: i64,
    sum_first_response_ms: i64,
    outbound_in_free_window: i64,
    outbound_after_free_window: i64,
    over_messaged_conversations: i64,
    qualified_leads: i64,
    purchases: i64,
    revenue: i64,
    outbound_billable: i64,
    version: u64,
    currency: String,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct ContactsWrite {
    account_id: String,
    day: u16,
    partition: u32,
    unique_contacts: i64,
    organic_inbound_messages: i64,
    organic_contacts: i64,
    unattributed_leads: i64,
    unattributed_purchases: i64,
    messaging_contacts: i64,
    version: u64,
    currency: String,
    purchases_on_day: i64,
    revenue_on_day: i64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct AdWrite {
    account_id: String,
    ad_id: String,
    partition: u32,
    campaign_id: String,
    adset_id: String,
    named_at: i64,
    named_by: String,
    version: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct SpendWrite {
    account_id: String,
    ad_id: String,
    date: u16,
    partition: u32,
    event_id: String,
    event_time: i64,
    spend: i64,
    currency: String,
    impressions: i64,
    clicks: i64,
    reported_conversations: i64,
    version: u64,
}

/// An event kept aside because it was older than the watermark minus the allowed lateness.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct LateWrite {
    /// Internal topic.
    pub topic: String,
    /// Internal partition.
    pub partition: u32,
    /// Offset in it.
    pub offset: i64,
    /// Account.
    pub account_id: String,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Event time.
    pub event_time: i64,
    /// Partition watermark when it arrived.
    pub watermark: i64,
    /// Why it was not applied.
    pub reason: String,
    /// The validated event as JSON (user already hashed).
    pub raw: String,
}

/// The last acknowledged count of one source in one dead-letter partition.
#[derive(Debug, Clone, clickhouse::Row, Deserialize, PartialEq, Eq)]
pub struct DeadLetterCount {
    /// Raw topic.
    pub source_topic: String,
    /// Raw partition.
    pub source_partition: u32,
    /// Dead letters counted from it.
    pub records: u64,
    /// The dead-letter partition's next offset when it was written.
    pub version: u64,
}

/// The cumulative count of one dead-letter reason and day on one
/// dead-letter partition: every such dead letter below offset `version`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReasonCount {
    /// The dead letter's `wafunnel.reason` header.
    pub reason: String,
    /// The UTC day of its Kafka timestamp (days since 1970-01-01).
    pub day: u16,
    /// Dead letters counted.
    pub records: u64,
    /// The dead-letter partition's next offset when it was written.
    pub version: u64,
}

/// A [`ReasonCount`] of one dead-letter partition, as written.
#[derive(Debug, Clone, clickhouse::Row, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ReasonWrite {
    pub worker_topic: String,
    pub worker_partition: u32,
    pub reason: String,
    pub day: u16,
    pub records: u64,
    pub version: u64,
}

/// The `unknown_phone_number` dead letters of one phone number id on one
/// dead-letter partition: every such dead letter below offset `version`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnknownNumberCount {
    /// The phone number id.
    pub phone_number_id: String,
    /// Kafka timestamp of the first, in seconds.
    pub first_seen: u32,
    /// Kafka timestamp of the last, in seconds.
    pub last_seen: u32,
    /// Dead letters counted.
    pub bodies: u64,
    /// The dead-letter partition's next offset when it was written.
    pub version: u64,
}

/// An [`UnknownNumberCount`] of one dead-letter partition, as written.
#[derive(Debug, Clone, clickhouse::Row, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UnknownNumberWrite {
    pub worker_topic: String,
    pub worker_partition: u32,
    pub phone_number_id: String,
    pub first_seen: u32,
    pub last_seen: u32,
    pub bodies: u64,
    pub version: u64,
}

/// A `wafunnel check` canary that reached sessionize (never applied).
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryWrite {
    /// The canary's event id.
    pub canary_id: String,
    /// Internal partition.
    pub partition: u32,
    /// Offset in it.
    pub offset: i64,
    /// Its event time.
    pub event_time: i64,
}

/// Cumulative count of one outcome, as decided by one worker partition.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct OutcomeWrite {
    pub stage: String,
    pub source_topic: String,
    pub source_partition: u32,
    pub worker_topic: String,
    pub worker_partition: u32,
    pub outcome: String,
    pub records: u64,
    pub version: u64,
}

/// One batch to write: a partition's changes with their version, late
/// events and outcome counts.
#[derive(Debug, Default)]
pub struct Batch {
    /// Per internal partition: its changes and the version to write them with.
    pub changes: Vec<(u32, u64, Changes)>,
    /// Late events.
    pub late: Vec<LateWrite>,
    /// Outcome counts that changed.
    pub outcomes: Vec<OutcomeWrite>,
    /// Dead-letter counts per reason and day that changed.
    pub reasons: Vec<ReasonWrite>,
    /// Unknown phone number counts that changed.
    pub unknown_numbers: Vec<UnknownNumberWrite>,
    /// `wafunnel check` canaries seen.
    pub canaries: Vec<CanaryWrite>,
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.changes.iter().all(|(_, _, c)| c.is_empty())
            && self.late.is_empty()
            && self.outcomes.is_empty()
            && self.reasons.is_empty()
            && self.unknown_numbers.is_empty()
            && self.canaries.is_empty()
    }
}

/// Each account's currency and the calendar day, in its time zone, of a
/// time: the columns that configuration decides. ClickHouse takes a time
/// zone only as a constant, so the views cannot compute a per-account day.
struct AccountDays<'a> {
    accounts: &'a Accounts,
    clocks: std::collections::HashMap<String, DayClock>,
}

impl<'a> AccountDays<'a> {
    fn new(accounts: &'a Accounts) -> Self {
        AccountDays {
            accounts,
            clocks: std::collections::HashMap::new(),
        }
    }

    fn currency(&self, account_id: &str) -> String {
        self.accounts.get(account_id).currency.as_str().to_owned()
    }

    fn day_and_currency(&mut self, account_id: &str, ms: i64) -> (u16, String) {
        let currency = self.currency(account_id);
        let clock = self
            .clocks
            .entry(account_id.to_owned())
            .or_insert_with(|| DayClock::new(self.accounts.get(account_id).time_zone));
        (day16(clock.day_of(ms)), currency)
    }
}

/// Writes batches to ClickHouse with the `Inserter`, one INSERT per table per batch.
#[derive(Clone)]
pub struct Sink {
    db: Client,
    accounts: Accounts,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

async fn write_all<T>(db: &Client, table: &str, rows: &[T::Value<'_>]) -> Result<(), SinkError>
where
    T: clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut inserter = db.inserter::<T>(table);
    for row in rows {
        inserter.write(row).await?;
    }
    inserter.end().await?;
    Ok(())
}

impl Sink {
    /// A sink on the configured database, writing the currency and days
    /// of `accounts`.
    pub fn new(cfg: &ClickHouseConfig, accounts: Accounts) -> Self {
        Sink {
            db: client(cfg),
            accounts,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.db
    }

    /// The dead-letter counts this pipeline last wrote for one partition of
    /// the dead-letter topic (empty if none).
    pub async fn dead_letter_counts(
        &self,
        dead_letter_topic: &str,
        partition: u32,
    ) -> Result<Vec<DeadLetterCount>, SinkError> {
        // Aliases differ from the columns: on old ClickHouse an alias
        // replaces its column everywhere in the SELECT.
        Ok(self
            .db
            .query(
                "SELECT source_topic, source_partition, \
                 argMax(records, version) AS last_records, max(version) AS last_version \
                 FROM record_outcomes \
                 WHERE stage = 'dead_letter' AND worker_topic = ? AND worker_partition = ? \
                 GROUP BY source_topic, source_partition",
            )
            .bind(dead_letter_topic)
            .bind(partition)
            .fetch_all::<DeadLetterCount>()
            .await?)
    }

    /// The dead-letter counts per reason and day this pipeline last wrote
    /// for one partition of the dead-letter topic (empty if none).
    pub async fn dead_letter_reasons(
        &self,
        dead_letter_topic: &str,
        partition: u32,
    ) -> Result<Vec<ReasonCount>, SinkError> {
        Ok(self
            .db
            .query(
                "SELECT reason, day, \
                 argMax(records, version) AS last_records, max(version) AS last_version \
                 FROM dead_letter_reasons \
                 WHERE worker_topic = ? AND worker_partition = ? \
                 GROUP BY reason, day",
            )
            .bind(dead_letter_topic)
            .bind(partition)
            .fetch_all::<ReasonCount>()
            .await?)
    }

    /// The unknown phone number counts this pipeline last wrote for one
    /// partition of the dead-letter topic (empty if none).
    pub async fn unknown_phone_numbers(
        &self,
        dead_letter_topic: &str,
        partition: u32,
    ) -> Result<Vec<UnknownNumberCount>, SinkError> {
        Ok(self
            .db
            .query(
                "SELECT phone_number_id, \
                 toUInt32(argMax(first_seen, version)) AS last_first, \
                 toUInt32(argMax(last_seen, version)) AS last_last, \
                 argMax(bodies, version) AS last_bodies, max(version) AS last_version \
                 FROM unknown_phone_number_counts \
                 WHERE worker_topic = ? AND worker_partition = ? \
                 GROUP BY phone_number_id",
            )
            .bind(dead_letter_topic)
            .bind(partition)
            .fetch_all::<UnknownNumberCount>()
            .await?)
    }

    /// Writes one batch; returns when ClickHouse acknowledged every row.
    pub async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let mut conversations = Vec::new();
        let mut funnel = Vec::new();
        let mut contacts = Vec::new();
        let mut ads = Vec::new();
        let mut spend = Vec::new();
        let mut days = AccountDays::new(&self.accounts);
        for (partition, version, changes) in &batch.changes {
            let (partition, version) = (*partition, *version);
            for change in &changes.conversations {
                let (row, is_deleted) = match change {
                    ConversationChange::Upsert(row) => (ConversationCh::from(row), 0),
                    ConversationChange::Delete(key) => (
                        ConversationCh {
                            account_id: key.account_id.to_string(),
                            ad_id: key.ad_id.to_string(),
                            user_hash: key.user_hash.to_string(),
                            started_at: key.started_at,
                            last_activity_at: key.started_at,
                            clicks: 0,
                            first_click_at: None,
                            inbound_messages: 0,
                            first_inbound_at: None,
                            outbound_messages: 0,
                            first_reply_at: None,
                            first_response_ms: None,
                            response_bucket: None,
                            free_window_ends_at: None,
                            outbound_in_free_window: 0,
                            outbound_after_free_window: 0,
                            followups_in_free_window: 0,
                            over_messaged: 0,
                            qualified_at: None,
                            purchases: 0,
                            revenue: 0,
                            first_purchase_at: None,
                            time_to_close_ms: None,
                            click_id: None,
                        },
                        1,
                    ),
                };
                conversations.push(ConversationWrite::new(
                    row,
                    (partition, version, is_deleted),
                    &mut days,
                ));
            }
            for r in &changes.funnel {
                let c = &r.counts;
                funnel.push(FunnelWrite {
                    account_id: r.account_id.to_string(),
                    ad_id: r.ad_id.to_string(),
                    day: day16(r.day),
                    partition,
                    clicks: c.clicks,
                    inbound_messages: c.inbound_messages,
                    conversations_started: c.conversations_started,
                    conversations_messaged: c.conversations_messaged,
                    replied: c.replied,
                    replied_le_5m: c.replied_le_5m,
                    replied_le_1h: c.replied_le_1h,
                    replied_le_24h: c.replied_le_24h,
                    replied_gt_24h: c.replied_gt_24h,
                    sum_first_response_ms: c.sum_first_response_ms,
                    outbound_in_free_window: c.outbound_in_free_window,
                    outbound_after_free_window: c.outbound_after_free_window,
                    over_messaged_conversations: c.over_messaged_conversations,
                    qualified_leads: c.qualified_leads,
                    purchases: c.purchases,
                    revenue: c.revenue,
                    outbound_billable: c.outbound_billable,
                    version,
                    currency: days.currency(&r.account_id),
                });
            }
            for r in &changes.contacts {
                let c = &r.counts;
                contacts.push(ContactsWrite {
                    account_id: r.account_id.to_string(),
                    day: day16(r.day),
                    partition,
                    unique_contacts: c.unique_contacts,
                    organic_inbound_messages: c.organic_inbound_messages,
                    organic_contacts: c.organic_contacts,
                    unattributed_leads: c.unattributed_leads,
                    unattributed_purchases: c.unattributed_purchases,
                    messaging_contacts: c.messaging_contacts,
                    version,
                    currency: days.currency(&r.account_id),
                    purchases_on_day: c.purchases_on_day,
                    revenue_on_day: c.revenue_on_day,
                });
            }
            for r in &changes.ads {
                ads.push(AdWrite {
                    account_id: r.account_id.to_string(),
                    ad_id: r.ad_id.to_string(),
                    partition,
                    campaign_id: r.campaign_id.to_string(),
                    adset_id: r.adset_id.to_string(),
                    named_at: r.named_at,
                    named_by: r.named_by.to_string(),
                    version,
                });
            }
            for r in &changes.spend {
                spend.push(SpendWrite {
                    account_id: r.account_id.to_string(),
                    ad_id: r.ad_id.to_string(),
                    date: day16(r.date),
                    partition,
                    event_id: r.event_id.to_string(),
                    event_time: r.event_time,
                    spend: r.spend.0,
                    currency: r.currency.to_string(),
                    impressions: r.impressions,
                    clicks: r.clicks,
                    reported_conversations: r.reported_conversations,
                    version,
                });
            }
        }
        write_all::<ConversationWrite>(&self.db, "conversation_rows", &conversations).await?;
        write_all::<FunnelWrite>(&self.db, "funnel_partial", &funnel).await?;
        write_all::<ContactsWrite>(&self.db, "contacts_partial", &contacts).await?;
        write_all::<AdWrite>(&self.db, "ads", &ads).await?;
        write_all::<SpendWrite>(&self.db, "spend_snapshots", &spend).await?;
        write_all::<LateWrite>(&self.db, "late_events", &batch.late).await?;
        // Before the outcomes: a dead-letter partition resumes at the offset
        // its record_outcomes rows reached, so its reason counts must be
        // there by then (counts written further are recognised on restore).
        write_all::<ReasonWrite>(&self.db, "dead_letter_reasons", &batch.reasons).await?;
        write_all::<UnknownNumberWrite>(
            &self.db,
            "unknown_phone_number_counts",
            &batch.unknown_numbers,
        )
        .await?;
        write_all::<OutcomeWrite>(&self.db, "record_outcomes", &batch.outcomes).await?;
        write_all::<CanaryWrite>(&self.db, "check_canaries", &batch.canaries).await?;
        Ok(())
    }

    /// Writes `batch`, retrying while ClickHouse is unavailable ([`retry_write`]).
    pub async fn write_with_retry(
        &self,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> Result<(), SinkError> {
        retry_write("batch", shutdown, || self.write(batch)).await
    }
}

/// Runs `write` until it succeeds, retrying with backoff while ClickHouse
/// is unavailable (the service is not ready meanwhile) until the stop is
/// abandoned. A refusal no retry can fix is returned at once. `what` names
/// the write in the log.
pub async fn retry_write<F, Fut>(
    what: &'static str,
    shutdown: &Shutdown,
    mut write: F,
) -> Result<(), SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SinkError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        match write().await {
            Ok(()) => {
                metrics()
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics().set_ready(true);
                return Ok(());
            }
            Err(e) if e.is_retryable() => {
                metrics().clickhouse_write_retries.inc();
                metrics().set_ready(false);
                tracing::warn!(error = %e, write = what, retry_in_ms = delay.as_millis() as u64, "clickhouse write failed");
                if !shutdown.sleep(delay).await {
                    return Err(SinkError::Abandoned);
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| statements(m.2)).collect();
        assert!(all.len() >= 10, "{}", all.len());
        assert!(
            all.iter().all(|s| !s.contains(';')),
            "a statement kept a semicolon"
        );
        assert!(all
            .iter()
            .any(|s| s.starts_with("CREATE VIEW funnel_daily")));
        let numbers: Vec<u32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(numbers, (1..=MIGRATIONS.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn added_columns_are_recognized() {
        assert_eq!(
            added_column("ALTER TABLE funnel_partial ADD COLUMN outbound_billable Int64 DEFAULT 0"),
            Some(("funnel_partial", "outbound_billable"))
        );
        assert_eq!(
            added_column("alter table t\nadd column c String"),
            Some(("t", "c"))
        );
        assert_eq!(added_column("ALTER TABLE t DROP COLUMN c"), None);
        assert_eq!(added_column("CREATE VIEW v AS SELECT 1"), None);
        let added = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m.2))
            .filter(|s| added_column(s).is_some())
            .count();
        assert_eq!(
            added, 10,
            "0006 adds two columns, 0008 one, 0009 four, 0011 two, 0012 one"
        );
    }

    #[test]
    fn refusals_no_retry_can_fix_are_fatal() {
        let bad = |text: &str| SinkError::from(clickhouse::error::Error::BadResponse(text.into()));
        let unknown_db = bad("Code: 81, e.displayText() = DB::Exception: Database nope doesn't exist, e.what() = DB::Exception");
        assert!(!unknown_db.is_retryable());
        assert_eq!(unknown_db.fault(), Fault::User);
        assert!(
            unknown_db.to_string().contains("clickhouse.database"),
            "{unknown_db}"
        );
        assert!(!bad("Code: 516. DB::Exception: default: Authentication failed").is_retryable());
        assert!(!bad(
            "Code: 193, e.displayText() = DB::Exception: Wrong password for user default"
        )
        .is_retryable());
        assert!(bad("Code: 252. DB::Exception: Too many parts").is_retryable());
        assert!(bad("502 Bad Gateway").is_retryable());
    }
}
