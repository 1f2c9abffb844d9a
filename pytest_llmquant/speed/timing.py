"""Measuring the decode speed of the reference against INT8 for the speedup gate.

How a measurement is taken, and why:

* The timed unit is one greedy decode step from a KV cache, from each side's
  :meth:`~pytest_llmquant.sides.base.ModelSide.decode_timer`: both sides prefill the same
  prompt (token ids encoded once, cut to the shorter context) into their own cache,
  untimed, then take the same steps at the same cache lengths; after ``new_tokens`` steps
  the next prompt starts in a fresh cache. A step is the work generation repeats per
  token, and there are dozens of them per second where a whole generation takes seconds:
  the gate gets many pairs from a short budget.
* ``warmup`` steps of each side come first and are thrown away. On CUDA
  :data:`CUDA_EXTRA_WARMUP` more are taken: cuBLAS and attention pick their kernels lazily
  and the caching allocator grows during the first calls; a CUDA step is bracketed by
  ``torch.cuda.synchronize`` (:mod:`pytest_llmquant.sides.torch_decode`).
* Steps are paired and interleaved, alternating the order, and the sampling is adaptive
  and watches the CPU's contention: :mod:`.sampler` (the pure part, with the reasons),
  :mod:`.stats` (the interval), :mod:`.contention` (the counters).
* The compute threads are fixed for the measurement and restored afterwards (each side's
  :meth:`~pytest_llmquant.sides.base.ModelSide.measuring`, which also turns autograd off),
  because the thread count changes both speeds and the ratio between them. Threads asked
  for are used as asked; by default the gate takes the cores that are free when it starts
  (:func:`.contention.timing_threads`), so that on a shared runner its own threads do not
  queue behind a neighbour's.

``runner``, ``clock`` and ``cpu`` can be injected so that the logic is tested with
synthetic timings and contention instead of a real model, a real clock and a real load.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..settings import Settings
from ..sides.base import in_runtime
from .contention import Contention, CpuMeter, between, default_meter, timing_threads
from .sampler import PROGRESS_EVERY_S, PairTimer, Sampled, Schedule, Verdict, sample
from .stats import DEFAULT_CONFIDENCE

if TYPE_CHECKING:
    from ..sides.base import DecodeTimer, ModelSide
    from ..types import CausalLM, JSONValue, Tokenizer

__all__ = ["PROGRESS_EVERY_S", "SpeedupResult", "format_speedup", "measure_speedup"]

#: used when :mod:`pytest_llmquant.evaltext` does not provide ``EVAL_PROMPTS``
FALLBACK_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def fibonacci(n):",
    "Quantization reduces the size of a neural network by",
    "Once upon a time, in a small village,",
)

#: untimed decode steps per side added to ``warmup`` when either side is on CUDA
CUDA_EXTRA_WARMUP = 8
WARMUP = 4  # untimed decode steps per side before the first pair
MAX_PAIRS = 1000

#: ``runner(model, prompt_index, step) -> seconds`` of one decode step, called with the
#: object the caller passed for that side (tests); step 0 follows an untimed prefill
Runner = Callable[[object, int, int], float]

#: fields renamed inside the package whose JSON keys (reports, baselines) keep their names
JSON_KEYS = {
    "reference_ms_per_token": "fp32_ms_per_token",
    "reference_tokens_per_s": "fp32_tokens_per_s",
    "reference_samples": "fp32_samples",
}


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

    verdict: Verdict  # "pass", "fail" or "inconclusive" (the CPU too busy to judge)
    speedup: float  # Hodges-Lehmann estimate of the per-step reference/INT8 time ratio
    ci_low: float
    ci_high: float
    confidence: float
    close: bool  # decided on the point estimate: the interval still held the threshold
    rule: str
    threshold: float
    n_pairs: int
    reference_ms_per_token: float  # median decode step (prefill excluded)
    int8_ms_per_token: float
    reference_tokens_per_s: float
    int8_tokens_per_s: float
    threads: int
    new_tokens: int  # decode steps per prompt before the next prompt is prefilled
    prompts: int  # number of distinct prompts cycled through
    wall_s: float  # whole measurement, warm-up included
    sampling_s: float = 0.0  # seconds of timed pairs
    time_budget: float = math.inf  # seconds allowed for the timed pairs
    stopped: str = "decided"  # why sampling stopped: "decided", "budget" or "max_pairs"
    warmup: int = 0  # untimed decode steps per side before the first pair
    unit: str = "decode step"  # what one sample times
    reference_label: str = "FP32"  # what the reference computes in: FP32, BF16
    int8_label: str = "INT8"  # the INT8 side's label (a scheme, a runtime)
    reference_runtime: str = "torch"  # what computed each side: a cross-runtime ratio
    int8_runtime: str = "torch"  # answers another question than a same-runtime one
    extended: bool = False  # a close case sampled past the budget (sampler.CLOSE_BUDGET_FACTOR)
    threads_note: str = ""  # how default threads were chosen, when not all cores
    cpu_cores: int = 0  # CPUs the process may use
    cpu_stalled: float | None = None  # share of runnable time the gate's threads waited
    cpu_others: float | None = None  # cores' worth of CPU used by other processes meanwhile
    reference_samples: list[float] = field(default_factory=list, repr=False)  # s per step
    int8_samples: list[float] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def contention(self) -> Contention:
        return Contention(
            self.cpu_cores, self.threads, self.wall_s, self.cpu_others, self.cpu_stalled
        )

    def as_dict(self) -> dict[str, JSONValue]:
        """A JSON-ready dict: non-finite floats (an interval not yet available) become None;
        the reference's fields keep their released keys (:data:`JSON_KEYS`)."""
        out: dict[str, JSONValue] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[JSON_KEYS.get(key, key)] = value
        return out


