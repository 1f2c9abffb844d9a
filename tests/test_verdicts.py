"""Failure messages print each measured ratio with enough digits to differ from its bound."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_llmquant.verdicts import memory_verdict, similarity_verdict


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
