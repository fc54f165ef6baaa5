-- Webhook phone number ids no account lists, {from} to {to} (last seen):
-- their bodies were dead-lettered `unknown_phone_number`. Add each id to
-- the `phone_number_ids` of its account (README: Adding a client); an id
-- added stays listed, its last_seen no longer moving.
SELECT
    phone_number_id,
    first_seen,
    last_seen,
    bodies
FROM unknown_phone_numbers
WHERE toDate(last_seen) BETWEEN toDate('{from}') AND toDate('{to}')
ORDER BY last_seen DESC, phone_number_id
