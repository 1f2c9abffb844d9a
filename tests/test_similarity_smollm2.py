"""On the packaged SmolLM2-135M: the stored reference is as good as the direct computation,
and the default plan still passes the good scheme and fails torch.ao's dynamic recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_available: None, shared_cache_dir: Path):
    import torch

    from pytest_llmquant.models.cache import ModelCache
    from pytest_llmquant.models.loading import load_fp32

    torch.set_num_threads(1)
    return load_fp32("smollm2-135m", cache=ModelCache(shared_cache_dir))


def test_kld_from_the_stored_reference_matches_the_direct_computation(
    smollm2, tmp_path: Path
) -> None:
    """Mean KLD ~0.0011 ± 0.00002: the 16-bit log-probs move it by far less than 1% of
    either, and every statistic that reads exact side data is identical."""
    from pytest_llmquant.int8.build import build_int8
    from pytest_llmquant.models.cache import ModelCache
    from pytest_llmquant.models.sources import resolve
    from pytest_llmquant.similarity import ReferenceStore, measure_similarity

    fp32, tok = smollm2
    int8, _ = build_int8(fp32, "weight-only-int8")
    store = ReferenceStore.for_source(ModelCache(tmp_path), resolve("smollm2-135m"), fp32)
    direct = measure_similarity(fp32, int8, tok, prompts=())
    cached = measure_similarity(fp32, int8, tok, prompts=(), store=store)
    assert direct.n_tokens == cached.n_tokens == 2048
    assert 0.0005 < direct.mean_kld < 0.005  # the figure this bound is about
    err = abs(cached.mean_kld - direct.mean_kld)
    assert err < 1e-3 * direct.mean_kld  # measured: 4e-5 of it
    assert err < 1e-2 * direct.kld_se  # measured: 0.2% of it
    assert cached.kld_se == pytest.approx(direct.kld_se, rel=1e-3)
    for name in ("same_top", "ppl_fp32", "ppl_int8", "ppl_ratio", "ppl_ratio_se", "rms_dp"):
        assert getattr(cached, name) == getattr(direct, name), name


@pytest.mark.parametrize("scheme, passes", [("weight-only-int8", True), ("dynamic-int8", False)])
def test_the_default_plan_keeps_the_verdicts(smollm2, scheme: str, passes: bool) -> None:
    from pytest_llmquant.int8.build import build_int8
    from pytest_llmquant.similarity import measure_similarity

    fp32, tok = smollm2
    int8, _ = build_int8(fp32, scheme)
    r = measure_similarity(fp32, int8, tok, prompts=())
    within = r.mean_kld <= 0.01 and r.same_top >= 0.95 and r.ppl_ratio <= 1.02
    assert within is passes, str(r)
    if not passes:  # every bound fails, not just one near its edge
        assert r.mean_kld > 0.1 and r.same_top < 0.8 and r.ppl_ratio > 1.5, str(r)
