-- Unique contacts per account and week (weeks start on Monday, in each
-- account's own time zone: start_day is already its local day), {from} to
-- {to}. One query for every account.
SELECT
    account_id,
    toMonday(start_day) AS week,
    toInt64(uniqExact(user_hash)) AS contacts,
    toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS people_who_messaged
FROM conversations
WHERE start_day BETWEEN toDate('{from}') AND toDate('{to}')
GROUP BY account_id, week
ORDER BY account_id, week
