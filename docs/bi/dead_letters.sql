-- Dead letters per day and reason, {from} to {to}: the UTC day each record
-- was dead-lettered (a record that cannot be read has no account, so no
-- account time zone) and its reason (malformed, invalid_field,
-- unknown_type, currency_mismatch, ...). input_accounting has the same
-- records per source partition, beside every other outcome.
SELECT
    day,
    reason,
    dead_letters
FROM dead_letters_daily
WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
ORDER BY day, reason
