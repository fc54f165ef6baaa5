-- wafunnel ClickHouse schema, migration 0010: dead letters by reason and
-- day. Same format rule as 0001: each statement ends with a semicolon at
-- the end of a line, and no other semicolon appears in this file.
--
-- The reason is the dead letter's `wafunnel.reason` header (malformed,
-- invalid_field, unknown_type, currency_mismatch, ...) and the day the UTC
-- calendar day of the dead letter's Kafka timestamp, the time it was
-- dead-lettered: a record that cannot be read has no account, hence no
-- account time zone. sessionize's dead-letter worker keeps the cumulative
-- count of each (reason, day) it saw on its dead-letter partition and
-- writes the counts that changed, versioned by the partition's next offset,
-- before the record_outcomes rows of the same batch: a count at version v
-- holds every dead letter of its key below offset v, which is what lets a
-- restarted worker count each dead letter exactly once.

CREATE TABLE IF NOT EXISTS dead_letter_reasons
(
    worker_topic String,
    worker_partition UInt32,
    reason String,
    day Date,
    records UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (worker_topic, worker_partition, reason, day);

-- One row per (day, reason): dead letters over every dead-letter partition.
CREATE VIEW IF NOT EXISTS dead_letters_daily AS
SELECT
    day,
    reason,
    toInt64(sum(records)) AS dead_letters
FROM dead_letter_reasons FINAL
GROUP BY day, reason;
