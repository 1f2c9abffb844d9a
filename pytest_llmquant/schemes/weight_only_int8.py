"""``weight-only-int8``: int8 weights with per-group float32 scales, float activations.

Why this recipe (see shared/notes/int8-on-cpu.md and the frontier table in docs/schemes.md):

- Decode at batch 1 is a matrix-vector product and is memory-bandwidth bound, so the
  speed of an INT8 model comes from reading 1 byte per weight instead of 4. Activations
  stay float32, which costs no bandwidth and keeps the accuracy of the weights alone.
- Per-channel scales cost ~0.012 mean KLD on SmolLM2-135M; one scale per block of 32
  input columns (llama.cpp's Q8_0 layout) gets under 0.005 at 1.125 bytes per weight.
- ``lm_head`` is ~28M of SmolLM2's 135M weights and is read in full for every token, so
  it is quantized too (this unties it from the embedding, whose rows are only gathered).
- No torch CPU op multiplies int8 weights by float32 activations without first
  dequantizing the whole weight (``torch._weight_int8pack_mm`` is fast only for bf16),
  so the matrix-vector product is a small C kernel (``kernels/int8.c``: AVX2 + FMA,
  OpenMP over output rows), compiled once with gcc into the cache and loaded with
  ``ctypes`` (see :mod:`.kernels`). It is tested against :func:`int8_math.linear_reference`.
  Where it cannot be built (no compiler, not x86-64 with AVX2 and FMA,
  ``LLMQ_INT8_KERNEL=0``) the layer warns once and dequantizes in torch instead: same
  numbers up to float32 summation order, several times slower.
- Prompts (more than ``KERNEL_MAX_TOKENS`` tokens) dequantize the weight and use the
  float32 GEMM: prefill is compute bound, where MKL beats a hand-written loop.
- On CUDA (``--llmq-device=cuda``) the layers keep the same int8 weights and scales and
  dequantize them in torch on every call, into the activation dtype (bfloat16 with the
  default CUDA reference): correct and 1 byte per weight at rest, but not faster than
  bfloat16, since no int8 x bfloat16 GPU kernel ships with torch for this layout.

- Mixture-of-experts layers (transformers 5 keeps experts as 3-D banks, not linear
  layers) become :class:`Int8Experts` (:mod:`.weight_only_experts`): each expert's
  matrices in the same blocks and kernel; the router stays float. An expert class of
  another API is refused in one line, not skipped.

The layers are :class:`WeightOnlyInt8Linear` (in :mod:`.weight_only_linear`) and
:class:`Int8Experts`, importable from here; this module holds the scheme.

Options: ``group_size`` (int, default 32; ``0`` or ``None`` means per channel) and
``skip`` (list of layer-name suffixes to keep in float32, e.g. ``["lm_head"]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import convert_conv1d, linear_like_layers, set_submodule
from ..weight_kinds import expert_layers
from . import kernels
from .base import QuantScheme, Recipe
from .scheme_options import group_size_option, is_skipped
from .weight_only_experts import Int8Experts
from .weight_only_fused import fuse_siblings
from .weight_only_linear import WeightOnlyInt8Linear

__all__ = ["Int8Experts", "WeightOnlyInt8", "WeightOnlyInt8Linear"]


class WeightOnlyInt8(QuantScheme):
    name = "weight-only-int8"
    shares_float_weights = True  # it replaces linear layers, never writes to a weight
    summary = (
        "int8 weights, one float32 scale per 32 input columns (Q8_0 layout), float32 "
        "activations; AVX2 C kernel for decode, lm_head and MoE expert banks included"
    )
    #: measured 0.0042 on SmolLM2-135M over the default corpus (benchmarks/schemes.py),
    #: rounded up with room for the corpus and library versions changing
    kld_bound = 0.005
    devices = ("cpu", "cuda")

    def __init__(self, **config: Any) -> None:  # the user's keywords, parsed here
        config.setdefault("group_size", 32)
        config.setdefault("skip", [])
        super().__init__(**config)
        self.group_size = group_size_option(config["group_size"])
        self.skip = [str(s) for s in config["skip"]]

    def describe(self) -> Recipe:
        """The base description plus ``kernel``: which path the layers run here (the
        device of the last model this process quantized decides)."""
        if _last_device != "cpu":
            path = f"torch dequantize-per-call path on {_last_device} (the C kernel is CPU only)"
        else:
            path = kernels.path_description()
        return {**super().describe(), "kernel": path}

    def quantize(self, model: nn.Module) -> nn.Module:
        _note_device(_device_of(model))
        if _last_device == "cpu":  # the C kernel is for the CPU only
            kernels.available()  # build (or find) it now, not in the first timed forward
        convert_conv1d(model)
        for name, module in expert_layers(model).items():  # an unknown class refuses here
            if not is_skipped(name, self.skip):
                set_submodule(model, name, Int8Experts.from_experts(name, module, self.group_size))
        for name, module in linear_like_layers(model).items():
            if not is_skipped(name, self.skip):
                assert isinstance(module, nn.Linear)  # convert_conv1d made every layer one
                set_submodule(
                    model, name, WeightOnlyInt8Linear.from_linear(module, self.group_size)
                )
        fuse_siblings(model)
        return model

    def load(self, directory: str | Path, *, device: str = "cpu") -> nn.Module:
        """The saved model (per-layer int8 weights), its sibling layers fused again."""
        model = super().load(directory, device=device)
        fuse_siblings(model)
        return model

    def is_quantized_module(self, module: nn.Module) -> bool:
        return type(module) in (WeightOnlyInt8Linear, Int8Experts)

    def state_tensors(self, name: str, module: nn.Module) -> tuple[dict[str, torch.Tensor], Recipe]:
        if isinstance(module, Int8Experts):
            meta = {"kind": "experts", "group_size": module.group_size}
            return module.int8_state(), {**meta, "num_experts": module.num_experts}
        assert isinstance(module, WeightOnlyInt8Linear)
        q, scales = module.int8_state()  # always the row-major layout: files outlive kernels
        parts = {"weight_int8": q, "scales": scales}
        if module.bias is not None:
            parts["bias"] = module.bias
        meta = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "group_size": module.group_size,
            "bias": module.bias is not None,
        }
        return parts, meta

    def rebuild_module(
        self, name: str, tensors: dict[str, torch.Tensor], meta: Recipe, empty: nn.Module
    ) -> nn.Module:
        if meta.get("kind") == "experts":
            kernels.available()
            return Int8Experts.from_saved(name, tensors, meta["group_size"], empty)
        return self.module_from_tensors(tensors, meta)

    def module_from_tensors(self, tensors: dict[str, torch.Tensor], meta: Recipe) -> nn.Module:
        kernels.available()  # as in quantize: a loaded model is ready to time
        return WeightOnlyInt8Linear(
            tensors["weight_int8"],
            tensors["scales"],
            tensors.get("bias") if meta["bias"] else None,
            meta["group_size"],
        )


#: the device type of the last model :meth:`WeightOnlyInt8.quantize` saw in this process,
#: so that ``describe()`` (asked right after quantizing) names the path its layers take
_last_device = "cpu"


def _note_device(device: str) -> None:
    global _last_device
    _last_device = device


def _device_of(model: nn.Module) -> str:
    tensor = next(iter(model.parameters()), None)
    return "cpu" if tensor is None else tensor.device.type
