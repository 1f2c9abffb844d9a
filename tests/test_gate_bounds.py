"""Every bound of quant_similarity and quant_speedup decides: a test passes at the round
bound just inside the measured value and fails at the one just outside, and the failure
message names that bound, and only that one.

The bounds come from a first run's measurement (see gated_runs.py), never from a figure
written here. Each test moves one bound and leaves the others loose, so no other bound
can make it pass or fail.

Similarity runs on the tiny GPT-2 against a noisy copy of itself (the ``int8_model``
fixture overridden, as a user would for their own model): a real INT8 scheme agrees
with the tiny model on every top-1 token, and a same-top of 1.0 has no failing bound.
The speedup gate's statistics run for real on injected step timings (test_timing.py's
fake runner and clock), so the interval it decides on is the same in both runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from gated_runs import measured_once, round_bounds, run_gated, shown
from speed_fakes import FakeClock, FakeMeter, FakeSide, jitter

import pytest_llmquant.speed.timing as timing

NOISY_INT8 = """
import pytest
from tiny_models import perturbed_copy

@pytest.fixture(scope="session")
def int8_model(fp32_model):
    return perturbed_copy(fp32_model, 0.01)
"""
LOOSE = {"max_kl": 1000.0, "min_same_top": 0.001, "max_ppl_ratio": 1000.0}
PAIR = r"tiny-gpt2\S* \[not quantized\]"  # a noisy copy holds no int8 layer


def similarity(pytester: pytest.Pytester, model: Path, **bounds: float) -> dict[str, Any]:
    """The similarity gate of a run with ``bounds`` (the rest loose) on the noisy pair."""
    pytester.makeconftest(NOISY_INT8)
    args = ", ".join(f"{k}={v!r}" for k, v in {**LOOSE, **bounds}.items())
    result, gate = run_gated(pytester, model, f"quant_similarity({args})")
    result.assert_outcomes(**{"passed" if gate["passed"] else "failed": 1})
    return gate


def measured_similarity(pytester: pytest.Pytester, model: Path) -> dict[str, Any]:
    return measured_once("similarity", lambda: similarity(pytester, model, **LOOSE)["measurement"])


def test_the_noisy_pair_leaves_room_on_both_sides_of_every_bound(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    """The premise of this file: every statistic lies strictly inside its valid range."""
    m = measured_similarity(pytester, tiny_gpt2_dir)
    assert 0 < m["mean_kld"] < LOOSE["max_kl"]
    assert LOOSE["min_same_top"] < m["same_top"] < 1
    assert 1 < m["ppl_ratio"] < LOOSE["max_ppl_ratio"]


# -- max_kl ------------------------------------------------------------------------------


def test_max_kl_passes_at_the_round_bound_just_above_the_measured_kld(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    kld = measured_similarity(pytester, tiny_gpt2_dir)["mean_kld"]
    inside, _ = round_bounds(kld, "at most")
    gate = similarity(pytester, tiny_gpt2_dir, max_kl=inside)
    assert gate["passed"] and gate["measurement"]["mean_kld"] == kld
    assert f" ≤ {shown(inside)}; same-top " in gate["message"]


def test_max_kl_fails_at_the_round_bound_just_below_it(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    kld = measured_similarity(pytester, tiny_gpt2_dir)["mean_kld"]
    _, outside = round_bounds(kld, "at most")
    gate = similarity(pytester, tiny_gpt2_dir, max_kl=outside)
    assert not gate["passed"]
    found = re.fullmatch(
        rf"quant_similarity failed for {PAIR}: mean KLD (\S+) ± \S+ > {re.escape(shown(outside))}"
        r" \(over 256 tokens\)",
        gate["message"],
    )
    assert found, gate["message"]  # the KLD bound alone: same-top and PPL passed
    assert float(found[1]) > outside, "the printed KLD must read as over the bound"


# -- min_same_top --------------------------------------------------------------------------


def test_min_same_top_passes_at_the_round_bound_just_below_the_measured_agreement(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    top = measured_similarity(pytester, tiny_gpt2_dir)["same_top"]
    inside, _ = round_bounds(top, "at least")
    gate = similarity(pytester, tiny_gpt2_dir, min_same_top=inside)
    assert gate["passed"] and gate["measurement"]["same_top"] == top
    assert f" ≥ {shown(inside)}; PPL " in gate["message"]


def test_min_same_top_fails_at_the_round_bound_just_above_it(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    top = measured_similarity(pytester, tiny_gpt2_dir)["same_top"]
    _, outside = round_bounds(top, "at least")
    gate = similarity(pytester, tiny_gpt2_dir, min_same_top=outside)
    assert not gate["passed"]
    found = re.fullmatch(
        rf"quant_similarity failed for {PAIR}: same-top (\S+) ± \S+ < {re.escape(shown(outside))}"
        r" \(over 256 tokens\)",
        gate["message"],
    )
    assert found, gate["message"]
    assert float(found[1]) < outside, "the printed same-top must read as under the bound"


# -- max_ppl_ratio ---------------------------------------------------------------------------


def test_max_ppl_ratio_passes_at_the_round_bound_just_above_the_measured_ratio(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    ratio = measured_similarity(pytester, tiny_gpt2_dir)["ppl_ratio"]
    inside, _ = round_bounds(ratio, "at most")
    gate = similarity(pytester, tiny_gpt2_dir, max_ppl_ratio=inside)
    assert gate["passed"] and gate["measurement"]["ppl_ratio"] == ratio
    assert f" ≤ {shown(inside)}) (over 256 tokens)" in gate["message"]


def test_max_ppl_ratio_fails_at_the_round_bound_just_below_it(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    ratio = measured_similarity(pytester, tiny_gpt2_dir)["ppl_ratio"]
    _, outside = round_bounds(ratio, "at most")
    gate = similarity(pytester, tiny_gpt2_dir, max_ppl_ratio=outside)
    assert not gate["passed"]
    found = re.fullmatch(
        rf"quant_similarity failed for {PAIR}: PPL \S+ → \S+ "
        rf"\(ratio (\S+) > {re.escape(shown(outside))}\) \(over 256 tokens\)",
        gate["message"],
    )
    assert found, gate["message"]
    assert float(found[1]) > outside


# -- quant_speedup ------------------------------------------------------------------------------


@pytest.fixture
def injected_step_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every speed measurement of the run times fake decode steps: the reference about
    40 ms, INT8 about 20 ms, each wobbling by a percent or two (speed_fakes.jitter), on a
    fake clock and a quiet fake CPU. The sampling loop and the statistics are the real ones."""
    real = timing.measure_speedup

    def measure(reference: Any, int8: Any, tokenizer: Any, **kwargs: Any) -> Any:
        clock = FakeClock()
        fake_reference = FakeSide(reference.label, jitter(0.040), clock)
        fake_int8 = FakeSide(int8.label, jitter(0.020, 0.02), clock)
        kwargs["cpu"] = FakeMeter(clock, others=0.0, stalled=0.0)
        return real(fake_reference, fake_int8, tokenizer, clock=clock, **kwargs)

    monkeypatch.setattr(timing, "measure_speedup", measure)


