-- Fast serving views. Until 0003, crossing_status aggregated every raw report with FINAL and
-- current_windows read all of crossing_windows FINAL with a window function and a self-join:
-- measured in chdb with 10 M raw reports and 7.3 M window rows on 2 cores, 24.9 s and 4.7 s
-- (median). Both views now read window_latest, a table of a few thousand rows (one per key
-- and window family) kept up to date by a materialized view on every insert into
-- crossing_windows. The all-time figures that need the raw reports moved to
-- crossing_report_summary, which stays as slow as the raw table is big.

-- The current window of each crossing, direction, traffic class and window family: the
-- window that ends the soonest after the key's latest report, i.e. "the last hour (3 hours,
-- day) up to the latest report" (the meaning of current_windows since 0003). Hopping windows
-- that start later hold only minutes of data, so the newest window would mislead.
--
-- Every window that contains the key's latest report has that report's time as its
-- last_observed_at, and no other window reaches it. So, over all the versions of all the
-- windows of a family, the current window's newest version is the row with
--   1. the largest last_observed_at, then
--   2. the smallest window_end (the window ending the soonest after that report), then
--   3. the largest aggregator version (the newest state of that window).
-- ReplacingMergeTree keeps the row with the largest version column, so pick_order packs that
-- order into one unsigned number, most significant part first:
--   bits 128..191  last_observed_at, UTC milliseconds (a full UInt64)
--   bits  64..127  2^64 - 1 - window_end in UTC milliseconds (smaller end = larger number)
--   bits   0..63   version (the aggregator's UInt64, all of it)
-- Three full 64-bit fields need more than UInt128, hence UInt256 (accepted as a
-- ReplacingMergeTree version by ClickHouse and by the chdb engine): no part is narrowed, so
-- no assumption about how far the clock or the version counter may run. Times before 1970
-- would wrap around; the contract's reports are recent, so none exist.
--
-- The row of a newer version or a later report always has a larger pick_order, and a
-- replayed row has the same pick_order as the first copy, so replays and out-of-order
-- inserts change nothing read with FINAL. No PARTITION BY: ReplacingMergeTree only
-- replaces rows within one partition, and the table is small.
CREATE TABLE IF NOT EXISTS {{database}}.window_latest
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
    updated_at DateTime64(3, 'UTC'),
    pick_order UInt256 MATERIALIZED
        bitShiftLeft(toUInt256(toUInt64(toUnixTimestamp64Milli(last_observed_at))), 128)
        + bitShiftLeft(toUInt256(bitNot(toUInt64(toUnixTimestamp64Milli(window_end)))), 64)
        + toUInt256(version)
)
ENGINE = ReplacingMergeTree(pick_order)
ORDER BY (crossing_id, from_country, to_country, traffic_class, window_size);

-- Fed on every insert into crossing_windows (the window sink's batches), from that insert's
-- rows only. Keeping the best row per key and family of each batch (the same order as
-- pick_order, spelled as a tuple) keeps parts small until merges replace the rest.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.window_latest_mv
TO {{database}}.window_latest
AS
SELECT
    crossing_id, from_country, to_country, traffic_class, window_size, window_start, window_end,
    reports, sources, wait_minutes_min, wait_minutes_max, wait_minutes_avg, wait_minutes_p50,
    wait_minutes_p90, wait_minutes_last, queue_vehicles_max, queue_vehicles_avg,
    queue_vehicles_last, queue_length_km_max, queue_length_km_avg, queue_length_km_last,
    status_last, last_observed_at, version, updated_at
FROM {{database}}.crossing_windows
ORDER BY last_observed_at DESC, window_end ASC, version DESC
LIMIT 1 BY crossing_id, from_country, to_country, traffic_class, window_size;

-- Backfill from the windows already stored (a database migrated from 0003). Rows inserted
-- while this runs reach window_latest through the view as well: ReplacingMergeTree keeps one,
-- so running this again (a crash before the migration was recorded) changes nothing. Only
-- rows holding their family's latest report can win, so the IN filter (a pass over five
-- key columns and one time) leaves a few thousand rows to sort. Measured with `queuewatch
-- migrate` on 7.3 M window rows (chdb, 2 cores): 2.3 s and 0.4 GB peak memory, against
-- 12.8 s and 1.7 GB when every row was sorted.
INSERT INTO {{database}}.window_latest
(
    crossing_id, from_country, to_country, traffic_class, window_size, window_start, window_end,
    reports, sources, wait_minutes_min, wait_minutes_max, wait_minutes_avg, wait_minutes_p50,
    wait_minutes_p90, wait_minutes_last, queue_vehicles_max, queue_vehicles_avg,
    queue_vehicles_last, queue_length_km_max, queue_length_km_avg, queue_length_km_last,
    status_last, last_observed_at, version, updated_at
)
SELECT
    crossing_id, from_country, to_country, traffic_class, window_size, window_start, window_end,
    reports, sources, wait_minutes_min, wait_minutes_max, wait_minutes_avg, wait_minutes_p50,
    wait_minutes_p90, wait_minutes_last, queue_vehicles_max, queue_vehicles_avg,
    queue_vehicles_last, queue_length_km_max, queue_length_km_avg, queue_length_km_last,
    status_last, last_observed_at, version, updated_at
