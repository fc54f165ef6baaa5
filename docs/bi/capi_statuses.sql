-- Conversions API exports per account, event and final status over the
-- days {from} to {to} (sent, rejected, outside_window, no_click_id).
SELECT
    account_id,
    event_name,
    status,
    sum(exports) AS total_exports
FROM capi_daily
WHERE day BETWEEN toDate('{from}') AND toDate('{to}')
GROUP BY account_id, event_name, status
ORDER BY account_id, event_name, status
