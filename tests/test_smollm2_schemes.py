"""Every built-in scheme on the packaged SmolLM2-135M: its documented KLD bound holds, its
saved copy reloads with identical logits, and every linear layer is quantized."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pytest_llmquant.schemes import get_scheme, names

pytestmark = pytest.mark.slow

#: scored tokens per scheme: enough for a standard error well under each bound
EVAL_TOKENS = 512


@pytest.fixture(scope="module")
def smollm2(smollm2_available: None, shared_cache_dir: Path) -> tuple[Any, Any]:
    from pytest_llmquant.models.loading import load_fp32

    return load_fp32("smollm2-135m", cache_dir=str(shared_cache_dir))


@pytest.mark.parametrize("name", names())
def test_scheme_meets_its_documented_bound_on_smollm2(
    name: str, smollm2: tuple[Any, Any], tmp_path: Path
) -> None:
    import torch

    from pytest_llmquant.layers import coverage
    from pytest_llmquant.similarity import measure_similarity

    fp32, tokenizer = smollm2
    scheme = get_scheme(name)
    int8 = scheme.quantize(copy.deepcopy(fp32)).eval()

    cov = coverage(fp32, int8)
    assert cov.total == 211 and cov.complete, cov

    result = measure_similarity(fp32, int8, tokenizer, n_tokens=EVAL_TOKENS, prompts=())
    assert result.mean_kld <= scheme.kld_bound, (name, result.mean_kld, scheme.kld_bound)

    scheme.save(int8, tmp_path)
    reloaded = get_scheme(name).load(tmp_path).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(int8(ids).logits, reloaded(ids).logits)
