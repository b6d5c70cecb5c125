"""The dashboard's one visitor input, the lane, is admitted only in the contract's own form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuewatch.dashboard.queries import Lane, LaneError, crossings, rows


def test_a_lane_of_the_contracts_form_gives_its_sql_condition() -> None:
    lane = Lane.parse("ge-ru-verkhny-lars", "RU", "GE", "car")
    assert lane.where() == (
        "crossing_id = 'ge-ru-verkhny-lars' AND from_country = 'RU' AND to_country = 'GE' "
        "AND traffic_class = 'car'"
    )


@pytest.mark.parametrize(
    ("crossing", "origin", "destination", "cls", "says"),
    [
        ("x' OR 1=1 --", "RU", "GE", "car", "not a crossing id"),
        ("ge-ru-verkhny-lars", "RU'", "GE", "car", "not an ISO country code"),
        ("ge-ru-verkhny-lars", "RU", "ge", "car", "not an ISO country code"),
        ("ge-ru-verkhny-lars", "RU", "GE", "car' --", "is not one of"),
        ("", "RU", "GE", "car", "not a crossing id"),
    ],
)
def test_anything_else_is_refused_with_the_reason(
    crossing: str, origin: str, destination: str, cls: str, says: str
) -> None:
    with pytest.raises(LaneError, match=says):
        Lane.parse(crossing, origin, destination, cls)


@given(st.text(max_size=80), st.text(max_size=4))
def test_no_admitted_lane_can_carry_a_quote_a_backslash_or_a_space(
    crossing: str, country: str
) -> None:
    try:
        lane = Lane.parse(crossing, country, "GE", "car")
    except LaneError:
        return
    condition = lane.where()
    for part in (lane.crossing_id, lane.from_country):
        assert not set(part) & set("'\\\" \n;")
        assert f"'{part}'" in condition


def test_every_lane_gets_its_sparkline_and_a_lane_without_windows_an_empty_one() -> None:
    answers = {
        "status": b'{"crossing_id":"a","from_country":"RU","to_country":"GE",'
        b'"traffic_class":"car","wait_now":5}\n'
        b'{"crossing_id":"b","from_country":"RU","to_country":"KZ","traffic_class":"car",'
        b'"wait_now":null}\n',
        "spark": b'{"crossing_id":"a","from_country":"RU","to_country":"GE",'
        b'"traffic_class":"car","points":[[1,2.5],[2,3]]}\n',
    }

    def run(sql: str) -> bytes:
        return answers["spark" if "groupArray" in sql else "status"]

    lanes = crossings(run)
    assert [(lane["crossing_id"], lane["sparkline"]) for lane in lanes] == [
        ("a", [[1, 2.5], [2, 3]]),
        ("b", []),
    ]
    assert rows(b"\n\n") == []


def test_the_dashboard_answers_its_own_hosts_and_the_configured_ones_only() -> None:
    from queuewatch.dashboard.server import DashboardServer, HealthCache
    from queuewatch.settings import CommonSettings, DashboardSettings, QuerySettings

    settings = DashboardSettings(
        dashboard_port=0, dashboard_allowed_hosts="127.0.0.1:18000, dash.example:80,"
    )
    server = DashboardServer(
        CommonSettings(), settings, QuerySettings(), HealthCache(CommonSettings(), 60)
    )
    try:
        port = server.server_address[1]
        assert server.allowed_hosts == {
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "127.0.0.1:18000",
            "dash.example:80",
        }
    finally:
        server.server_close()
