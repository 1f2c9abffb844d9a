"""Helpers of the gate-bound tests (test_gate_bounds.py, test_memory_bounds.py).

A bound is shown to decide by two pytester runs of the real plugin. The first measures
with every bound loose and reads the measurement from the run's ``--llmq-report`` (the
plugin's own JSON, at full float precision). The second sets one bound to the nearest
round number on one side of that measurement, keeps the other bounds loose, and checks
the verdict and its message. "Round" means three significant digits, the precision the
messages print a bound with, so that the bound in the message is exactly the bound the
test set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

import pytest

#: One gated test per file, called ``test_gate``: its report entry is the only one.
GATED = """
import pytest

@pytest.mark.{mark}
def test_gate(llmq_pair):
    pass
"""


def run_gated(
    pytester: pytest.Pytester, model: Path, mark: str, *args: str
) -> tuple[pytest.RunResult, dict[str, Any]]:
    """Run ``test_gate`` under ``@pytest.mark.<mark>`` in-process; return the run and the
    one gate result its ``--llmq-report`` holds (gate, passed, message, measurement)."""
    pytester.makepyfile(GATED.format(mark=mark))
    report = pytester.path / "llmq-report.json"
    result = pytester.runpytest_inprocess(
        f"--llmq-model={model}",
        "-p",
        "no:cacheprovider",
        "--llmq-eval-tokens=256",
        f"--llmq-report={report}",
        *args,
    )
    [pair] = json.loads(report.read_text())["pairs"].values()
    [gate] = pair["gates"]
    return result, gate


_MEASURED: dict[str, dict[str, Any]] = {}


def measured_once(key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()`` once per test process: the bound tests of one gate share the first
    run's measurement (deterministic measurements would only repeat it, and a noisy one
    is replayed from it: see test_memory_bounds.py)."""
    if key not in _MEASURED:
        _MEASURED[key] = measure()
    return _MEASURED[key]


Side = Literal["at most", "at least"]


def _round3(value: float, rounding: str) -> Decimal:
    exact = Decimal(repr(value))
    return exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), rounding=rounding)


def _step(bound: Decimal) -> Decimal:
    return Decimal(1).scaleb(bound.adjusted() - 2)


def round_bounds(value: float, gate: Side) -> tuple[float, float]:
    """(inside, outside): the nearest three-digit bounds that ``value`` passes and fails.

    For a gate that passes when the value is ``at most`` the bound (max_kl), inside is the
    smallest such bound >= value (the bound is inclusive), outside the largest < value;
    for ``at least`` (min_same_top, min_ratio) the mirror image. Either is at most one unit
    in the third digit (1%, usually less) from the value.
    """
    if not (value > 0 and value == value):
        raise ValueError(f"a bound needs a positive measured value, not {value!r}")
    up, down = _round3(value, ROUND_CEILING), _round3(value, ROUND_FLOOR)
    if float(up) <= value and gate == "at least":  # value is itself a round number
        up += _step(up)
    if float(down) >= value and gate == "at most":
        down -= _step(down)
    inside, outside = (up, down) if gate == "at most" else (down, up)
    return float(inside), float(outside)


def shown(bound: float) -> str:
    """A three-digit bound as the messages print it (``0.0123``, ``1.83``, ``2``)."""
    return f"{bound:g}"
