"""The layer of ``weight-only-int8``: int8 weights, float32 block scales, any float activations.

On the CPU, decode (up to ``KERNEL_MAX_TOKENS`` tokens a call) runs the AVX2 C kernel of
:mod:`.kernels`, which reads 1 byte per weight instead of 4 and takes float32 activations
(others are cast in and out); prompts dequantize the weight and use the GEMM, since
prefill is compute bound and MKL beats a hand-written loop there. Without the kernel the
layer dequantizes in torch: same numbers up to float32 summation order, slower.

On a GPU (CUDA) there is no C kernel: every call dequantizes the int8 weight in torch
(``q * scale`` in float32, one rounding to the activation dtype) and runs ``F.linear`` in
the activation dtype (bfloat16 for the default CUDA reference). The weight at rest stays
1 byte plus its scales, which is what the ``vram`` memory gate measures; the transient
full-width copy per call is why INT8 decode on a GPU is not faster than bfloat16.

The storage layout follows the device: packed for the C kernel on the CPU, row-major
``weight_int8``/``scales`` elsewhere (``.to("cuda")`` and back converts, bit for bit).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from . import kernels
from .int8_math import (
    PACK_ROWS,
    dequantize,
    n_groups,
    pack_rows,
    packable,
    quantize_per_channel,
    unpack_rows,
)
from .weight_only_fused import KERNEL_MAX_TOKENS, FusedGroup, single

#: a prompt through a layer of more weights than this is computed a slab of rows at a time
_SLAB_ELEMENTS = 1 << 21


def quantize_weight(w: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`int8_math.quantize_per_channel` gives for ``w``, computed in one pass of
    the C kernel wherever it runs on this tensor (a contiguous float32 CPU weight; see
    :mod:`.kernels.quantize` for why), else by the torch reference itself."""
    if (
        w.dim() == 2
        and w.dtype is torch.float32
        and w.device.type == "cpu"
        and w.shape[1] > 0
        and kernels.available()
    ):
        from .kernels.quantize import quantize_rows

        return quantize_rows(w.contiguous(), group_size)
    return quantize_per_channel(w, group_size)