def speedup(pytester: pytest.Pytester, model: Path, threshold: float) -> dict[str, Any]:
    result, gate = run_gated(pytester, model, f"quant_speedup({threshold!r})")
    result.assert_outcomes(**{"passed" if gate["passed"] else "failed": 1})
    return gate


def measured_speedup(pytester: pytest.Pytester, model: Path) -> dict[str, Any]:
    m = measured_once("speedup", lambda: speedup(pytester, model, 0.01)["measurement"])
    # the fake steps were timed, not the model (the patch above reached the gate)
    assert m["fp32_ms_per_token"] == pytest.approx(40.0, rel=0.02), m
    return m


@pytest.mark.usefixtures("injected_step_times")
def test_quant_speedup_passes_at_the_round_bound_just_below_the_interval(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    """Pass needs the whole confidence interval at or above the threshold."""
    m = measured_speedup(pytester, tiny_gpt2_dir)
    inside, _ = round_bounds(m["ci_low"], "at least")
    gate = speedup(pytester, tiny_gpt2_dir, inside)
    assert gate["passed"] and not gate["close"]
    assert (gate["measurement"]["ci_low"], gate["measurement"]["n_pairs"]) == (
        m["ci_low"],
        m["n_pairs"],
    )
    assert gate["message"].endswith(f" threads) ≥ {shown(inside)}x")


@pytest.mark.usefixtures("injected_step_times")
def test_quant_speedup_fails_at_the_round_bound_just_above_the_interval(
    pytester: pytest.Pytester, tiny_gpt2_dir: Path
) -> None:
    """Fail (not a close call) needs the whole interval below the threshold."""
    m = measured_speedup(pytester, tiny_gpt2_dir)
    _, outside = round_bounds(m["ci_high"], "at least")
    gate = speedup(pytester, tiny_gpt2_dir, outside)
    assert not gate["passed"] and not gate["close"]
    found = re.fullmatch(
        r"quant_speedup failed for tiny-gpt2\S* \[[^]]+\]: INT8 \S+x faster than FP32 "
        rf"\(99% CI \S+–(\S+), {m['n_pairs']} interleaved pairs, 1 threads\) "
        rf"< {re.escape(shown(outside))}x",
        gate["message"],
    )
    assert found, gate["message"]
    assert float(found[1]) < outside, "the printed interval must read as under the bound"
