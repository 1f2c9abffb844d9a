"""The sampling loop of the speedup gate, driven by a fake clock and fake timings.

No test here asserts a wall-clock number: the timings are injected, and the one
real end-to-end test checks only the structure of what comes back.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmquant.errors import LlmqModelError
from pytest_llmquant.timing import (
    FALLBACK_PROMPTS,
    SpeedupResult,
    default_prompts,
    format_speedup,
    measure_speedup,
    time_generation,
)

FP32, INT8 = "fp32-model", "int8-model"


class FakeClock:
    """Time only moves when a fake run takes time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_tokenizer(prompt: str, return_tensors: str | None = None) -> dict[str, Any]:
    return {"prompt": prompt}


class FakeRunner:
    """Returns the next duration for each model, advances the clock, records every call."""

    def __init__(
        self,
        clock: FakeClock,
        fp32: Iterator[float],
        int8: Iterator[float],
        probe: Callable[[], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.durations = {FP32: fp32, INT8: int8}
        self.calls: list[tuple[str, str]] = []
        self.probe = probe
        self.probed: list[Any] = []

    def __call__(self, model: str, inputs: dict[str, Any]) -> float:
        self.calls.append((model, inputs["prompt"]))
        if self.probe is not None:
            self.probed.append(self.probe())
        seconds = next(self.durations[model])
        self.clock.now += seconds
        return seconds


def constant(seconds: float) -> Iterator[float]:
    return itertools.repeat(seconds)


def run(
    fp32: Iterator[float], int8: Iterator[float], **kwargs: Any
) -> tuple[SpeedupResult, FakeRunner, FakeClock]:
    clock = FakeClock()
    runner = FakeRunner(clock, fp32, int8, kwargs.pop("probe", None))
    kwargs.setdefault("threshold", 1.5)
    kwargs.setdefault("prompts", ("p0", "p1", "p2"))
    kwargs.setdefault("threads", 1)
    result = measure_speedup(FP32, INT8, fake_tokenizer, clock=clock, runner=runner, **kwargs)
    return result, runner, clock


def jitter(base: float, spread: float = 0.01) -> Iterator[float]:
    """Deterministic small wobble: base * (1 +- spread)."""
    for i in itertools.count():
        yield base * (1 + spread * math.sin(1.7 * i))


def test_clear_pass_stops_as_soon_as_the_interval_allows() -> None:
    result, runner, _ = run(jitter(1.28), jitter(0.64, 0.02), threshold=1.5, new_tokens=32)
    assert result.verdict == "pass" and not result.close
    assert result.stopped == "decided"
    # 8 pairs is the first sample size with a 99% order-statistic interval
    assert result.n_pairs == 8
    assert result.speedup == pytest.approx(2.0, rel=0.05)
    assert result.ci_low >= 1.5
    assert result.fp32_ms_per_token == pytest.approx(40.0, rel=0.02)
    assert result.int8_ms_per_token == pytest.approx(20.0, rel=0.03)
    assert result.fp32_tokens_per_s == pytest.approx(1000 / result.fp32_ms_per_token)
    assert len(result.fp32_samples) == len(result.int8_samples) == 8
    assert len(runner.calls) == 2 * (1 + 8)  # one warm-up pair, then 8 timed pairs


def test_clear_fail_stops_early() -> None:
    result, _, _ = run(jitter(1.0), jitter(0.9), threshold=1.5)
    assert result.verdict == "fail" and not result.close
    assert result.n_pairs == 8 and result.ci_high < 1.5


def test_lower_confidence_and_min_pairs_decide_sooner() -> None:
    result, _, _ = run(jitter(1.0), jitter(0.5), threshold=1.5, confidence=0.9, min_pairs=5)
    assert result.verdict == "pass" and result.n_pairs == 5


def borderline(threshold: float, pair_seconds: float) -> tuple[Iterator[float], Iterator[float]]:
    """Pairs whose ratio alternates 10% above and below the threshold, each pair taking
    exactly ``pair_seconds``: the interval never leaves the threshold."""
    ratios = itertools.cycle([threshold * 1.1, threshold / 1.1, threshold / 1.1, threshold * 1.1])
    fp32: list[float] = []
    int8: list[float] = []

    def gen(which: list[float]) -> Iterator[float]:
        while True:
            if not which:
                r = next(ratios)
                b = pair_seconds / (1 + r)
                fp32.append(pair_seconds - b)
                int8.append(b)
            yield which.pop(0)

    return gen(fp32), gen(int8)


def test_borderline_runs_to_the_budget_and_is_close() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=2.0)
    result, runner, clock = run(fp32, int8, threshold=1.5, time_budget=31.0, warmup=0)
    assert result.close and result.stopped == "budget"
    assert result.verdict in ("pass", "fail")
    # a pair that would end past the budget is not started: 15 pairs of 2 s = 30 s <= 31 s
    assert result.n_pairs == 15
    assert result.wall_s == pytest.approx(30.0)
    assert result.wall_s <= result.time_budget
    assert result.ci_low < 1.5 <= result.ci_high


def test_warm_up_is_excluded_from_samples_and_budget() -> None:
    warm_fp32 = itertools.chain([50.0, 50.0], jitter(1.28))
    warm_int8 = itertools.chain([40.0, 40.0], jitter(0.64))
    result, _, _ = run(warm_fp32, warm_int8, threshold=1.5, warmup=2, time_budget=20.0)
    assert max(result.fp32_samples) < 0.05 and max(result.int8_samples) < 0.03
    assert result.verdict == "pass" and result.n_pairs == 8  # warm-up did not eat the budget
    assert result.wall_s == pytest.approx(180 + 8 * 1.92, rel=0.01)  # but wall_s counts it


def test_budget_never_cuts_below_min_pairs() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=2.0)
    result, _, _ = run(fp32, int8, threshold=1.5, time_budget=1.0, min_pairs=6, warmup=0)
    assert result.n_pairs == 6 and result.close and result.stopped == "budget"


