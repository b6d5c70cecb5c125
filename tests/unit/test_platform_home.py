"""QUEUEWATCH_HOME must be writable, and one `up` at a time may hold it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from queuewatch.errors import ConfigurationError
from queuewatch.platform.broker import split_host_port
from queuewatch.platform.home import HomeInUseError, HomeLock, lock_holder, prepare_home


def test_an_unwritable_home_fails_with_the_setting_to_change(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigurationError, match="set QUEUEWATCH_HOME to a folder you can write"):
        prepare_home(blocker / "home")


def test_a_missing_home_is_created_and_returned_absolute(tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "new" / "home")
    assert home.is_dir() and home.is_absolute()
    assert list(home.iterdir()) == []  # the write probe is removed again


def test_a_second_lock_on_one_home_fails_and_names_the_holder(tmp_path: Path) -> None:
    with HomeLock(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()
        with pytest.raises(HomeInUseError, match=rf"pid {os.getpid()}"):
            HomeLock(tmp_path).acquire()


def test_a_released_lock_can_be_taken_again(tmp_path: Path) -> None:
    with HomeLock(tmp_path):
        pass
    assert lock_holder(tmp_path) is None
    with HomeLock(tmp_path):
        assert lock_holder(tmp_path) == os.getpid()


def test_a_bootstrap_address_with_a_bad_port_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="QUEUEWATCH_KAFKA_BOOTSTRAP"):
        split_host_port("localhost:kafka")


def test_the_first_of_several_bootstrap_servers_is_used() -> None:
    assert split_host_port("a:1,b:2") == ("a", 1)
    assert split_host_port("[::1]:9093") == ("::1", 9093)
    assert split_host_port("broker") == ("broker", 9092)


def test_cluster_ids_never_start_with_a_dash_the_storage_tool_would_read_as_an_option() -> None:
    from queuewatch.platform.broker import _random_cluster_id

    ids = [_random_cluster_id() for _ in range(2000)]  # a dash would appear ~30 times
    assert not any(cid.startswith("-") for cid in ids)
    assert all(len(cid) == 22 for cid in ids)
