"""``dynamic-int8``: the seed's ``quantize_dynamic(..., {nn.Linear}, qint8)``, made correct.

Correct means: Conv1D layers are converted to ``nn.Linear`` first, so GPT-2 is really
quantized rather than only its ``lm_head``. What it keeps from the seed is the
per-tensor dynamic activation scale, which is fast on CPU and inaccurate on LLMs
whose activations have outlier channels (see docs/schemes.md). It is built on the
deprecated ``torch.ao.quantization`` eager API, which is why it lives alone here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..layers import convert_conv1d
from .base import QuantScheme, Recipe

if TYPE_CHECKING:
    import torch
    from torch import nn


def _dynamic_linear_type() -> type:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


class DynamicInt8(QuantScheme):
    name = "dynamic-int8"
    shares_float_weights = True  # it replaces linear layers, never writes to a weight
    quantizes = ("linear", "lm_head")
    float_by_design = {"experts": "torch.ao quantize_dynamic has no path for 3-D expert weights"}
    summary = (
        "torch.ao quantize_dynamic: per-tensor int8 weights and per-tensor dynamic int8 "
        "activations (the seed recipe, Conv1D included)"
    )
    kld_bound = 5.0  # known to be poor on LLMs; the bound documents it, it does not excuse it

    def quantize(self, model: nn.Module) -> nn.Module:
        import warnings

        import torch
        from torch import nn

        convert_conv1d(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao eager quantization is deprecated
            return torch.ao.quantization.quantize_dynamic(
                model, {nn.Linear}, dtype=torch.qint8, inplace=True
            )

    def is_quantized_module(self, module: nn.Module) -> bool:
        return type(module) is _dynamic_linear_type()

    def state_tensors(self, name: str, module: Any) -> tuple[dict[str, torch.Tensor], Recipe]:
        weight, bias = module._packed_params._weight_bias()
        parts = {"weight_int8": weight.int_repr()}
        if bias is not None:
            parts["bias"] = bias
        meta = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "scale": float(weight.q_scale()),
            "zero_point": int(weight.q_zero_point()),
            "bias": bias is not None,
        }
        return parts, meta

    def module_from_tensors(self, tensors: dict[str, torch.Tensor], meta: Recipe) -> nn.Module:
        import torch

        linear = _dynamic_linear_type()(
            meta["in_features"], meta["out_features"], bias_=meta["bias"], dtype=torch.qint8
        )
        weight = torch._make_per_tensor_quantized_tensor(
            tensors["weight_int8"], meta["scale"], meta["zero_point"]
        )
        linear.set_weight_bias(weight, tensors.get("bias"))
        return linear
