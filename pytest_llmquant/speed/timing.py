"""Measuring decode speed of FP32 vs INT8 for the speedup gate.

How a measurement is taken, and why:

* The timed unit is one greedy decode step from a KV cache
  (:mod:`pytest_llmquant.sides.torch_decode`): each model prefills the same prompt into its
  own cache (untimed), then both take the same steps at the same cache lengths, and
  after ``new_tokens`` steps the next prompt starts in a fresh cache. A step is the
  work generation repeats per token, and there are dozens of them per second where a
  whole generation takes seconds: the gate gets many pairs from a short budget.
* ``warmup`` steps of each model come first and are thrown away: the first calls
  allocate buffers, pick kernels and fault weights into memory. On CUDA
  :data:`CUDA_EXTRA_WARMUP` more steps are taken, because cuBLAS and attention pick
  their kernels lazily and the caching allocator grows during the first calls; each
  timed step is bracketed by ``torch.cuda.synchronize`` (:mod:`.decode_steps`), so the
  clock reads finished GPU work, not queued launches.
* Steps are *paired* and interleaved, alternating the order (AB, BA, AB, ...), so
  that whatever the machine does (a neighbour job, frequency scaling, the second
  step of a pair profiting from a warm cache) hits both models alike; the decision
  uses the ratio within each pair (:mod:`pytest_llmquant.speed.stats`).
* Sampling is adaptive: from ``min_pairs`` pairs on the gate looks at the interval
  each time the sample has grown by a quarter (:data:`LOOK_GROWTH`) and stops as soon
  as it is clear of the threshold, so a clear case costs a second or two, and only a
  borderline case spends the whole ``time_budget`` (then it decides on the point
  estimate and says it was close). Fewer looks than pairs keep the error rate of
  looking again and again (sequential testing) down at no cost in speed.
* ``torch.set_num_threads`` is fixed for the measurement and restored afterwards,
  because the thread count changes both speeds and the ratio between them, and
  everything runs under ``torch.inference_mode``.

``runner`` and ``clock`` can be injected so that the sampling logic is tested
with synthetic timings instead of a real model and a real clock.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import (
    DEFAULT_CONFIDENCE,
    LOOK_GROWTH,
    Decision,
    Verdict,
    decide,
    pairs_for_an_interval,
)

#: used when :mod:`pytest_llmquant.evaltext` does not provide ``EVAL_PROMPTS``
FALLBACK_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def fibonacci(n):",
    "Quantization reduces the size of a neural network by",
    "Once upon a time, in a small village,",
)

#: the progress callback hears from the gate at most this often (seconds)
PROGRESS_EVERY_S = 1.0

#: untimed decode steps per model added to ``warmup`` when either model is on CUDA
CUDA_EXTRA_WARMUP = 8

#: ``runner(model, prompt_index, step) -> seconds`` of one decode step; step 0 of a
#: prompt comes after a fresh (untimed) prefill of that prompt
Runner = Callable[[Any, int, int], float]


def default_prompts() -> tuple[str, ...]:
    """The project's evaluation prompts when that module exists, else a fixed fallback."""
    try:
        from ..evaltext import EVAL_PROMPTS  # type: ignore[attr-defined]
    except ImportError:
        return FALLBACK_PROMPTS
    prompts = tuple(str(p) for p in EVAL_PROMPTS)
    return prompts or FALLBACK_PROMPTS


@dataclass
class SpeedupResult:
    """Everything the speedup gate measured and decided, for messages and reports."""

    verdict: Verdict
    speedup: float  # Hodges-Lehmann estimate of the per-step FP32/INT8 time ratio
    ci_low: float
    ci_high: float
    confidence: float
    close: bool
    rule: str
    threshold: float
    n_pairs: int
    fp32_ms_per_token: float  # median decode step (prefill excluded)
    int8_ms_per_token: float
    fp32_tokens_per_s: float
    int8_tokens_per_s: float
    threads: int
    new_tokens: int  # decode steps per prompt before the next prompt is prefilled
    prompts: int  # number of distinct prompts cycled through
    wall_s: float  # whole measurement, warm-up included
    time_budget: float = math.inf  # seconds allowed for the timed pairs
    stopped: str = "decided"  # why sampling stopped: "decided", "budget" or "max_pairs"
    warmup: int = 0  # untimed decode steps per model before the first pair
    unit: str = "decode step"  # what one sample times
    fp32_samples: list[float] = field(default_factory=list, repr=False)  # s per step, per pair
    int8_samples: list[float] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: non-finite floats (an interval not yet available) become None."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def _encode(tokenizer: Any, prompt: str, models: Sequence[Any], new_tokens: int) -> Any:
    """Tokenize ``prompt`` on the models' device, cut to leave room for ``new_tokens``."""
    from ..models.causal_lm import fit_to_context

    inputs = dict(tokenizer(prompt, return_tensors="pt"))
    device = getattr(models[0], "device", None)
    if device is not None:
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    for model in models:
        inputs = fit_to_context(inputs, model, new_tokens)
    return inputs


