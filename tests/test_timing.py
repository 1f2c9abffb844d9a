"""``measure_speedup`` on two model sides: fake sides with injected step durations, a fake
clock and an injected CPU load; then the real decode-step path on a tiny GPT-2.

The sampler's own schedule (looks, the close extension, the busy-CPU rule) is tested in
``test_sampler.py``; here: what ``measure_speedup`` adds around it (threads, prompts,
the sides' decode steps, the result and its line). No test here asserts a wall-clock
number: the real end-to-end tests check only the structure of what comes back and the
work done.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from speed_fakes import (
    FakeClock,
    FakeMeter,
    FakeSide,
    borderline,
    constant,
    jitter,
    quiet_meter,
)

from pytest_llmquant.errors import LlmqModelError
from pytest_llmquant.sides.torch_decode import DecodeStream
from pytest_llmquant.speed.timing import (
    FALLBACK_PROMPTS,
    JSON_KEYS,
    SpeedupResult,
    default_prompts,
    format_speedup,
    measure_speedup,
)

REF, INT8 = "FP32", "INT8"


def run(
    reference: Iterator[float],
    int8: Iterator[float],
    *,
    probe: Callable[[], Any] | None = None,
    others: float | None = 0.0,
    stalled: float | None = 0.0,
    **kwargs: Any,
) -> tuple[SpeedupResult, list[tuple[str, int, int]], FakeSide]:
    """The gate on two fake sides sharing one clock and one call log."""
    clock = FakeClock()
    log: list[tuple[str, int, int]] = []
    ref = FakeSide(REF, reference, clock, log=log, probe=probe)
    int8_side = FakeSide(INT8, int8, clock, log=log)
    kwargs.setdefault("threshold", 1.5)
    kwargs.setdefault("prompts", ("p0", "p1", "p2"))
    kwargs.setdefault("threads", 1)
    meter = FakeMeter(clock, others=others, stalled=stalled)
    result = measure_speedup(ref, int8_side, FakeTokenizer(), clock=clock, cpu=meter, **kwargs)
    return result, log, ref


class FakeTokenizer:
    """Token ids: one per character of the prompt."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __call__(self, text: str, **kwargs: Any) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_clear_pass_stops_at_the_first_look() -> None:
    result, log, _ = run(jitter(0.040), jitter(0.020, 0.02), threshold=1.5, warmup=4)
    assert result.verdict == "pass" and not result.close
    assert result.stopped == "decided"
    # 8 pairs is the first sample size with a 99% signed-rank interval
    assert result.n_pairs == 8
    assert result.speedup == pytest.approx(2.0, rel=0.05)
    assert result.ci_low >= 1.5
    assert result.reference_ms_per_token == pytest.approx(40.0, rel=0.02)
    assert result.int8_ms_per_token == pytest.approx(20.0, rel=0.03)
    assert result.reference_tokens_per_s == pytest.approx(1000 / result.reference_ms_per_token)
    assert len(result.reference_samples) == len(result.int8_samples) == 8
    assert len(log) == 2 * (4 + 8)  # 4 warm-up steps per side, then 8 timed pairs
    assert result.unit == "decode step" and result.warmup == 4


def test_clear_fail_stops_early() -> None:
    result, _, _ = run(jitter(1.0), jitter(0.9), threshold=1.5)
    assert result.verdict == "fail" and not result.close
    assert result.n_pairs == 8 and result.ci_high < 1.5


def test_lower_confidence_and_min_pairs_decide_sooner() -> None:
    result, _, _ = run(jitter(1.0), jitter(0.5), threshold=1.5, confidence=0.9, min_pairs=5)
    assert result.verdict == "pass" and result.n_pairs == 5


def test_a_borderline_case_samples_past_the_budget_then_is_close() -> None:
    reference, int8 = borderline(1.5, pair_seconds=0.2)
    result, _, _ = run(reference, int8, threshold=1.5, time_budget=3.1, warmup=0)
    assert result.close and result.stopped == "budget" and result.extended
    # a close call is settled on the point estimate (Hodges-Lehmann)
    assert result.verdict == ("pass" if result.speedup >= 1.5 else "fail")
    assert result.n_pairs == 46  # 9.2 s of 0.2 s pairs: up to 3x the 3.1 s budget
    assert result.wall_s == pytest.approx(9.2) and result.sampling_s == pytest.approx(9.2)
    assert result.ci_low < 1.5 <= result.ci_high
    assert format_speedup(result).endswith(
        "(close: decided on the point estimate after 9.2 s of pairs, sampling on past the "
        "3.1 s budget)"
    )