class WeightOnlyInt8Linear(nn.Module):
    """A linear layer holding int8 weights and float32 block scales, never a float weight.

    On the CPU, shapes the C kernel can stream (columns in whole 32-column chunks and
    whole groups) are kept only in the packed layout of :func:`int8_math.pack_rows`;
    other shapes, and every layer on another device, keep row-major ``weight_int8`` and
    ``scales``. Either way there is deliberately no
    ``weight`` attribute: nothing can silently fall back to a float weight, and
    :func:`pytest_llmquant.layers.coverage` counts the layer as quantized.
    """

    packed: torch.Tensor | None
    weight_int8: torch.Tensor | None
    scales: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int | None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = group_size  # None: per channel
        if scales.shape != (self.out_features, n_groups(self.in_features, group_size)):
            raise ValueError(
                f"scales of shape {tuple(scales.shape)} do not fit {tuple(q.shape)} "
                f"with group_size={group_size}"
            )
        #: the prepared kernel call this layer's decode runs (:mod:`.weight_only_fused`),
        #: shared with its siblings when fused; made on first use otherwise
        self._group: FusedGroup | None = None
        self._group_index = 0
        self.register_buffer("packed", None)
        self.register_buffer("weight_int8", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.is_packed = False
        self._match_layout_to_device()
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )
        #: block length the kernels see (the whole row when per channel)
        self.block = group_size or max(self.in_features, 1)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None) -> WeightOnlyInt8Linear:
        q, scales = quantize_weight(linear.weight.detach().to(torch.float32), group_size)
        return cls(q, scales, linear.bias, group_size)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        """Keep scales and bias float32 through ``.to(dtype)``/``.half()`` (moving them
        between devices is fine): the kernels read them as float32 whatever the
        activations are, and a round trip through bfloat16 would lose precision. Then
        switch the layout to the one the new device uses (packed only on the CPU)."""
        kept = {n: t for n in ("bias", "scales") if (t := self._buffers.get(n)) is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != torch.float32:
                self._buffers[name] = old.to(new.device)
        self._match_layout_to_device()
        if self._group is not None and not self._group.intact():
            self._group.dissolve()  # moved, or its buffers replaced: a call of its own later
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the prepared call behind (it holds raw pointers into
        this layer's tensors); the copy makes its own on first use."""
        state = self.__dict__.copy()
        state["_group"] = None
        return state

    def _match_layout_to_device(self) -> None:
        """Packed where the C kernel can read it (the CPU, a packable shape), row-major
        everywhere else: the kernel's layout means nothing to a GPU, and the row-major
        one is what the torch path there reshapes into blocks. Pure torch, bit-exact."""
        stored = self.packed if self.packed is not None else self.weight_int8
        assert stored is not None
        on_cpu = stored.device.type == "cpu"
        if stored.device.type == "meta":
            return
        if self.packed is not None and not on_cpu:
            q, scales = unpack_rows(
                self.packed, self.out_features, self.in_features, self.group_size
            )
            self.packed, self.weight_int8, self.scales = None, q, scales
        elif (
            self.packed is None
            and on_cpu
            and packable(self.out_features, self.in_features, self.group_size)
        ):
            assert self.weight_int8 is not None and self.scales is not None
            packed = pack_rows(self.weight_int8, self.scales, self.group_size)
            self.packed, self.weight_int8, self.scales = packed, None, None
        self.is_packed = self.packed is not None

    def int8_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, scales)`` in the row-major layout of :func:`int8_math.quantize_per_channel`."""
        if self.packed is not None:
            return unpack_rows(self.packed, self.out_features, self.in_features, self.group_size)
        assert self.weight_int8 is not None and self.scales is not None
        return self.weight_int8, self.scales

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this layer stands for, on the layer's device, as float32 ``q * scale``
        rounded once to ``dtype`` (prompts, the pure-torch path, and every GPU call)."""
        if self.packed is not None and kernels.available():
            n, k = self.out_features, self.in_features
            w = torch.empty(n, k, dtype=torch.float32)
            kernels.unpack_f32(self.packed, w, n, k, self.block)
            return w.to(dtype)
        q, scales = self.int8_state()
        if self.group_size is not None and self.in_features % self.group_size == 0:
            # whole groups (the usual shape, and the GPU path): one broadcast multiply,
            # no padding copy; the same float32 products as int8_math.dequantize
            rows, cols = q.shape
            blocks = q.view(rows, cols // self.group_size, self.group_size)
            w = (blocks * scales.unsqueeze(-1)).view(rows, cols)
        else:
            w = dequantize(q, scales, self.group_size)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # decode fast path: a few microseconds of Python per call matter here, because
        # a 135M model makes ~120 of these calls per generated token (fused siblings)
        # (the group checks x itself; set_cache_dir can forget the library under it)
        group = self._group
        if group is not None and kernels.loaded():
            y = group.output(self._group_index, x)
            if y is not None:
                return y
        return self._forward_general(x)

    def _forward_general(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        if (
            self._group is None
            and self._buffers["packed"] is not None
            and x.device.type == "cpu"
            and kernels.available()
            and single(self) is not None
            and x.dtype is torch.float32
            and x.is_contiguous()
            and 0 < x.numel() <= KERNEL_MAX_TOKENS * k
        ):
            return self.forward(x)  # the call it has just made
        lead = x.shape[:-1]
        m = lead.numel()
        if (
            m > KERNEL_MAX_TOKENS
            and self.packed is not None
            and x.dtype is torch.float32
            and x.device.type == "cpu"
            and kernels.available()
        ):
            return self._prefill_by_slabs(x.reshape(m, k).contiguous()).reshape(*lead, n)
        if m > KERNEL_MAX_TOKENS or x.device.type != "cpu" or m == 0 or not kernels.available():
            w = self.dequantized_weight(x.dtype).to(x.device)
            return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        x2 = x.reshape(m, k).to(torch.float32).contiguous()
        y = torch.empty(m, n, dtype=torch.float32)
        if self.packed is not None:
            kernels.wo_packed(self.packed, x2, self.bias, y, n, k, self.block)
        else:
            assert self.weight_int8 is not None and self.scales is not None
            kernels.wo_gemm(self.weight_int8, self.scales, x2, self.bias, y, n, k, self.block)
        return y.reshape(*lead, n).to(x.dtype)

    def _prefill_by_slabs(self, x2: torch.Tensor) -> torch.Tensor:
        """The prompt GEMM on the weight dequantized a slab of rows at a time into one
        reused per-thread buffer (:func:`_scratch`), so a prompt never allocates a float
        weight: a fresh 2-110 MB tensor per layer and call cost page faults and zeroing
        as large as the dequantization itself, and a big layer (SmolLM2's lm_head is 28M
        weights) never has a whole float32 copy (113 MB) alive. A layer that fits one
        slab runs ``F.linear`` on the whole weight, exactly as before."""
        assert self.packed is not None
        n, k = self.out_features, self.in_features
        slab = max(PACK_ROWS, (_SLAB_ELEMENTS // k) // PACK_ROWS * PACK_ROWS)
        buf = _scratch(min(slab, n) * k)
        if n <= slab:
            w = buf[: n * k].view(n, k)
            kernels.unpack_f32(self.packed, w, n, k, self.block)
            return nn.functional.linear(x2, w, self.bias)
        per_block = kernels.packed_nbytes(PACK_ROWS, k, self.block)
        y = torch.empty(x2.shape[0], n, dtype=torch.float32)
        for r0 in range(0, n, slab):
            r = min(slab, n - r0)
            first = r0 // PACK_ROWS * per_block
            part = self.packed[first : first + kernels.packed_nbytes(r, k, self.block)]
            w = buf[: r * k].view(r, k)
            kernels.unpack_f32(part, w, r, k, self.block)
            y[:, r0 : r0 + r] = x2 @ w.t()
        if self.bias is not None:
            y += self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}, "
            f"packed={self.is_packed}"
        )


_local = threading.local()


def _scratch(elements: int) -> torch.Tensor:
    """This thread's reused float32 buffer of at least ``elements`` (grow-only; one slab,
    8 MB by default). Per thread, because two threads may run prompts at once."""
    buf: torch.Tensor | None = getattr(_local, "buf", None)
    if buf is None or buf.numel() < elements:
        buf = torch.empty(max(elements, _SLAB_ELEMENTS), dtype=torch.float32)
        _local.buf = buf
    return buf
