"""Measuring generation speed of FP32 vs INT8 for the speedup gate.

How a measurement is taken, and why:

* Both models generate exactly ``new_tokens`` tokens (``min_new_tokens`` equal to
  ``max_new_tokens``, greedy), so an early EOS can never make one model look fast.
  The output length is checked.
* ``warmup`` runs of each model come first and are thrown away: the first calls
  allocate buffers, pick kernels and fault weights into memory.
* Runs are *paired* and interleaved, alternating the order (AB, BA, AB, ...), so
  that whatever the machine does (a neighbour job, frequency scaling, the second
  run of a pair profiting from a warm cache) hits both models alike; the decision
  uses the ratio within each pair (:mod:`pytest_llmquant.stats`).
* Sampling is adaptive: after ``min_pairs`` pairs the gate decides after every
  pair and stops as soon as the confidence interval is clear of the threshold, so
  a clear case costs a few seconds, and only a borderline case spends the whole
  ``time_budget`` (then it decides on the point estimate and says it was close).
* ``torch.set_num_threads`` is fixed for the measurement and restored afterwards,
  because the thread count changes both speeds and the ratio between them.

``runner`` and ``clock`` can be injected so that the sampling logic is tested
with synthetic timings instead of a real model and a real clock.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import DEFAULT_CONFIDENCE, Decision, Verdict, decide, pairs_for_an_interval

#: used when :mod:`pytest_llmquant.evaltext` does not provide ``EVAL_PROMPTS``
FALLBACK_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def fibonacci(n):",
    "Quantization reduces the size of a neural network by",
    "Once upon a time, in a small village,",
)

Runner = Callable[[Any, Any], float]


def default_prompts() -> tuple[str, ...]:
    """The project's evaluation prompts when that module exists, else a fixed fallback."""
    try:
        from .evaltext import EVAL_PROMPTS  # type: ignore[attr-defined]
    except ImportError:
        return FALLBACK_PROMPTS
    prompts = tuple(str(p) for p in EVAL_PROMPTS)
    return prompts or FALLBACK_PROMPTS


@dataclass
class SpeedupResult:
    """Everything the speedup gate measured and decided, for messages and reports."""

    verdict: Verdict
    speedup: float  # median per-pair FP32/INT8 time ratio
    ci_low: float
    ci_high: float
    confidence: float
    close: bool
    rule: str
    threshold: float
    n_pairs: int
    fp32_ms_per_token: float  # medians
    int8_ms_per_token: float
    fp32_tokens_per_s: float
    int8_tokens_per_s: float
    threads: int
    new_tokens: int
    prompts: int  # number of distinct prompts cycled through
    wall_s: float  # whole measurement, warm-up included
    time_budget: float = math.inf  # seconds allowed for the timed pairs
    stopped: str = "decided"  # why sampling stopped: "decided", "budget" or "max_pairs"
    fp32_samples: list[float] = field(default_factory=list, repr=False)  # s/token per pair
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


def _pad_token_id(tokenizer: Any) -> Any:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else getattr(tokenizer, "eos_token_id", None)


def _encode(tokenizer: Any, prompt: str, device: Any) -> Any:
    inputs = tokenizer(prompt, return_tensors="pt")
    if device is not None and hasattr(inputs, "items"):
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    return inputs


