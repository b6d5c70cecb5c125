-- Views for consumers: what a dashboard or an analyst reaches for first. Views hold no data;
-- they read the two tables with FINAL, so they never count a report twice. A later migration
-- changes a view with CREATE OR REPLACE VIEW in a new file.

-- The window of each family (1h, 3h, 24h) that ends the soonest after the key's latest report:
-- the figures for "the last hour (3 hours, day) up to the latest report". Hopping windows that
-- start later hold only a few minutes of data, so "the newest window" would be misleading.
-- wait_trend compares this window's median wait with the window just before it.
CREATE OR REPLACE VIEW {{database}}.current_windows AS
WITH
    w AS
    (
        SELECT
            *,
            fromUnixTimestamp64Milli(
                2 * toUnixTimestamp64Milli(window_start) - toUnixTimestamp64Milli(window_end), 'UTC'
            ) AS previous_window_start,
            max(last_observed_at) OVER (
                PARTITION BY crossing_id, from_country, to_country, traffic_class, window_size
            ) AS key_latest_at
        FROM {{database}}.crossing_windows FINAL
    ),
    cur AS
    (
        SELECT *
        FROM w
        WHERE window_end > key_latest_at
        ORDER BY window_start ASC
        LIMIT 1 BY crossing_id, from_country, to_country, traffic_class, window_size
    )
SELECT
    cur.* EXCEPT (previous_window_start, key_latest_at),
    prev.wait_minutes_p50 AS wait_minutes_p50_previous,
    multiIf(
        cur.wait_minutes_p50 IS NULL OR prev.wait_minutes_p50 IS NULL, 'unknown',
        cur.wait_minutes_p50 - prev.wait_minutes_p50
            > greatest(5, 0.1 * prev.wait_minutes_p50), 'rising',
        prev.wait_minutes_p50 - cur.wait_minutes_p50
            > greatest(5, 0.1 * prev.wait_minutes_p50), 'falling',
        'steady'
    ) AS wait_trend
FROM cur
LEFT JOIN
(
    SELECT crossing_id, from_country, to_country, traffic_class, window_size, window_start,
        wait_minutes_p50
    FROM {{database}}.crossing_windows FINAL
) AS prev
    ON prev.crossing_id = cur.crossing_id
    AND prev.from_country = cur.from_country
    AND prev.to_country = cur.to_country
    AND prev.traffic_class = cur.traffic_class
    AND prev.window_size = cur.window_size
    AND prev.window_start = cur.previous_window_start
SETTINGS join_use_nulls = 1;

-- One row per crossing, direction and traffic class: the latest value of each measurement, when
-- it was observed and how old it is now, plus the current 1h / 3h / 24h window figures and
-- the direction of change of the median wait over the last hour.
CREATE OR REPLACE VIEW {{database}}.crossing_status AS
WITH
    latest AS
    (
        -- l_ names: an alias equal to a column name would shadow the column in later
        -- expressions of the same SELECT.
        SELECT
            crossing_id, from_country, to_country, traffic_class,
            count() AS reports_total,
            uniqExact(source_name) AS sources_total,
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
    ),
    windows AS
    (
        SELECT
            crossing_id, from_country, to_country, traffic_class,
            anyIf(toNullable(reports), window_size = '1h') AS reports_1h,
            anyIf(toNullable(sources), window_size = '1h') AS sources_1h,
            anyIf(wait_minutes_p50, window_size = '1h') AS wait_minutes_p50_1h,
            anyIf(wait_minutes_p90, window_size = '1h') AS wait_minutes_p90_1h,
            anyIf(wait_minutes_max, window_size = '1h') AS wait_minutes_max_1h,
            anyIf(queue_vehicles_max, window_size = '1h') AS queue_vehicles_max_1h,
            anyIf(toNullable(reports), window_size = '3h') AS reports_3h,
            anyIf(wait_minutes_p50, window_size = '3h') AS wait_minutes_p50_3h,
            anyIf(wait_minutes_p90, window_size = '3h') AS wait_minutes_p90_3h,
            anyIf(wait_minutes_max, window_size = '3h') AS wait_minutes_max_3h,
            anyIf(toNullable(reports), window_size = '24h') AS reports_24h,
            anyIf(toNullable(sources), window_size = '24h') AS sources_24h,
            anyIf(wait_minutes_p50, window_size = '24h') AS wait_minutes_p50_24h,
            anyIf(wait_minutes_p90, window_size = '24h') AS wait_minutes_p90_24h,
            anyIf(wait_minutes_max, window_size = '24h') AS wait_minutes_max_24h,
            anyIf(wait_minutes_p50_previous, window_size = '1h')
                AS wait_minutes_p50_previous_1h,
            anyIf(wait_trend, window_size = '1h') AS wait_trend
        FROM {{database}}.current_windows
        GROUP BY crossing_id, from_country, to_country, traffic_class
    )
