"""Build the INT8 model under test from the FP32 one: with a built-in scheme, or with the
user's ``pytest_llmq_quantize`` hook.

Both work on a private copy and are checked the same way: the FP32 model's logits must be
bit-identical afterwards (the gates compare against it), and at least one linear layer
must be quantized (an INT8 model with none is FP32 in disguise).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ..errors import LlmqModelError, LlmqUsageError
from ..layers import Coverage, coverage, linear_like_layers

if TYPE_CHECKING:
    from torch import nn


def probe_logits(model: Any) -> Any:
    """Logits on a fixed input: used to prove quantizing left the FP32 model untouched."""
    import torch

    vocab = int(model.get_input_embeddings().weight.shape[0])
    device = next(model.parameters()).device
    ids = (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)
    with torch.inference_mode():
        return model(ids).logits.clone()


def private_copy(model: nn.Module, *, share_float_weights: bool) -> nn.Module:
    """A copy the quantizer may change freely. With ``share_float_weights`` every parameter
    and buffer is shared with ``model`` (only the module tree is new), so quantizing never
    holds two full-precision copies; the probe check in :func:`build_int8` still proves the
    FP32 model came out unchanged."""
    if not share_float_weights:
        return copy.deepcopy(model)
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def build_int8(
    fp32_model: nn.Module,
    scheme: str,
    *,
    device: str = "cpu",
    calibration: list[Any] | None = None,
    label: str = "the model",
    quantize_hook: Any = None,
) -> tuple[nn.Module, Coverage]:
    """Quantize a private copy and check coverage; the FP32 model is never touched."""
    import torch

    from ..schemes import get_scheme

    quant = get_scheme(scheme)
    quant.check_device(device)
    if not linear_like_layers(fp32_model):
        raise LlmqUsageError(
            f"{label} has no quantizable linear layers (no nn.Linear or Conv1D), so {scheme!r} "
            "would return it unchanged; test a model with linear layers"
        )
    before = probe_logits(fp32_model)
    int8_model = None
    if quantize_hook is not None:
        int8_model = quantize_hook(model=fp32_model, scheme=scheme, config={"device": device})
    if int8_model is None:
        work = private_copy(fp32_model, share_float_weights=quant.shares_float_weights)
        quant.prepare(work, calibration)
        int8_model = quant.quantize(work)
    int8_model.eval()
    if not torch.equal(before, probe_logits(fp32_model)):
        raise LlmqModelError(
            f"quantizing {label} with {scheme!r} changed the FP32 model; a quantizer must work "
            "on a copy (copy.deepcopy) so the gates compare against the real FP32 model"
        )
    cov = coverage(fp32_model, int8_model)
    if not cov.quantized:
        raise LlmqUsageError(
            f"{scheme!r} quantized none of the {cov.total} linear layers of {label}; the INT8 "
            "model would be FP32 in disguise — check the scheme"
        )
    return int8_model, cov
