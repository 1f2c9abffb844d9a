"""Build the INT8 model under test from the FP32 one: with the user's
``pytest_llmq_quantize`` hook when it returns a model, else with a built-in scheme.

Both work on a private copy and are checked the same way: the FP32 model's logits must be
bit-identical afterwards (the gates compare against it), and at least one linear layer
must be quantized (an INT8 model with none is FP32 in disguise).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LlmqModelError, LlmqUsageError
from ..heap import give_back_freed_memory
from ..layers import Coverage, coverage, linear_like_layers
from ..origin import Int8Origin, from_model

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


def _check_quantizable(fp32_model: nn.Module, what: str, label: str) -> None:
    if not linear_like_layers(fp32_model):
        raise LlmqUsageError(
            f"{label} has no quantizable linear layers (no nn.Linear or Conv1D), so {what} "
            "would return it unchanged; test a model with linear layers"
        )


def _checked(
    fp32_model: nn.Module, int8_model: nn.Module, before: Any, what: str, label: str
) -> Coverage:
    """The FP32 model is unchanged and the INT8 one has at least one quantized layer."""
    import torch

    int8_model.eval()
    if not torch.equal(before, probe_logits(fp32_model)):
        raise LlmqModelError(
            f"quantizing {label} with {what} changed the FP32 model; a quantizer must work "
            "on a copy (copy.deepcopy) so the gates compare against the real FP32 model"
        )
    cov = coverage(fp32_model, int8_model)
    if not cov.quantized:
        raise LlmqUsageError(
            f"{what} quantized none of the {cov.total} linear layers of {label}; the INT8 "
            "model would be FP32 in disguise — check the quantizer"
        )
    return cov


def build_int8(
    fp32_model: nn.Module,
    scheme: str,
    *,
    device: str = "cpu",
    calibration: list[Any] | None = None,
    label: str = "the model",
) -> tuple[nn.Module, Coverage]:
    """Quantize a private copy with a built-in scheme and check coverage; the FP32 model is
    never touched."""
    from ..schemes import get_scheme

    quant = get_scheme(scheme)
    quant.check_device(device)  # only here: a user's hook may well build a GPU model
    _check_quantizable(fp32_model, repr(scheme), label)
    before = probe_logits(fp32_model)
    work = private_copy(fp32_model, share_float_weights=quant.shares_float_weights)
    quant.prepare(work, calibration)
    int8_model = quant.quantize(work)
    checked = _checked(fp32_model, int8_model, before, repr(scheme), label)
    give_back_freed_memory()
    return int8_model, checked


@dataclass
class Int8Built:
    """An INT8 model with its coverage and where it came from."""

    model: nn.Module
    coverage: Coverage
    origin: Int8Origin


def make_int8(
    fp32_model: nn.Module,
    scheme: str,
    *,
    device: str = "cpu",
    label: str = "the model",
    quantize_hook: Callable[..., Any] | None = None,
) -> Int8Built:
    """The user's ``pytest_llmq_quantize`` hook builds the INT8 model when it returns one
    (a model, or ``(model, label)``); otherwise the built-in ``scheme`` does."""
    returned = None
    if quantize_hook is not None:
        _check_quantizable(fp32_model, "the pytest_llmq_quantize hook", label)
        before = probe_logits(fp32_model)
        returned = quantize_hook(
            model=fp32_model, scheme=scheme, config={"device": device, "label": label}
        )
    if returned is None:
        from ..schemes import get_scheme

        model, cov = build_int8(fp32_model, scheme, device=device, label=label)
        path = get_scheme(scheme).describe().get("kernel")  # after quantizing: the path taken
        origin = Int8Origin("scheme", scheme, 8, scheme=scheme, path=path)
        return Int8Built(model, cov, origin)
    model, given = returned if isinstance(returned, tuple) else (returned, None)
    if isinstance(returned, tuple) and len(returned) != 2 or not hasattr(model, "named_modules"):
        raise LlmqUsageError(
            "pytest_llmq_quantize returned "
            f"{type(returned).__name__}; return the INT8 model, (model, 'a label') or None"
        )
    cov = _checked(fp32_model, model, before, "the pytest_llmq_quantize hook", label)
    return Int8Built(model, cov, from_model(model, "hook", str(given) if given else None))
