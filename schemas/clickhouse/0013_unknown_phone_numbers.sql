-- wafunnel ClickHouse schema, migration 0013: the webhook phone number ids
-- no account is configured for, so the operator knows which to add. Same
-- format rule as 0001: each statement ends with a semicolon at the end of a
-- line, and no other semicolon appears in this file.
--
-- A webhook body whose `metadata.phone_number_id` no account lists is
-- dead-lettered `unknown_phone_number`, its `wafunnel.detail` naming the id
-- (the business's own number id, not a contact's). sessionize's dead-letter
-- worker keeps, per dead-letter partition and id, the bodies it saw and the
-- first and last of their Kafka timestamps, and writes them as it writes
-- dead_letter_reasons (0010): cumulative, versioned by the partition's next
-- offset, before the record_outcomes rows of the same batch.

CREATE TABLE IF NOT EXISTS unknown_phone_number_counts
(
    worker_topic String,
    worker_partition UInt32,
    phone_number_id String,
    first_seen DateTime('UTC'),
    last_seen DateTime('UTC'),
    bodies UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (worker_topic, worker_partition, phone_number_id);

-- One row per unknown phone number id over every dead-letter partition.
-- An id added to `[[accounts]]` stays listed: its last_seen stops moving.
CREATE VIEW IF NOT EXISTS unknown_phone_numbers AS
SELECT
    phone_number_id,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    toInt64(sum(bodies)) AS bodies
FROM unknown_phone_number_counts FINAL
GROUP BY phone_number_id;
