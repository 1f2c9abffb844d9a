"""A demo of what users write: run it with ``pytest examples --llmq-model=smollm2-135m``."""

from __future__ import annotations

import pytest


def test_int8_generates_text(int8_model, llmq_tokenizer):
    ids = llmq_tokenizer("The capital of France is", return_tensors="pt")
    out = int8_model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert llmq_tokenizer.decode(out[0, ids["input_ids"].shape[1] :]).strip()


def test_every_linear_layer_is_quantized(llmq_pair):
    assert llmq_pair.coverage.complete, str(llmq_pair.coverage)


@pytest.mark.quant_memory(2.0)
@pytest.mark.quant_speedup(1.2)
def test_int8_is_smaller_and_faster(llmq_pair):
    """Memory and speed gates: measured after the body passes."""


@pytest.mark.quant_similarity()
def test_int8_stays_close_to_fp32(llmq_pair):
    """Quality gate with the default thresholds: the torch.ao dynamic recipe (dynamic-int8) fails this on SmolLM2."""
