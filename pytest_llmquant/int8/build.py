"""Quantizing the reference on a private copy, checked: the scheme and hook routes' shared
machinery (:mod:`.routes`), and :func:`build_int8`, the public way to quantize with a scheme.

Both routes work on a private copy and are checked the same way: the reference's logits
must be bit-identical afterwards (the gates compare against it), and at least one linear
layer must be quantized (an INT8 model with none is FP32 in disguise).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ..errors import LlmqModelError, LlmqUsageError
from ..heap import give_back_freed_memory
from ..layers import Coverage, coverage, linear_like_layers
from ..weight_kinds import QUANTIZABLE
from .routes.base import Int8Built, QuantizeHook

if TYPE_CHECKING:
    import torch

    from ..types import CausalLM

__all__ = ["Int8Built", "build_int8", "make_int8", "private_copy", "probe_logits"]


def probe_logits(model: CausalLM) -> torch.Tensor:
    """Logits on a fixed input: used to prove quantizing left the reference untouched."""
    import torch

    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[operator]
    device = next(model.parameters()).device
    ids = (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)
    with torch.inference_mode():
        return model(ids).logits.clone()


def private_copy(model: CausalLM, *, share_float_weights: bool) -> CausalLM:
    """A copy the quantizer may change freely. With ``share_float_weights`` every parameter
    and buffer is shared with ``model`` (only the module tree is new), so quantizing never
    holds two full-precision copies; the probe check in :func:`build_int8` still proves the
    reference came out unchanged."""
    if not share_float_weights:
        return copy.deepcopy(model)
    memo: dict[int, torch.Tensor] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def check_quantizable(reference: CausalLM, what: str, label: str) -> None:
    if not linear_like_layers(reference):
        raise LlmqUsageError(
            f"{label} has no quantizable linear layers (no nn.Linear or Conv1D), so {what} "
            "would return it unchanged; test a model with linear layers"
        )


def claims(scheme: str | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The weight kinds our ``scheme`` quantizes and why it leaves others float; a model
    no scheme of ours made (None) is expected to quantize all but embeddings and norms."""
    if scheme is None:
        return QUANTIZABLE, {}
    from ..schemes import REGISTRY, get_scheme

    if scheme not in REGISTRY:
        return QUANTIZABLE, {}
    quant = get_scheme(scheme)
    return quant.quantizes, dict(quant.float_by_design)


def checked(
    reference: CausalLM,
    int8_model: CausalLM,
    before: torch.Tensor,
    what: str,
    label: str,
    *,
    expected: tuple[str, ...] = QUANTIZABLE,
    notes: dict[str, str] | None = None,
) -> Coverage:
    """The reference is unchanged and the INT8 model has at least one quantized layer.

    ``expected`` are the weight kinds the maker claims to quantize (a scheme's
    ``quantizes``; everything but embeddings and norms for a user's model), ``notes`` why
    a kind stays float by design: both go into the coverage the suite checks."""
    import torch

    int8_model.eval()
    if not torch.equal(before, probe_logits(reference)):
        raise LlmqModelError(
            f"quantizing {label} with {what} changed the FP32 model; a quantizer must work "
            "on a copy (copy.deepcopy) so the gates compare against the real FP32 model"
        )
    cov = coverage(reference, int8_model, expected=expected, notes=notes)
    if not (cov.quantized or cov.experts_quantized):
        raise LlmqUsageError(
            f"{what} quantized none of the {cov.total} linear layers of {label}; the INT8 "
            "model would be FP32 in disguise — check the quantizer"
        )
    return cov


def build_int8(
    reference: CausalLM,
    scheme: str,
    *,
    device: str = "cpu",
    calibration: list[torch.Tensor] | None = None,
    label: str = "the model",
) -> tuple[CausalLM, Coverage]:
    """Quantize a private copy with a built-in scheme and check coverage; the reference is
    never touched."""
    from ..schemes import get_scheme

    quant = get_scheme(scheme)
    quant.check_device(device)  # only here: a user's hook may well build a GPU model
    check_quantizable(reference, repr(scheme), label)
    before = probe_logits(reference)
    work = private_copy(reference, share_float_weights=quant.shares_float_weights)
    quant.prepare(work, calibration)
    int8_model = quant.quantize(work)
    cov = checked(
        reference,
        int8_model,
        before,
        repr(scheme),
        label,
        expected=quant.quantizes,
        notes=quant.float_by_design,
    )
    give_back_freed_memory()
    return int8_model, cov


def make_int8(
    reference: CausalLM,
    scheme: str,
    *,
    device: str = "cpu",
    label: str = "the model",
    quantize_hook: QuantizeHook | None = None,
) -> Int8Built:
    """The user's ``pytest_llmq_quantize`` hook builds the INT8 model when it returns one
    (a model, or ``(model, label)``); otherwise the built-in ``scheme`` does (the ``hook``
    and ``scheme`` routes of :mod:`.routes`)."""
    from .routes import Int8Request, build_or_load

    return build_or_load(
        Int8Request(reference, scheme, device=device, label=label, hook=quantize_hook)
    )
