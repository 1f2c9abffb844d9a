"""Deciding "INT8 is at least ``threshold`` times faster than the reference" from noisy timings.

The speedup gate must not fail a good model because a neighbour process stole a
core for a moment, and must still catch a real slowdown. The decision is made from
*paired* timings (reference and INT8 back to back on the same work, order alternated),
because both halves of a pair see roughly the same machine: the ratio within a pair
cancels slow drifts (thermal throttling, another job starting) that would swamp a
comparison of two separate averages.

The statistic
    Per pair ``i`` the log-ratio ``r_i = log(reference[i] / int8[i])``; logs make 2x faster
    and 2x slower symmetric. The speedup is ``exp(HL)``, where HL is the
    Hodges-Lehmann estimate: the median of the Walsh averages ``(r_i + r_j) / 2``,
    ``i <= j``. Like the median it shrugs off a pair that lost its core (its
    breakdown point is 29%), but it uses the sizes of the other pairs' ratios and not
    only their signs, so it is far less noisy.

The interval
    The Wilcoxon signed-rank confidence interval, i.e. the shifts ``mu`` that a
    two-sided signed-rank test of ``r - mu`` would not reject: the order statistics
    ``[W_(k), W_(M-k+1)]`` of the ``M = n(n+1)/2`` Walsh averages. ``k`` comes from the
    exact null distribution of the signed-rank statistic up to :data:`EXACT_MAX_PAIRS`
    pairs without ties, and from its normal approximation (tie-corrected variance,
    continuity correction) beyond. Against the sign-test interval of the median
    (what this gate used before) it is about 1.5 times as efficient for normal noise:
    the same width from about two thirds of the pairs, at the same error rates.

    Its one assumption beyond independence: the log-ratios are symmetric about their
    centre. That holds whenever the two runs of a pair suffer the same *multiplicative*
    noise distribution, however skewed it is, because ``log e1 - log e2`` is symmetric
    for independent, identically distributed ``e1, e2``; alternating the order of the
    runs (AB, BA) makes an order effect symmetric too. Noise that is not alike for both
    (a fixed 5 ms stall hurts the faster INT8 step more, in logs) shifts the centre a
    little towards "INT8 slower", i.e. towards a fail, which the 0.8x-truth benchmark
    (``benchmarks/speedup_noise.py``) measures.

The confidence level
    99% by default (:data:`DEFAULT_CONFIDENCE`). The gate looks at the interval again
    and again as pairs accumulate (sequential testing), which inflates the error rate
    of a single look, so it looks only each time the sample has grown by a quarter
    (:data:`LOOK_GROWTH`). Seeded simulation (lognormal noise of 15% per step, 10% of
    steps slowed 1.2-3x, 8 to 300 pairs, 1,000 gate runs per row): with the threshold
    *equal* to the true speedup, where any confident verdict is luck, 7.2% of runs gave
    one (3.2% fail, 4.0% pass); with the threshold 5% off the truth a confident verdict
    on the wrong side came in 0.5-0.8% of runs; at 0.8x and 1.2x the truth every run
    was right, after a median of 17 and 28 pairs. The smallest sample with any interval
    at 99% is 8 pairs (then the interval is [min, max]).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

#: see the module docstring for why 99% and not 95%
DEFAULT_CONFIDENCE = 0.99

#: the sequential schedule: after a look at ``n`` pairs the next look waits for
#: ``ceil(n * LOOK_GROWTH)`` pairs (see "The confidence level" above)
LOOK_GROWTH = 1.25

#: up to this many tie-free pairs the interval uses the exact signed-rank distribution
EXACT_MAX_PAIRS = 50

Verdict = Literal["pass", "fail", "undecided"]


@dataclass
class Decision:
    """One verdict of the speedup gate, with everything needed to explain it."""

    verdict: Verdict
    speedup: float  # exp(Hodges-Lehmann estimate of the log-ratio)
    ci_low: float  # 0.0 when too few pairs for an interval at this confidence
    ci_high: float  # math.inf in that case
    confidence: float  # the nominal level asked for
    n: int  # number of pairs
    close: bool  # decided on the point estimate because the interval was inconclusive
    rule: str  # one sentence: how the verdict was reached


@dataclass(frozen=True)
class SignedRankCI:
    """A signed-rank interval for the centre of symmetry, with how it was computed."""

    low: float  # -inf when the sample is too small for any interval
    high: float  # +inf in that case
    coverage: float  # exact coverage (exact method) or its normal approximation
    method: Literal["exact", "normal", "none"]


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0.5 <= confidence < 1):
        raise ValueError(f"confidence must be in [0.5, 1), e.g. 0.99; got {confidence!r}")


@functools.lru_cache(maxsize=EXACT_MAX_PAIRS + 1)
def _signed_rank_cumulative(n: int) -> tuple[int, ...]:
    """``cum[t]``: how many of the 2**n sign patterns give a signed-rank sum ``T+ <= t``."""
    counts = [1]
    for rank in range(1, n + 1):  # add rank `rank` with either sign
        grown = counts + [0] * rank
        for t, c in enumerate(counts):
            grown[t + rank] += c
        counts = grown
    return tuple(itertools.accumulate(counts))


def signed_rank_cdf(t: int, n: int) -> float:
    """``P(T+ <= t)`` under the null for ``n`` untied, non-zero differences (exact)."""
    if t < 0:
        return 0.0
    cum = _signed_rank_cumulative(n)
    return cum[min(t, len(cum) - 1)] / 2**n


def pairs_for_an_interval(confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The fewest pairs whose signed-rank interval can exclude anything at ``confidence``.

    With ``n`` pairs the widest interval, [min, max], misses the centre with probability
    ``2 * 0.5**n`` (all signs alike); below this count no interval reaches ``confidence``
    and no clear verdict is possible (8 pairs at 99%).
    """
    _check_confidence(confidence)
    n = 1
    while 2 * 0.5**n > 1.0 - confidence + 1e-12:
        n += 1
    return n


