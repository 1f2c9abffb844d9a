"""Run a test's gate markers in the call phase, after its body passed.

Measuring here, and not in the report hook, is what pytest-memray does: the time shows
in ``--durations`` as part of the test's call, and whatever a model raises while it is
measured becomes a failure of that test (the session goes on) instead of an
INTERNALERROR that ends the run. The report hook only attaches what this module
recorded on the item.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from .errors import LlmqError, LlmqSkip
from .marks import MARKERS
from .verdicts import GateResult

if TYPE_CHECKING:
    from .session import LlmqSession, ModelPair

XDIST_TIMING = (
    "timing gates do not run under xdist: parallel workers share the CPU and "
    "distort the timings; run them without -n"
)
#: innermost frames kept under a crashed gate's message: enough to find the failing layer
TRACEBACK_FRAMES = 4


@dataclass
class GateRun:
    """What the gates of one test found, kept on the item for the report hook."""

    results: list[GateResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)


GATE_RUN = pytest.StashKey[GateRun]()


def gate_marks(item: pytest.Item) -> list[pytest.Mark]:
    """The gate markers on a test, in the order they are written (top to bottom)."""
    return list(reversed([m for m in item.iter_markers() if m.name in MARKERS]))


def crash_message(gate: str, pair_name: str, exc: BaseException) -> str:
    """Which gate, which pair, the exception's last line, then the traceback's tail."""
    lines = str(exc).strip().splitlines()
    last = f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    return (
        f"{gate} crashed while measuring {pair_name}: {last}\n"
        f"Traceback (most recent call last, innermost {len(frames)} frames):\n"
        + "".join(traceback.format_list(frames))
        + last
    )


def run_gates(
    marks: list[pytest.Mark], pair: ModelPair, session: LlmqSession, *, nodeid: str, xdist: bool
) -> GateRun:
    """Measure every gate of one test; nothing a model raises escapes."""
    run = GateRun()
    for mark in marks:
        if mark.name == "quant_speedup" and xdist:
            run.skips.append(XDIST_TIMING)
            continue
        start = time.perf_counter()
        try:
            result = MARKERS[mark.name](*mark.args, **mark.kwargs, pair=pair, session=session)
        except LlmqSkip as exc:
            run.skips.append(f"{mark.name} for {pair.name}: {exc}")
            continue
        except LlmqError as exc:
            run.failures.append(f"{mark.name} could not measure {pair.name}: {exc}")
            continue
        except Exception as exc:  # a broken INT8 model is a failed test, not a crashed session
            run.failures.append(crash_message(mark.name, pair.name, exc))
            continue
        result.test = nodeid
        result.seconds = time.perf_counter() - start
        result.reference = pair.reference_label
        run.results.append(result)
        session.record.results.append(result)
        if not result.passed:
            run.failures.append(result.long_repr)
    return run


def outcome(run: GateRun) -> None:
    """Turn a gate run into the test's outcome: fail, skip, or return (passed)."""
    if run.failures:
        pytest.fail("\n\n".join(run.failures), pytrace=False)
    if run.skips:  # reported at the test, not at this line
        raise pytest.skip.Exception(run.skips[0], _use_item_location=True)


def properties(result: GateResult) -> list[tuple[str, object]]:
    """junit-xml properties ``llmq.<gate>.<metric>`` for one result."""
    props: list[tuple[str, object]] = [(f"llmq.{result.gate}.seconds", round(result.seconds, 3))]
    for key, value in result.measurement.items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            props.append((f"llmq.{result.gate}.{key}", value))
    return props
