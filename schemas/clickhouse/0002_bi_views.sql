-- wafunnel ClickHouse schema, migration 0002: the BI views (the contract of
-- SEMANTICS.md section 3). Their column names and order are the public
-- interface that Grafana, Metabase and Superset read.
-- Runs unchanged on ClickHouse 18.16 and on current ClickHouse (26.x).
-- Same format rule as 0001: each statement ends with a semicolon at the end of
-- a line, and no other semicolon appears in this file.
--
-- Types, identical on both versions: every counter is Int64, every money column
-- (revenue, spend, cost_per_*) is Decimal(18, 4), cost_per_* are
-- Nullable(Decimal(18, 4)) and click_to_message_rate is Nullable(Float64).
-- Decimal division by an integer truncates toward zero to 4 digits.
-- Notes for readers of this SQL:
-- * The sums are taken in an inner query and filtered in an outer one: on old
--   ClickHouse an alias like `sum(clicks) AS clicks` replaces `clicks` in every
--   other expression of the same SELECT, so no expression there reuses a name.
-- * The join is written `ANY LEFT JOIN (subquery) USING (...)`, the only form
--   that 18.16 accepts and that current versions accept too. Unmatched ads get
--   '' for campaign_id and adset_id (ifNull keeps that true with join_use_nulls).
-- * The zero guard of cost_per_* divides by greatest(n, 1): 18.16 evaluates
--   both branches of if(), and Decimal division by zero throws there.

-- One row per (account_id, campaign_id, adset_id, ad_id, day).
CREATE VIEW IF NOT EXISTS funnel_daily AS
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
    FROM funnel_partial FINAL
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

-- One row per (account_id, day).
CREATE VIEW IF NOT EXISTS contacts_daily AS
SELECT
    account_id,
    day,
    unique_contacts,
    organic_inbound_messages,
    organic_contacts,
    unattributed_leads,
    unattributed_purchases
FROM
(
    SELECT
        account_id,
        day,
        sum(unique_contacts) AS unique_contacts,
        sum(organic_inbound_messages) AS organic_inbound_messages,
        sum(organic_contacts) AS organic_contacts,
        sum(unattributed_leads) AS unattributed_leads,
        sum(unattributed_purchases) AS unattributed_purchases
    FROM contacts_partial FINAL
    GROUP BY account_id, day
)
WHERE NOT (
    unique_contacts = 0 AND organic_inbound_messages = 0
    AND organic_contacts = 0 AND unattributed_leads = 0
    AND unattributed_purchases = 0
);

-- One row per live conversation, with the user as a keyed hash.
CREATE VIEW IF NOT EXISTS conversations AS
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
    time_to_close_ms
FROM conversation_rows FINAL
WHERE is_deleted = 0;
