-- wafunnel ClickHouse schema, migration 0001: the tables the pipeline writes.
-- Runs unchanged on ClickHouse 18.16 and on current ClickHouse (26.x).
-- Times are Int64 epoch milliseconds (UTC), days are Date, money is Decimal(18, 4).
-- Table names are bare: the database is the one of the client connection.
-- Format rule for the migration runner: every statement ends with a semicolon
-- at the end of a line, and no other semicolon appears anywhere in this file.
--
-- The sessionizer runs one instance per Kafka partition (column `partition`).
-- Each instance writes full-state rows whose `version` only grows within that
-- partition, so replays are idempotent under ReplacingMergeTree(version) and
-- readers must use FINAL. A deleted conversation is a row with is_deleted = 1.

-- The migration runner's record of applied migrations.
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at Int64
)
ENGINE = MergeTree
ORDER BY version;

-- One row per conversation (key: account, ad, user hash, start), full state.
CREATE TABLE IF NOT EXISTS conversation_rows
(
    account_id String,
    ad_id String,
    user_hash String,
    started_at Int64,
    last_activity_at Int64,
    clicks UInt32,
    first_click_at Nullable(Int64),
    inbound_messages UInt32,
    first_inbound_at Nullable(Int64),
    outbound_messages UInt32,
    first_reply_at Nullable(Int64),
    first_response_ms Nullable(Int64),
    response_bucket Nullable(String),
    free_window_ends_at Nullable(Int64),
    outbound_in_free_window UInt32,
    outbound_after_free_window UInt32,
    followups_in_free_window UInt32,
    over_messaged UInt8,
    qualified_at Nullable(Int64),
    purchases UInt32,
    revenue Decimal(18, 4),
    first_purchase_at Nullable(Int64),
    time_to_close_ms Nullable(Int64),
    partition UInt32,
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account_id, ad_id, user_hash, started_at);

-- One partition's running totals for one ad and day. funnel_daily sums partitions.
-- A row whose counters are all zero is a retraction (the ad and day lost all its rows).
CREATE TABLE IF NOT EXISTS funnel_partial
(
    account_id String,
    ad_id String,
    day Date,
    partition UInt32,
    clicks Int64,
    inbound_messages Int64,
    conversations_started Int64,
    conversations_messaged Int64,
    replied Int64,
    replied_le_5m Int64,
    replied_le_1h Int64,
    replied_le_24h Int64,
    replied_gt_24h Int64,
    sum_first_response_ms Int64,
    outbound_in_free_window Int64,
    outbound_after_free_window Int64,
    over_messaged_conversations Int64,
    qualified_leads Int64,
    purchases Int64,
    revenue Decimal(18, 4),
    spend Decimal(18, 4),
    impressions Int64,
    reported_conversations Int64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account_id, ad_id, day, partition);

-- One partition's running totals for one account and day. contacts_daily sums partitions.
CREATE TABLE IF NOT EXISTS contacts_partial
(
    account_id String,
    day Date,
    partition UInt32,
    unique_contacts Int64,
    organic_inbound_messages Int64,
    organic_contacts Int64,
    unattributed_leads Int64,
    unattributed_purchases Int64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account_id, day, partition);

-- The campaign and ad set that one partition last saw named for an ad, with the
-- event_time (named_at) and event_id (named_by) of the naming event. The ad
-- hierarchy is the row with the greatest (named_at, named_by) across partitions.
CREATE TABLE IF NOT EXISTS ads
(
    account_id String,
    ad_id String,
    partition UInt32,
    campaign_id String,
    adset_id String,
    named_at Int64,
    named_by String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account_id, ad_id, partition);

-- The winning ad_spend snapshot per (account, ad, date), for audit.
-- funnel_partial already carries spend, impressions and reported_conversations.
CREATE TABLE IF NOT EXISTS spend_snapshots
(
    account_id String,
    ad_id String,
    date Date,
    partition UInt32,
    event_id String,
    event_time Int64,
    spend Decimal(18, 4),
    currency String,
    impressions Int64,
    clicks Int64,
    reported_conversations Int64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account_id, ad_id, date, partition);

-- Events that arrived later than the partition watermark minus the allowed
-- lateness: kept with their raw payload, not applied. Keyed by source position
-- so that a replayed record replaces itself.
CREATE TABLE IF NOT EXISTS late_events
(
    topic String,
    partition UInt32,
    offset Int64,
    account_id String,
    event_id String,
    event_type String,
    event_time Int64,
    watermark Int64,
    reason String,
    raw String
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset);

-- Cumulative count of input records per stage, source partition and outcome
-- (applied, duplicate, late, dead_lettered, forwarded).
CREATE TABLE IF NOT EXISTS record_accounting
(
    stage String,
    topic String,
    partition UInt32,
    outcome String,
    records UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (stage, topic, partition, outcome);