def test_max_pairs_stops_a_borderline_case() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=2.0)
    result, _, _ = run(fp32, int8, threshold=1.5, time_budget=1e9, max_pairs=12)
    assert result.n_pairs == 12 and result.close and result.stopped == "max_pairs"
    assert "12-pair limit" in format_speedup(result)


def test_pairs_alternate_ab_ba_and_cycle_prompts_after_warm_up() -> None:
    result, runner, _ = run(jitter(1.28), jitter(0.64), warmup=2, prompts=("p0", "p1", "p2"))
    warm, timed = runner.calls[:4], runner.calls[4:]
    assert warm == [(FP32, "p0"), (INT8, "p0"), (FP32, "p1"), (INT8, "p1")]
    assert len(timed) == 2 * result.n_pairs
    for i in range(result.n_pairs):
        first, second = timed[2 * i], timed[2 * i + 1]
        expected = (FP32, INT8) if i % 2 == 0 else (INT8, FP32)
        assert (first[0], second[0]) == expected, f"pair {i}"
        assert first[1] == second[1] == f"p{i % 3}"


def test_ba_pairs_keep_fp32_and_int8_samples_apart() -> None:
    # if a BA pair swapped the two timings, the speedup would come out near 1
    result, _, _ = run(constant(1.0), constant(0.25), threshold=3.0, new_tokens=10)
    assert result.speedup == pytest.approx(4.0)
    assert set(result.fp32_samples) == {0.1} and set(result.int8_samples) == {0.025}


def test_threads_are_set_during_measurement_and_restored() -> None:
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    result, runner, _ = run(jitter(1.28), jitter(0.64), threads=wanted, probe=torch.get_num_threads)
    assert set(runner.probed) == {wanted}
    assert result.threads == wanted
    assert torch.get_num_threads() == before


def test_threads_are_restored_when_a_run_raises() -> None:
    import torch

    before = torch.get_num_threads()

    def broken(model: Any, inputs: Any) -> float:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        measure_speedup(FP32, INT8, fake_tokenizer, threshold=1.5, threads=3, runner=broken)
    assert torch.get_num_threads() == before


def test_default_threads_are_all_usable_cores() -> None:
    from pytest_llmquant.settings import default_threads

    result, _, _ = run(jitter(1.28), jitter(0.64), threads=None)
    assert result.threads == default_threads()


def test_default_prompts_are_used_and_counted() -> None:
    result, runner, _ = run(jitter(1.28), jitter(0.64), prompts=None)
    prompts = default_prompts()
    assert prompts and result.prompts == len(prompts)
    assert {p for _, p in runner.calls} <= set(prompts)
    assert all(isinstance(p, str) and p for p in FALLBACK_PROMPTS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold must be a positive"),
        ({"threshold": math.nan}, "threshold must be a positive"),
        ({"min_pairs": 10, "max_pairs": 5}, "min_pairs <= max_pairs"),
        ({"new_tokens": 0}, "new_tokens >= 1"),
        ({"time_budget": 0.0}, "time_budget must be positive"),
        ({"prompts": ()}, "prompts must not be empty"),
        ({"threads": 0}, "threads must be >= 1"),
    ],
)
def test_argument_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(jitter(1.0), jitter(0.5), **kwargs)


