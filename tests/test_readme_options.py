"""The README's option table is the one a user reads: it lists every option the plugin
registers, under its flag and its ini key, and nothing the plugin does not know."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_llmquant.settings import OPTIONS

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `--llmq-([a-z0-9-]+)` / `llmq_([a-z0-9_]+)` \|", re.MULTILINE)


def table_rows() -> dict[str, str]:
    """flag name -> ini key, for each row of the README's option table."""
    return {flag: ini for flag, ini in ROW.findall(README.read_text(encoding="utf-8"))}


def test_every_option_has_a_row_with_its_flag_and_ini_key() -> None:
    rows = table_rows()
    missing = [o.name for o in OPTIONS if rows.get(o.name.replace("_", "-")) != o.name]
    assert not missing, f"options without a README row: {missing}"


def test_every_row_names_an_option_the_plugin_registers() -> None:
    known = {o.name.replace("_", "-") for o in OPTIONS}
    assert set(table_rows()) <= known
