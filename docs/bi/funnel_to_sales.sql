-- The funnel from click to sale per account and currency over the days
-- {from} to {to} (conversation metrics on their start day).
SELECT
    account_id,
    currency,
    sum(clicks) AS clicks,
    sum(conversations_started) AS started,
    sum(conversations_messaged) AS messaged,
    sum(replied) AS replied,
    sum(qualified_leads) AS leads,
    sum(purchases) AS sales,
    toDecimal64(sum(revenue), 4) AS sales_revenue
FROM funnel_daily
WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
GROUP BY account_id, currency
ORDER BY account_id, currency
