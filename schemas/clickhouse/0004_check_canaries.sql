-- wafunnel ClickHouse schema, migration 0004: where `wafunnel check` reads
-- its canary back. Same format rule as 0001: each statement ends with a
-- semicolon at the end of a line, and no other semicolon appears in this file.
--
-- A canary travels the whole pipeline (raw topic, ingest, internal topic,
-- sessionize, this table) but is never applied to a conversation: it moves
-- no watermark and appears in no BI view and in no input count. One row per
-- canary event and internal partition that saw it.

CREATE TABLE IF NOT EXISTS check_canaries
(
    canary_id String,
    partition UInt32,
    offset Int64,
    event_time Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (canary_id, partition);