def on_cuda(*models: Any) -> bool:
    """Whether any of the models reports a CUDA device (``model.device``, as transformers
    models do); objects without one (injected test doubles) count as the CPU."""
    return any(getattr(getattr(m, "device", None), "type", None) == "cuda" for m in models)


def _check_arguments(
    threshold: float, new_tokens: int, warmup: int, min_pairs: int, max_pairs: int, budget: float
) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive finite speedup factor, got {threshold!r}")
    if new_tokens < 1 or warmup < 0 or min_pairs < 1 or max_pairs < min_pairs:
        raise ValueError(
            f"need new_tokens >= 1, warmup >= 0 and 1 <= min_pairs <= max_pairs; got "
            f"new_tokens={new_tokens}, warmup={warmup}, min_pairs={min_pairs}, "
            f"max_pairs={max_pairs}"
        )
    if not budget > 0:
        raise ValueError(f"time_budget must be positive seconds, got {budget!r}")


def _progress_line(decision: Decision | None, n: int, elapsed: float, threshold: float) -> str:
    head = f"quant_speedup: {n} pairs in {elapsed:.1f} s"
    if decision is None or not math.isfinite(decision.ci_high):
        return f"{head}, no interval yet (threshold {threshold:.3g}x)"
    return (
        f"{head}, INT8 {decision.speedup:.2f}x ({decision.confidence * 100:g}% CI "
        f"{decision.ci_low:.2f}\u2013{decision.ci_high:.2f}) vs threshold {threshold:.3g}x"
    )


