"""The speedup decision on synthetic paired timings: no clock, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_llmquant.stats import DEFAULT_CONFIDENCE, decide, median_ci


def paired(
    ratio: float, n: int, *, sigma: float, seed: int = 0, base: float = 0.040
) -> tuple[list[float], list[float]]:
    """n pairs of s/token with FP32/INT8 = ratio and lognormal noise on each run."""
    rng = np.random.default_rng(seed)
    fp32 = base * np.exp(rng.normal(0.0, sigma, n))
    int8 = base / ratio * np.exp(rng.normal(0.0, sigma, n))
    return fp32.tolist(), int8.tolist()


def test_default_confidence_is_99() -> None:
    assert DEFAULT_CONFIDENCE == 0.99


def test_clear_pass() -> None:
    fp32, int8 = paired(1.75, 12, sigma=0.02)
    d = decide(fp32, int8, 1.2)
    assert d.verdict == "pass"
    assert not d.close
    assert d.ci_low >= 1.2
    assert d.ci_low <= d.speedup <= d.ci_high
    assert d.speedup == pytest.approx(1.75, rel=0.05)
    assert d.n == 12 and d.confidence == 0.99
    assert d.rule.startswith("pass: the 99% CI")


def test_clear_fail() -> None:
    fp32, int8 = paired(1.1, 12, sigma=0.02)
    d = decide(fp32, int8, 1.5)
    assert d.verdict == "fail"
    assert d.ci_high < 1.5
    assert not d.close
    assert "lies below the 1.5x threshold" in d.rule


def test_borderline_undecided_until_final() -> None:
    fp32, int8 = paired(1.5, 20, sigma=0.05, seed=3)
    d = decide(fp32, int8, 1.5)
    assert d.verdict == "undecided"
    assert d.ci_low < 1.5 <= d.ci_high
    assert "contains the 1.5x threshold" in d.rule
    f = decide(fp32, int8, 1.5, final=True)
    assert f.close
    assert f.verdict == ("pass" if f.speedup >= 1.5 else "fail")
    assert (f.speedup, f.ci_low, f.ci_high) == (d.speedup, d.ci_low, d.ci_high)
    assert "(close)" in f.rule and "point estimate" in f.rule


def test_final_does_not_mark_clear_verdicts_close() -> None:
    fp32, int8 = paired(2.0, 12, sigma=0.02)
    d = decide(fp32, int8, 1.2, final=True)
    assert d.verdict == "pass" and not d.close


def test_very_noisy_is_undecided_then_point_estimate() -> None:
    fp32, int8 = paired(1.8, 10, sigma=0.6, seed=1)
    d = decide(fp32, int8, 1.5)
    assert d.verdict == "undecided"
    assert d.ci_high / d.ci_low > 3  # the interval is honest about the noise
    f = decide(fp32, int8, 1.5, final=True)
    assert f.close and f.verdict == ("pass" if f.speedup >= 1.5 else "fail")


def test_one_huge_outlier_does_not_flip_the_verdict() -> None:
    fp32, int8 = paired(1.75, 15, sigma=0.02)
    before = decide(fp32, int8, 1.3)
    int8[4] *= 50  # INT8 lost its core for a whole run
    after = decide(fp32, int8, 1.3)
    assert before.verdict == after.verdict == "pass"
    assert after.speedup == pytest.approx(before.speedup, rel=0.02)
    fp32[7] *= 50  # and FP32 once too
    assert decide(fp32, int8, 1.3).verdict == "pass"


def test_fewer_than_min_pairs_is_undecided() -> None:
    fp32, int8 = paired(3.0, 4, sigma=0.01)
    d = decide(fp32, int8, 1.2, confidence=0.8, min_pairs=5)
    assert d.verdict == "undecided" and "4 of 5 pairs" in d.rule
    f = decide(fp32, int8, 1.2, confidence=0.8, min_pairs=5, final=True)
    assert f.verdict == "pass" and f.close


def test_too_few_pairs_for_the_confidence_gives_no_interval() -> None:
    # at 99% the order-statistic interval needs 8 pairs: 2 * 0.5**7 > 0.01
    fp32, int8 = paired(3.0, 7, sigma=0.01)
    d = decide(fp32, int8, 1.2)
    assert d.verdict == "undecided"
    assert d.ci_low == 0.0 and d.ci_high == math.inf
    assert "no interval yet" in d.rule
    fp32, int8 = paired(3.0, 8, sigma=0.01)
    assert decide(fp32, int8, 1.2).verdict == "pass"


def test_median_ci_order_statistics() -> None:
    xs = list(range(1, 21))  # n = 20 at 95%: k = 6, coverage 1 - 2 P(B <= 5) = 0.9586
    lo, hi, achieved = median_ci(xs, 0.95)
    assert (lo, hi) == (6, 15)
    assert achieved == pytest.approx(0.958611, abs=1e-6)
    lo, hi, achieved = median_ci(xs[:7], 0.99)
    assert (lo, hi, achieved) == (-math.inf, math.inf, 1.0)
    # unsorted input, n = 8 at 99%: only the extremes
    assert median_ci([5, 1, 8, 3, 2, 7, 4, 6], 0.99)[:2] == (1, 8)


@pytest.mark.parametrize("n", [10, 25, 60])
def test_ci_coverage_is_near_nominal(n: int) -> None:
    """Seeded simulation: the interval contains the true median ratio about as often as it
    claims. INT8 gets extra one-sided (exponential) noise, so the noise is skewed: the
    order-statistic interval needs no symmetry."""
    rng = np.random.default_rng(1234 + n)
    true_ratio, sims = 1.6, 1500
    truth = _true_median_ratio(true_ratio)
    hits = 0
    achieved = 0.0
    for _ in range(sims):
        fp32 = 0.04 * np.exp(rng.normal(0, 0.15, n))
        int8 = 0.04 / true_ratio * np.exp(rng.normal(0, 0.15, n)) * (1 + rng.exponential(0.1, n))
        d = decide(fp32.tolist(), int8.tolist(), 1.0, confidence=0.95)
        achieved = median_ci(np.log(fp32 / int8).tolist(), 0.95)[2]
        hits += d.ci_low <= truth <= d.ci_high
    coverage = hits / sims
    se = math.sqrt(achieved * (1 - achieved) / sims)
    assert achieved >= 0.95
    assert abs(coverage - achieved) < 4 * se + 0.005, (coverage, achieved)


def _true_median_ratio(ratio: float, draws: int = 400_000) -> float:
    rng = np.random.default_rng(99)
    logs = (
        rng.normal(0, 0.15, draws)
        - rng.normal(0, 0.15, draws)
        - np.log1p(rng.exponential(0.1, draws))
    )
    return float(ratio * np.exp(np.median(logs)))


def test_sequential_false_fail_rate_is_low() -> None:
    """Looking after every pair (as the gate does) at 99% rarely fails a threshold 0.8x
    below the truth, even with noisy runs and a few outliers."""
    rng = np.random.default_rng(7)
    true_ratio, runs, fails = 1.75, 300, 0
    for _ in range(runs):
        fp32: list[float] = []
        int8: list[float] = []
        verdict = "undecided"
        for _pair in range(25):
            slow_a = rng.uniform(1.2, 3) if rng.random() < 0.1 else 1.0
            slow_b = rng.uniform(1.2, 3) if rng.random() < 0.1 else 1.0
            fp32.append(0.04 * math.exp(rng.normal(0, 0.15)) * slow_a)
            int8.append(0.04 / true_ratio * math.exp(rng.normal(0, 0.15)) * slow_b)
            if len(fp32) >= 6:
                verdict = decide(fp32, int8, 0.8 * true_ratio, min_pairs=6).verdict
                if verdict != "undecided":
                    break
        if verdict == "undecided":
            verdict = decide(fp32, int8, 0.8 * true_ratio, min_pairs=6, final=True).verdict
        fails += verdict == "fail"
    assert fails / runs <= 0.02


@pytest.mark.parametrize(
    ("fp32", "int8", "threshold", "message"),
    [
        ([1.0, 2.0], [1.0], 1.0, "must be paired: got 2 FP32 and 1 INT8"),
        ([], [], 1.0, "no timing pairs"),
        ([1.0, 0.0], [1.0, 1.0], 1.0, r"fp32\[1\] = 0.0: timings must be positive finite"),
        ([1.0, 1.0], [1.0, -2.0], 1.0, r"int8\[1\] = -2.0"),
        ([1.0, math.nan], [1.0, 1.0], 1.0, r"fp32\[1\] = nan"),
        ([1.0, 1.0], [math.inf, 1.0], 1.0, r"int8\[0\] = inf"),
        ([1.0], [1.0], 0.0, "threshold must be a positive finite speedup factor, got 0.0"),
        ([1.0], [1.0], -1.5, "threshold must be a positive"),
    ],
)
def test_input_validation(
    fp32: list[float], int8: list[float], threshold: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decide(fp32, int8, threshold)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, 0.3])
def test_confidence_validation(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence must be in"):
        decide([1.0] * 5, [0.5] * 5, 1.5, confidence=confidence)


@pytest.mark.parametrize("confidence, pairs", [(0.99, 8), (0.95, 6), (0.9, 5)])
def test_pairs_for_an_interval_is_the_first_finite_interval(confidence: float, pairs: int) -> None:
    from pytest_llmquant.stats import pairs_for_an_interval

    assert pairs_for_an_interval(confidence) == pairs
    assert median_ci(range(pairs - 1), confidence)[:2] == (-math.inf, math.inf)
    low, high, achieved = median_ci(range(pairs), confidence)
    assert (low, high) == (0, pairs - 1) and achieved >= confidence
