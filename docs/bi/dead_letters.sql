-- Input records per source partition and how each ended: dead letters
-- beside the applied, duplicate, late and ignored ones. Cumulative since
-- the pipeline started, not bound to a date range.
SELECT
    source_topic,
    source_partition,
    dead_lettered,
    records
FROM input_accounting
ORDER BY source_topic, source_partition
