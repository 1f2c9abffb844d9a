"""The speed gate's sampler: timed pairs in, a verdict out. No torch, no models.

Given ``time_pair(i, reference_first) -> (reference_seconds, int8_seconds)``, the timing
of step ``i`` of the run on both sides, a :class:`Schedule` and a clock, :func:`sample`
decides whether INT8 is at least ``threshold`` times faster than the reference, and says
why it stopped. :mod:`.timing` feeds it real decode steps; the tests feed it numbers.

The schedule, and why:

* ``warmup`` pairs first, thrown away (buffers, kernel choice, page faults).
* Pairs alternate their order (reference first, then INT8 first, ...), so that an order
  effect (the second step of a pair profiting from a warm cache) hits both alike.
* From ``min_pairs`` on the interval is looked at each time the sample has grown by
  ``look_growth`` (a quarter): fewer looks than pairs keep the error rate of looking again
  and again down (:mod:`.stats`). A clear case stops at its first look.
* ``time_budget`` seconds of timed pairs; a pair that would end past it is not started
  (``min_pairs`` are always taken). A case still **close** at the end of the budget (the
  interval contains the threshold) samples on, up to ``close_budget`` seconds in all
  (:data:`CLOSE_BUDGET_FACTOR` times the budget by default): more pairs narrow the
  interval. Only if it is still close then does the point estimate decide, marked close.
* The CPU contention of the sampling window (:mod:`.contention`) is read at each look.
  While the gate's threads waited for a core beyond the bound, the pairs may be biased
  (a multi-threaded step stalls at each barrier, a single-threaded one barely notices),
  and a biased sample gives a confident wrong interval however many pairs it has. Then a
  verdict stands only where it clears the threshold by :func:`contended_margin`, more than
  the bias seen from contention; otherwise the gate samples to the end of its budget (the
  load may pass: the Hodges-Lehmann estimate resists a minority of bad pairs) and the
  verdict is **inconclusive**, never a pass.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .contention import Contention
from .stats import DEFAULT_CONFIDENCE, LOOK_GROWTH, Decision, decide, pairs_for_an_interval

#: a close case may sample this many times its time budget in all before the point
#: estimate decides
CLOSE_BUDGET_FACTOR = 3.0

#: while the CPU is busy, a verdict of one-thread steps must clear the threshold by this
#: factor: a single thread per side shares a busy core fairly, and the bias seen was ~10%
#: (SmolLM2 at load ~5: 1.78x against 1.94x quiet, docs/gates.md)
CONTENDED_MARGIN_ONE_THREAD = 1.5

#: ... and of multi-threaded steps by this factor: their parallel regions stall whenever a
#: thread is descheduled, and the bias seen was up to 4.9x (issue 21: 6.4x measured, CI up
#: to 11.5x, against a true 1.31x at 2 threads beside a busy core)
CONTENDED_MARGIN = 10.0

#: the progress callback hears from the sampler at most this often (seconds)
PROGRESS_EVERY_S = 1.0

Verdict = Literal["pass", "fail", "inconclusive"]
#: why sampling stopped: a verdict was clear, the (close) budget or the pair limit ran out
Stopped = Literal["decided", "budget", "max_pairs"]

#: ``time_pair(i, reference_first) -> (reference_seconds, int8_seconds)`` of step ``i``
PairTimer = Callable[[int, bool], tuple[float, float]]


class Watch(Protocol):
    """The contention of the sampling window: started when the timed pairs start."""

    def start(self) -> None: ...

    def reading(self) -> Contention | None: ...


class Unwatched:
    """No contention reading (the sampler then decides on the statistics alone)."""

    def start(self) -> None:
        return None

    def reading(self) -> Contention | None:
        return None


@dataclass(frozen=True)
class Schedule:
    """How long and how often the sampler samples and looks; checked when made."""

    threshold: float
    warmup: int = 4
    min_pairs: int | None = None  # None: the fewest pairs with an interval at ``confidence``
    max_pairs: int = 1000
    time_budget: float = 5.0
    close_budget: float | None = None  # None: CLOSE_BUDGET_FACTOR * time_budget
    confidence: float = DEFAULT_CONFIDENCE
    look_growth: float = LOOK_GROWTH

    def __post_init__(self) -> None:
        t = self.threshold
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"threshold must be a positive finite speedup factor, got {t!r}")
        if self.warmup < 0 or self.pairs_min < 1 or self.max_pairs < self.pairs_min:
            raise ValueError(
                f"need warmup >= 0 and 1 <= min_pairs <= max_pairs; got warmup={self.warmup}, "
                f"min_pairs={self.pairs_min}, max_pairs={self.max_pairs}"
            )
        if not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive seconds, got {self.time_budget!r}")
        if self.close_budget is not None and not self.close_budget >= self.time_budget:
            raise ValueError(
                f"close_budget must be at least time_budget ({self.time_budget:g} s), "
                f"got {self.close_budget!r}"
            )
        if not self.look_growth > 1:
            raise ValueError(f"look_growth must be > 1, got {self.look_growth!r}")

    @property
    def pairs_min(self) -> int:
        if self.min_pairs is not None:
            return self.min_pairs
        return pairs_for_an_interval(self.confidence)

    @property
    def budget_when_close(self) -> float:
        if self.close_budget is not None:
            return self.close_budget
        return self.time_budget * CLOSE_BUDGET_FACTOR


@dataclass
class Sampled:
    """What :func:`sample` measured and decided."""

    verdict: Verdict
    decision: Decision  # the statistics of the last look
    rule: str  # one sentence: how the verdict was reached
    close: bool  # decided on the point estimate: the interval still held the threshold
    stopped: Stopped
    sampling_s: float  # seconds of timed pairs
    contention: Contention | None  # over the timed pairs; None: not measured
    extended: bool = False  # the budget was extended because the case was close
    reference: list[float] = field(default_factory=list, repr=False)  # s per step, per pair
    int8: list[float] = field(default_factory=list, repr=False)


def contended_margin(threads: int) -> float:
    """How far past the threshold a verdict must be while the CPU is busy."""
    return CONTENDED_MARGIN_ONE_THREAD if threads <= 1 else CONTENDED_MARGIN


def judge(
    decision: Decision, threshold: float, contention: Contention | None
) -> tuple[Verdict, str] | None:
    """A look's verdict and rule, or None: keep sampling.

    A clear statistical verdict stands on a quiet CPU; on a busy one only where its whole
    interval clears the threshold by :func:`contended_margin` (on the side of the verdict).
    """
    if decision.verdict == "undecided":
        return None
    if contention is None or not contention.busy:
        return decision.verdict, decision.rule
    margin = contended_margin(contention.threads)
    if decision.verdict == "pass" and decision.ci_low >= threshold * margin:
        beyond = f"its low end {decision.ci_low:.3g}x is {margin:g}x the threshold or more"
    elif decision.verdict == "fail" and decision.ci_high * margin < threshold:
        beyond = f"its high end {decision.ci_high:.3g}x is under 1/{margin:g} of the threshold"
    else:
        return None
    return decision.verdict, (
        f"{decision.rule}; the CPU was busy ({contention.describe()}), but {beyond}, beyond "
        "any bias contention was seen to cause"
    )


def inconclusive_rule(decision: Decision, threshold: float, contention: Contention) -> str:
    """Why a busy CPU left no verdict: the evidence, in one sentence."""
    margin = contended_margin(contention.threads)
    return (
        f"inconclusive: the CPU was busy ({contention.describe()}), so the pairs may be "
        f"biased; the {decision.confidence * 100:g}% CI {decision.ci_low:.3g}-"
        f"{decision.ci_high:.3g}x ({decision.n} pairs) does not clear the "
        f"{threshold:.3g}x threshold by the {margin:g}x a busy CPU needs"
    )


def final_verdict(
    reference: list[float], int8: list[float], schedule: Schedule, contention: Contention | None
) -> tuple[Verdict, Decision, str, bool]:
    """``(verdict, decision, rule, close)`` when sampling has to stop."""
    threshold, confidence, min_pairs = schedule.threshold, schedule.confidence, schedule.pairs_min
    decision = decide(reference, int8, threshold, confidence=confidence, min_pairs=min_pairs)
    judged = judge(decision, threshold, contention)
    if judged is not None:
        return judged[0], decision, judged[1], False
    if contention is not None and contention.busy:
        return "inconclusive", decision, inconclusive_rule(decision, threshold, contention), False
    close = decide(
        reference, int8, threshold, confidence=confidence, min_pairs=min_pairs, final=True
    )
    verdict: Verdict = "pass" if close.verdict == "pass" else "fail"
    return verdict, close, close.rule, True


def progress_line(decision: Decision | None, n: int, elapsed: float, threshold: float) -> str:
    """``quant_speedup: 12 pairs in 3.6 s, INT8 1.52x (99% CI 1.31-1.77) vs threshold 1.5x``."""
    head = f"quant_speedup: {n} pairs in {elapsed:.1f} s"
    if decision is None or not math.isfinite(decision.ci_high):
        return f"{head}, no interval yet (threshold {threshold:.3g}x)"
    return (
        f"{head}, INT8 {decision.speedup:.2f}x ({decision.confidence * 100:g}% CI "
        f"{decision.ci_low:.2f}\u2013{decision.ci_high:.2f}) vs threshold {threshold:.3g}x"
    )


@dataclass
class _Run:
    """The sampler's state between pairs."""

    schedule: Schedule
    start: float
    budget: float
    next_look: int
    reference: list[float] = field(default_factory=list)
    int8: list[float] = field(default_factory=list)
    pair_s: list[float] = field(default_factory=list)
    decision: Decision | None = None
    extended: bool = False

    def add(self, pair: tuple[float, float], seconds: float) -> None:
        self.reference.append(pair[0])
        self.int8.append(pair[1])
        self.pair_s.append(seconds)

    def out_of_time(self, now: float) -> bool:
        """Whether one more (median) pair would end past the budget."""
        return now - self.start + statistics.median(self.pair_s) > self.budget

    def look(self, contention: Contention | None) -> tuple[Verdict, str] | None:
        n = len(self.reference)
        self.next_look = max(n + 1, math.ceil(n * self.schedule.look_growth))
        s = self.schedule
        self.decision = decide(
            self.reference, self.int8, s.threshold, confidence=s.confidence, min_pairs=s.pairs_min
        )
        return judge(self.decision, s.threshold, contention)

    def extend(self, contention: Contention | None, now: float) -> bool:
        """Sample on past the budget, if another pair fits the close budget: only once, only
        for a close case on a quiet CPU."""
        longer = self.schedule.budget_when_close
        if self.extended or longer <= self.budget or (contention is not None and contention.busy):
            return False
        self.budget = longer
        self.extended = not self.out_of_time(now)
        return self.extended


