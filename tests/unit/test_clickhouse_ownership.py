"""The folder lock turns a race for an embedded ClickHouse folder into a short wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from queuewatch.clickhouse import ownership
from queuewatch.clickhouse.exceptions import EngineBusyError


def test_owner_waits_for_a_short_lived_holder_then_takes_the_folder(tmp_path: Path) -> None:
    query_lock = ownership.acquire(tmp_path, "")  # a `queuewatch query` mid-statement
    taken: list[ownership.FolderLock] = []
    errors: list[BaseException] = []

    def start_owner() -> None:
        try:
            taken.append(ownership.acquire(tmp_path, "127.0.0.1:8124", wait_s=30))
        except BaseException as exc:  # reported below
            errors.append(exc)

    owner = threading.Thread(target=start_owner)
    owner.start()
    owner.join(0.5)
    assert owner.is_alive(), "the owner must wait while the folder is held"
    query_lock.release()
    owner.join(30)
    assert errors == []
    assert len(taken) == 1
    assert ownership.current_owner(tmp_path) == ownership.Owner(
        pid=ownership.os.getpid(), query_address="127.0.0.1:8124"
    )
    taken[0].release()
    assert ownership.current_owner(tmp_path) is None


def test_a_second_owner_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    first = ownership.acquire(tmp_path, "127.0.0.1:8124")
    try:
        with pytest.raises(EngineBusyError, match="already open in process"):
            ownership.acquire(tmp_path, "127.0.0.1:9999", wait_s=30)
    finally:
        first.release()