FROM {{database}}.crossing_windows
WHERE (crossing_id, from_country, to_country, traffic_class, window_size, last_observed_at) IN
(
    SELECT crossing_id, from_country, to_country, traffic_class, window_size,
        max(last_observed_at)
    FROM {{database}}.crossing_windows
    GROUP BY crossing_id, from_country, to_country, traffic_class, window_size
)
ORDER BY last_observed_at DESC, window_end ASC, version DESC
LIMIT 1 BY crossing_id, from_country, to_country, traffic_class, window_size;

-- The current window of each family, one row per crossing, direction, traffic class and
-- window family: the columns of crossing_windows. (0003's wait_minutes_p50_previous and
-- wait_trend are gone: finding the previous window needed the whole table; crossing_status
-- has the trend.)
CREATE OR REPLACE VIEW {{database}}.current_windows AS
SELECT *
FROM {{database}}.window_latest FINAL;

-- One row per crossing, direction and traffic class, from the current windows only: the
-- latest values (from the current 24h window: the latest report within about the last day
-- that has each one), when the latest report was observed and how old it is, the current
-- 1h / 3h / 24h figures, and the direction of change of the wait: the median of the current
-- hour against the median of the current 3 hours, a move counting when it exceeds
-- max(5 minutes, 10% of the 3-hour median), the threshold of 0003. A short window median
-- well above the longer one means waits are growing now.
CREATE OR REPLACE VIEW {{database}}.crossing_status AS
SELECT
    crossing_id, from_country, to_country, traffic_class,
    max(last_observed_at) AS last_report_at,
    dateDiff('second', last_report_at, now64(3)) AS last_report_age_s,
    ifNull(anyIf(toNullable(toString(status_last)), window_size = '24h'), 'unknown') AS status,
    anyIf(wait_minutes_last, window_size = '24h') AS wait_minutes,
    anyIf(queue_vehicles_last, window_size = '24h') AS queue_vehicles,
    anyIf(queue_length_km_last, window_size = '24h') AS queue_length_km,
    anyIf(toNullable(reports), window_size = '1h') AS reports_1h,
    anyIf(toNullable(sources), window_size = '1h') AS sources_1h,
    anyIf(wait_minutes_p50, window_size = '1h') AS wait_minutes_p50_1h,
    anyIf(wait_minutes_p90, window_size = '1h') AS wait_minutes_p90_1h,
    anyIf(wait_minutes_max, window_size = '1h') AS wait_minutes_max_1h,
    anyIf(queue_vehicles_max, window_size = '1h') AS queue_vehicles_max_1h,
    anyIf(queue_length_km_max, window_size = '1h') AS queue_length_km_max_1h,
    anyIf(toNullable(reports), window_size = '3h') AS reports_3h,
    anyIf(toNullable(sources), window_size = '3h') AS sources_3h,
    anyIf(wait_minutes_p50, window_size = '3h') AS wait_minutes_p50_3h,
    anyIf(wait_minutes_p90, window_size = '3h') AS wait_minutes_p90_3h,
    anyIf(wait_minutes_max, window_size = '3h') AS wait_minutes_max_3h,
    anyIf(queue_vehicles_max, window_size = '3h') AS queue_vehicles_max_3h,
    anyIf(queue_length_km_max, window_size = '3h') AS queue_length_km_max_3h,
    anyIf(toNullable(reports), window_size = '24h') AS reports_24h,
    anyIf(toNullable(sources), window_size = '24h') AS sources_24h,
    anyIf(wait_minutes_p50, window_size = '24h') AS wait_minutes_p50_24h,
    anyIf(wait_minutes_p90, window_size = '24h') AS wait_minutes_p90_24h,
    anyIf(wait_minutes_max, window_size = '24h') AS wait_minutes_max_24h,
    anyIf(queue_vehicles_max, window_size = '24h') AS queue_vehicles_max_24h,
    anyIf(queue_length_km_max, window_size = '24h') AS queue_length_km_max_24h,
    multiIf(
        wait_minutes_p50_1h IS NULL OR wait_minutes_p50_3h IS NULL, 'unknown',
        wait_minutes_p50_1h - wait_minutes_p50_3h
            > greatest(5, 0.1 * wait_minutes_p50_3h), 'rising',
        wait_minutes_p50_3h - wait_minutes_p50_1h
            > greatest(5, 0.1 * wait_minutes_p50_3h), 'falling',
        'steady'
    ) AS wait_trend
