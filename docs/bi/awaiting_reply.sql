-- The queue to answer now: conversations whose contact wrote and got no
-- reply yet, inside the free window, longest wait first. Not bound to a
-- date range: it is the state at query time.
SELECT
    account_id,
    campaign_id,
    ad_id,
    user_hash,
    first_inbound_at_time,
    intDiv(waiting_ms, 60000) AS waiting_minutes
FROM awaiting_reply
ORDER BY waiting_ms DESC, account_id, user_hash
