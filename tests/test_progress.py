"""Long work says what it is doing on the terminal, throttled, and nothing under -q."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmquant.progress import EVERY_S, FIRST_AFTER_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_before_the_first_delay_then_one_line_per_interval() -> None:
    clock, lines = Clock(), []
    progress = Progress(lines.append, clock=clock).start()
    progress("step 1")
    clock.now += FIRST_AFTER_S - 0.1
    progress("step 2")
    assert lines == []  # short work says nothing
    clock.now += 0.2
    progress("step 3")
    progress("step 4")  # too soon after step 3
    clock.now += EVERY_S
    progress("step 5")
    assert lines == [
        f"pytest-llmquant: step 3 ({FIRST_AFTER_S + 0.1:.0f} s)",
        f"pytest-llmquant: step 5 ({FIRST_AFTER_S + 0.1 + EVERY_S:.0f} s)",
    ]


def test_a_silent_progress_prints_nothing_and_stops_reading_the_clock(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under -q a progress has no writer: long after the first delay it still prints
    nothing anywhere, and a call costs no clock read (it sits in per-token loops)."""
    clock = Clock()
    reads: list[float] = []

    def counted() -> float:
        reads.append(clock())
        return reads[-1]

    progress = Progress(None, clock=counted).start()
    clock.now += FIRST_AFTER_S + 10 * EVERY_S
    for step in range(100):
        progress(f"step {step}")
    progress.note("a note")
    assert capsys.readouterr() == ("", "")
    assert len(reads) == 1  # start() only


EAGER = """
import pytest

@pytest.fixture(autouse=True)
def eager_progress(monkeypatch):
    import pytest_llmquant.progress as progress
    monkeypatch.setattr(progress, "FIRST_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
"""

GATED = """
import pytest

@pytest.mark.quant_similarity(max_kl=5, min_same_top=0.01, max_ppl_ratio=10)
def test_gate(llmq_pair):
    pass
"""


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "-q"])
def test_similarity_reports_its_windows_unless_quiet(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, quiet: bool
) -> None:
    pytester.makeconftest(EAGER)
    pytester.makepyfile(GATED)
    args = [f"--llmq-model={tiny_gpt2_dir}", "--llmq-eval-tokens=256", "-p", "no:cacheprovider"]
    result = pytester.runpytest_inprocess(*args, *(["-q"] if quiet else []))
    result.assert_outcomes(passed=1)
    lines = [x for x in result.outlines if x.startswith("pytest-llmquant: similarity: window")]
    if quiet:
        assert lines == []
    else:
        assert lines and lines[-1].startswith("pytest-llmquant: similarity: window 2 of 2")
