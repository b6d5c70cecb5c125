-- The raw event store: every accepted queue report, one row per (crossing_id, event_id) when
-- read with FINAL. Written by the raw sink from the queue-reports topic; rebuildable from it.
--
-- First arrival wins, as in the aggregator. ReplacingMergeTree keeps the row with the LARGEST
-- version, so the version's high 64 bits are the bitwise complement of the Kafka offset:
-- larger for earlier arrivals. Offsets of different partitions are not comparable, but every
-- report of a crossing is keyed by crossing_id and so lands in one partition: within one
-- crossing the offset orders arrivals exactly as the aggregator saw them.
-- A replay writes the same (partition, offset) again: the same row but a later ingested_at.
-- The low 64 bits, the complement of ingested_at, make the FIRST ingestion win that tie too,
-- so a replay changes no FINAL result, not even ingested_at.
--
-- non_replicated_deduplication_window lets a plain MergeTree drop a repeated insert that
-- carries the same insert_deduplication_token (the sinks make one per offset range), so a
-- batch re-sent after a crash before its offsets were committed does not even add a part.
CREATE TABLE IF NOT EXISTS {{database}}.queue_reports
(
    event_id String,
    crossing_id LowCardinality(String),
    from_country LowCardinality(String),
    to_country LowCardinality(String),
    traffic_class LowCardinality(String),
    observed_at DateTime64(3, 'UTC'),
    source_type LowCardinality(String),
    source_name LowCardinality(String),
    source_url Nullable(String),
    wait_minutes Nullable(Int32),
    queue_vehicles Nullable(Int32),
    queue_persons Nullable(Int32),
    queue_length_km Nullable(Float64),
    throughput_per_hour Nullable(Float64),
    lanes_open Nullable(Int32),
    status LowCardinality(String),
    location_lat Nullable(Float64),
    location_lon Nullable(Float64),
    note Nullable(String),
    kafka_partition UInt32,
    kafka_offset UInt64,
    schema_fingerprint LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    arrival_version UInt128 MATERIALIZED
        bitShiftLeft(toUInt128(bitNot(kafka_offset)), 64)
        + bitNot(toUInt64(toUnixTimestamp64Milli(ingested_at)))
)
ENGINE = ReplacingMergeTree(arrival_version)
PARTITION BY toYYYYMM(observed_at)
ORDER BY (crossing_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
