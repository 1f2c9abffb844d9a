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