def _sync(device: Any) -> None:
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def time_generation(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    new_tokens: int,
    pad_token_id: Any = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds for one greedy generation of exactly ``new_tokens`` tokens.

    Raises :class:`~pytest_llmquant.errors.LlmqModelError` when the model returns
    another number of tokens: a timing of a shorter generation would be a lie.
    """
    import torch

    from .errors import LlmqModelError

    device = getattr(model, "device", None)
    prompt_len = int(inputs["input_ids"].shape[-1])
    with torch.inference_mode():
        _sync(device)
        start = clock()
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad_token_id,
        )
        _sync(device)
        elapsed = clock() - start
    got = int(out.shape[-1])
    if got != prompt_len + new_tokens:
        raise LlmqModelError(
            f"{type(model).__name__}.generate returned {got} tokens for a {prompt_len}-token "
            f"prompt and {new_tokens} new tokens (expected {prompt_len + new_tokens}); "
            "the speed of an incomplete generation cannot be compared"
        )
    return elapsed


def measure_speedup(
    fp32_model: Any,
    int8_model: Any,
    tokenizer: Any,
    *,
    threshold: float,
    prompts: Sequence[str] | None = None,
    new_tokens: int = 32,
    threads: int | None = None,
    time_budget: float = 20.0,
    warmup: int = 1,
    min_pairs: int | None = None,
    max_pairs: int = 200,
    confidence: float = DEFAULT_CONFIDENCE,
    clock: Callable[[], float] = time.perf_counter,
    runner: Runner | None = None,
) -> SpeedupResult:
    """Time FP32 and INT8 generation in interleaved pairs until the gate can decide.

    ``threshold`` is the speedup INT8 must reach (FP32 time / INT8 time).
    ``time_budget`` counts the timed pairs only (warm-up excluded); a pair that
    would end past the budget is not started, except that ``min_pairs`` pairs are
    always taken. ``min_pairs`` defaults to the fewest pairs that can give an interval at
    ``confidence`` (:func:`~pytest_llmquant.stats.pairs_for_an_interval`, 8 at 99%):
    stopping earlier could only ever decide on the point estimate. ``runner(model,
    inputs) -> seconds`` replaces the real timed generation (tests); by default
    :func:`time_generation` with ``clock``.
    """
    import torch

    from .settings import default_threads

    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive finite speedup factor, got {threshold!r}")
    if min_pairs is None:
        min_pairs = pairs_for_an_interval(confidence)
    if new_tokens < 1 or warmup < 0 or min_pairs < 1 or max_pairs < min_pairs:
        raise ValueError(
            f"need new_tokens >= 1, warmup >= 0 and 1 <= min_pairs <= max_pairs; got "
            f"new_tokens={new_tokens}, warmup={warmup}, min_pairs={min_pairs}, "
            f"max_pairs={max_pairs}"
        )
    if not time_budget > 0:
        raise ValueError(f"time_budget must be positive seconds, got {time_budget!r}")
    prompt_list = tuple(prompts) if prompts is not None else default_prompts()
    if not prompt_list:
        raise ValueError("prompts must not be empty")
    n_threads = threads if threads is not None else default_threads()
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, got {n_threads}")

    pad = _pad_token_id(tokenizer)

    def timed_generation(model: Any, inputs: Any) -> float:
        return time_generation(model, inputs, new_tokens=new_tokens, pad_token_id=pad, clock=clock)

    run: Runner = runner if runner is not None else timed_generation

    device = getattr(fp32_model, "device", None)
    encoded = [_encode(tokenizer, p, device) for p in prompt_list]
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        start = clock()
        for i in range(warmup):
            run(fp32_model, encoded[i % len(encoded)])
            run(int8_model, encoded[i % len(encoded)])
        sampling_start = clock()

        fp32: list[float] = []
        int8: list[float] = []
        pair_s: list[float] = []
        decision: Decision | None = None
        stopped = "decided"
        while True:
            i = len(fp32)
            inputs = encoded[i % len(encoded)]
            pair_start = clock()
            if i % 2 == 0:  # AB
                a = run(fp32_model, inputs)
                b = run(int8_model, inputs)
            else:  # BA
                b = run(int8_model, inputs)
                a = run(fp32_model, inputs)
            now = clock()
            pair_s.append(now - pair_start)
            fp32.append(a / new_tokens)
            int8.append(b / new_tokens)
            n = len(fp32)
            if n < min_pairs:
                continue
            decision = decide(fp32, int8, threshold, confidence=confidence, min_pairs=min_pairs)
            if decision.verdict != "undecided":
                break
            out_of_time = now - sampling_start + statistics.median(pair_s) > time_budget
            if out_of_time or n >= max_pairs:
                stopped = "budget" if out_of_time else "max_pairs"
                decision = decide(
                    fp32, int8, threshold, confidence=confidence, final=True, min_pairs=min_pairs
                )
                break
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
        f"{head} ({ci}, {result.n_pairs} pairs, "
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