def reference_label(model: CausalLM) -> str:
    """``FP32``, ``BF16``, ``FP16``: what a wrapped reference module computes in."""
    from ..models.causal_lm import model_dtype

    return model_dtype(model).replace("bfloat", "BF").replace("float", "FP")


def as_side(model: ModelSide | CausalLM, tokenizer: Tokenizer | None, label: str) -> ModelSide:
    """A side as it is, an ``nn.Module`` wrapped in a ``TorchSide`` (``label``
    "reference" takes the label of its dtype)."""
    from ..sides import as_side as wrap

    torch = sys.modules.get("torch")  # a module needs torch imported: never import it here
    if label == "reference" and torch is not None and isinstance(model, torch.nn.Module):
        label = reference_label(model)  # any nn.Module, the user's own classes too
    return wrap(model, label, tokenizer)


def on_cuda(*sides: ModelSide) -> bool:
    """Whether any side computes on a CUDA device."""
    return any(side.device.startswith("cuda") for side in sides)


class _RunnerTimer:
    """A :class:`DecodeTimer` over an injected ``runner`` (tests)."""

    def __init__(self, runner: Runner, model: object) -> None:
        self.runner, self.model = runner, model

    def step(self, prompt: int, step: int) -> float:
        return self.runner(self.model, prompt, step)


def encoded_prompts(
    sides: Sequence[ModelSide], tokenizer: Tokenizer, prompts: Sequence[str], new_tokens: int
) -> list[list[int]]:
    """Each prompt's ids, once for both sides, cut to leave ``new_tokens`` in the shorter
    context."""
    from ..models.causal_lm import encode_prompt

    contexts = [c for c in (side.context_length() for side in sides) if c is not None]
    context = min(contexts) if contexts else None
    return [encode_prompt(tokenizer, p, context=context, new_tokens=new_tokens) for p in prompts]


