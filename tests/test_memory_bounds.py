"""Every kind of quant_memory decides at its bound: a test passes at the round ratio just
below the measured one and fails at the round ratio just above it, with the failure
message checked (see gated_runs.py for how the bounds are found).

``weights`` and ``file`` are exact, so the second run measures again and gets the same
bytes. ``peak_rss`` is resident memory of fresh processes and moves by a few percent
from run to run, so the second run is handed the first run's probe results
(``measure_rss`` replayed): the ratio, the verdict and the message are still computed by
the plugin from those numbers. ``vram`` has no GPU here: its probes answer with canned
reports (test_vram.py's), and a CUDA-only test measures for real.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from gated_runs import measured_once, round_bounds, run_gated, shown
from test_memory import _fake_probes
from test_vram import _vram_report

from pytest_llmquant import memory
from pytest_llmquant.memory import rss, vram

PAIR = r"tiny-gpt2\S* \[[^]]+\]"  # the tiny model's directory, and the default scheme
#: The first result of each fresh-process measurement in this test process.
_FIRST: dict[str, Any] = {}


def replay_after_the_first(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``memory.<name>`` (measure_rss, measure_vram) measures for real once per test process;
    later calls get a copy of that first result."""
    real = getattr(memory, name)

    def replay(spec: Any, int8_args: Any) -> Any:
        if name not in _FIRST:
            _FIRST[name] = real(spec, int8_args)
        return copy.deepcopy(_FIRST[name])

    monkeypatch.setattr(memory, name, replay)


def memory_gate(
    pytester: pytest.Pytester, model: Path, kind: str, min_ratio: float, *args: str
) -> dict[str, Any]:
    result, gate = run_gated(pytester, model, f"quant_memory({min_ratio!r}, kind={kind!r})", *args)
    result.assert_outcomes(**{"passed" if gate["passed"] else "failed": 1})
    assert gate["measurement"]["kind"] == kind
    return gate


def measured_ratio(pytester: pytest.Pytester, model: Path, kind: str, *args: str) -> float:
    """The ratio a run with a loose bound measures (once per test process and kind)."""
    gate = measured_once(kind, lambda: memory_gate(pytester, model, kind, 0.001, *args))
    assert gate["passed"], gate["message"]
    return float(gate["measurement"]["ratio"])


def check_passes(gate: dict[str, Any], kind: str, ratio: float, bound: float) -> None:
    assert gate["passed"] and gate["measurement"]["ratio"] == ratio, gate["message"]
    assert re.match(
        rf"quant_memory passed for {PAIR}: {kind} \S+ MB → \S+ MB \(ratio \S+x ≥ "
        rf"{re.escape(shown(bound))}x\)",
        gate["message"],
    ), gate["message"]


def check_fails(gate: dict[str, Any], kind: str, bound: float) -> None:
    assert not gate["passed"]
    found = re.match(
        rf"quant_memory failed for {PAIR}: {kind} \S+ MB → \S+ MB \(ratio (\S+)x < "
        rf"{re.escape(shown(bound))}x\)(;|$)",
        gate["message"],
    )
    assert found, gate["message"]
    assert float(found[1]) < bound, "the printed ratio must read as under the bound"


# -- weights and file: exact byte counts ---------------------------------------------------


@pytest.mark.parametrize("kind", ["weights", "file"])
def test_quant_memory_passes_at_the_round_ratio_just_below_the_measured_one(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, kind: str
) -> None:
    ratio = measured_ratio(pytester, tiny_gpt2_dir, kind)
    inside, _ = round_bounds(ratio, "at least")
    check_passes(memory_gate(pytester, tiny_gpt2_dir, kind, inside), kind, ratio, inside)


@pytest.mark.parametrize("kind", ["weights", "file"])
def test_quant_memory_fails_at_the_round_ratio_just_above_it(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, kind: str
) -> None:
    ratio = measured_ratio(pytester, tiny_gpt2_dir, kind)
    _, outside = round_bounds(ratio, "at least")
    check_fails(memory_gate(pytester, tiny_gpt2_dir, kind, outside), kind, outside)


