-- Unique contacts and people who messaged per account over the days {from}
-- to {to}: a distinct count of its own, not a sum of per-ad or per-day rows.
SELECT
    account_id,
    toInt64(uniqExact(user_hash)) AS contacts,
    toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS people_who_messaged
FROM conversations
WHERE start_day BETWEEN toDate('{from}') AND toDate('{to}')
GROUP BY account_id
ORDER BY account_id
