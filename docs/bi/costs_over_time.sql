-- Cost per conversation, lead and sale per account and day, {from} to {to}:
-- each day's ratio of that day's sums over all the account's ads (never an
-- average of the per-ad ratios). Leads and sales are counted on the day
-- their conversation started (cohort), spend on its date.
SELECT
    day,
    account_id,
    currency,
    spend,
    if(conversations_started = 0, NULL, spend / greatest(conversations_started, 1)) AS cost_per_conversation,
    if(qualified_leads = 0, NULL, spend / greatest(qualified_leads, 1)) AS cost_per_lead,
    if(purchases = 0, NULL, spend / greatest(purchases, 1)) AS cost_per_sale
FROM
(
    SELECT
        day,
        account_id,
        currency,
        toDecimal64(sum(spend), 4) AS spend,
        sum(conversations_started) AS conversations_started,
        sum(qualified_leads) AS qualified_leads,
        sum(purchases) AS purchases
    FROM funnel_daily
    WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
    GROUP BY day, account_id, currency
)
ORDER BY day, account_id, currency
