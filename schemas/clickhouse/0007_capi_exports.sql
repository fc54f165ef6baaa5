-- wafunnel ClickHouse schema, migration 0007: the outcome of every
-- Conversions API export (docs/SEMANTICS.md section 7), written by
-- `wafunnel capi`. Same format rule as 0001: each statement ends with a
-- semicolon at the end of a line, and no other semicolon appears in this file.
--
-- One row per export id and write. An export ends in exactly one status:
-- sent, rejected (with Meta's error code and message, or not_configured),
-- outside_window or no_click_id. A replay after a crash writes the export
-- again with a higher version (the write time in ms): read with FINAL, the
-- table holds each export once, with its latest status.

CREATE TABLE IF NOT EXISTS capi_exports
(
    export_id String,
    account_id String,
    day Date,
    event_name String,
    event_time Int64,
    status String,
    error_code Nullable(String),
    error_message Nullable(String),
    attempts UInt32,
    updated_at Int64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY export_id;

-- Exports per account, account-local day, event name and status: each
-- export counted once, with its latest status.
CREATE VIEW IF NOT EXISTS capi_daily AS
SELECT
    account_id,
    day,
    event_name,
    status,
    toInt64(count()) AS exports
FROM capi_exports FINAL
GROUP BY account_id, day, event_name, status;