# -- peak_rss: fresh processes, the first measurement replayed -------------------------------


@pytest.fixture
def first_rss_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    replay_after_the_first(monkeypatch, "measure_rss")


@pytest.mark.usefixtures("first_rss_replayed")
def test_peak_rss_passes_at_the_round_ratio_just_below_the_measured_one(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    ratio = measured_ratio(pytester, tiny_gpt2_dir, "peak_rss")
    inside, _ = round_bounds(ratio, "at least")
    gate = memory_gate(pytester, tiny_gpt2_dir, "peak_rss", inside)
    check_passes(gate, "peak_rss", ratio, inside)


@pytest.mark.usefixtures("first_rss_replayed")
def test_peak_rss_fails_at_the_round_ratio_just_above_it(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    ratio = measured_ratio(pytester, tiny_gpt2_dir, "peak_rss")
    _, outside = round_bounds(ratio, "at least")
    check_fails(memory_gate(pytester, tiny_gpt2_dir, "peak_rss", outside), "peak_rss", outside)


# -- vram: canned probe reports on the CPU, a real run on CUDA --------------------------------

#: Serve-phase GPU peaks of the canned probes: 3200 MB for the reference, 1900 MB for INT8.
VRAM = {
    "fp32": _vram_report(3_000_000_000, 3_000_000_000, 3_200_000_000),
    "int8": _vram_report(4_800_000_000, 1_700_000_000, 1_900_000_000),
}


@pytest.fixture
def canned_vram_probes(monkeypatch: pytest.MonkeyPatch) -> float:
    """The vram probes print :data:`VRAM` instead of loading anything, and the device check
    lets the CPU through; everything from the reports to the message is the plugin's.
    Returns the ratio those reports make."""
    _fake_probes(monkeypatch, VRAM)
    monkeypatch.setattr(vram, "_start_probe", rss._start_probe)  # the faked one
    for module in (memory, vram):
        monkeypatch.setattr(module, "check_vram_device", lambda device: None)
    return VRAM["fp32"]["vram_serve_peak_bytes"] / VRAM["int8"]["vram_serve_peak_bytes"]


def test_vram_passes_at_the_round_ratio_just_below_the_injected_one(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, canned_vram_probes: float
) -> None:
    inside, _ = round_bounds(canned_vram_probes, "at least")
    gate = memory_gate(pytester, tiny_gpt2_dir, "vram", inside)
    check_passes(gate, "vram", canned_vram_probes, inside)
    assert "vram 3200.0 MB → 1900.0 MB" in gate["message"]


def test_vram_fails_at_the_round_ratio_just_above_it(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, canned_vram_probes: float
) -> None:
    _, outside = round_bounds(canned_vram_probes, "at least")
    check_fails(memory_gate(pytester, tiny_gpt2_dir, "vram", outside), "vram", outside)


@pytest.mark.skipif(
    "not __import__('torch').cuda.is_available()",
    reason="needs a CUDA GPU (run benchmarks/gpu_check.py there)",
)
def test_vram_on_cuda_decides_at_the_measured_ratio(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real thing: fresh CUDA processes measure the tiny GPT-2 once (a loose bound,
    which passes); that measurement, replayed, then passes and fails next to its ratio."""
    replay_after_the_first(monkeypatch, "measure_vram")
    cuda = "--llmq-device=cuda"
    loose = memory_gate(pytester, tiny_gpt2_dir, "vram", 0.001, cuda)
    assert loose["passed"] and loose["measurement"]["details"]["phase"] == "serve"
    assert loose["measurement"]["fp32_bytes"] > 0 and loose["measurement"]["int8_bytes"] > 0
    ratio = float(loose["measurement"]["ratio"])
    inside, outside = round_bounds(ratio, "at least")
    check_passes(memory_gate(pytester, tiny_gpt2_dir, "vram", inside, cuda), "vram", ratio, inside)
    check_fails(memory_gate(pytester, tiny_gpt2_dir, "vram", outside, cuda), "vram", outside)