def test_format_speedup_pass_and_close() -> None:
    result, _, _ = run(jitter(1.28), jitter(0.64), threshold=1.5, new_tokens=32)
    line = format_speedup(result)
    assert line.startswith("INT8 2.0")
    assert "x faster than FP32 (99% CI " in line
    assert "8 pairs, 1 thread)" in line
    assert "ms/token" in line and "\u2192" in line and "close" not in line

    fp32, int8 = borderline(1.5, pair_seconds=2.0)
    close, _, _ = run(fp32, int8, threshold=1.5, time_budget=20.0, threads=2)
    text = format_speedup(close)
    assert "2 threads" in text
    assert text.endswith("(close: decided on the point estimate after the 20 s budget)")


def test_format_speedup_slower_and_without_interval() -> None:
    result, _, _ = run(constant(1.0), constant(2.0), threshold=1.5, min_pairs=3, max_pairs=3)
    line = format_speedup(result)
    assert line.startswith("INT8 at 0.50x the speed of FP32 (too few pairs for a 99% CI")


def test_as_dict_is_json_ready() -> None:
    result, _, _ = run(constant(1.0), constant(2.0), threshold=1.5, min_pairs=3, max_pairs=3)
    data = result.as_dict()
    assert data["ci_high"] is None and data["ci_low"] == 0.0  # no interval at 3 pairs
    assert data["fp32_samples"] == result.fp32_samples
    assert json.loads(json.dumps(data, allow_nan=False))["n_pairs"] == 3
    assert "fp32_samples" not in repr(result) and "speedup=" in repr(result)


# -- the real generate() path -------------------------------------------------------


class ShortModel:
    """generate() that stops early, as a model whose EOS ignored min_new_tokens would."""

    device = None

    def generate(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        return torch.cat([input_ids, input_ids[:, :1]], dim=-1)


def test_time_generation_rejects_a_short_output() -> None:
    import torch

    inputs = {"input_ids": torch.ones(1, 5, dtype=torch.long)}
    with pytest.raises(LlmqModelError, match="returned 6 tokens for a 5-token prompt and 4 new"):
        time_generation(ShortModel(), inputs, new_tokens=4)


def test_end_to_end_on_tiny_gpt2(tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    lengths: list[tuple[int, int]] = []
    original = model.generate

    def spy(**kwargs: Any) -> Any:
        out = original(**kwargs)
        lengths.append((int(kwargs["input_ids"].shape[-1]), int(out.shape[-1])))
        return out

    monkeypatch.setattr(model, "generate", spy)
    result = measure_speedup(
        model,
        model,
        tok,
        threshold=1.0,
        prompts=("The capital of", "def add(a, b):"),
        new_tokens=6,
        threads=1,
        time_budget=0.5,
        warmup=1,
        min_pairs=6,
        max_pairs=12,
    )
    assert result.n_pairs >= 6
    assert result.verdict in ("pass", "fail")  # a model against itself is borderline
    assert len(result.fp32_samples) == len(result.int8_samples) == result.n_pairs
    assert all(s > 0 for s in result.fp32_samples + result.int8_samples)
    assert len(lengths) == 2 * (1 + result.n_pairs)
    assert all(out == prompt + 6 for prompt, out in lengths)
    assert result.new_tokens == 6 and result.prompts == 2 and result.threads == 1
    assert format_speedup(result).startswith("INT8 ")


def test_default_min_pairs_is_the_first_count_with_an_interval() -> None:
    """A budget too short for 8 pairs still takes 8 at 99%: fewer could only give a
    "close" call on the point estimate, never a clear verdict (the SmolLM2 suite once
    stopped at 6 pairs with a 0–inf interval)."""
    result, _, _ = run(jitter(1.0), jitter(0.4), threshold=1.5, time_budget=0.5, warmup=0)
    assert result.n_pairs == 8 and result.verdict == "pass" and not result.close
    result, _, _ = run(
        jitter(1.0), jitter(0.4), threshold=1.5, time_budget=0.5, warmup=0, confidence=0.9
    )
    assert result.n_pairs == 5 and not result.close
