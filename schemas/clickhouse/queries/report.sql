-- The queries of `wafunnel report` (crates/wafunnel/src/warehouse.rs),
-- proved on 18.16 and on current ClickHouse by tests/chdb. Each starts at a
-- line `-- name: NAME` and ends with a semicolon at the end of a line.
-- `?` are bound values; `{key}` is a grouping expression (`campaign_id` or
-- `toString(day)`) and `{accounts}` either `1` or `has(?, account_id)`.
-- No alias repeats a column name: on 18.16 an alias replaces its column in
-- the whole SELECT.

-- name: funnel_sums
SELECT account_id, {key} AS group_key,
    toDecimal64(sum(spend), 4) AS total_spend,
    sum(reported_conversations) AS total_reported,
    sum(clicks) AS total_clicks,
    sum(conversations_started) AS total_started,
    sum(conversations_messaged) AS total_messaged,
    sum(inbound_messages) AS total_inbound,
    sum(replied_le_5m) AS total_le_5m,
    sum(replied_le_1h) AS total_le_1h,
    sum(replied_le_24h) AS total_le_24h,
    sum(replied_gt_24h) AS total_gt_24h,
    sum(sum_first_response_ms) AS total_response_ms,
    sum(outbound_in_free_window) AS total_out_free,
    sum(outbound_after_free_window) AS total_out_after,
    sum(outbound_billable) AS total_billable,
    sum(over_messaged_conversations) AS total_over_messaged,
    sum(qualified_leads) AS total_leads,
    sum(purchases) AS total_purchases,
    toDecimal64(sum(revenue), 4) AS total_revenue
FROM funnel_daily
WHERE day >= toDate(?) AND day <= toDate(?) AND {accounts}
GROUP BY account_id, group_key
ORDER BY account_id, group_key;

-- name: people_by_campaign
SELECT ifNull(h.campaign_id, '') AS campaign,
    toInt64(uniqExact(user_hash)) AS people,
    toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS messaging
FROM (
    SELECT account_id, ad_id, user_hash, inbound_messages FROM conversations
    WHERE account_id = ? AND started_at >= ? AND started_at < ?
) AS c
ANY LEFT JOIN (
    SELECT account_id, ad_id, argMax(campaign_id, (named_at, named_by)) AS campaign_id
    FROM ads FINAL WHERE account_id = ? GROUP BY account_id, ad_id
) AS h USING (account_id, ad_id)
GROUP BY campaign
ORDER BY campaign;

-- name: people
SELECT '' AS campaign,
    toInt64(uniqExact(user_hash)) AS people,
    toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS messaging
FROM conversations
WHERE account_id = ? AND started_at >= ? AND started_at < ?;

-- name: not_from_ads
SELECT account_id,
    sum(organic_inbound_messages) AS organic,
    sum(unattributed_leads + unattributed_purchases) AS unattributed
FROM contacts_daily
WHERE day >= toDate(?) AND day <= toDate(?) AND {accounts}
GROUP BY account_id;

-- name: exports
SELECT account_id, event_name, status, sum(exports) AS total_exports
FROM capi_daily
WHERE day >= toDate(?) AND day <= toDate(?) AND {accounts}
GROUP BY account_id, event_name, status;
