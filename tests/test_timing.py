"""The sampling loop of the speedup gate, driven by a fake clock and fake step timings;
then the real decode-step path on a tiny GPT-2.

No test here asserts a wall-clock number: the timings are injected, and the real
end-to-end tests check only the structure of what comes back and the work done.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmquant.errors import LlmqModelError
from pytest_llmquant.sides.torch_decode import DecodeStream
from pytest_llmquant.speed.timing import (
    FALLBACK_PROMPTS,
    SpeedupResult,
    default_prompts,
    format_speedup,
    measure_speedup,
)

FP32, INT8 = "fp32-model", "int8-model"


class FakeClock:
    """Time only moves when a fake step takes time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """Returns the next duration for each model, advances the clock, records every call
    as ``(model, prompt, step)``."""

    def __init__(
        self,
        clock: FakeClock,
        fp32: Iterator[float],
        int8: Iterator[float],
        probe: Callable[[], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.durations = {FP32: fp32, INT8: int8}
        self.calls: list[tuple[str, int, int]] = []
        self.probe = probe
        self.probed: list[Any] = []

    def __call__(self, model: str, prompt: int, step: int) -> float:
        self.calls.append((model, prompt, step))
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
    result = measure_speedup(FP32, INT8, None, clock=clock, runner=runner, **kwargs)
    return result, runner, clock


def jitter(base: float, spread: float = 0.01) -> Iterator[float]:
    """Deterministic small wobble: base * (1 +- spread). The phase depends on ``base``, so
    that two streams do not wobble in lockstep: that would make every pair's ratio the
    same number, a sample of nothing but ties."""
    for i in itertools.count():
        yield base * (1 + spread * math.sin(1.7 * i + 1000 * base))


def test_clear_pass_stops_at_the_first_look() -> None:
    result, runner, _ = run(jitter(0.040), jitter(0.020, 0.02), threshold=1.5, warmup=4)
    assert result.verdict == "pass" and not result.close
    assert result.stopped == "decided"
    # 8 pairs is the first sample size with a 99% signed-rank interval
    assert result.n_pairs == 8
    assert result.speedup == pytest.approx(2.0, rel=0.05)
    assert result.ci_low >= 1.5
    assert result.fp32_ms_per_token == pytest.approx(40.0, rel=0.02)
    assert result.int8_ms_per_token == pytest.approx(20.0, rel=0.03)
    assert result.fp32_tokens_per_s == pytest.approx(1000 / result.fp32_ms_per_token)
    assert len(result.fp32_samples) == len(result.int8_samples) == 8
    assert len(runner.calls) == 2 * (4 + 8)  # 4 warm-up steps per model, then 8 timed pairs
    assert result.unit == "decode step" and result.warmup == 4


def test_clear_fail_stops_early() -> None:
    result, _, _ = run(jitter(1.0), jitter(0.9), threshold=1.5)
    assert result.verdict == "fail" and not result.close
    assert result.n_pairs == 8 and result.ci_high < 1.5


def test_lower_confidence_and_min_pairs_decide_sooner() -> None:
    result, _, _ = run(jitter(1.0), jitter(0.5), threshold=1.5, confidence=0.9, min_pairs=5)
    assert result.verdict == "pass" and result.n_pairs == 5


def test_looks_come_each_time_the_sample_grows_by_a_quarter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fewer looks than pairs: each look at the interval is a chance of a wrong confident
    verdict (see stats), so the gate looks at 8, 10, 13, 17, ... pairs, and once more at
    the end of the budget."""
    import pytest_llmquant.speed.timing as timing

    looks: list[tuple[int, bool]] = []
    real = timing.decide

    def spy(fp32: Any, int8: Any, threshold: float, **kw: Any) -> Any:
        looks.append((len(fp32), kw.get("final", False)))
        return real(fp32, int8, threshold, **kw)

    monkeypatch.setattr(timing, "decide", spy)
    fp32, int8 = borderline(1.5, pair_seconds=0.1)
    result, _, _ = run(fp32, int8, threshold=1.5, time_budget=3.05, warmup=0)
    assert result.n_pairs == 30 and result.close
    assert looks == [(n, False) for n in (8, 10, 13, 17, 22, 28, 30)] + [(30, True)]


def borderline(threshold: float, pair_seconds: float) -> tuple[Iterator[float], Iterator[float]]:
    """Pairs whose ratio wobbles up to 10% either side of the threshold (all different,
    symmetric about it), each pair taking exactly ``pair_seconds``: the interval keeps
    holding the threshold."""
    fp32: list[float] = []
    int8: list[float] = []
    pairs = itertools.count()

    def gen(which: list[float]) -> Iterator[float]:
        while True:
            if not which:
                r = threshold * math.exp(0.1 * math.sin(2.4 * next(pairs) + 0.5))
                b = pair_seconds / (1 + r)
                fp32.append(pair_seconds - b)
                int8.append(b)
            yield which.pop(0)

    return gen(fp32), gen(int8)


def test_borderline_runs_to_the_budget_and_is_close() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=0.2)
    result, _, _ = run(fp32, int8, threshold=1.5, time_budget=3.1, warmup=0)
    assert result.close and result.stopped == "budget"
    assert result.verdict in ("pass", "fail")
    # a pair that would end past the budget is not started: 15 pairs of 0.2 s = 3 s <= 3.1 s
    assert result.n_pairs == 15
    assert result.wall_s == pytest.approx(3.0)
    assert result.wall_s <= result.time_budget
    assert result.ci_low < 1.5 <= result.ci_high


def test_default_budget_is_a_few_seconds() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=0.05)
    result, _, _ = run(fp32, int8, threshold=1.5, warmup=0)
    assert result.time_budget == 5.0 and result.close and result.wall_s <= 5.0


def test_warm_up_is_excluded_from_samples_and_budget() -> None:
    warm_fp32 = itertools.chain([50.0] * 3, jitter(0.040))
    warm_int8 = itertools.chain([40.0] * 3, jitter(0.020))
    result, _, _ = run(warm_fp32, warm_int8, threshold=1.5, warmup=3, time_budget=5.0)
    assert max(result.fp32_samples) < 0.05 and max(result.int8_samples) < 0.03
    assert result.verdict == "pass" and result.n_pairs == 8  # warm-up did not eat the budget
    assert result.wall_s == pytest.approx(270 + 8 * 0.060, rel=0.01)  # but wall_s counts it


def test_budget_never_cuts_below_min_pairs() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=2.0)
    result, _, _ = run(fp32, int8, threshold=1.5, time_budget=1.0, min_pairs=6, warmup=0)
    assert result.n_pairs == 6 and result.close and result.stopped == "budget"


def test_max_pairs_stops_a_borderline_case() -> None:
    fp32, int8 = borderline(1.5, pair_seconds=0.01)
    result, _, _ = run(fp32, int8, threshold=1.5, time_budget=1e9, max_pairs=12)
    assert result.n_pairs == 12 and result.close and result.stopped == "max_pairs"
    assert "12-pair limit" in format_speedup(result)


def test_pairs_alternate_and_both_models_take_the_same_step() -> None:
    """Pair i is FP32 then INT8 for even i, INT8 then FP32 for odd i; both halves take
    the same step of the same prompt; ``new_tokens`` steps per prompt, prompts cycle,
    and the warm-up steps are the first steps of the first prompt."""
    fp32, int8 = borderline(1.5, pair_seconds=0.1)
    result, runner, _ = run(fp32, int8, warmup=2, new_tokens=3, max_pairs=10, time_budget=1e9)
    warm, timed = runner.calls[:4], runner.calls[4:]
    assert warm == [(FP32, 0, 0), (INT8, 0, 0), (FP32, 0, 1), (INT8, 0, 1)]
    assert len(timed) == 2 * result.n_pairs == 20
    for i in range(result.n_pairs):
        first, second = timed[2 * i], timed[2 * i + 1]
        expected = (FP32, INT8) if i % 2 == 0 else (INT8, FP32)
        assert (first[0], second[0]) == expected, f"pair {i}"
        k = 2 + i  # steps before this pair
        assert first[1:] == second[1:] == ((k // 3) % 3, k % 3), f"pair {i}"


def test_ba_pairs_keep_fp32_and_int8_samples_apart() -> None:
    # if a BA pair swapped the two timings, the speedup would come out near 1
    result, _, _ = run(constant(0.1), constant(0.025), threshold=3.0)
    assert result.speedup == pytest.approx(4.0)
    assert set(result.fp32_samples) == {0.1} and set(result.int8_samples) == {0.025}


def test_threads_are_set_during_measurement_and_restored() -> None:
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    result, runner, _ = run(jitter(0.04), jitter(0.02), threads=wanted, probe=torch.get_num_threads)
    assert set(runner.probed) == {wanted}
    assert result.threads == wanted
    assert torch.get_num_threads() == before


def test_steps_run_in_inference_mode() -> None:
    import torch

    _, runner, _ = run(jitter(0.04), jitter(0.02), probe=torch.is_inference_mode_enabled)
    assert set(runner.probed) == {True}
    assert not torch.is_inference_mode_enabled()


def test_threads_are_restored_when_a_step_raises() -> None:
    import torch

    before = torch.get_num_threads()

    def broken(model: Any, prompt: int, step: int) -> float:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        measure_speedup(FP32, INT8, None, threshold=1.5, threads=3, runner=broken)
    assert torch.get_num_threads() == before


def test_default_threads_are_all_usable_cores() -> None:
    from pytest_llmquant.settings import default_threads

    result, _, _ = run(jitter(0.04), jitter(0.02), threads=None)
    assert result.threads == default_threads()


def test_default_prompts_are_counted() -> None:
    result, runner, _ = run(jitter(0.04), jitter(0.02), prompts=None, new_tokens=1)
    prompts = default_prompts()
    assert prompts and result.prompts == len(prompts)
    assert {p for _, p, _ in runner.calls} <= set(range(len(prompts)))
    assert all(isinstance(p, str) and p for p in FALLBACK_PROMPTS)


# -- progress ---------------------------------------------------------------------------


def test_progress_is_reported_at_most_once_a_second() -> None:
    heard: list[tuple[float, str]] = []
    clock_ref: list[FakeClock] = []

    def progress(line: str) -> None:
        heard.append((clock_ref[0].now, line))

    fp32, int8 = borderline(1.5, pair_seconds=0.3)
    clock = FakeClock()
    clock_ref.append(clock)
    runner = FakeRunner(clock, fp32, int8)
    result = measure_speedup(
        FP32, INT8, None, threshold=1.5, prompts=("p",), threads=1, warmup=0,
        time_budget=5.0, clock=clock, runner=runner, progress=progress,
    )  # fmt: skip
    assert result.close and result.n_pairs == 16  # 4.8 s of 0.3 s pairs
    times = [t for t, _ in heard]
    # after 1.2, 2.4 and 3.6 s; at 4.8 s the measurement ends instead
    assert len(heard) == 3
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert heard[0][1] == "quant_speedup: 4 pairs in 1.2 s, no interval yet (threshold 1.5x)"
    assert heard[-1][1].startswith("quant_speedup: 12 pairs in 3.6 s, INT8 ")
    assert "(99% CI " in heard[-1][1] and heard[-1][1].endswith("vs threshold 1.5x")


def test_a_quick_verdict_reports_no_progress() -> None:
    heard: list[str] = []
    run(jitter(0.04), jitter(0.02), progress=heard.append)
    assert heard == []


# -- arguments and formatting -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold must be a positive"),
        ({"threshold": math.nan}, "threshold must be a positive"),
        ({"min_pairs": 10, "max_pairs": 5}, "min_pairs <= max_pairs"),
        ({"new_tokens": 0}, "new_tokens >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
        ({"time_budget": 0.0}, "time_budget must be positive"),
        ({"prompts": ()}, "prompts must not be empty"),
        ({"threads": 0}, "threads must be >= 1"),
    ],
)
def test_argument_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(jitter(1.0), jitter(0.5), **kwargs)


def test_format_speedup_pass_and_close() -> None:
    result, _, _ = run(jitter(0.040), jitter(0.020), threshold=1.5)
    line = format_speedup(result)
    assert line.startswith("INT8 2.0")
    assert "x faster than FP32 (99% CI " in line
    assert "8 decode-step pairs, 1 thread)" in line
    assert "ms/token" in line and "\u2192" in line and "close" not in line

    fp32, int8 = borderline(1.5, pair_seconds=0.2)
    close, _, _ = run(fp32, int8, threshold=1.5, time_budget=4.0, threads=2)
    text = format_speedup(close)
    assert "2 threads" in text
    assert text.endswith("(close: decided on the point estimate after the 4 s budget)")


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


def test_default_min_pairs_is_the_first_count_with_an_interval() -> None:
    """A budget too short for 8 pairs still takes 8 at 99%: fewer could only give a
    "close" call on the point estimate, never a clear verdict."""
    result, _, _ = run(jitter(1.0), jitter(0.4), threshold=1.5, time_budget=0.5, warmup=0)
    assert result.n_pairs == 8 and result.verdict == "pass" and not result.close
    result, _, _ = run(
        jitter(1.0), jitter(0.4), threshold=1.5, time_budget=0.5, warmup=0, confidence=0.9
    )
    assert result.n_pairs == 5 and not result.close


# -- the real decode-step path -----------------------------------------------------------


class ForwardSpy:
    """Wraps a model's forward; records (input length, cache length before the call)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[tuple[int, int]] = []
        self.inner = model.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0 if cache is None else int(cache.get_seq_length())
        self.calls.append((int(kwargs["input_ids"].shape[-1]), past))
        return self.inner(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval(), tok


def test_end_to_end_both_models_do_the_same_work(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model prefills each prompt into its own cache, then takes single-token steps
    at the same cache lengths as the other; the cache is rebuilt every ``new_tokens``."""
    model, tok = tiny
    other = copy.deepcopy(model)
    spies = {}
    for name, m in (("fp32", model), ("int8", other)):
        spies[name] = ForwardSpy(m)
        monkeypatch.setattr(m, "forward", spies[name])
    prompts = ("The capital of", "def add(a, b):")
    lengths = [int(tok(p, return_tensors="pt")["input_ids"].shape[-1]) for p in prompts]
    result = measure_speedup(
        model, other, tok, threshold=1.0, prompts=prompts, new_tokens=5, threads=1,
        time_budget=1e9, warmup=3, min_pairs=12, max_pairs=12,
    )  # fmt: skip
    assert result.n_pairs == 12 and result.verdict in ("pass", "fail")
    assert all(s > 0 for s in result.fp32_samples + result.int8_samples)
    assert spies["fp32"].calls == spies["int8"].calls  # identical work, call by call
    expected: list[tuple[int, int]] = []
    for k in range(3 + 12):  # warm-up steps, then one step per pair
        prompt, step = (k // 5) % 2, k % 5
        if step == 0:
            expected.append((lengths[prompt], 0))  # a fresh prefill
        expected.append((1, lengths[prompt] + step))  # one token against the cache
    assert spies["fp32"].calls == expected
    assert result.new_tokens == 5 and result.prompts == 2 and result.threads == 1
    assert format_speedup(result).startswith("INT8 ")


def test_the_same_model_object_twice_keeps_two_caches(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    result = measure_speedup(
        model, model, tok, threshold=1.0, prompts=("The capital of",), new_tokens=4,
        threads=1, time_budget=1e9, warmup=1, min_pairs=10, max_pairs=10,
    )  # fmt: skip
    assert result.n_pairs == 10  # a shared cache would have grown twice as fast


def test_prompts_are_cut_to_leave_room_for_the_steps(tiny: tuple[Any, Any]) -> None:
    from pytest_llmquant.models.causal_lm import LlmqPromptWarning

    model, tok = tiny
    short = copy.deepcopy(model)
    short.config.n_positions = 20  # the real table is longer: an overrun would not crash
    spy = ForwardSpy(short)
    short.forward = spy
    long_prompt = " ".join(["The capital of France is Paris."] * 10)
    with pytest.warns(LlmqPromptWarning, match="keeping its last 14 tokens"):
        measure_speedup(
            short, short, tok, threshold=1.0, prompts=(long_prompt,), new_tokens=6,
            threads=1, time_budget=1e9, warmup=0, min_pairs=8, max_pairs=8,
        )  # fmt: skip
    assert max(n + past for n, past in spy.calls) == 20


class NoCacheModel:
    """A model whose output carries logits but no KV cache."""

    device = None

    def __call__(self, input_ids: Any, **kwargs: Any) -> Any:
        import torch

        return {"logits": torch.zeros(1, input_ids.shape[-1], 5)}


def test_a_model_without_a_kv_cache_is_a_clear_error() -> None:
    import torch

    stream = DecodeStream(
        NoCacheModel(), [{"input_ids": torch.ones(1, 3, dtype=torch.long)}], steps_per_prompt=4
    )
    with pytest.raises(LlmqModelError, match=r"NoCacheModel returned no KV cache .*use_cache"):
        stream.step(0, 0)


def test_steps_out_of_order_are_refused(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tok = tiny
    stream = DecodeStream(model, [dict(tok("The capital of", return_tensors="pt"))],
                          steps_per_prompt=2)  # fmt: skip
    with torch.inference_mode():
        assert stream.step(0, 0) > 0
        with pytest.raises(ValueError, match="decode step 2 of prompt 0 asked after step 0"):
            stream.step(0, 2)
        assert stream.step(0, 1) > 0
        with pytest.raises(ValueError, match="past steps_per_prompt=2"):
            stream.step(0, 2)
