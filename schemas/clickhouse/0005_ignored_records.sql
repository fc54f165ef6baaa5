-- wafunnel ClickHouse schema, migration 0005: input records that are valid
-- but have nothing to count (a webhook body of delivery receipts) are
-- counted once, as ignored. Same format rule as 0001: each statement ends
-- with a semicolon at the end of a line, and no other semicolon appears in
-- this file.
--
-- input_accounting keeps its columns and gains ignored, last. records is
-- every input record accounted for: with webhook bodies a record may give
-- several events, each counted in its own outcome.

DROP TABLE IF EXISTS input_accounting;

CREATE VIEW input_accounting AS
SELECT
    source_topic,
    source_partition,
    applied,
    duplicate,
    late,
    dead_lettered,
    applied + duplicate + late + dead_lettered + ignored AS records,
    ignored
FROM
(
    SELECT
        source_topic,
        source_partition,
        sumIf(records, outcome = 'applied') AS applied,
        sumIf(records, outcome = 'duplicate') AS duplicate,
        sumIf(records, outcome = 'late') AS late,
        sumIf(records, outcome = 'dead_lettered') AS dead_lettered,
        sumIf(records, outcome = 'ignored') AS ignored
    FROM record_outcomes FINAL
    GROUP BY source_topic, source_partition
);
