"""Windows assembled in ClickHouse from the accepted reports, exactly as the aggregator makes them.

Why: hopping windows overlap, so a report lies in 48 of them (12 + 12 + 24 with the default
families). Materialising every window costs about 48 rows per report downstream when
traffic is sparse, which is the live case. The aggregator instead emits each accepted report
once, as a *contribution* (``crossing_contributions``): the report's values plus its ``seq``
and the two bounds its acceptance carried. The windows are then a query over contributions
(:func:`windows_select`), with the same columns and keys as ``crossing_windows``.

Exactness, field by field, against ``CrossingState`` (``tests/integration/test_window_assembly.py``
proves it on random logs, through a real ClickHouse engine):

* **Lateness.** A window counts a report when ``window_end + grace > watermark before it``
  and, after a quiet crossing was sealed, ``window_start > sealed``. Both bounds are fixed
  when the report is accepted, so the contribution carries them (``end_after`` =
  watermark before - grace, ``start_after`` = sealed) and the query keeps each window that
  passes both. A report later than the grace lands in exactly the windows that still took it.
* **Counts, sums, min, max, last.** Integers, and ``argMax`` over ``(observed_at, seq)``.
* **Percentiles.** The contribution carries its wait's DDSketch bin value (``wait_bin``); the
  rank walk of ``pane.rank_quantile`` over unit counts is the element at ``floor(q * (n - 1))``
  of the sorted bin values (zeros first, as 0).
* **Queue-length mean.** Python sums the floats exactly as a binary fraction. Here each value
  becomes an ``Int256`` at a fixed binary point (``2 ** 160``) from its IEEE bits, the sum is
  exact, and the quotient is rounded once with a sticky bit: the correctly rounded mean, as
  ``ExactSum.mean`` gives. Exact for every length of at least ``2 ** -108`` km; shorter ones
  (a femtometre and below) are rounded to that grid.
* **Consensus** (``aggregator.consensus.judge``): per source its latest type and per metric
  its latest value, the weights in the same IEEE operations in the same order (the rule was
  written so that this is possible), the weighted median by one running sum, and the
  confidence and its reasons in the same words. The rules are literals in the query, so the
  query is rebuilt from the settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from queuewatch.aggregator.consensus import OFFICIAL_TYPES, ConsensusRules, _age
from queuewatch.aggregator.windows import WindowFamily

#: The contributions table (migration 0006).
CONTRIBUTIONS = "crossing_contributions"
#: Binary point of the exact queue-length sum: 2**160 times a length in km.
FIXED_SHIFT = 160


def _float(value: float) -> str:
    """A float literal ClickHouse reads back to the same double (``repr`` is shortest-exact)."""
    text = repr(float(value))
    return text if "e" in text or "." in text or "inf" in text else text + ".0"


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _credibility(rules: ConsensusRules, type_expr: str) -> str:
    """``rules.credibility`` of a type; an unknown type counts as crowd, as ``weight`` does."""
    crowd = rules.credibility.get("crowd", 0.0)
    arms = ", ".join(
        f"{type_expr} = {_string(name)}, {_float(value)}"
        for name, value in sorted(rules.credibility.items())
    )
    return f"multiIf({arms}, {_float(crowd)})" if arms else _float(crowd)


def _weight(rules: ConsensusRules, type_expr: str, age_expr: str) -> str:
    """``ConsensusRules.weight`` as SQL: the same operations, in the same order."""
    base = _credibility(rules, type_expr)
    h = rules.half_life_ms
    if not h:
        return base
    age = f"greatest(toInt64(0), {age_expr})"
    return f"({base} * ((1.0 - (({age} % {h}) / {h}) / 2) * exp2(-intDiv({age}, {h}))))"


def _minutes(expr: str) -> str:
    """``consensus._minutes``: whole minutes below two hours, else tenths of hours half up."""
    tenths = f"intDiv({expr} * 10 + 30, 60)"
    return (
        f"if({expr} < 120, concat(toString({expr}), ' min'), "
        f"concat(toString(intDiv({tenths}, 10)), '.', toString({tenths} % 10), ' h'))"
    )


def _spread(arr: str) -> str:
    """``consensus._spread`` of an array of integers: NULL when empty."""
    return (
        f"if(empty({arr}), NULL, if(arrayMax({arr}) != 0, "
        f"(arrayMax({arr}) - arrayMin({arr})) / arrayMax({arr}), 0.0))"
    )


#: The metrics with a consensus: ``consensus.weighted_median`` of each one's latest
#: per-source values (the sorted items, their running weights, ``c_<name>``), and the prefix
#: of their per-source columns.
_MEDIANS = (("wait", "w"), ("vehicles", "v"), ("length", "k"))


def _exact_mean(total: str, count: str) -> str:
    """The correctly rounded double of ``total / (count * 2**FIXED_SHIFT)`` (total >= 0).

    The quotient is taken with about 60 significant bits and its lowest bit set when the
    division left a remainder (a sticky bit), so converting it to a double rounds once, to
    nearest, as Python's ``int / int`` does.
    """
    k = f"(60 - toInt64(floor(log2(toFloat64({total})) - log2({count}))))"
    num = f"bitShiftLeft({total}, greatest({k}, 0))"
    den = f"bitShiftLeft(toInt256({count}), greatest(-{k}, 0))"
    q = f"bitOr(intDiv({num}, {den}), toInt256(({num}) % ({den}) != 0))"
    return f"if({total} = 0, 0.0, toFloat64(toInt64({q})) * exp2(-({k} + {FIXED_SHIFT})))"


def _fixed(expr: str) -> str:
    """A non-negative double as an ``Int256`` at binary point ``FIXED_SHIFT``, from its bits."""
    bits = f"reinterpretAsUInt64({expr})"
    exponent = f"toInt64(bitShiftRight({bits}, 52) % 2048)"
    mantissa = (
        f"toInt256(bitAnd({bits}, 4503599627370495) + if({exponent} = 0, 0, 4503599627370496))"
    )
    shift = f"(greatest({exponent}, 1) - 1075 + {FIXED_SHIFT})"
    return (
        f"if({shift} >= 0, bitShiftLeft({mantissa}, greatest({shift}, 0)), "
        f"bitShiftRight({mantissa}, greatest(-{shift}, 0)))"
    )


#: Stands for no window: beyond any time (ms) a window could start.
_FAR = 1 << 62


def _first_start(family: WindowFamily, above: str) -> str:
    """The smallest start of ``family`` greater than the SQL integer ``above``."""
    lo = f"({above} + 1)"
    return f"({lo} + positiveModulo(-{lo}, {family.step}))"


def _current_source(families: Sequence[WindowFamily], database: str) -> str:
    """The contributions of each lane's current windows, each with ``cur``: their starts.

    The current window of a lane and family is what ``window_latest`` keeps (0004): among
    the windows holding the lane's latest report that the family took, the one that ends
    the soonest. The family took a report when its newest window did (``start + size >
    end_after`` and ``start > start_after``); ``t_i`` is the latest such report's time and
    ``lo_i`` the lowest bound any report at that time carried, so the current window starts
    at the first multiple of the step above ``max(t_i - size, lo_i)``. Each contribution
    then lies in at most one window per family, and only the last ``largest size`` of a
    lane is assembled, however long it has reported. (Finding ``t_i`` still reads the key
    columns of every contribution: the cost grows with the table, see
    docs/architecture.md.)
    """
    picks = []
    for i, f in enumerate(families):
        newest = f"(t - t % {f.step})"
        cond = f"{newest} + {f.size} > end_after AND {newest} > start_after"
        picks.append(f"maxIf((t, -greatest(end_after - {f.size}, start_after)), {cond}) AS p{i}")
        # (a count, not p_i = (0, 0): a report at the epoch's first millisecond is valid)
        picks.append(f"countIf({cond}) AS n{i}")
    starts = ", ".join(
        f"if(n{i} = 0, toInt64({_FAR}), "
        f"{_first_start(f, f'greatest(p{i}.1 - {f.size}, -p{i}.2)')}) "
        for i, f in enumerate(families)
    )
    earliest = ", ".join(f"if(n{i} = 0, {_FAR}, p{i}.1 - {f.size})" for i, f in enumerate(families))
    return f"""
            SELECT c.*, toUnixTimestamp64Milli(c.observed_at) AS t, l.cur AS cur
            FROM {database}.{CONTRIBUTIONS} AS c FINAL
            INNER JOIN (
                SELECT crossing_id, from_country, to_country, traffic_class,
                       [{starts}] AS cur, least({earliest}) AS since
                FROM (
                    SELECT crossing_id, from_country, to_country, traffic_class,
                           {", ".join(picks)}
                    FROM (
                        SELECT crossing_id, from_country, to_country, traffic_class,
                               toUnixTimestamp64Milli(observed_at) AS t, end_after, start_after
                        FROM {database}.{CONTRIBUTIONS}
                    )
                    GROUP BY crossing_id, from_country, to_country, traffic_class
                )
            ) AS l USING (crossing_id, from_country, to_country, traffic_class)
            WHERE toUnixTimestamp64Milli(c.observed_at) > l.since"""


def windows_select(
    families: Sequence[WindowFamily],
    rules: ConsensusRules,
    consensus_max_size: int,
    database: str = "default",
    current: bool = False,
) -> str:
    """A SELECT of windows the contributions make, with ``crossing_windows``' columns.

    Every window; with ``current``, each lane's current window of each family, the rows of
    ``window_latest`` (:func:`_current_source`). A filter on the lane's columns reaches the
    contributions (ClickHouse pushes it below the ``GROUP BY``); one on the window's times
    does not, since no column of a contribution says which windows it lies in.
    """
    fams = ", ".join(
        f"({_string(f.name)}, {f.size}, {f.step}, {int(f.size <= consensus_max_size)})"
        for f in families
    )
    official = ", ".join(_string(t) for t in sorted(OFFICIAL_TYPES))
    within = _age(rules.recent_ms)
    high_pct = f"{rules.high_max_spread:.0%}".replace("%", " %")
    agree = _string(f" sources incl. official within {within} agree within {high_pct}")
    share = _float(rules.weighty_share)
    credibility = _credibility(rules, "tp")
    if current:
        source = _current_source(families, database)
    else:
        source = (
            f"SELECT *, toUnixTimestamp64Milli(observed_at) AS t "
            f"FROM {database}.{CONTRIBUTIONS} FINAL"
        )
    # Each contribution goes to every window of every family that contains it and took it.
    if current:
        # ... of which only the lane's current one per family (cur[i]) is asked for.
        starts = (
            "arrayFilter(w -> w.4 <= t AND t < w.4 + w.2 AND w.4 + w.2 > end_after "
            "AND w.4 > start_after, arrayMap((f, s) -> (f.1, f.2, f.4, s), "
            f"[{fams}], cur))"
        )
    else:
        starts = (
            "arrayFlatten(arrayMap(f -> arrayMap(s -> (f.1, f.2, f.4, s), arrayFilter("
            "s -> s + f.2 > end_after AND s > start_after, "
            "arrayMap("
            "i -> (t - f.2 + 1) + positiveModulo(-(t - f.2 + 1), f.3) + i * f.3, "
            "range(toUInt64(intDiv((t - t % f.3) - ((t - f.2 + 1) + "
            f"positiveModulo(-(t - f.2 + 1), f.3)), f.3) + 1))))), [{fams}]))"
        )
    per_source = f"""
        SELECT
            crossing_id, from_country, to_country, traffic_class,
            w.1 AS window_size, w.2 AS size, w.3 AS judged, w.4 AS start, source,
            count() AS n,
            max(seq) AS seq_max,
            max(t) AS t_max,
            max(toUnixTimestamp64Milli(updated_at)) AS updated,
            argMax(source_type, (t, seq)) AS type,
            max(t) AS src_t,
            countIf(wait_minutes IS NOT NULL) AS w_n,
            sumIf(toInt64(assumeNotNull(wait_minutes)), wait_minutes IS NOT NULL) AS w_sum,
            minIf(toInt64(assumeNotNull(wait_minutes)), wait_minutes IS NOT NULL) AS w_min,
            maxIf(toInt64(assumeNotNull(wait_minutes)), wait_minutes IS NOT NULL) AS w_max,
            argMaxIf((t, seq, toInt64(assumeNotNull(wait_minutes))), (t, seq),
                     wait_minutes IS NOT NULL) AS w_last,
            groupArrayIf(assumeNotNull(wait_bin), wait_minutes IS NOT NULL) AS w_bins,
            countIf(queue_vehicles IS NOT NULL) AS v_n,
            sumIf(toInt64(assumeNotNull(queue_vehicles)), queue_vehicles IS NOT NULL) AS v_sum,
            maxIf(toInt64(assumeNotNull(queue_vehicles)), queue_vehicles IS NOT NULL) AS v_max,
            argMaxIf((t, seq, toInt64(assumeNotNull(queue_vehicles))), (t, seq),
                     queue_vehicles IS NOT NULL) AS v_last,
            countIf(queue_length_km IS NOT NULL) AS k_n,
            sumIf({_fixed("assumeNotNull(queue_length_km)")}, queue_length_km IS NOT NULL)
                AS k_fixed,
            maxIf(assumeNotNull(queue_length_km), queue_length_km IS NOT NULL) AS k_max,
            argMaxIf((t, seq, assumeNotNull(queue_length_km)), (t, seq),
                     queue_length_km IS NOT NULL) AS k_last,
            countIf(status != 'unknown') AS st_n,
            argMaxIf((t, seq, toString(status)), (t, seq), status != 'unknown') AS st_last
        FROM ({source})
        ARRAY JOIN {starts} AS w
        GROUP BY crossing_id, from_country, to_country, traffic_class, window_size, size, judged,
                 start, source"""
    per_window = f"""
        SELECT
            crossing_id, from_country, to_country, traffic_class, window_size, size,
            any(judged) AS judged, start,
            sum(n) AS reports,
            count() AS n_sources,
            max(seq_max) AS version,
            max(t_max) AS ref,
            max(updated) AS updated,
            sum(w_n) AS w_count, sum(w_sum) AS w_total,
            minIf(w_min, w_n > 0) AS w_lo, maxIf(w_max, w_n > 0) AS w_hi,
            argMaxIf(w_last.3, (w_last.1, w_last.2), w_n > 0) AS w_latest,
            arraySort(arrayFlatten(groupArray(w_bins))) AS bins,
            sum(v_n) AS v_count, sum(v_sum) AS v_total, maxIf(v_max, v_n > 0) AS v_hi,
            argMaxIf(v_last.3, (v_last.1, v_last.2), v_n > 0) AS v_latest,
            sum(k_n) AS k_count, sum(k_fixed) AS k_total, maxIf(k_max, k_n > 0) AS k_hi,
            argMaxIf(k_last.3, (k_last.1, k_last.2), k_n > 0) AS k_latest,
            sum(st_n) AS st_count,
            argMaxIf(st_last.3, (st_last.1, st_last.2), st_n > 0) AS st_latest,
            groupArray(source) AS names, groupArray(type) AS types, groupArray(src_t) AS src_ts,
            groupArray(w_n > 0) AS w_has, groupArray(w_last.1) AS w_ts,
            groupArray(w_last.3) AS w_vals,
            groupArray(v_n > 0) AS v_has, groupArray(v_last.1) AS v_ts,
            groupArray(v_last.3) AS v_vals,
            groupArray(k_n > 0) AS k_has, groupArray(k_last.1) AS k_ts,
            groupArray(k_last.3) AS k_vals
        FROM ({per_source})
        GROUP BY crossing_id, from_country, to_country, traffic_class, window_size, size, start"""

    def quantile(q: float) -> str:
        rank = f"toUInt64(floor({_float(q)} * (w_count - 1)))"
        return f"if(w_count = 0, NULL, bins[least({rank}, w_count - 1) + 1])"

    # The consensus in levels, one subquery each: an alias used inside the same SELECT is
    # expanded where it is used, and these chains (weighty -> heaviest -> creds, reasons ->
    # spreads -> filtered arrays) blew the query tree up until analysing it took ~0.4 s a
    # statement whatever the number of windows. Across a subquery a column is a column.
    weight = _weight(rules, "tp", "ref - t")
    levels: list[list[str]] = [
        [
            *(
                f"arraySort(x -> (x.1, x.2), arrayFilter(x -> x.3 > 0, arrayMap("
                f"(h, t, v, nm, tp) -> (v, nm, if(h, {weight}, 0.0)), "
                f"{m}_has, {m}_ts, {m}_vals, names, types))) AS items_{name}"
                for name, m in _MEDIANS
            ),
            "arrayFilter((v, h) -> h, w_vals, w_has) AS all_waits",
            # Per source: credibility alone (``weights`` in ``judge``), and whether recent.
            f"arrayMap(tp -> {credibility}, types) AS creds",
            f"arrayMap((st, h1, h2, h3) -> ref - st <= {rules.recent_ms} AND (h1 OR h2 OR h3), "
            "src_ts, w_has, v_has, k_has) AS is_recent",
            f"arrayExists(tp -> tp IN ({official}), types) AS has_official",
            f"arrayFilter((st, tp) -> tp IN ({official}), src_ts, types) AS official_ts",
        ],
        [
            *(f"arrayCumSum(arrayMap(x -> x.3, items_{n})) AS cum_{n}" for n, _ in _MEDIANS),
            "arrayMax(arrayMap((c, h) -> if(h, c, 0.0), creds, w_has)) AS heaviest",
            "arrayCount(x -> x, is_recent) AS n_recent",
            f"arrayExists((tp, r) -> r AND tp IN ({official}), types, is_recent) "
            "AS recent_official",
        ],
        [
            *(
                f"if(empty(items_{n}), NULL, items_{n}[arrayFirstIndex("
                f"c -> c >= cum_{n}[-1] / 2, cum_{n})].1) AS c_{n}"
                for n, _ in _MEDIANS
            ),
            f"arrayFilter((v, h, c) -> h AND c > 0 AND c >= {share} * heaviest, "
            "w_vals, w_has, creds) AS weighty",
            f"arrayFilter((v, r, h, c) -> r AND h AND c >= {share} * heaviest, "
            "w_vals, is_recent, w_has, creds) AS recent_waits",
        ],
        [
            f"{_spread('weighty')} AS disagree",
            f"ifNull({_spread('recent_waits')}, 0.0) AS recent_spread",
            "arrayMin(weighty) AS weighty_min",
            "arrayMax(weighty) AS weighty_max",
            "arrayMin(recent_waits) AS recent_min",
            "arrayMax(recent_waits) AS recent_max",
        ],
        [
            f"""multiIf(
                c_wait IS NULL AND c_vehicles IS NULL AND c_length IS NULL, 'low',
                disagree IS NOT NULL AND disagree > {_float(rules.disagree_spread)}, 'low',
                n_sources = 1 AND NOT has_official, 'low',
                n_recent >= {rules.high_min_sources} AND recent_official
                    AND recent_spread <= {_float(rules.high_max_spread)}, 'high',
                'medium') AS c_confidence""",
            f"""multiIf(
                c_wait IS NULL AND c_vehicles IS NULL AND c_length IS NULL,
                [concat(toString(n_sources), ' source', if(n_sources > 1, 's', ''),
                        ', none gives a wait or a queue')],
                disagree IS NOT NULL AND disagree > {_float(rules.disagree_spread)},
                [concat('sources disagree: ', {_minutes("weighty_min")}, '–',
                        {_minutes("weighty_max")})],
                n_sources = 1 AND NOT has_official,
                [concat('single ', replaceAll(types[1], '_', ' '), ' source')],
                n_recent >= {rules.high_min_sources} AND recent_official
                    AND recent_spread <= {_float(rules.high_max_spread)},
                [concat(toString(n_recent), {agree})],
                arrayFilter(x -> x != '', [
                    if(n_recent < {rules.high_min_sources},
                       concat(toString(n_recent), ' of ', toString(n_sources),
                              {_string(f" sources within {within} of the newest report")}), ''),
                    if(NOT recent_official,
                       if(has_official, {_string(f"no official source within {within}")},
                          'no official source'), ''),
                    if(recent_spread > {_float(rules.high_max_spread)} AND NOT empty(recent_waits),
                       concat('sources differ by ',
                              toString(toInt64(roundBankers(recent_spread * 100))), ' %: ',
                              {_minutes("recent_min")}, '–',
                              {_minutes("recent_max")}), '')
                ])) AS c_reasons""",
        ],
    ]
    judged = per_window
    for level in levels:
        fields = ",\n            ".join(level)
        judged = f"""
        SELECT *,
            {fields}
        FROM ({judged})"""
    return f"""
    SELECT
        crossing_id, from_country, to_country, traffic_class, window_size,
        fromUnixTimestamp64Milli(start, 'UTC') AS window_start,
        fromUnixTimestamp64Milli(start + size, 'UTC') AS window_end,
        toUInt32(reports) AS reports,
        toUInt32(n_sources) AS sources,
        if(w_count = 0, NULL, toInt32(w_lo)) AS wait_minutes_min,
        if(w_count = 0, NULL, toInt32(w_hi)) AS wait_minutes_max,
        if(w_count = 0, NULL, w_total / w_count) AS wait_minutes_avg,
        {quantile(0.5)} AS wait_minutes_p50,
        {quantile(0.9)} AS wait_minutes_p90,
        if(w_count = 0, NULL, toInt32(w_latest)) AS wait_minutes_last,
        if(v_count = 0, NULL, toInt32(v_hi)) AS queue_vehicles_max,
        if(v_count = 0, NULL, v_total / v_count) AS queue_vehicles_avg,
        if(v_count = 0, NULL, toInt32(v_latest)) AS queue_vehicles_last,
        if(k_count = 0, NULL, k_hi) AS queue_length_km_max,
        if(k_count = 0, NULL, {_exact_mean("k_total", "k_count")}) AS queue_length_km_avg,
        if(k_count = 0, NULL, k_latest) AS queue_length_km_last,
        if(st_count = 0, 'unknown', st_latest) AS status_last,
        fromUnixTimestamp64Milli(ref, 'UTC') AS last_observed_at,
        toUInt64(version) AS version,
        fromUnixTimestamp64Milli(updated, 'UTC') AS updated_at,
        if(judged, toNullable(toInt32(c_wait)), NULL) AS consensus_wait_minutes,
        if(judged, toNullable(toInt32(c_vehicles)), NULL) AS consensus_queue_vehicles,
        if(judged, toNullable(c_length), NULL) AS consensus_queue_length_km,
        if(judged AND NOT empty(all_waits), toNullable(toInt32(arrayMin(all_waits))), NULL)
            AS source_wait_minutes_min,
        if(judged AND NOT empty(all_waits), toNullable(toInt32(arrayMax(all_waits))), NULL)
            AS source_wait_minutes_max,
        if(judged, {_spread("all_waits")}, NULL) AS wait_spread,
        if(judged, c_confidence, 'unknown') AS confidence,
        if(judged, c_reasons, []) AS confidence_reasons,
        if(judged, CAST((arraySort(arrayDistinct(types)),
                         arrayMap(x -> toUInt32(countEqual(types, x)),
                                  arraySort(arrayDistinct(types)))), 'Map(String, UInt32)'),
           map()) AS sources_by_type,
        if(judged AND NOT empty(official_ts),
           toNullable(fromUnixTimestamp64Milli(arrayMax(official_ts), 'UTC')), NULL)
            AS official_observed_at
    FROM ({judged})"""