def test_default_budget_is_a_few_seconds() -> None:
    reference, int8 = borderline(1.5, pair_seconds=0.05)
    result, _, _ = run(reference, int8, threshold=1.5, warmup=0)
    assert result.time_budget == 5.0 and result.close and result.sampling_s <= 15.0


def test_warm_up_is_excluded_from_samples_and_budget() -> None:
    warm_ref = iter([50.0] * 3 + list(itertools_islice(jitter(0.040), 100)))
    warm_int8 = iter([40.0] * 3 + list(itertools_islice(jitter(0.020), 100)))
    result, _, _ = run(warm_ref, warm_int8, threshold=1.5, warmup=3, time_budget=5.0)
    assert max(result.reference_samples) < 0.05 and max(result.int8_samples) < 0.03
    assert result.verdict == "pass" and result.n_pairs == 8  # warm-up did not eat the budget
    assert result.wall_s == pytest.approx(270 + 8 * 0.060, rel=0.01)  # but wall_s counts it


def itertools_islice(it: Iterator[float], n: int) -> list[float]:
    return [next(it) for _ in range(n)]


def test_max_pairs_stops_a_borderline_case() -> None:
    reference, int8 = borderline(1.5, pair_seconds=0.01)
    result, _, _ = run(reference, int8, threshold=1.5, time_budget=1e9, max_pairs=12)
    assert result.n_pairs == 12 and result.close and result.stopped == "max_pairs"
    assert "12-pair limit" in format_speedup(result)


