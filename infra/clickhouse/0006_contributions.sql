-- The accepted reports as the aggregator applied them: one row per report it counted, with
-- its place in the crossing's log order (seq) and the two bounds its acceptance carried.
-- Windows are assembled from these rows when read (queuewatch.clickhouse.assembly), so the
-- aggregator writes one row per report instead of one per window a report lies in (48 with
-- the default families).
--
--   end_after    a window counts the report when window_end > end_after
--                (the crossing's watermark before the report, minus the grace);
--   start_after  ... and window_start > start_after (the watermark at which a quiet crossing
--                was sealed; the smallest Int64 / 2 when it never was);
--   wait_bin     the DDSketch bin value of wait_minutes (0 for a wait of 0), so a percentile
--                is a pick among sorted bin values, computed by the aggregator's own mapping.
--
-- A replay after a crash sends the same rows again (same crossing, seq and content): the
-- ReplacingMergeTree keeps one per key, and readers use FINAL.
CREATE TABLE IF NOT EXISTS {{database}}.crossing_contributions
(
    crossing_id LowCardinality(String),
    from_country LowCardinality(String),
    to_country LowCardinality(String),
    traffic_class LowCardinality(String),
    observed_at DateTime64(3, 'UTC'),
    seq UInt64,
    event_id String,
    end_after Int64,
    start_after Int64,
    source String,
    source_type LowCardinality(String),
    wait_minutes Nullable(Int32),
    wait_bin Nullable(Float64),
    queue_vehicles Nullable(Int32),
    queue_length_km Nullable(Float64),
    status LowCardinality(String),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(observed_at)
ORDER BY (crossing_id, from_country, to_country, traffic_class, observed_at, seq)
SETTINGS non_replicated_deduplication_window = 10000;
