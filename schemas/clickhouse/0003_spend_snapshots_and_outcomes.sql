-- wafunnel ClickHouse schema, migration 0003: spend comes from the winning
-- snapshots, and per-partition accounting of every input record.
-- Same format rule as 0001: each statement ends with a semicolon at the end of
-- a line, and no other semicolon appears in this file.
--
-- The sessionizer writes spend snapshots to spend_snapshots (one row per
-- account, ad, date and partition: the snapshot that won there), not into
-- funnel_partial. funnel_daily takes, per (account, ad, date), the snapshot
-- with the latest (event_time, event_id) over all partitions, and adds it to
-- the summed partition totals. funnel_partial's spend columns are not read.
-- Aliases of the snapshot columns differ from the column names because on
-- old ClickHouse an alias replaces the column in every expression of its
-- SELECT.

DROP TABLE IF EXISTS funnel_daily;

CREATE VIEW funnel_daily AS
SELECT
    account_id,
    ifNull(h.campaign_id, '') AS campaign_id,
    ifNull(h.adset_id, '') AS adset_id,
    ad_id,
    day,
    clicks,
    inbound_messages,
    conversations_started,
    conversations_messaged,
    conversations_started - conversations_messaged AS ghost_conversations,
    replied,
    replied_le_5m,
    replied_le_1h,
    replied_le_24h,
    replied_gt_24h,
    sum_first_response_ms,
    outbound_in_free_window,
    outbound_after_free_window,
    over_messaged_conversations,
    qualified_leads,
    purchases,
    revenue,
    spend,
    impressions,
    reported_conversations,
    if(conversations_started = 0, NULL, spend / greatest(conversations_started, 1)) AS cost_per_conversation,
    if(conversations_messaged = 0, NULL, spend / greatest(conversations_messaged, 1)) AS cost_per_messaged_conversation,
    if(conversations_started = 0, NULL, conversations_messaged / conversations_started) AS click_to_message_rate
FROM
(
    SELECT
        account_id,
        ad_id,
        day,
        sum(clicks) AS clicks,
        sum(inbound_messages) AS inbound_messages,
        sum(conversations_started) AS conversations_started,
        sum(conversations_messaged) AS conversations_messaged,
        sum(replied) AS replied,
        sum(replied_le_5m) AS replied_le_5m,
        sum(replied_le_1h) AS replied_le_1h,
        sum(replied_le_24h) AS replied_le_24h,
        sum(replied_gt_24h) AS replied_gt_24h,
        sum(sum_first_response_ms) AS sum_first_response_ms,
        sum(outbound_in_free_window) AS outbound_in_free_window,
        sum(outbound_after_free_window) AS outbound_after_free_window,
        sum(over_messaged_conversations) AS over_messaged_conversations,
        sum(qualified_leads) AS qualified_leads,
        sum(purchases) AS purchases,
        toDecimal64(sum(revenue), 4) AS revenue,
        toDecimal64(sum(spend), 4) AS spend,
        sum(impressions) AS impressions,
        sum(reported_conversations) AS reported_conversations
    FROM
    (
        SELECT
            account_id,
            ad_id,
            day,
            clicks,
            inbound_messages,
            conversations_started,
            conversations_messaged,
            replied,
            replied_le_5m,
            replied_le_1h,
            replied_le_24h,
            replied_gt_24h,
            sum_first_response_ms,
            outbound_in_free_window,
            outbound_after_free_window,
            over_messaged_conversations,
            qualified_leads,
            purchases,
            revenue,
            toDecimal64(0, 4) AS spend,
            toInt64(0) AS impressions,
            toInt64(0) AS reported_conversations
        FROM funnel_partial FINAL
        UNION ALL
        SELECT
            account_id,
            ad_id,
            date AS day,
            toInt64(0) AS clicks,
            toInt64(0) AS inbound_messages,
            toInt64(0) AS conversations_started,
            toInt64(0) AS conversations_messaged,
            toInt64(0) AS replied,
            toInt64(0) AS replied_le_5m,
            toInt64(0) AS replied_le_1h,
            toInt64(0) AS replied_le_24h,
            toInt64(0) AS replied_gt_24h,
            toInt64(0) AS sum_first_response_ms,
            toInt64(0) AS outbound_in_free_window,
            toInt64(0) AS outbound_after_free_window,
            toInt64(0) AS over_messaged_conversations,
            toInt64(0) AS qualified_leads,
            toInt64(0) AS purchases,
            toDecimal64(0, 4) AS revenue,
            snapshot_spend AS spend,
            snapshot_impressions AS impressions,
            snapshot_reported AS reported_conversations
        FROM
        (
            SELECT
                account_id,
                ad_id,
                date,
                argMax(spend, (event_time, event_id)) AS snapshot_spend,
                argMax(impressions, (event_time, event_id)) AS snapshot_impressions,
                argMax(reported_conversations, (event_time, event_id)) AS snapshot_reported
            FROM spend_snapshots FINAL
            GROUP BY account_id, ad_id, date
        )
    )
    GROUP BY account_id, ad_id, day
) AS f
ANY LEFT JOIN
(
    SELECT
        account_id,
        ad_id,
        argMax(campaign_id, (named_at, named_by)) AS campaign_id,
        argMax(adset_id, (named_at, named_by)) AS adset_id
    FROM ads FINAL
    GROUP BY account_id, ad_id
) AS h USING (account_id, ad_id)
WHERE NOT (
    clicks = 0 AND inbound_messages = 0
    AND conversations_started = 0 AND conversations_messaged = 0
    AND replied = 0 AND replied_le_5m = 0 AND replied_le_1h = 0
    AND replied_le_24h = 0 AND replied_gt_24h = 0
    AND sum_first_response_ms = 0
    AND outbound_in_free_window = 0 AND outbound_after_free_window = 0
    AND over_messaged_conversations = 0 AND qualified_leads = 0
    AND purchases = 0 AND revenue = 0 AND spend = 0
    AND impressions = 0 AND reported_conversations = 0
);

-- Where every input record ended, counted by the worker that decided it:
-- stage 'sessionize' counts applied, duplicate and late per source partition
-- of the raw topics, as seen by each internal partition, and stage 'dead_letter'
-- counts dead-lettered records per source partition, as seen by each
-- dead-letter partition. Full-state cumulative counts, versioned by the
-- worker's offset, so replays rewrite identical rows.
CREATE TABLE IF NOT EXISTS record_outcomes
(
    stage String,
    source_topic String,
    source_partition UInt32,
    worker_topic String,
    worker_partition UInt32,
    outcome String,
    records UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (stage, source_topic, source_partition, worker_topic, worker_partition, outcome);

-- One row per input partition: every record in exactly one outcome.
CREATE VIEW IF NOT EXISTS input_accounting AS
SELECT
    source_topic,
    source_partition,
    applied,
    duplicate,
    late,
    dead_lettered,
    applied + duplicate + late + dead_lettered AS records
FROM
(
    SELECT
        source_topic,
        source_partition,
        sumIf(records, outcome = 'applied') AS applied,
        sumIf(records, outcome = 'duplicate') AS duplicate,
        sumIf(records, outcome = 'late') AS late,
        sumIf(records, outcome = 'dead_lettered') AS dead_lettered
    FROM record_outcomes FINAL
    GROUP BY source_topic, source_partition
);
