-- wafunnel ClickHouse schema, migration 0009: what BI tools need to answer
-- the usual questions without one query per account. Same format rule as
-- 0001: each statement ends with a semicolon at the end of a line, and no
-- other semicolon appears in this file.
--
-- * Every row carries its account's currency (configuration, written by
--   sessionize), so totals can be grouped per currency and never add two.
-- * conversation_rows gains start_day, the calendar day of started_at in the
--   account's time zone (the day funnel_daily counts it on). Time zones are
--   configuration, and ClickHouse 18.16 takes a time zone argument only as
--   a constant, so the day is computed where the configuration is: in
--   sessionize. Rows written before this migration show the UTC day of
--   started_at and an empty currency until their conversation changes (a
--   rebuild from the raw topics rewrites them all).
-- * conversations gains its start_day, the ad's campaign_id and adset_id
--   (the hierarchy funnel_daily uses), currency, and a DateTime beside each
--   millisecond time: second precision, in UTC.
-- * awaiting_reply: the queue of conversations waiting for their first reply.
--
-- The views keep every column, name and type, and gain the new ones last.

ALTER TABLE conversation_rows ADD COLUMN start_day Date DEFAULT toDate(toDateTime(intDiv(started_at, 1000)), 'UTC');

ALTER TABLE conversation_rows ADD COLUMN currency String DEFAULT '';

ALTER TABLE funnel_partial ADD COLUMN currency String DEFAULT '';

ALTER TABLE contacts_partial ADD COLUMN currency String DEFAULT '';

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
    if(conversations_started = 0, NULL, conversations_messaged / conversations_started) AS click_to_message_rate,
    outbound_billable,
    currency
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
        sum(reported_conversations) AS reported_conversations,
        sum(outbound_billable) AS outbound_billable,
        max(currency_code) AS currency
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
            toInt64(0) AS reported_conversations,
            outbound_billable,
            currency AS currency_code
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
            snapshot_reported AS reported_conversations,
            toInt64(0) AS outbound_billable,
            snapshot_currency AS currency_code
        FROM
        (
            SELECT
                account_id,
                ad_id,
                date,
                argMax(spend, (event_time, event_id)) AS snapshot_spend,
                argMax(impressions, (event_time, event_id)) AS snapshot_impressions,
                argMax(reported_conversations, (event_time, event_id)) AS snapshot_reported,
                argMax(currency, (event_time, event_id)) AS snapshot_currency
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
    AND outbound_billable = 0
);

DROP TABLE IF EXISTS contacts_daily;

CREATE VIEW contacts_daily AS
SELECT
    account_id,
    day,
    unique_contacts,
    organic_inbound_messages,
    organic_contacts,
    unattributed_leads,
    unattributed_purchases,
    messaging_contacts,
    currency
FROM
(
    SELECT
        account_id,
        day,
        sum(unique_contacts) AS unique_contacts,
        sum(organic_inbound_messages) AS organic_inbound_messages,
        sum(organic_contacts) AS organic_contacts,
        sum(unattributed_leads) AS unattributed_leads,
        sum(unattributed_purchases) AS unattributed_purchases,
        sum(messaging_contacts) AS messaging_contacts,
        max(currency_code) AS currency
    FROM
    (
        SELECT
            account_id,
            day,
            unique_contacts,
            organic_inbound_messages,
            organic_contacts,
            unattributed_leads,
            unattributed_purchases,
            messaging_contacts,
            currency AS currency_code
        FROM contacts_partial FINAL
    )
    GROUP BY account_id, day
)
WHERE NOT (
    unique_contacts = 0 AND organic_inbound_messages = 0
    AND organic_contacts = 0 AND unattributed_leads = 0
    AND unattributed_purchases = 0 AND messaging_contacts = 0
);

DROP TABLE IF EXISTS conversations;

CREATE VIEW conversations AS
SELECT
    account_id,
    ad_id,
    user_hash,
    started_at,
    last_activity_at,
    clicks,
    first_click_at,
    inbound_messages,
    first_inbound_at,
    outbound_messages,
    first_reply_at,
    first_response_ms,
    response_bucket,
    free_window_ends_at,
    outbound_in_free_window,
    outbound_after_free_window,
    followups_in_free_window,
    over_messaged,
    qualified_at,
    purchases,
    revenue,
    first_purchase_at,
    time_to_close_ms,
    click_id,
    start_day,
    ifNull(h.campaign_id, '') AS campaign_id,
    ifNull(h.adset_id, '') AS adset_id,
    currency,
    toDateTime(intDiv(started_at, 1000), 'UTC') AS started_at_time,
    toDateTime(intDiv(last_activity_at, 1000), 'UTC') AS last_activity_at_time,
    toDateTime(intDiv(first_inbound_at, 1000), 'UTC') AS first_inbound_at_time,
    toDateTime(intDiv(first_reply_at, 1000), 'UTC') AS first_reply_at_time,
    toDateTime(intDiv(qualified_at, 1000), 'UTC') AS qualified_at_time,
    toDateTime(intDiv(first_purchase_at, 1000), 'UTC') AS first_purchase_at_time
FROM
(
    SELECT *
    FROM conversation_rows FINAL
    WHERE is_deleted = 0
) AS c
ANY LEFT JOIN
(
    SELECT
        account_id,
        ad_id,
        argMax(campaign_id, (named_at, named_by)) AS campaign_id,
        argMax(adset_id, (named_at, named_by)) AS adset_id
    FROM ads FINAL
    GROUP BY account_id, ad_id
) AS h USING (account_id, ad_id);

-- Conversations whose contact wrote and got no reply yet, while the free
-- window of their first message is still open (after it only a paid
-- template can answer): the "answer within 5 minutes" queue. waiting_ms is
-- measured against the server clock (now()) at query time.
CREATE VIEW IF NOT EXISTS awaiting_reply AS
SELECT
    account_id,
    campaign_id,
    adset_id,
    ad_id,
    user_hash,
    started_at,
    first_inbound_at,
    first_inbound_at_time,
    inbound_messages,
    free_window_ends_at,
    toInt64(toUnixTimestamp(now())) * 1000 - assumeNotNull(first_inbound_at) AS waiting_ms
FROM conversations
WHERE first_inbound_at IS NOT NULL
    AND first_reply_at IS NULL
    AND assumeNotNull(free_window_ends_at) > toInt64(toUnixTimestamp(now())) * 1000;
