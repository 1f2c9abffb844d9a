"""One C kernel call for sibling ``weight-only-int8`` layers that read the same input.

Why: decode of a small model is ~200 matrix-vector products per token, and each call
pays Python, ctypes and an OpenMP fork/join. Attention's q/k/v projections all read the
same normed hidden state, and so do the MLP's gate/up, so :func:`fuse_siblings` gives
each such group one :class:`FusedGroup`: their packed weights are concatenated once (at
quantize or load time) into one tensor, each layer's ``packed`` buffer becomes a view
into it (no second copy), and the first of them to be called computes all outputs in one
kernel call; the others then return theirs without computing.

When the cached outputs are used: only for the very tensor object (``is``) the group
computed from, and each output once; a layer called with any other tensor, or twice,
computes again. This assumes what every transformers attention/MLP does, that the input
is not modified in place between the sibling calls (inference tensors carry no version
counter to check). A group also checks on every call that its layers still hold the
buffers it was made from (an ``.to()``, a replaced buffer or bias) and otherwise
dissolves: each layer then runs its own call, with the same numbers.

Saving is unaffected: files hold each layer's row-major int8 weights and scales
(:meth:`WeightOnlyInt8Linear.int8_state`), and a reload fuses again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .kernels.calls import MAX_PARTS, PackedCall

if TYPE_CHECKING:
    from .weight_only_linear import WeightOnlyInt8Linear

#: Up to this many tokens per call the C kernel runs (decode, small batches); above it
#: the weight is dequantized and the float32 GEMM runs (prompt processing).
KERNEL_MAX_TOKENS = 8

#: sibling layer names that read one input in the models transformers ships (Llama,
#: Mistral, Qwen, SmolLM, Gemma, Phi-3's are already fused; GPT-2 is ``c_attn``, one layer)
SIBLINGS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedGroup:
    """The prepared call of a group of layers (one layer is a group of one)."""

    def __init__(self, layers: list[WeightOnlyInt8Linear], packed: torch.Tensor) -> None:
        self.layers = tuple(layers)
        self.call = PackedCall(
            packed,
            layers[0].in_features,
            layers[0].block,
            [layer.out_features for layer in layers],
            [layer._buffers["bias"] for layer in layers],
            max_tokens=KERNEL_MAX_TOKENS,
        )
        self._held = tuple((layer._buffers["packed"], layer._buffers["bias"]) for layer in layers)
        self._x: torch.Tensor | None = None
        self._outs: list[torch.Tensor] = []
        self._left = [False] * len(layers)

    def intact(self) -> bool:
        """Whether every layer still holds the very buffers this call was made from."""
        for layer, (packed, bias) in zip(self.layers, self._held, strict=True):
            if layer._buffers["packed"] is not packed or layer._buffers["bias"] is not bias:
                return False
            if layer._group is not self:
                return False
        return True

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Layer ``index``'s output for ``x``; None where ``x`` is not a decode input the
        kernel takes (:meth:`PackedCall.decode`), and None with the group dissolved where
        the layers no longer match this call. The layer's whole decode path: it checks
        nothing of ``x`` itself."""
        if x is self._x and self._left[index]:
            self._left[index] = False
            out = self._outs[index]
            if not any(self._left):
                self._x, self._outs = None, []
            return out
        if not self.intact():
            self.dissolve()
            return None
        outs = self.call.decode(x)
        if outs is None:
            return None
        if len(outs) > 1:
            self._x, self._outs = x, outs
            self._left = [True] * len(outs)
            self._left[index] = False
        return outs[index]

    def dissolve(self) -> None:
        """Every layer back to a call of its own (made lazily on its next forward)."""
        self._x, self._outs = None, []
        for layer in self.layers:
            if layer._group is self:
                layer._group = None


def single(layer: WeightOnlyInt8Linear) -> FusedGroup | None:
    """A group of one for ``layer``, or None where it has no packed weight."""
    packed = layer._buffers["packed"]
    if packed is None or packed.device.type != "cpu":
        return None
    group = FusedGroup([layer], packed)
    layer._group, layer._group_index = group, 0
    return group


def _can_fuse(layers: list[WeightOnlyInt8Linear]) -> bool:
    first = layers[0]
    for i, layer in enumerate(layers):
        packed = layer._buffers["packed"]
        if packed is None or packed.device.type != "cpu":
            return False
        if (layer.in_features, layer.block, layer.group_size) != (
            first.in_features,
            first.block,
            first.group_size,
        ):
            return False
        if i + 1 < len(layers) and layer.out_features % 4:
            return False
    return 1 < len(layers) <= MAX_PARTS


def fuse_siblings(model: nn.Module) -> int:
    """Give every group of sibling int8 layers (:data:`SIBLINGS`) one fused call; returns
    how many groups were fused. Layers that cannot fuse keep a call of their own."""
    from .weight_only_linear import WeightOnlyInt8Linear

    fused = 0
    for parent in model.modules():
        for names in SIBLINGS:
            layers = [getattr(parent, n, None) for n in names]
            if not all(isinstance(layer, WeightOnlyInt8Linear) for layer in layers):
                continue
            group_layers: list[WeightOnlyInt8Linear] = [
                layer for layer in layers if isinstance(layer, WeightOnlyInt8Linear)
            ]
            if not _can_fuse(group_layers):
                continue
            parts = [layer._buffers["packed"] for layer in group_layers]
            packed = torch.cat([p for p in parts if p is not None])
            start = 0
            for i, layer in enumerate(group_layers):
                own = layer._buffers["packed"]
                assert own is not None
                layer._buffers["packed"] = packed[start : start + own.numel()]
                start += own.numel()
                layer._group, layer._group_index = None, i
            group = FusedGroup(group_layers, packed)
            for layer in group_layers:
                layer._group = group
            fused += 1
    return fused
