-- wafunnel ClickHouse schema, migration 0006: billable outbound messages
-- (funnel_daily.outbound_billable, docs/SEMANTICS.md section 6.3) and people
-- who messaged (contacts_daily.messaging_contacts, section 8). Same format
-- rule as 0001: each statement ends with a semicolon at the end of a line,
-- and no other semicolon appears in this file.
--
-- The partial tables gain one counter each (0 in rows written before). The
-- views keep every column, name and type, and gain the new one last.

ALTER TABLE funnel_partial ADD COLUMN outbound_billable Int64 DEFAULT 0;

ALTER TABLE contacts_partial ADD COLUMN messaging_contacts Int64 DEFAULT 0;

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
    outbound_billable
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
        sum(outbound_billable) AS outbound_billable
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
            outbound_billable
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
            toInt64(0) AS outbound_billable
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
    messaging_contacts
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
        sum(messaging_contacts) AS messaging_contacts
    FROM contacts_partial FINAL
    GROUP BY account_id, day
)
WHERE NOT (
    unique_contacts = 0 AND organic_inbound_messages = 0
    AND organic_contacts = 0 AND unattributed_leads = 0
    AND unattributed_purchases = 0 AND messaging_contacts = 0
);
