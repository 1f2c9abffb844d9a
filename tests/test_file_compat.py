"""Files written by earlier versions still read: a baseline saved before the run record
compares, and a report or baseline saved then merges with today's.

``data/*-0.1.0.json`` are the files pytest-llmquant 0.1.0 wrote for the fabricated
results below (:mod:`fabricated`), byte for byte. Any key renamed in what is written
must still be read from these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fabricated import MEASURED_ON, OTHER, PAIR, fake_record, memory, similarity, speedup

from pytest_llmquant.baseline.compare import compare_to_baseline
from pytest_llmquant.baseline.store import load_baseline, write_baseline
from pytest_llmquant.merge import main
from pytest_llmquant.reporting.json_report import write_json_report

DATA = Path(__file__).parent / "data"


def the_results_of_then() -> list[Any]:
    """What the 0.1.0 files were written from."""
    return [
        similarity(measured_on=dict(MEASURED_ON)),
        speedup(),
        memory(),
        memory(kind="file", ratio=3.9),
    ]


def test_a_baseline_saved_by_0_1_0_compares_with_the_same_numbers() -> None:
    baseline = load_baseline(DATA / "baseline-0.1.0.json")
    notes: list[str] = []
    assert compare_to_baseline(fake_record(the_results_of_then()), baseline, notes=notes) == []
    assert notes == []


def test_a_baseline_saved_by_0_1_0_still_catches_a_regression() -> None:
    baseline = load_baseline(DATA / "baseline-0.1.0.json")
    worse = [similarity(measured_on=dict(MEASURED_ON)), memory(kind="file", ratio=3.0)]
    assert compare_to_baseline(fake_record(worse), baseline) == [
        f"{PAIR}: memory ratio (file) regressed 3.90x → 3.00x (tolerance -5% relative, limit 3.70x)"
    ]


@pytest.mark.parametrize("kind", ["report", "baseline"])
def test_a_0_1_0_file_merges_with_one_of_today(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    today = fake_record([similarity(OTHER, measured_on=dict(MEASURED_ON))])
    new = tmp_path / f"{kind}.json"
    (write_json_report if kind == "report" else write_baseline)(today, new)
    out = tmp_path / "merged.json"
    assert main(["--out", str(out), str(DATA / f"{kind}-0.1.0.json"), str(new)]) == 0
    capsys.readouterr()
    assert list(json.loads(out.read_text())["pairs"]) == [PAIR, OTHER]