def walsh_averages(values: Sequence[float]) -> list[float]:
    """All ``(x_i + x_j) / 2`` for ``i <= j``, sorted (``n(n+1)/2`` of them)."""
    import numpy as np

    x = np.sort(np.asarray(values, dtype=float))
    i, j = np.triu_indices(len(x))
    return np.sort((x[i] + x[j]) / 2).tolist()


def hodges_lehmann(values: Sequence[float]) -> float:
    """The Hodges-Lehmann estimate of the centre: the median of the Walsh averages."""
    if len(values) == 0:
        raise ValueError("hodges_lehmann needs at least one value")
    w = walsh_averages(values)
    m = len(w)
    return w[m // 2] if m % 2 else (w[m // 2 - 1] + w[m // 2]) / 2


def _tie_sizes(values: Sequence[float]) -> list[int]:
    sizes: dict[float, int] = {}
    for v in values:
        sizes[v] = sizes.get(v, 0) + 1
    return [t for t in sizes.values() if t > 1]


def _ci_rank(n: int, confidence: float, ties: list[int]) -> tuple[int, float, str]:
    """``(k, coverage, method)``: the interval is ``[W_(k), W_(M-k+1)]``; ``k = 0``: none.

    ``k`` is the smallest count of Walsh averages at or below ``mu`` for which the
    two-sided signed-rank test of ``x - mu`` keeps ``mu`` at level ``1 - confidence``.
    """
    alpha = 1.0 - confidence
    m = n * (n + 1) // 2
    if n <= EXACT_MAX_PAIRS and not ties:
        k = 0  # the largest k with P(T+ <= k-1) <= alpha/2 (T+ is symmetric about m/2)
        while k < m // 2 and signed_rank_cdf(k, n) <= alpha / 2 + 1e-12:
            k += 1
        return k, 1.0 - 2 * signed_rank_cdf(k - 1, n), "exact"
    # Between two consecutive Walsh averages the |x - mu| tie only where the x do, so
    # the tie-corrected variance does not depend on mu.
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    se = math.sqrt(var)
    if se == 0:  # every value equal: the data pin the centre exactly
        return 1, 1.0, "normal"
    z = NormalDist().inv_cdf(1 - alpha / 2)
    # accept while |T+ - m/2| - 1/2 < z * se (continuity correction)
    k = max(math.floor(m / 2 - z * se - 0.5) + 1, 0)
    coverage = 1.0 - 2 * NormalDist().cdf((k - 1 + 0.5 - m / 2) / se)
    return k, coverage, "normal"


def signed_rank_ci(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> SignedRankCI:
    """Wilcoxon signed-rank confidence interval for the centre of ``values``.

    When too few values exist for any interval to reach ``confidence`` (fewer than 8
    at 99%), returns ``(-inf, inf)`` with method ``"none"``: nothing can be excluded yet.
    """
    _check_confidence(confidence)
    n = len(values)
    if n == 0:
        raise ValueError("signed_rank_ci needs at least one value")
    k, coverage, method = _ci_rank(n, confidence, _tie_sizes(values))
    if k == 0:
        return SignedRankCI(-math.inf, math.inf, 1.0, "none")
    w = walsh_averages(values)
    return SignedRankCI(
        w[k - 1], w[len(w) - k], coverage, "exact" if method == "exact" else "normal"
    )


def _validate(reference: Sequence[float], int8: Sequence[float], threshold: float) -> None:
    if len(reference) != len(int8):
        raise ValueError(
            f"reference and int8 timings must be paired: got {len(reference)} reference and "
            f"{len(int8)} INT8 samples"
        )
    if len(reference) == 0:
        raise ValueError("no timing pairs to decide on")
    for name, samples in (("reference", reference), ("int8", int8)):
        for i, v in enumerate(samples):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}[{i}] = {v!r}: timings must be positive finite seconds")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive finite speedup factor, got {threshold!r}")