SELECT
    latest.crossing_id AS crossing_id,
    latest.from_country AS from_country,
    latest.to_country AS to_country,
    latest.traffic_class AS traffic_class,
    latest.reports_total AS reports_total,
    latest.sources_total AS sources_total,
    latest.last_report_at AS last_report_at,
    dateDiff('second', latest.last_report_at, now64(3)) AS last_report_age_s,
    latest.l_status AS status,
    latest.l_status_at AS status_at,
    latest.l_wait_minutes AS wait_minutes,
    latest.l_wait_minutes_at AS wait_minutes_at,
    dateDiff('second', latest.l_wait_minutes_at, now64(3)) AS wait_minutes_age_s,
    latest.l_queue_vehicles AS queue_vehicles,
    latest.l_queue_vehicles_at AS queue_vehicles_at,
    dateDiff('second', latest.l_queue_vehicles_at, now64(3)) AS queue_vehicles_age_s,
    latest.l_queue_length_km AS queue_length_km,
    latest.l_queue_length_km_at AS queue_length_km_at,
    dateDiff('second', latest.l_queue_length_km_at, now64(3)) AS queue_length_km_age_s,
    latest.l_throughput_per_hour AS throughput_per_hour,
    latest.l_throughput_per_hour_at AS throughput_per_hour_at,
    if(latest.l_throughput_per_hour > 0,
        round(latest.l_queue_vehicles / latest.l_throughput_per_hour, 2), NULL) AS hours_to_clear,
    windows.reports_1h AS reports_1h,
    windows.sources_1h AS sources_1h,
    windows.wait_minutes_p50_1h AS wait_minutes_p50_1h,
    windows.wait_minutes_p90_1h AS wait_minutes_p90_1h,
    windows.wait_minutes_max_1h AS wait_minutes_max_1h,
    windows.queue_vehicles_max_1h AS queue_vehicles_max_1h,
    windows.reports_3h AS reports_3h,
    windows.wait_minutes_p50_3h AS wait_minutes_p50_3h,
    windows.wait_minutes_p90_3h AS wait_minutes_p90_3h,
    windows.wait_minutes_max_3h AS wait_minutes_max_3h,
    windows.reports_24h AS reports_24h,
    windows.sources_24h AS sources_24h,
    windows.wait_minutes_p50_24h AS wait_minutes_p50_24h,
    windows.wait_minutes_p90_24h AS wait_minutes_p90_24h,
    windows.wait_minutes_max_24h AS wait_minutes_max_24h,
    windows.wait_minutes_p50_previous_1h AS wait_minutes_p50_previous_1h,
    ifNull(windows.wait_trend, 'unknown') AS wait_trend
FROM latest
LEFT JOIN windows
    ON windows.crossing_id = latest.crossing_id
    AND windows.from_country = latest.from_country
    AND windows.to_country = latest.to_country
    AND windows.traffic_class = latest.traffic_class
SETTINGS join_use_nulls = 1;

-- The typical queue by hour of the day (UTC) over all reports: the "is now unusual?" baseline.
CREATE OR REPLACE VIEW {{database}}.hourly_profile AS
SELECT
    crossing_id, from_country, to_country, traffic_class,
    toHour(observed_at) AS hour_of_day_utc,
    count() AS reports,
    uniqExact(toDate(observed_at)) AS days,
    countIf(wait_minutes IS NOT NULL) AS wait_reports,
    round(avg(wait_minutes), 1) AS wait_minutes_avg,
    quantileExact(0.5)(wait_minutes) AS wait_minutes_p50,
    quantileExact(0.9)(wait_minutes) AS wait_minutes_p90,
    max(wait_minutes) AS wait_minutes_max,
    round(avg(queue_vehicles), 1) AS queue_vehicles_avg
FROM {{database}}.queue_reports FINAL
GROUP BY crossing_id, from_country, to_country, traffic_class, hour_of_day_utc;

-- Each source's latest report per crossing, direction and traffic class: put side by side to
-- see which sources disagree and how stale each one is.
CREATE OR REPLACE VIEW {{database}}.source_latest AS
SELECT
    crossing_id, from_country, to_country, traffic_class, source_name,
    l_source_type AS source_type, reports,
    last_report_at, last_report_age_s,
    l_wait_minutes AS wait_minutes, l_wait_minutes_at AS wait_minutes_at,
    l_queue_vehicles AS queue_vehicles, l_status AS status
FROM
(
SELECT
    crossing_id, from_country, to_country, traffic_class, source_name,
    any(source_type) AS l_source_type,
    count() AS reports,
    max(observed_at) AS last_report_at,
    dateDiff('second', max(observed_at), now64(3)) AS last_report_age_s,
    argMaxIf(wait_minutes, (observed_at, kafka_offset), wait_minutes IS NOT NULL)
        AS l_wait_minutes,
    maxIf(toNullable(observed_at), wait_minutes IS NOT NULL) AS l_wait_minutes_at,
    argMaxIf(queue_vehicles, (observed_at, kafka_offset), queue_vehicles IS NOT NULL)
        AS l_queue_vehicles,
    argMaxIf(toNullable(status), (observed_at, kafka_offset), status != 'unknown') AS l_status
FROM {{database}}.queue_reports FINAL
GROUP BY crossing_id, from_country, to_country, traffic_class, source_name
);