def measure_speedup(
    fp32_model: Any,
    int8_model: Any,
    tokenizer: Any,
    *,
    threshold: float,
    prompts: Sequence[str] | None = None,
    new_tokens: int = 32,
    threads: int | None = None,
    time_budget: float = 5.0,
    warmup: int = 4,
    min_pairs: int | None = None,
    max_pairs: int = 1000,
    confidence: float = DEFAULT_CONFIDENCE,
    clock: Callable[[], float] = time.perf_counter,
    runner: Runner | None = None,
    progress: Callable[[str], None] | None = None,
) -> SpeedupResult:
    """Time FP32 and INT8 decode steps in interleaved pairs until the gate can decide.

    ``threshold`` is the speedup INT8 must reach (FP32 time / INT8 time per step).
    ``new_tokens`` decode steps are taken per prompt (the steps of a ``new_tokens``-token
    greedy generation) before the next prompt is prefilled. ``time_budget`` counts the
    timed pairs only (warm-up excluded); a pair that would end past the budget is not
    started, except that ``min_pairs`` pairs are always taken. ``min_pairs`` defaults
    to the fewest pairs that can give an interval at ``confidence``
    (:func:`~pytest_llmquant.speed.stats.pairs_for_an_interval`, 8 at 99%): stopping earlier
    could only ever decide on the point estimate. ``warmup`` is in steps per model.
    ``runner(model, prompt_index, step) -> seconds`` replaces the real timed decode
    step (tests). ``progress`` hears a one-line status at most every
    :data:`PROGRESS_EVERY_S` seconds of a measurement that is still going. On CUDA
    :data:`CUDA_EXTRA_WARMUP` steps are added to ``warmup`` (the result reports the total).
    """
    import torch

    from ..settings import default_threads
    from ..sides.torch_decode import DecodeStream

    if min_pairs is None:
        min_pairs = pairs_for_an_interval(confidence)
    _check_arguments(threshold, new_tokens, warmup, min_pairs, max_pairs, time_budget)
    if on_cuda(fp32_model, int8_model):
        warmup += CUDA_EXTRA_WARMUP
    prompt_list = tuple(prompts) if prompts is not None else default_prompts()
    if not prompt_list:
        raise ValueError("prompts must not be empty")
    n_threads = threads if threads is not None else default_threads()
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, got {n_threads}")

    models = {"fp32": fp32_model, "int8": int8_model}
    if runner is not None:
        injected = runner

        def time_step(role: str, prompt: int, step: int) -> float:
            return injected(models[role], prompt, step)

    else:
        pair = (fp32_model, int8_model)
        encoded = [_encode(tokenizer, p, pair, new_tokens) for p in prompt_list]
        streams = {
            role: DecodeStream(m, encoded, steps_per_prompt=new_tokens, clock=clock)
            for role, m in models.items()
        }

        def time_step(role: str, prompt: int, step: int) -> float:
            return streams[role].step(prompt, step)

    def position(i: int) -> tuple[int, int]:  # the i-th step of the run: (prompt, step)
        return (i // new_tokens) % len(prompt_list), i % new_tokens

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with torch.inference_mode():
            start = clock()
            for i in range(warmup):
                time_step("fp32", *position(i))
                time_step("int8", *position(i))
            sampling_start = last_progress = clock()

            fp32: list[float] = []
            int8: list[float] = []
            pair_s: list[float] = []
            decision: Decision | None = None
            next_look = min_pairs
            stopped = "decided"
            while True:
                i = len(fp32)
                where = position(warmup + i)
                pair_start = clock()
                if i % 2 == 0:  # AB
                    a = time_step("fp32", *where)
                    b = time_step("int8", *where)
                else:  # BA
                    b = time_step("int8", *where)
                    a = time_step("fp32", *where)
                now = clock()
                pair_s.append(now - pair_start)
                fp32.append(a)
                int8.append(b)
                n = len(fp32)
                out_of_time = now - sampling_start + statistics.median(pair_s) > time_budget
                last = n >= min_pairs and (out_of_time or n >= max_pairs)
                if n >= next_look or last:
                    next_look = max(n + 1, math.ceil(n * LOOK_GROWTH))
                    decision = decide(
                        fp32, int8, threshold, confidence=confidence, min_pairs=min_pairs
                    )
                    if decision.verdict != "undecided":
                        break
                if last:
                    stopped = "budget" if out_of_time else "max_pairs"
                    decision = decide(
                        fp32,
                        int8,
                        threshold,
                        confidence=confidence,
                        final=True,
                        min_pairs=min_pairs,
                    )
                    break
                if progress is not None and now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    progress(_progress_line(decision, n, now - sampling_start, threshold))
            wall = clock() - start
    finally:
        torch.set_num_threads(saved_threads)
    assert decision is not None  # the loop only ends after a decision

    fp32_med = statistics.median(fp32)
    int8_med = statistics.median(int8)
    return SpeedupResult(
        verdict=decision.verdict,
        speedup=decision.speedup,
        ci_low=decision.ci_low,
        ci_high=decision.ci_high,
        confidence=decision.confidence,
        close=decision.close,
        rule=decision.rule,
        threshold=float(threshold),
        n_pairs=decision.n,
        fp32_ms_per_token=fp32_med * 1e3,
        int8_ms_per_token=int8_med * 1e3,
        fp32_tokens_per_s=1.0 / fp32_med,
        int8_tokens_per_s=1.0 / int8_med,
        threads=n_threads,
        new_tokens=new_tokens,
        prompts=len(prompt_list),
        wall_s=wall,
        time_budget=float(time_budget),
        stopped=stopped,
        warmup=warmup,
        fp32_samples=fp32,
        int8_samples=int8,
    )


def format_speedup(result: SpeedupResult) -> str:
    """One line for a person: estimate, interval, sample size, threads, per-token times."""
    pct = f"{result.confidence * 100:g}%"
    if math.isfinite(result.ci_high):
        ci = f"{pct} CI {result.ci_low:.2f}\u2013{result.ci_high:.2f}"
    else:
        ci = f"too few pairs for a {pct} CI"
    if result.speedup >= 1:
        head = f"INT8 {result.speedup:.2f}x faster than FP32"
    else:
        head = f"INT8 at {result.speedup:.2f}x the speed of FP32"
    line = (
        f"{head} ({ci}, {result.n_pairs} decode-step pairs, "
        f"{result.threads} thread{'s' if result.threads != 1 else ''}): "
        f"{result.fp32_ms_per_token:.1f} \u2192 {result.int8_ms_per_token:.1f} ms/token"
    )
    if result.close:
        if result.stopped == "max_pairs":
            after = f"the {result.n_pairs}-pair limit"
        else:
            after = f"the {result.time_budget:g} s budget"
        line += f" (close: decided on the point estimate after {after})"

    return line