FROM {{database}}.window_latest FINAL
GROUP BY crossing_id, from_country, to_country, traffic_class;

-- The all-time figures from the raw reports (the part of 0003's crossing_status that needs
-- them), one row per crossing, direction and traffic class: for analysts. It reads every
-- report with FINAL, so it takes seconds on millions of reports; dashboards use
-- crossing_status.
CREATE OR REPLACE VIEW {{database}}.crossing_report_summary AS
SELECT
    crossing_id, from_country, to_country, traffic_class,
    reports_total, sources_total, first_report_at, last_report_at,
    dateDiff('second', last_report_at, now64(3)) AS last_report_age_s,
    l_status AS status,
    l_status_at AS status_at,
    l_wait_minutes AS wait_minutes,
    l_wait_minutes_at AS wait_minutes_at,
    dateDiff('second', l_wait_minutes_at, now64(3)) AS wait_minutes_age_s,
    l_queue_vehicles AS queue_vehicles,
    l_queue_vehicles_at AS queue_vehicles_at,
    dateDiff('second', l_queue_vehicles_at, now64(3)) AS queue_vehicles_age_s,
    l_queue_length_km AS queue_length_km,
    l_queue_length_km_at AS queue_length_km_at,
    dateDiff('second', l_queue_length_km_at, now64(3)) AS queue_length_km_age_s,
    l_throughput_per_hour AS throughput_per_hour,
    l_throughput_per_hour_at AS throughput_per_hour_at,
    if(l_throughput_per_hour > 0,
        round(l_queue_vehicles / l_throughput_per_hour, 2), NULL) AS hours_to_clear
FROM
(
    -- l_ names: an alias equal to a column name would shadow the column in later
    -- expressions of the same SELECT.
    SELECT
        crossing_id, from_country, to_country, traffic_class,
        count() AS reports_total,
        uniqExact(source_name) AS sources_total,
        min(observed_at) AS first_report_at,
        max(observed_at) AS last_report_at,
        argMaxIf(wait_minutes, (observed_at, kafka_offset), wait_minutes IS NOT NULL)
            AS l_wait_minutes,
        maxIf(toNullable(observed_at), wait_minutes IS NOT NULL) AS l_wait_minutes_at,
        argMaxIf(queue_vehicles, (observed_at, kafka_offset), queue_vehicles IS NOT NULL)
            AS l_queue_vehicles,
        maxIf(toNullable(observed_at), queue_vehicles IS NOT NULL) AS l_queue_vehicles_at,
        argMaxIf(queue_length_km, (observed_at, kafka_offset), queue_length_km IS NOT NULL)
            AS l_queue_length_km,
        maxIf(toNullable(observed_at), queue_length_km IS NOT NULL) AS l_queue_length_km_at,
        argMaxIf(throughput_per_hour, (observed_at, kafka_offset),
            throughput_per_hour IS NOT NULL) AS l_throughput_per_hour,
        maxIf(toNullable(observed_at), throughput_per_hour IS NOT NULL)
            AS l_throughput_per_hour_at,
        argMaxIf(toNullable(status), (observed_at, kafka_offset), status != 'unknown')
            AS l_status,
        maxIf(toNullable(observed_at), status != 'unknown') AS l_status_at
    FROM {{database}}.queue_reports FINAL
    GROUP BY crossing_id, from_country, to_country, traffic_class
);
