"""Each partition's reports applied in log order, without holes (aggregator/ordering.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from queuewatch.aggregator.ordering import LogOrder, Verdict


def test_offsets_in_order_are_applied_and_move_the_partition_on() -> None:
    order = LogOrder()
    order.own(0, 10)
    assert [order.admit(0, o, 0.0) for o in (10, 11, 12)] == [Verdict.APPLY] * 3
    assert order.next[0] == 13


def test_an_offset_below_the_next_one_is_a_redelivery_and_changes_nothing() -> None:
    order = LogOrder()
    order.own(0, 10)
    assert order.admit(0, 9, 0.0) is Verdict.REDELIVERED
    assert order.next[0] == 10


def test_a_partition_not_owned_is_never_applied() -> None:
    order = LogOrder()
    order.own(0, 0)
    order.disown(0)
    assert order.admit(0, 0, 0.0) is Verdict.NOT_OURS
    assert order.admit(1, 0, 0.0) is Verdict.NOT_OURS


def test_a_hole_is_reported_once_then_later_offsets_wait_until_the_missing_one_arrives() -> None:
    order = LogOrder()
    order.own(3, 100)
    assert order.admit(3, 101, 0.0) is Verdict.HOLE
    assert order.holes[3].offset == 100
    assert order.admit(3, 102, 0.1) is Verdict.WAIT
    assert order.next[3] == 100
    assert order.admit(3, 100, 0.2) is Verdict.APPLY  # the seek worked
    assert 3 not in order.holes
    assert order.admit(3, 101, 0.3) is Verdict.APPLY


def test_a_hole_is_sought_back_again_every_interval_until_repaired() -> None:
    order = LogOrder(reseek_every_s=1.0)
    order.own(0, 5)
    assert order.admit(0, 9, 10.0) is Verdict.HOLE
    assert order.due(10.5) == {}
    assert order.due(11.0) == {0: 5}
    assert order.due(11.5) == {}
    assert order.due(12.1) == {0: 5}
    order.admit(0, 5, 12.2)
    assert order.due(20.0) == {}


def test_only_retention_moves_a_hole_forward() -> None:
    order = LogOrder()
    order.own(0, 5)
    order.admit(0, 9, 0.0)
    assert order.skip_deleted(0, 5) is False  # offset 5 is still in the log: keep waiting
    assert order.admit(0, 9, 0.1) is Verdict.WAIT
    assert order.skip_deleted(0, 8) is True  # 5..7 deleted: go on at 8
    assert order.admit(0, 9, 0.2) is Verdict.WAIT  # 8 itself must still come first
    assert order.admit(0, 8, 0.3) is Verdict.APPLY


@given(
    st.lists(st.integers(min_value=0, max_value=30), max_size=200),
    st.integers(min_value=0, max_value=5),
)
def test_whatever_the_delivery_order_each_offset_is_applied_once_and_in_order(
    deliveries: list[int], start: int
) -> None:
    """Any redelivery, reordering or gap: the applied offsets are start, start+1, ... ."""
    order = LogOrder()
    order.own(0, start)
    applied = [o for o in deliveries if order.admit(0, o, 0.0) is Verdict.APPLY]
    assert applied == list(range(start, start + len(applied)))


def test_a_gap_moves_the_next_offset_and_the_hole_to_the_first_record_after_it() -> None:
    order = LogOrder()
    order.own(0, 5)
    assert order.admit(0, 9, 0.0) is Verdict.HOLE
    assert order.skip_gap(0, 7)  # offsets 5 and 6 are transaction markers
    assert order.next[0] == 7 and order.holes[0].offset == 7
    assert order.admit(0, 9, 0.1) is Verdict.WAIT
    assert order.admit(0, 7, 0.2) is Verdict.APPLY
    assert 0 not in order.holes


def test_a_gap_up_to_the_offset_that_found_it_lets_that_offset_apply() -> None:
    order = LogOrder()
    order.own(0, 5)
    assert order.admit(0, 6, 0.0) is Verdict.HOLE
    assert order.skip_gap(0, 6)
    assert order.admit(0, 6, 0.0) is Verdict.APPLY
    assert order.holes == {} and order.next[0] == 7


def test_a_gap_never_moves_a_partition_back_nor_one_not_owned() -> None:
    order = LogOrder()
    order.own(0, 5)
    assert not order.skip_gap(0, 5)
    assert not order.skip_gap(0, 3)
    assert not order.skip_gap(1, 9)
    assert order.next == {0: 5}


def test_a_silent_partition_becomes_a_hole_at_its_next_offset_and_is_repaired_by_it() -> None:
    order = LogOrder(reseek_every_s=1.0)
    order.own(8, 14)
    assert order.silent(8, now=100.0) == 14
    assert order.holes[8].offset == 14
    assert order.silent(8, now=101.0) is None  # already being repaired
    assert order.admit(8, 20, now=101.5) is Verdict.WAIT  # later offsets wait for 14
    assert order.due(now=102.0) == {8: 14}  # sought back again like any hole
    assert order.admit(8, 14, now=102.5) is Verdict.APPLY
    assert 8 not in order.holes


def test_a_partition_not_owned_is_never_silent() -> None:
    order = LogOrder()
    assert order.silent(3, now=1.0) is None
    assert order.holes == {}
