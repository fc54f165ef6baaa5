-- First-response buckets per account over the days {from} to {to}
-- (conversations counted on their start day). not_replied: messaged and
-- never answered. avg_first_response_s divides the summed response time by
-- the replies, over the whole range.
SELECT
    account_id,
    conversations_messaged,
    replied_le_5m,
    replied_le_1h,
    replied_le_24h,
    replied_gt_24h,
    conversations_messaged - replied AS not_replied,
    if(replied = 0, NULL, sum_first_response_ms / greatest(replied, 1) / 1000) AS avg_first_response_s
FROM
(
    SELECT
        account_id,
        sum(conversations_messaged) AS conversations_messaged,
        sum(replied) AS replied,
        sum(replied_le_5m) AS replied_le_5m,
        sum(replied_le_1h) AS replied_le_1h,
        sum(replied_le_24h) AS replied_le_24h,
        sum(replied_gt_24h) AS replied_gt_24h,
        sum(sum_first_response_ms) AS sum_first_response_ms
    FROM funnel_daily
    WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
    GROUP BY account_id
)
ORDER BY account_id
