-- Use of the free 72-hour window and over-messaging per account over the
-- days {from} to {to}: outbound messages inside and after the window, those
-- Meta billed, and the share of messaged conversations with more than two
-- follow-ups in the window.
SELECT
    account_id,
    conversations_messaged,
    outbound_in_free_window,
    outbound_after_free_window,
    outbound_billable,
    over_messaged_conversations,
    if(conversations_messaged = 0, NULL, over_messaged_conversations / conversations_messaged) AS over_messaged_share
FROM
(
    SELECT
        account_id,
        sum(conversations_messaged) AS conversations_messaged,
        sum(outbound_in_free_window) AS outbound_in_free_window,
        sum(outbound_after_free_window) AS outbound_after_free_window,
        sum(outbound_billable) AS outbound_billable,
        sum(over_messaged_conversations) AS over_messaged_conversations
    FROM funnel_daily
    WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
    GROUP BY account_id
)
ORDER BY account_id