def sample(
    time_pair: PairTimer,
    schedule: Schedule,
    *,
    clock: Callable[[], float],
    watch: Watch | None = None,
    progress: Callable[[str], None] | None = None,
) -> Sampled:
    """Take warm-up and timed pairs until a verdict is clear or the schedule runs out."""
    watch = watch if watch is not None else Unwatched()
    for i in range(schedule.warmup):
        time_pair(i, True)
    watch.start()
    start = clock()
    run = _Run(schedule, start, schedule.time_budget, schedule.pairs_min)
    last_progress = start
    while True:
        k = len(run.reference)
        pair_start = clock()
        pair = time_pair(schedule.warmup + k, k % 2 == 0)
        now = clock()
        run.add(pair, now - pair_start)
        n = k + 1
        out_of_time = run.out_of_time(now)
        last = n >= schedule.pairs_min and (out_of_time or n >= schedule.max_pairs)
        if n >= run.next_look or last:
            judged = run.look(watch.reading())
            if judged is not None:
                return _sampled(run, judged[0], judged[1], "decided", now, watch)
        if last and not (
            out_of_time and n < schedule.max_pairs and run.extend(watch.reading(), now)
        ):
            contention = watch.reading()
            verdict, decision, rule, close = final_verdict(
                run.reference, run.int8, schedule, contention
            )
            run.decision = decision
            stopped: Stopped = "budget" if out_of_time else "max_pairs"
            return _sampled(run, verdict, rule, stopped, now, watch, close=close)
        if progress is not None and now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            progress(progress_line(run.decision, n, now - start, schedule.threshold))


def _sampled(
    run: _Run,
    verdict: Verdict,
    rule: str,
    stopped: Stopped,
    now: float,
    watch: Watch,
    *,
    close: bool = False,
) -> Sampled:
    assert run.decision is not None  # every ending follows a look
    return Sampled(
        verdict=verdict,
        decision=run.decision,
        rule=rule,
        close=close,
        stopped=stopped,
        sampling_s=now - run.start,
        contention=watch.reading(),
        extended=run.extended,
        reference=run.reference,
        int8=run.int8,
    )
