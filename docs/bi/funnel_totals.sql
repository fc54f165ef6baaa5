-- Totals and costs per account, currency and campaign over the days {from}
-- to {to}. Every ratio divides sums taken over the whole range: averaging
-- the daily cost_per_conversation instead weighs a day with 2 conversations
-- like a day with 200 and gives a wrong figure. Sums are taken in the inner
-- query and divided in the outer one: on ClickHouse 18.16 an alias such as
-- `sum(spend) AS spend` replaces `spend` in every other expression of its
-- own SELECT. Costs truncate toward zero to 1/10000, as in funnel_daily.
SELECT
    account_id,
    currency,
    campaign_id,
    spend,
    conversations_started,
    conversations_messaged,
    qualified_leads,
    purchases,
    revenue,
    if(conversations_started = 0, NULL, spend / greatest(conversations_started, 1)) AS cost_per_conversation,
    if(conversations_messaged = 0, NULL, spend / greatest(conversations_messaged, 1)) AS cost_per_messaged_conversation,
    if(qualified_leads = 0, NULL, spend / greatest(qualified_leads, 1)) AS cost_per_lead,
    if(purchases = 0, NULL, spend / greatest(purchases, 1)) AS cost_per_sale,
    if(conversations_started = 0, NULL, conversations_messaged / conversations_started) AS click_to_message_rate
FROM
(
    SELECT
        account_id,
        currency,
        campaign_id,
        toDecimal64(sum(spend), 4) AS spend,
        sum(conversations_started) AS conversations_started,
        sum(conversations_messaged) AS conversations_messaged,
        sum(qualified_leads) AS qualified_leads,
        sum(purchases) AS purchases,
        toDecimal64(sum(revenue), 4) AS revenue
    FROM funnel_daily
    WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
    GROUP BY account_id, currency, campaign_id
)
ORDER BY account_id, currency, campaign_id
