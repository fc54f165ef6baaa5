-- wafunnel ClickHouse schema, migration 0008: each conversation's click id
-- (Meta's ctwa_clid of its first activity event that carried one,
-- docs/SEMANTICS.md section 7). Same format rule as 0001: each statement
-- ends with a semicolon at the end of a line, and no other semicolon
-- appears in this file.
--
-- A click id is Meta's identifier of an ad click, not the contact's phone
-- number: it may be stored. Rows written before have none (NULL). The view
-- keeps every column, name and type, and gains the new one last.

ALTER TABLE conversation_rows ADD COLUMN click_id Nullable(String);

DROP TABLE IF EXISTS conversations;

CREATE VIEW conversations AS
SELECT
    account_id,
    ad_id,
    user_hash,
    started_at,
    last_activity_at,
    clicks,
    first_click_at,
    inbound_messages,
    first_inbound_at,
    outbound_messages,
    first_reply_at,
    first_response_ms,
    response_bucket,
    free_window_ends_at,
    outbound_in_free_window,
    outbound_after_free_window,
    followups_in_free_window,
    over_messaged,
    qualified_at,
    purchases,
    revenue,
    first_purchase_at,
    time_to_close_ms,
    click_id
FROM conversation_rows FINAL
WHERE is_deleted = 0;