def log_ratios(reference: Sequence[float], int8: Sequence[float]) -> list[float]:
    """Per-pair ``log(reference/int8)``: > 0 where INT8 was faster."""
    return [math.log(a / b) for a, b in zip(reference, int8, strict=True)]


def _fmt_ci(lo: float, hi: float) -> str:
    if not math.isfinite(hi):
        return "no interval yet"
    return f"{lo:.3g}-{hi:.3g}"


def decide(
    reference: Sequence[float],
    int8: Sequence[float],
    threshold: float,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    final: bool = False,
    min_pairs: int = 5,
) -> Decision:
    """Is INT8 at least ``threshold`` times faster than the reference?

    ``pass`` when the whole confidence interval of the speedup lies at or above
    ``threshold``, ``fail`` when it lies entirely below, ``undecided`` otherwise
    (including while fewer than ``min_pairs`` pairs exist). With ``final=True``
    (the sampling budget is spent) an undecided case is settled on the point
    estimate and marked ``close=True`` so that reports can say so.
    """
    _validate(reference, int8, threshold)
    _check_confidence(confidence)
    n = len(reference)
    logs = log_ratios(reference, int8)
    speedup = math.exp(hodges_lehmann(logs))
    ci = signed_rank_ci(logs, confidence)
    ci_low, ci_high = math.exp(ci.low), math.exp(ci.high)  # exp(-inf) == 0.0
    pct = f"{confidence * 100:g}%"
    ci_text = _fmt_ci(ci_low, ci_high)
    what = f"the {pct} signed-rank CI of the speedup ({ci_text}, {n} pairs)"

    if n >= min_pairs and ci_low >= threshold:
        rule = f"pass: {what} lies at or above the {threshold:.3g}x threshold"
        return Decision("pass", speedup, ci_low, ci_high, confidence, n, False, rule)
    if n >= min_pairs and ci_high < threshold:
        rule = f"fail: {what} lies below the {threshold:.3g}x threshold"
        return Decision("fail", speedup, ci_low, ci_high, confidence, n, False, rule)
    if n < min_pairs:
        why = f"{n} pairs are fewer than the {min_pairs} needed"
    else:
        why = f"{what} contains the {threshold:.3g}x threshold"
    if final:
        verdict: Verdict = "pass" if speedup >= threshold else "fail"
        rule = (
            f"{verdict} (close): {why} when sampling stopped, so the point estimate "
            f"{speedup:.3g}x (Hodges-Lehmann) decided"
        )
        return Decision(verdict, speedup, ci_low, ci_high, confidence, n, True, rule)
    if n < min_pairs:
        why = f"{n} of {min_pairs} pairs so far"
    return Decision(
        "undecided", speedup, ci_low, ci_high, confidence, n, False, f"undecided: {why}"
    )
