-- Unique contacts and people who messaged per account, campaign and ad over
-- the days {from} to {to}: distinct users over `conversations`. These do not
-- add up: one person who came through two ads is one contact of the account
-- and one of each ad, so an account's figure comes from
-- contacts_by_account.sql, never from summing these rows.
SELECT
    account_id,
    campaign_id,
    ad_id,
    toInt64(uniqExact(user_hash)) AS contacts,
    toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS people_who_messaged
FROM conversations
WHERE start_day BETWEEN toDate('{from}') AND toDate('{to}')
GROUP BY account_id, campaign_id, ad_id
ORDER BY account_id, campaign_id, ad_id