def pair_timer(timers: tuple[DecodeTimer, DecodeTimer], prompts: int, new_tokens: int) -> PairTimer:
    """``time_pair(i, reference_first)`` for the sampler: step ``i`` of the run is step
    ``i % new_tokens`` of prompt ``(i // new_tokens) % prompts``, on both sides."""
    reference, int8 = timers

    def time_pair(i: int, reference_first: bool) -> tuple[float, float]:
        prompt, step = (i // new_tokens) % prompts, i % new_tokens
        if reference_first:
            a = reference.step(prompt, step)
            return a, int8.step(prompt, step)
        b = int8.step(prompt, step)
        return reference.step(prompt, step), b

    return time_pair


class _MeterWatch:
    """The sampler's :class:`~.sampler.Watch` over a :class:`~.contention.CpuMeter`."""

    def __init__(self, meter: CpuMeter, threads: int) -> None:
        self.meter, self.threads = meter, threads
        self.cores = meter.cores()
        self.start_at = meter.read()

    def start(self) -> None:
        self.start_at = self.meter.read()

    def reading(self) -> Contention | None:
        seen = between(self.start_at, self.meter.read(), cores=self.cores, threads=self.threads)
        return seen if seen.measured else None


def _schedule(
    threshold: float, *, new_tokens: int, warmup: int, min_pairs: int | None, max_pairs: int,
    time_budget: float, confidence: float, cuda: bool,
) -> Schedule:  # fmt: skip
    if new_tokens < 1:
        raise ValueError(f"need new_tokens >= 1; got new_tokens={new_tokens}")
    extra = CUDA_EXTRA_WARMUP if cuda and warmup >= 0 else 0
    return Schedule(
        threshold, warmup + extra, min_pairs, max_pairs, float(time_budget), None, confidence
    )


def measure_speedup(
    reference: ModelSide | CausalLM,
    int8: ModelSide | CausalLM,
    tokenizer: Tokenizer | None = None,
    *,
    threshold: float,
    prompts: Sequence[str] | None = None,
    new_tokens: int = Settings.new_tokens,
    threads: int | None = None,
    time_budget: float = Settings.time_budget,
    warmup: int = WARMUP,
    min_pairs: int | None = None,
    max_pairs: int = MAX_PAIRS,
    confidence: float = DEFAULT_CONFIDENCE,
    clock: Callable[[], float] = time.perf_counter,
    runner: Runner | None = None,
    progress: Callable[[str], None] | None = None,
    cpu: CpuMeter | None = None,
) -> SpeedupResult:
    """Time reference and INT8 decode steps in interleaved pairs until the gate can decide.

    ``reference`` and ``int8`` are :class:`~pytest_llmquant.sides.base.ModelSide`\\ s, or
    ``nn.Module``\\ s (wrapped with ``tokenizer``). ``threshold`` is the speedup INT8 must
    reach (reference time / INT8 time per step). ``new_tokens`` decode steps are taken per
    prompt before the next prompt is prefilled. ``time_budget`` counts the timed pairs
    only; a close case may sample on (:mod:`.sampler`). ``min_pairs`` defaults to the
    fewest pairs that can give an interval at ``confidence`` (8 at 99%); ``warmup`` is in
    steps per side (plus :data:`CUDA_EXTRA_WARMUP` on CUDA). ``threads`` None: the cores
    free at the start. ``runner`` replaces the sides' decode steps, ``cpu`` the contention
    counters (tests); ``progress`` hears a status line at most once a second.
    """
    sides = (as_side(reference, tokenizer, "reference"), as_side(int8, tokenizer, "INT8"))
    schedule = _schedule(
        threshold, new_tokens=new_tokens, warmup=warmup, min_pairs=min_pairs,
        max_pairs=max_pairs, time_budget=time_budget, confidence=confidence, cuda=on_cuda(*sides),
    )  # fmt: skip
    prompt_list = tuple(prompts) if prompts is not None else default_prompts()
    if not prompt_list:
        raise ValueError("prompts must not be empty")
    meter = cpu if cpu is not None else default_meter()
    n_threads, note = _threads(threads, meter)
    start = clock()
    with sides[0].measuring(n_threads), sides[1].measuring(n_threads):
        if runner is not None:
            timers: tuple[DecodeTimer, DecodeTimer] = (
                _RunnerTimer(runner, reference),
                _RunnerTimer(runner, int8),
            )
        else:
            timers = _decode_timers(sides, tokenizer, prompt_list, new_tokens, clock)
        time_pair = pair_timer(timers, len(prompt_list), new_tokens)
        watch = _MeterWatch(meter, n_threads)
        sampled = sample(time_pair, schedule, clock=clock, watch=watch, progress=progress)
    wall = clock() - start
    return _result(sampled, schedule, sides, n_threads, note, new_tokens, len(prompt_list), wall, meter.cores())  # fmt: skip


def _threads(threads: int | None, meter: CpuMeter) -> tuple[int, str]:
    from ..setting_checks import default_threads

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return timing_threads(threads, meter, default_threads())


def _decode_timers(
    sides: tuple[ModelSide, ModelSide],
    tokenizer: Tokenizer | None,
    prompts: Sequence[str],
    new_tokens: int,
    clock: Callable[[], float],
) -> tuple[DecodeTimer, DecodeTimer]:
    if tokenizer is None:
        raise ValueError("measure_speedup needs the tokenizer to encode its prompts")
    ids = encoded_prompts(sides, tokenizer, prompts, new_tokens)
    reference, int8 = (
        side.decode_timer(ids, steps_per_prompt=new_tokens, clock=clock) for side in sides
    )
    return reference, int8


def _result(
    sampled: Sampled, schedule: Schedule, sides: tuple[ModelSide, ModelSide], threads: int,
    note: str, new_tokens: int, prompts: int, wall: float, cores: int,
) -> SpeedupResult:  # fmt: skip
    d = sampled.decision
    reference_s = statistics.median(sampled.reference)
    int8_s = statistics.median(sampled.int8)
    seen = sampled.contention
    return SpeedupResult(
        verdict=sampled.verdict, speedup=d.speedup, ci_low=d.ci_low, ci_high=d.ci_high,
        confidence=d.confidence, close=sampled.close, rule=sampled.rule,
        threshold=float(schedule.threshold), n_pairs=d.n,
        reference_ms_per_token=reference_s * 1e3, int8_ms_per_token=int8_s * 1e3,
        reference_tokens_per_s=1.0 / reference_s, int8_tokens_per_s=1.0 / int8_s,
        threads=threads, new_tokens=new_tokens, prompts=prompts, wall_s=wall,
        sampling_s=sampled.sampling_s,
        time_budget=schedule.time_budget, stopped=sampled.stopped, warmup=schedule.warmup,
        reference_label=sides[0].label, int8_label=sides[1].label, extended=sampled.extended,
        reference_runtime=sides[0].runtime, int8_runtime=sides[1].runtime,
        threads_note=note, cpu_cores=cores,
        cpu_stalled=seen.stalled if seen is not None else None,
        cpu_others=seen.others if seen is not None else None,
        reference_samples=sampled.reference, int8_samples=sampled.int8,
    )  # fmt: skip


def format_speedup(result: SpeedupResult) -> str:
    """One line for a person: estimate, interval, sample size, threads, per-token times."""
    r = result
    pct = f"{r.confidence * 100:g}%"
    ci = f"{pct} CI {r.ci_low:.2f}\u2013{r.ci_high:.2f}"
    if not math.isfinite(r.ci_high):
        ci = f"too few pairs for a {pct} CI"
    subject, other = "INT8", r.reference_label
    if (r.reference_runtime, r.int8_runtime) != ("torch", "torch"):  # name both runtimes
        subject, other = (
            in_runtime(r.int8_label, r.int8_runtime),
            in_runtime(other, r.reference_runtime),
        )
    if r.speedup >= 1:
        head = f"{subject} {r.speedup:.2f}x faster than {other}"
    else:
        head = f"{subject} at {r.speedup:.2f}x the speed of {other}"
    line = (
        f"{head} ({ci}, {r.n_pairs} decode-step pairs, "
        f"{r.threads} thread{'s' if r.threads != 1 else ''}): "
        f"{r.reference_ms_per_token:.1f} \u2192 {r.int8_ms_per_token:.1f} ms/token"
    )
    if r.verdict == "inconclusive":
        line += f" (inconclusive: {r.contention.describe()})"
    elif r.close:
        if r.stopped == "max_pairs":
            after = f"the {r.n_pairs}-pair limit"
        elif r.extended:
            after = (
                f"{r.sampling_s:.1f} s of pairs, sampling on past the {r.time_budget:g} s budget"
            )
        else:
            after = f"the {r.time_budget:g} s budget"
        line += f" (close: decided on the point estimate after {after})"
    return line
