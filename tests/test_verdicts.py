"""Failure messages print each measured value with enough digits to differ from its bound."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_llmquant.verdicts import memory_verdict, similarity_verdict, speedup_verdict


def similarity(ppl_ratio: float) -> SimpleNamespace:
    return SimpleNamespace(
        n_tokens=256, mean_kld=6e-7, kld_se=5e-9, p99_kld=1e-6, max_kld=2e-6, same_top=1.0,
        same_top_se=0.0, ppl_fp32=379.63, ppl_int8=379.63 * ppl_ratio, ppl_ratio=ppl_ratio,
        rms_dp=1e-4,
    )  # fmt: skip


def test_a_ratio_just_over_its_bound_is_not_printed_as_equal() -> None:
    r = similarity_verdict(
        similarity(1.00003), "tiny [weight-only-int8]", max_kl=1, min_same_top=0.5,
        max_ppl_ratio=1.0000001,
    )  # fmt: skip
    assert not r.passed
    assert "(ratio 1.00003 > 1)" in r.message, r.message
    [row] = [row for row in r.rows if row.metric == "perplexity"]
    assert row.ratio == "1.00003"


def test_a_ratio_far_from_its_bound_keeps_two_decimals() -> None:
    r = similarity_verdict(similarity(1.5), "m [s]", max_kl=1, min_same_top=0.5, max_ppl_ratio=1.02)
    assert "(ratio 1.50 > 1.02)" in r.message, r.message


def test_memory_ratio_just_under_its_bound() -> None:
    m = SimpleNamespace(kind="weights", fp32_bytes=538_100_000, int8_bytes=269_100_000)
    m.ratio = m.fp32_bytes / m.int8_bytes  # 1.99963
    r = memory_verdict(m, "m [s]", min_ratio=2.0)
    assert not r.passed
    assert "ratio 1.9996x < 2x" in r.message, r.message


def test_a_memory_message_says_when_the_weights_are_not_8_bit() -> None:
    from types import SimpleNamespace

    from pytest_llmquant.verdicts import memory_verdict

    r = SimpleNamespace(kind="weights", fp32_bytes=4_000_000, int8_bytes=1_000_000, ratio=4.0)
    assert "its weights" not in memory_verdict(r, "m [weight-only-int8]", min_ratio=2.0).message
    four = memory_verdict(r, "m [gptq 4-bit]", min_ratio=2.0, bits=4).message
    assert four.endswith("; its weights are 4-bit")
    assert memory_verdict(r, "m [x]", min_ratio=2.0, bits=None).message.endswith("unknown width")


def test_a_speedup_message_names_the_reference_precision() -> None:
    from pytest_llmquant.speed.timing import SpeedupResult
    from pytest_llmquant.verdicts import speedup_verdict

    r = SpeedupResult(
        verdict="fail",
        confidence=0.99,
        ci_low=0.43,
        ci_high=0.76,
        speedup=0.70,
        n_pairs=22,
        threads=16,
        reference_ms_per_token=16.5,
        int8_ms_per_token=23.7,
        reference_tokens_per_s=60.5,
        int8_tokens_per_s=42.2,
        close=False,
        rule="fail: the CI lies below the 1x threshold",
        threshold=1.0,
        new_tokens=32,
        prompts=4,
        wall_s=2.0,
    )
    message = speedup_verdict(
        r, "llama [weight-only-int8]", min_speedup=1.0, reference="BF16"
    ).message
    assert "faster than BF16 (99% CI 0.43–0.76" in message


def similarity_near(**values: float) -> SimpleNamespace:
    """The tiny GPT-2 numbers, with some statistics moved next to a bound."""
    return SimpleNamespace(
        **{**vars(similarity(1.0)), "kld_se": 1e-4, "same_top_se": 0.02, **values}
    )


def test_a_kld_just_over_its_bound_is_printed_with_the_digit_that_differs() -> None:
    """Two significant digits would print 0.01128 as 0.011, which reads as under 0.0112."""
    r = similarity_verdict(
        similarity_near(mean_kld=0.01128), "m [s]", max_kl=0.0112, min_same_top=0.5,
        max_ppl_ratio=2,
    )  # fmt: skip
    assert not r.passed
    assert "mean KLD 0.0113 ± 0.0001 > 0.0112 " in r.message, r.message


def test_a_kld_far_from_its_bound_keeps_two_significant_digits() -> None:
    r = similarity_verdict(
        similarity_near(mean_kld=0.004123), "m [s]", max_kl=0.01, min_same_top=0.5,
        max_ppl_ratio=2,
    )  # fmt: skip
    assert "mean KLD 0.0041 ± 0.0001 ≤ 0.01;" in r.message, r.message


def test_a_same_top_just_under_its_bound_is_not_printed_as_equal() -> None:
    r = similarity_verdict(
        similarity_near(same_top=0.8086), "m [s]", max_kl=1, min_same_top=0.809,
        max_ppl_ratio=2,
    )  # fmt: skip
    assert not r.passed
    assert "same-top 0.8086 ± 0.020 < 0.809 " in r.message, r.message


def speedup(verdict: str, low: float, high: float, point: float, close: bool = False) -> Any:
    """A measured speedup on a quiet CPU, with the interval and point given."""
    from pytest_llmquant.speed.timing import SpeedupResult

    return SpeedupResult(
        verdict=verdict, speedup=point, ci_low=low, ci_high=high, confidence=0.99, close=close,
        rule="given", threshold=1.0, n_pairs=8, reference_ms_per_token=40.0,
        int8_ms_per_token=20.0, reference_tokens_per_s=25.0, int8_tokens_per_s=50.0, threads=1,
        new_tokens=32, prompts=4, wall_s=1.0, reference_samples=[0.04], int8_samples=[0.02],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("result", "threshold", "shown"),
    [
        (speedup("pass", 1.9637, 2.04, 2.0), 1.96, "INT8 2.00x faster than FP32 (99% CI 1.964–2.04,"),
        (speedup("fail", 1.96, 2.0374, 2.0), 2.04, "INT8 2.00x faster than FP32 (99% CI 1.96–2.037,"),
        (speedup("fail", 1.2, 1.8, 1.4962, close=True), 1.5, "INT8 1.496x faster than FP32 (99% CI 1.20–1.80,"),
        (speedup("pass", 1.5, 2.5, 2.0), 1.2, "INT8 2.00x faster than FP32 (99% CI 1.50–2.50,"),
    ],
    ids=["pass-on-the-low-end", "fail-on-the-high-end", "close-call-on-the-point", "far"],
)  # fmt: skip
def test_the_speedup_that_decided_is_not_printed_as_the_threshold(
    result: Any, threshold: float, shown: str
) -> None:
    """Whatever decided (the interval's end nearer the threshold, or the point estimate of
    a close call) gets the digits it needs; the rest keep two decimals."""
    message = speedup_verdict(result, "m [s]", min_speedup=threshold).message
    assert shown in message, message
