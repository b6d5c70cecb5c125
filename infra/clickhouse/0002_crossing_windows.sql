-- Window aggregates from the aggregator (topic crossing-windows), one row per window key when
-- read with FINAL. Columns are the fields of schemas/crossing_window.avsc, in order and by
-- name; the UTC-millisecond longs are DateTime64(3, 'UTC'), the same instant to the
-- millisecond, so that consumers can use ClickHouse's date functions directly.
--
-- The aggregator gives every change of a key a larger version (across its restarts too), so
-- ReplacingMergeTree(version) keeps the newest state and a replayed older version loses.
CREATE TABLE IF NOT EXISTS {{database}}.crossing_windows
(
    crossing_id LowCardinality(String),
    from_country LowCardinality(String),
    to_country LowCardinality(String),
    traffic_class LowCardinality(String),
    window_size LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    reports UInt32,
    sources UInt32,
    wait_minutes_min Nullable(Int32),
    wait_minutes_max Nullable(Int32),
    wait_minutes_avg Nullable(Float64),
    wait_minutes_p50 Nullable(Float64),
    wait_minutes_p90 Nullable(Float64),
    wait_minutes_last Nullable(Int32),
    queue_vehicles_max Nullable(Int32),
    queue_vehicles_avg Nullable(Float64),
    queue_vehicles_last Nullable(Int32),
    queue_length_km_max Nullable(Float64),
    queue_length_km_avg Nullable(Float64),
    queue_length_km_last Nullable(Float64),
    status_last LowCardinality(String),
    last_observed_at DateTime64(3, 'UTC'),
    version UInt64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (crossing_id, from_country, to_country, traffic_class, window_size, window_start)
SETTINGS non_replicated_deduplication_window = 10000;
