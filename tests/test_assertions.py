"""The gates without markers: helpers that measure, decide and raise a readable AssertionError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pytest_llmquant import (
    assert_memory_reduction,
    assert_similar,
    assert_speedup,
    measure_similarity,
)


@pytest.fixture(scope="module")
def models(tiny_gpt2_dir: Path):
    from pytest_llmquant import build_int8, load_fp32

    fp32, tok = load_fp32(str(tiny_gpt2_dir))
    int8, _ = build_int8(fp32, "dynamic-int8")
    return fp32, int8, tok


def test_measure_similarity_returns_every_metric_with_its_error(models) -> None:
    fp32, int8, tok = models
    r = measure_similarity(fp32, int8, tok, n_tokens=200)
    assert r.n_tokens == 200 and r.mean_kld > 0 and r.kld_se > 0
    assert 0 <= r.same_top <= 1 and r.same_top_se >= 0 and r.ppl_ratio > 0


def test_assert_similar_passes_and_fails(models) -> None:
    fp32, int8, tok = models
    assert_similar(fp32, fp32, tok, n_tokens=200)  # a model is identical to itself
    with pytest.raises(
        AssertionError, match=r"quant_similarity failed for INT8 model: mean KLD .* > 1e-09"
    ):
        assert_similar(fp32, int8, tok, max_kl=1e-9, n_tokens=200)


def test_assert_speedup_fails_an_impossible_bar(models) -> None:
    fp32, int8, tok = models
    with pytest.raises(AssertionError, match=r"quant_speedup failed for INT8 model: .* < 100x"):
        assert_speedup(fp32, int8, tok, 100, time_budget=2, new_tokens=4)


def test_assert_memory_reduction(models) -> None:
    fp32, int8, _ = models
    result = assert_memory_reduction(fp32, int8, 1.5)
    assert result.ratio > 1.5
    with pytest.raises(
        AssertionError, match=r"quant_memory failed for INT8 model: weights .* < 50x"
    ):
        assert_memory_reduction(fp32, copy.deepcopy(int8), 50)


def test_bad_threshold_is_a_value_error(models) -> None:
    fp32, int8, tok = models
    with pytest.raises(ValueError, match="min_ratio=-2 must be a finite number > 0"):
        assert_memory_reduction(fp32, int8, -2)
