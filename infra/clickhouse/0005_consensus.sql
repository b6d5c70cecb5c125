-- How sure we are (crossing_window.avsc v2): each window of up to 3 hours carries the
-- consensus of its sources' latest values, their spread, a confidence with its reasons and
-- the sources by type (aggregator/consensus.py; the rule is in docs/consumers.md). Rows
-- written before this version read the defaults: no consensus, confidence 'unknown'.
ALTER TABLE {{database}}.crossing_windows
    ADD COLUMN IF NOT EXISTS consensus_wait_minutes Nullable(Int32),
    ADD COLUMN IF NOT EXISTS consensus_queue_vehicles Nullable(Int32),
    ADD COLUMN IF NOT EXISTS consensus_queue_length_km Nullable(Float64),
    ADD COLUMN IF NOT EXISTS source_wait_minutes_min Nullable(Int32),
    ADD COLUMN IF NOT EXISTS source_wait_minutes_max Nullable(Int32),
    ADD COLUMN IF NOT EXISTS wait_spread Nullable(Float64),
    ADD COLUMN IF NOT EXISTS confidence LowCardinality(String) DEFAULT 'unknown',
    ADD COLUMN IF NOT EXISTS confidence_reasons Array(String),
    ADD COLUMN IF NOT EXISTS sources_by_type Map(String, UInt32),
    ADD COLUMN IF NOT EXISTS official_observed_at Nullable(DateTime64(3, 'UTC'));

ALTER TABLE {{database}}.window_latest
    ADD COLUMN IF NOT EXISTS consensus_wait_minutes Nullable(Int32),
    ADD COLUMN IF NOT EXISTS consensus_queue_vehicles Nullable(Int32),
    ADD COLUMN IF NOT EXISTS consensus_queue_length_km Nullable(Float64),
    ADD COLUMN IF NOT EXISTS source_wait_minutes_min Nullable(Int32),
    ADD COLUMN IF NOT EXISTS source_wait_minutes_max Nullable(Int32),
    ADD COLUMN IF NOT EXISTS wait_spread Nullable(Float64),
    ADD COLUMN IF NOT EXISTS confidence LowCardinality(String) DEFAULT 'unknown',
    ADD COLUMN IF NOT EXISTS confidence_reasons Array(String),
    ADD COLUMN IF NOT EXISTS sources_by_type Map(String, UInt32),
    ADD COLUMN IF NOT EXISTS official_observed_at Nullable(DateTime64(3, 'UTC'));

-- The view that feeds window_latest names its columns, so it is made again with the new
-- ones. `queuewatch migrate` runs before the sinks start (`up`, and compose's migrate
-- service): no insert falls between the drop and the create.
DROP VIEW IF EXISTS {{database}}.window_latest_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.window_latest_mv
TO {{database}}.window_latest
AS
SELECT
    crossing_id, from_country, to_country, traffic_class, window_size, window_start, window_end,
    reports, sources, wait_minutes_min, wait_minutes_max, wait_minutes_avg, wait_minutes_p50,
    wait_minutes_p90, wait_minutes_last, queue_vehicles_max, queue_vehicles_avg,
    queue_vehicles_last, queue_length_km_max, queue_length_km_avg, queue_length_km_last,
    status_last, last_observed_at, version, updated_at,
    consensus_wait_minutes, consensus_queue_vehicles, consensus_queue_length_km,
    source_wait_minutes_min, source_wait_minutes_max, wait_spread, confidence,
    confidence_reasons, sources_by_type, official_observed_at
FROM {{database}}.crossing_windows
ORDER BY last_observed_at DESC, window_end ASC, version DESC
LIMIT 1 BY crossing_id, from_country, to_country, traffic_class, window_size;

-- A view's `*` is expanded when it is made: current_windows is made again to show the new
-- columns.
CREATE OR REPLACE VIEW {{database}}.current_windows AS
SELECT *
FROM {{database}}.window_latest FINAL;

-- crossing_status as in 0004, plus how sure we are, from the current 3-hour window (the
-- consensus of every source heard in the last three hours, older values weighing less; the
-- 1-hour figures beside it), and freshness by the wall clock:
--   freshness_s        age of the lane's newest report, seconds (= last_report_age_s);
--   usual_interval_s   the lane's usual time between reports, learned from its own last day
--                      (the current 24h window: 86400 / reports, at least 60 s);
--   stale              freshness_s > greatest(900, 3 * usual_interval_s): three usual
--                      intervals without a report, and never before 15 minutes;
--   confidence         the 3-hour window's (event time), lowered to 'low' when stale, with
--                      the reason first in confidence_reasons.
-- A lane that went silent keeps its row (window_latest keeps its last windows): it shows as
-- stale, it does not vanish.
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
    ) AS wait_trend,
    anyIf(w.consensus_wait_minutes, window_size = '3h') AS consensus_wait_minutes,
    anyIf(w.consensus_queue_vehicles, window_size = '3h') AS consensus_queue_vehicles,
    anyIf(w.consensus_queue_length_km, window_size = '3h') AS consensus_queue_length_km,
    anyIf(w.consensus_wait_minutes, window_size = '1h') AS consensus_wait_minutes_1h,
    anyIf(w.source_wait_minutes_min, window_size = '3h') AS source_wait_minutes_min,
    anyIf(w.source_wait_minutes_max, window_size = '3h') AS source_wait_minutes_max,
    anyIf(w.wait_spread, window_size = '3h') AS wait_spread,
    anyIf(w.sources_by_type, window_size = '3h') AS sources_by_type,
    anyIf(w.official_observed_at, window_size = '3h') AS official_observed_at,
    last_report_age_s AS freshness_s,
    greatest(60, intDiv(86400, greatest(1, ifNull(reports_24h, 1)))) AS usual_interval_s,
    freshness_s > greatest(900, 3 * usual_interval_s) AS stale,
    anyIf(toString(w.confidence), window_size = '3h') AS confidence_event_time,
    if(stale, 'low', if(confidence_event_time = '', 'unknown', confidence_event_time))
        AS confidence,
    arrayConcat(
        if(stale,
           [concat('no report for ',
                   multiIf(freshness_s < 7200,
                           concat(toString(intDiv(freshness_s, 60)), ' min'),
                           freshness_s < 172800,
                           concat(toString(round(freshness_s / 3600, 1)), ' h'),
                           concat(toString(intDiv(freshness_s, 86400)), ' days')),
                   ' (stale: usually every ',
                   if(usual_interval_s < 7200,
                      concat(toString(intDiv(usual_interval_s, 60)), ' min'),
                      concat(toString(round(usual_interval_s / 3600, 1)), ' h')),
                   ')')],
           []),
        anyIf(w.confidence_reasons, window_size = '3h')
    ) AS confidence_reasons
FROM {{database}}.window_latest AS w FINAL
GROUP BY crossing_id, from_country, to_country, traffic_class;
