"""The ClickHouse URL is a secret: its password comes from a file or the URL, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuewatch.errors import ConfigurationError
from queuewatch.settings import CommonSettings, redact_url, with_password


def test_the_password_file_fills_in_the_urls_user(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss:w/rd\n")
    settings = CommonSettings(
        clickhouse_url="http://writer@clickhouse:8123", clickhouse_password_file=secret
    )
    assert settings.resolved_clickhouse_url == "http://writer:p%40ss%3Aw%2Frd@clickhouse:8123"


def test_a_password_file_without_a_user_in_the_url_says_how_to_write_it(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    settings = CommonSettings(clickhouse_url="http://ch:8123", clickhouse_password_file=secret)
    with pytest.raises(ConfigurationError, match="USER@host"):
        _ = settings.resolved_clickhouse_url


def test_the_url_is_hidden_in_the_settings_repr() -> None:
    settings = CommonSettings(clickhouse_url="http://writer:hunter2@ch:8123")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://writer:s3cret@ch:8123", "http://writer:***@ch:8123"),
        ("https://u:a@b@ch:8443/?x=1", "https://u:***@ch:8443/?x=1"),
        ("http://writer@ch:8123", "http://writer@ch:8123"),
        ("chdb:///var/clickhouse", "chdb:///var/clickhouse"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_with_password_replaces_one_already_in_the_url() -> None:
    assert with_password("http://w:old@ch:8123/x", "new") == "http://w:new@ch:8123/x"
