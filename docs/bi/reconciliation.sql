-- Reconciliation per ad over the account-local days {from} to {to}:
-- what Meta reported, the conversations that started, those with a message,
-- the inbound messages, and the distinct people who messaged.
-- The people are a distinct count over `conversations` (start_day is the
-- day funnel_daily counts a conversation on), never a sum of daily values.
SELECT
    account_id,
    campaign_id,
    ad_id,
    reported_conversations,
    conversations_started,
    conversations_messaged,
    inbound_messages,
    ifNull(people, 0) AS people_who_messaged
FROM
(
    SELECT
        account_id,
        campaign_id,
        ad_id,
        sum(reported_conversations) AS reported_conversations,
        sum(conversations_started) AS conversations_started,
        sum(conversations_messaged) AS conversations_messaged,
        sum(inbound_messages) AS inbound_messages
    FROM funnel_daily
    WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
    GROUP BY account_id, campaign_id, ad_id
) AS f
ANY LEFT JOIN
(
    SELECT
        account_id,
        campaign_id,
        ad_id,
        toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS people
    FROM conversations
    WHERE start_day BETWEEN toDate('{from}') AND toDate('{to}')
    GROUP BY account_id, campaign_id, ad_id
) AS p USING (account_id, campaign_id, ad_id)
ORDER BY account_id, campaign_id, ad_id
