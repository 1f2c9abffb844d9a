"""Finding the layers INT8 schemes act on, and counting what was quantized.

GPT-2 style models use ``transformers.pytorch_utils.Conv1D`` (weight stored as
(in, out), ``y = x @ W + b``) instead of ``nn.Linear``. ``quantize_dynamic``
and most INT8 libraries skip it silently, so the torch.ao dynamic recipe
(``quantize_dynamic(model, {nn.Linear}, qint8)``) quantizes only ``lm_head`` of
GPT-2. Every scheme here goes through :func:`conv1d_to_linear` first, and
coverage is counted against the FP32 model's linear-like layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return None
    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    """A float ``nn.Linear`` or transformers ``Conv1D`` (exact types, not quantized subclasses)."""
    from torch import nn

    conv1d = _conv1d_type()
    if type(module) is nn.Linear:
        return True
    return conv1d is not None and type(module) is conv1d


def linear_like_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and is_linear_like(m)}


def conv1d_to_linear(module: Any) -> nn.Module:
    """An ``nn.Linear`` that computes exactly what the ``Conv1D`` computes."""
    import torch
    from torch import nn

    weight = module.weight  # (in, out)
    in_features, out_features = weight.shape
    linear = nn.Linear(
        in_features,
        out_features,
        bias=module.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(weight.t().contiguous())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert_conv1d(model: nn.Module) -> int:
    """Replace every ``Conv1D`` of ``model`` in place by an equivalent ``nn.Linear``."""
    conv1d = _conv1d_type()
    if conv1d is None:
        return 0
    names = [n for n, m in model.named_modules() if type(m) is conv1d]
    for name in names:
        set_submodule(model, name, conv1d_to_linear(model.get_submodule(name)))
    return len(names)


@dataclass
class Coverage:
    """Which of the FP32 model's linear-like layers the INT8 model still runs in float."""

    quantized: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.quantized) + len(self.kept_float)

    @property
    def complete(self) -> bool:
        return not self.kept_float and self.total > 0

    def __str__(self) -> str:
        text = f"quantized {len(self.quantized)} of {self.total} linear layers"
        if self.kept_float:
            shown = ", ".join(self.kept_float[:5])
            more = f" and {len(self.kept_float) - 5} more" if len(self.kept_float) > 5 else ""
            text += f" (FP32: {shown}{more})"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "quantized": len(self.quantized),
            "total": self.total,
            "kept_float": list(self.kept_float),
            "quantized_layers": list(self.quantized),
        }


def is_float_layer(module: nn.Module) -> bool:
    """Linear-like and still holding a plain float weight (torchao keeps ``nn.Linear`` but
    swaps the weight for a quantized tensor subclass, which counts as quantized)."""
    import torch

    if not is_linear_like(module):
        return False
    weight = getattr(module, "weight", None)
    return (
        weight is not None and type(weight.data) is torch.Tensor and weight.dtype.is_floating_point
    )


def coverage(fp32_model: nn.Module, int8_model: nn.Module) -> Coverage:
    """Compare layer by layer: a layer still linear-like in the INT8 model was not quantized.

    Works for any INT8 model, ours or the user's, because it only asks whether the
    module at each FP32 linear layer's name is still a plain float layer.
    """
    cov = Coverage()
    int8_modules = dict(int8_model.named_modules())
    for name in linear_like_layers(fp32_model):
        module = int8_modules.get(name)
        if module is None or is_float_layer(module):
            cov.kept_float.append(name)
        else:
            cov.quantized.append(name)
    return cov