def test_pairs_alternate_and_both_sides_take_the_same_step() -> None:
    """Pair i is reference then INT8 for even i, INT8 then reference for odd i; both
    halves take the same step of the same prompt; ``new_tokens`` steps per prompt,
    prompts cycle, and the warm-up steps are the first steps of the first prompt."""
    reference, int8 = borderline(1.5, pair_seconds=0.1)
    result, log, _ = run(reference, int8, warmup=2, new_tokens=3, max_pairs=10, time_budget=1e9)
    warm, timed = log[:4], log[4:]
    assert warm == [(REF, 0, 0), (INT8, 0, 0), (REF, 0, 1), (INT8, 0, 1)]
    assert len(timed) == 2 * result.n_pairs == 20
    for i in range(result.n_pairs):
        first, second = timed[2 * i], timed[2 * i + 1]
        expected = (REF, INT8) if i % 2 == 0 else (INT8, REF)
        assert (first[0], second[0]) == expected, f"pair {i}"
        k = 2 + i  # steps before this pair
        assert first[1:] == second[1:] == ((k // 3) % 3, k % 3), f"pair {i}"


def test_ba_pairs_keep_reference_and_int8_samples_apart() -> None:
    # if a BA pair swapped the two timings, the speedup would come out near 1
    result, _, _ = run(constant(0.1), constant(0.025), threshold=3.0)
    assert result.speedup == pytest.approx(4.0)
    assert set(result.reference_samples) == {0.1} and set(result.int8_samples) == {0.025}


def test_both_sides_measure_at_the_gate_threads() -> None:
    result, _, ref = run(jitter(0.04), jitter(0.02), threads=3)
    assert ref.threads_seen == [3] and result.threads == 3


def test_prompts_are_encoded_once_for_both_sides() -> None:
    _, _, ref = run(jitter(0.04), jitter(0.02), prompts=("ab", "c"))
    assert ref.timer_prompts == [[97, 98], [99]]


def test_default_prompts_are_counted() -> None:
    result, log, _ = run(jitter(0.04), jitter(0.02), prompts=None, new_tokens=1)
    prompts = default_prompts()
    assert prompts and result.prompts == len(prompts)
    assert {p for _, p, _ in log} <= set(range(len(prompts)))
    assert all(isinstance(p, str) and p for p in FALLBACK_PROMPTS)


def test_the_result_names_the_sides() -> None:
    result, _, _ = run(jitter(0.040), jitter(0.020))
    assert (result.reference_label, result.int8_label) == ("FP32", "INT8")
    assert "x faster than FP32 (99% CI " in format_speedup(result)


# -- threads and the CPU's contention ----------------------------------------------------


def test_default_threads_are_all_usable_cores_on_a_quiet_machine() -> None:
    from pytest_llmquant.setting_checks import default_threads

    result, _, _ = run(jitter(0.04), jitter(0.02), threads=None)
    assert result.threads == min(default_threads(), 2) and result.threads_note == ""


def test_default_threads_leave_out_the_cores_that_are_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a 2-core runner with one core busy the gate times 1 thread per side, so that its
    own threads do not queue behind the neighbour's, and says so."""
    import pytest_llmquant.setting_checks as checks

    monkeypatch.setattr(checks, "default_threads", lambda: 2)
    result, _, ref = run(jitter(0.04), jitter(0.02), threads=None, others=1.0)
    assert result.threads == 1 and ref.threads_seen == [1]
    assert result.threads_note == "1 thread, not 2: 1.0 of 2 cores were free when the gate started"
    nearly, _, _ = run(jitter(0.04), jitter(0.02), threads=None, others=0.2)
    assert nearly.threads == 2  # a core 80% idle counts as free


def test_threads_asked_for_are_kept_on_a_busy_machine() -> None:
    result, _, _ = run(jitter(0.04), jitter(0.02), threads=2, others=1.0, stalled=0.4)
    assert result.threads == 2 and result.threads_note == ""
    assert result.verdict == "inconclusive"  # and the gate says it cannot judge


def test_the_contention_is_recorded_in_the_result() -> None:
    result, _, _ = run(jitter(0.04), jitter(0.02), others=0.25, stalled=0.03)
    assert result.verdict == "pass"
    assert result.cpu_cores == 2
    assert result.cpu_others == pytest.approx(0.25)
    assert result.cpu_stalled == pytest.approx(0.03)
    data = result.as_dict()
    assert data["cpu_stalled"] == pytest.approx(0.03) and data["cpu_others"] == pytest.approx(0.25)


def test_an_inconclusive_result_says_why_in_its_line() -> None:
    result, _, _ = run(
        jitter(0.04), jitter(0.02), threads=2, others=1.0, stalled=0.41, time_budget=1.0
    )
    assert result.verdict == "inconclusive" and not result.passed
    assert format_speedup(result).endswith(
        "(inconclusive: 3.0 threads wanted the 2 cores (the gate's 2 and 1.0 from other "
        "processes) and the gate's threads waited for a core 41% of the time)"
    )


def test_without_counters_the_gate_decides_as_before() -> None:
    result, _, _ = run(jitter(0.04), jitter(0.02), threads=None, others=None, stalled=None)
    assert result.verdict == "pass" and result.cpu_stalled is None
    assert result.contention.describe() == (
        "the CPU contention could not be measured here (no /proc schedstat)"
    )


# -- the runner hook, arguments, formatting ---------------------------------------------


def test_an_injected_runner_times_the_objects_passed_in() -> None:
    clock = FakeClock()
    calls: list[tuple[object, int, int]] = []
    ref, int8 = (FakeSide(label, constant(0.0), clock) for label in (REF, INT8))

    def runner(model: object, prompt: int, step: int) -> float:
        calls.append((model, prompt, step))
        seconds = 0.04 if model is ref else 0.02
        clock.now += seconds
        return seconds

    result = measure_speedup(
        ref, int8, None, threshold=1.5, threads=1, warmup=0, clock=clock, runner=runner,
        cpu=FakeMeter(clock), prompts=("p",),
    )  # fmt: skip
    assert result.verdict == "pass" and result.speedup == pytest.approx(2.0)
    assert calls[:2] == [(ref, 0, 0), (int8, 0, 0)]


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

    reference, int8 = borderline(1.5, pair_seconds=0.2)
    close, _, _ = run(reference, int8, threshold=1.5, time_budget=4.0, threads=2, max_pairs=25)
    text = format_speedup(close)
    assert "2 threads" in text and close.extended
    assert text.endswith("(close: decided on the point estimate after the 25-pair limit)")

    # the budget and the pair limit run out together: no sampling on
    reference, int8 = borderline(1.5, pair_seconds=0.2)
    spent, _, _ = run(reference, int8, threshold=1.5, time_budget=4.0, max_pairs=20)
    assert not spent.extended and spent.stopped == "budget"
    assert format_speedup(spent).endswith(
        "(close: decided on the point estimate after the 4 s budget)"
    )


def test_format_speedup_slower_and_without_interval() -> None:
    result, _, _ = run(constant(1.0), constant(2.0), threshold=1.5, min_pairs=3, max_pairs=3)
    line = format_speedup(result)
    assert line.startswith("INT8 at 0.50x the speed of FP32 (too few pairs for a 99% CI")


def test_as_dict_is_json_ready_and_keeps_the_released_keys() -> None:
    """Reports and baselines already hold ``fp32_*`` keys: the reference's fields keep
    them in JSON (:data:`JSON_KEYS`)."""
    result, _, _ = run(constant(1.0), constant(2.0), threshold=1.5, min_pairs=3, max_pairs=3)
    data = result.as_dict()
    assert data["ci_high"] is None and data["ci_low"] == 0.0  # no interval at 3 pairs
    assert data["fp32_samples"] == result.reference_samples
    assert data["fp32_ms_per_token"] == result.reference_ms_per_token
    assert not set(JSON_KEYS) & set(data)
    assert data["verdict"] == "fail" and data["reference_label"] == "FP32"
    assert json.loads(json.dumps(data, allow_nan=False))["n_pairs"] == 3
    assert "reference_samples" not in repr(result) and "speedup=" in repr(result)


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
    for name, m in (("reference", model), ("int8", other)):
        spies[name] = ForwardSpy(m)
        monkeypatch.setattr(m, "forward", spies[name])
    prompts = ("The capital of", "def add(a, b):")
    lengths = [int(tok(p, return_tensors="pt")["input_ids"].shape[-1]) for p in prompts]
    result = measure_speedup(
        model, other, tok, threshold=1.0, prompts=prompts, new_tokens=5, threads=1,
        time_budget=1e9, warmup=3, min_pairs=12, max_pairs=12, cpu=quiet_meter(),
    )  # fmt: skip
    assert result.n_pairs == 12  # the verdict is whatever real timings say: not checked here
    assert all(s > 0 for s in result.reference_samples + result.int8_samples)
    assert spies["reference"].calls == spies["int8"].calls  # identical work, call by call
    expected: list[tuple[int, int]] = []
    for k in range(3 + 12):  # warm-up steps, then one step per pair
        prompt, step = (k // 5) % 2, k % 5
        if step == 0:
            expected.append((lengths[prompt], 0))  # a fresh prefill
        expected.append((1, lengths[prompt] + step))  # one token against the cache
    assert spies["reference"].calls == expected
    assert result.new_tokens == 5 and result.prompts == 2 and result.threads == 1
    assert format_speedup(result).startswith("INT8 ")


def test_the_same_model_object_twice_keeps_two_caches(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    result = measure_speedup(
        model, model, tok, threshold=1.0, prompts=("The capital of",), new_tokens=4,
        threads=1, time_budget=1e9, warmup=1, min_pairs=10, max_pairs=10, cpu=quiet_meter(),
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
            threads=1, time_budget=1e9, warmup=0, min_pairs=8, max_pairs=8, cpu=quiet_meter(),
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


# -- a torch side: threads and inference mode ------------------------------------------


def probing_runner(
    probe: Callable[[], Any], seen: list[Any]
) -> Callable[[object, int, int], float]:
    """An injected step that records ``probe()``; every step takes 10 ms."""

    def runner(model: object, prompt: int, step: int) -> float:
        seen.append(probe())
        return 0.01

    return runner


def test_a_torch_side_sets_the_threads_while_it_measures_and_restores_them(
    tiny: tuple[Any, Any],
) -> None:
    import torch

    model, tok = tiny
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    seen: list[Any] = []
    result = measure_speedup(
        model, copy.deepcopy(model), tok, threshold=0.5, threads=wanted, max_pairs=8,
        runner=probing_runner(torch.get_num_threads, seen), cpu=quiet_meter(),
    )  # fmt: skip
    assert set(seen) == {wanted} and result.threads == wanted
    assert torch.get_num_threads() == before


def test_a_torch_side_steps_in_inference_mode(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tok = tiny
    seen: list[Any] = []
    measure_speedup(
        model, model, tok, threshold=0.5, threads=1, max_pairs=8,
        runner=probing_runner(torch.is_inference_mode_enabled, seen), cpu=quiet_meter(),
    )  # fmt: skip
    assert set(seen) == {True} and not torch.is_inference_mode_enabled()


def test_threads_are_restored_when_a_step_raises(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tok = tiny
    before = torch.get_num_threads()

    def broken(model: object, prompt: int, step: int) -> float:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        measure_speedup(model, model, tok, threshold=1.5, threads=3, runner=broken)
    assert torch.get_num_threads() == before


def test_a_wrapped_module_is_labelled_by_its_dtype(tiny: tuple[Any, Any]) -> None:
    import torch

    from pytest_llmquant.speed.timing import as_side

    model, tok = tiny
    assert as_side(model, tok, "reference").label == "FP32"
    assert as_side(copy.deepcopy(model).to(torch.bfloat16), tok, "reference").label == "BF16"
    assert as_side(model, tok, "INT8").label == "INT8"


def test_a_users_own_module_class_is_labelled_by_its_dtype_too() -> None:
    """Not only transformers' classes: any nn.Module a user wrote is named by what it
    computes in, never by the placeholder "reference"."""
    import torch

    from pytest_llmquant.speed.timing import as_side

    class MyLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    assert as_side(MyLM(), None, "reference").label == "FP32"
    assert as_side(MyLM().to(torch.bfloat16), None, "reference").label == "BF16"
