"""The README's settings table is generated from the code and must match it."""

from __future__ import annotations

import pytest

from queuewatch.platform.settings_table import BEGIN, END, markdown_table, replace_section
from queuewatch.resources import REPO_ROOT
from queuewatch.settings import all_settings


def test_readme_settings_table_matches_the_settings_module() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert replace_section(readme, markdown_table()) == readme, (
        "README.md's settings table is out of date: run "
        "`.venv/bin/queuewatch settings --readme README.md`"
    )


def test_the_table_has_one_row_per_setting_with_its_env_name() -> None:
    table = markdown_table()
    envs = [doc.env for doc in all_settings()]
    assert len(table.splitlines()) == len(envs) + 2
    for env in envs:
        assert f"| `{env}` |" in table


def test_replace_section_keeps_the_text_around_the_markers() -> None:
    text = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert replace_section(text, "NEW") == f"intro\n{BEGIN}\nNEW\n{END}\noutro\n"


def test_replace_section_without_markers_says_which_lines_to_add() -> None:
    with pytest.raises(ValueError, match="settings:begin"):
        replace_section("no markers here", "NEW")
