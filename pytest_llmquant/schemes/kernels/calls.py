"""A prepared decode call of the C kernel: sizes checked once, a few attribute checks per call.

A 135M model makes ~200 matrix-vector products per generated token, each a few tens of
microseconds of C, so the Python around each call matters. :class:`PackedCall` checks
everything the C code trusts about the *weights* (the packed bytes, the part sizes, the
biases) when it is made and holds references to those tensors, so they cannot be freed
under it; per call it checks only what can change, the input (dtype, device,
contiguity, width), and allocates the one output tensor every op must return.

One call may serve several sibling layers that read the same input (q/k/v, gate/up):
their packed weights lie back to back in one tensor and ``llmq_wo_packed_parts`` writes
each layer's output to its own contiguous block of one allocation.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: most parts (sibling layers) one call computes: LLMQ_MAX_PARTS in int8.c
MAX_PARTS = 8


class PackedCall:
    """``outputs = [x @ W_p.T + b_p for each part p]`` on the packed layout, float32 in/out.

    ``packed`` holds the parts' packed weights back to back (every part but the last a
    whole number of 4-row blocks); ``rows[p]`` and ``biases[p]`` are part p's output
    width and bias (None: none); ``k`` and ``block`` are the shared input width and
    scale block. Raises ValueError for anything the C code could not safely read."""

    def __init__(
        self,
        packed: torch.Tensor,
        k: int,
        block: int,
        rows: Sequence[int],
        biases: Sequence[torch.Tensor | None],
    ) -> None:
        import torch

        from . import _lib_or_raise, packed_nbytes

        if not 1 <= len(rows) <= MAX_PARTS or len(biases) != len(rows):
            raise ValueError(f"1 to {MAX_PARTS} parts, each with a bias or None, not {len(rows)}")
        if any(n < 1 for n in rows) or any(n % 4 for n in rows[:-1]):
            raise ValueError(f"part widths {list(rows)}: all > 0, all but the last a multiple of 4")
        if packed.dtype != torch.uint8 or packed.device.type != "cpu" or not packed.is_contiguous():
            raise ValueError("the packed weight must be a contiguous uint8 CPU tensor")
        want = packed_nbytes(sum(rows), k, block)
        if packed.numel() != want:
            raise ValueError(f"packed weight has {packed.numel()} bytes, not {want}")
        for n, b in zip(rows, biases, strict=True):
            if b is not None and (
                b.dtype != torch.float32 or b.numel() != n or not b.is_contiguous()
            ):
                raise ValueError(f"a bias must be {n} contiguous float32 values")
        self.packed = packed
        self.biases = tuple(biases)  # held: the C code reads them through raw pointers
        self.k, self.block, self.rows = k, block, tuple(rows)
        self.total = sum(rows)
        self._fn = _lib_or_raise().llmq_wo_packed_parts
        self._p = packed.data_ptr()
        self._rows = (ctypes.c_int64 * len(rows))(*rows)
        self._bias = (ctypes.c_void_p * len(rows))(
            *(None if b is None else b.data_ptr() for b in biases)
        )
        self._n = len(rows)
        self._float32 = torch.float32
        self._empty = torch.empty

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The parts' outputs for ``x`` (..., k): each (..., rows[p]) and contiguous."""
        from . import check_status, threads_for

        k = self.k
        if (
            x.dtype is not self._float32
            or x.device.type != "cpu"
            or not x.is_contiguous()
            or x.shape[-1] != k
        ):
            raise ValueError(f"x must be contiguous float32 on the CPU with {k} columns")
        lead = x.shape[:-1]
        m = x.numel() // k
        out = self._empty(m * self.total, dtype=self._float32)
        status = self._fn(
            self._p, x.data_ptr(), out.data_ptr(), m, k, self.block, self._n, self._rows,
            self._bias, threads_for(m * self.total * k),
        )  # fmt: skip
        if status:
            check_status(status, "llmq_wo_packed_parts", m, self.total, k)
        if self._n == 1:
            return [out.view(*lead, self.total)]
        outs, start = [], 0
        for n in self.rows:
            outs.append(out[start : start + m * n].view(*lead, n))
            start += m * n
        return outs
