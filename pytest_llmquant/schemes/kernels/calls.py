"""A prepared decode call of the C kernel: sizes checked once, a few attribute checks per call.

A 135M model makes ~200 matrix-vector products per generated token, each a few tens of
microseconds of C, so the Python around each call matters. :class:`PackedCall` checks
everything the C code trusts about the *weights* (the packed bytes, the part sizes, the
biases) when it is made and holds references to those tensors, so they cannot be freed
under it; per call it checks only what can change, the input (dtype, device,
contiguity, width), and allocates the one output tensor every op must return.

What stays fixed goes to C once, as a ``llmq_parts_t`` (:class:`_Parts`): a call passes
five arguments, not ten, because ctypes converts each one (~0.1-0.2 us apiece). On a
4 x 32 layer, where the C work is nothing, a call took 6.8 us before this and the
ten-argument ctypes call alone 2.0 us; the fixed part is read-only after ``__init__``,
so two threads may share a call.

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


class _Parts(ctypes.Structure):
    """``llmq_parts_t`` of int8.c: the fixed half of a ``llmq_wo_packed_run`` call."""

    _fields_ = [
        ("P", ctypes.c_void_p),
        ("K", ctypes.c_int64),
        ("gs", ctypes.c_int64),
        ("nparts", ctypes.c_int64),
        ("rows", ctypes.c_void_p),
        ("biases", ctypes.c_void_p),
    ]


class PackedCall:
    """``outputs = [x @ W_p.T + b_p for each part p]`` on the packed layout, float32 in/out.

    ``packed`` holds the parts' packed weights back to back (every part but the last a
    whole number of 4-row blocks); ``rows[p]`` and ``biases[p]`` are part p's output
    width and bias (None: none); ``k`` and ``block`` are the shared input width and
    scale block. Raises ValueError for anything the C code could not safely read.
    ``max_tokens`` bounds the tokens :meth:`decode` takes (None: any)."""

    def __init__(
        self,
        packed: torch.Tensor,
        k: int,
        block: int,
        rows: Sequence[int],
        biases: Sequence[torch.Tensor | None],
        max_tokens: int | None = None,
    ) -> None:
        import torch

        from . import _lib_or_raise, check_status, packed_nbytes, threads_for

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
        self.max_tokens = max_tokens
        self._rows = (ctypes.c_int64 * len(rows))(*rows)
        self._bias = (ctypes.c_void_p * len(rows))(
            *(None if b is None else b.data_ptr() for b in biases)
        )
        self._parts = _Parts(
            packed.data_ptr(), k, block, len(rows),
            ctypes.addressof(self._rows), ctypes.addressof(self._bias),
        )  # fmt: skip
        self._ref = ctypes.addressof(self._parts)
        self._fn = _lib_or_raise().llmq_wo_packed_run
        self._check_status, self._threads_for = check_status, threads_for
        self._float32 = torch.float32
        self._empty = torch.empty

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The parts' outputs for ``x`` (..., k): each (..., rows[p]) and contiguous."""
        if not self._takes(x):
            raise ValueError(f"x must be contiguous float32 on the CPU with {self.k} columns")
        return self._run(x, x.numel() // self.k)

    def decode(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """As calling it, for a decode input of 1 to ``max_tokens`` tokens; None for any
        other ``x`` (the caller takes its general path): the layers' per-token path."""
        if not self._takes(x):
            return None
        m = x.numel() // self.k
        if m == 0 or (self.max_tokens is not None and m > self.max_tokens):
            return None
        return self._run(x, m)

    def _takes(self, x: torch.Tensor) -> bool:
        return (
            x.dtype is self._float32
            and x.device.type == "cpu"
            and x.is_contiguous()
            and x.shape[-1] == self.k
        )

    def _run(self, x: torch.Tensor, m: int) -> list[torch.Tensor]:
        lead = x.shape[:-1]
        if m == 1:
            # one token: part p's (1, rows[p]) block is also columns off_p.. of a
            # (..., total) row, so one allocation in the output's shape and a split
            out = self._empty((*lead, self.total), dtype=self._float32)
        else:
            out = self._empty(m * self.total, dtype=self._float32)
        status = self._fn(
            self._ref, x.data_ptr(), out.data_ptr(), m, self._threads_for(m * self.total * self.k)
        )
        if status:
            self._check_status(status, "llmq_wo_packed_parts", m, self.total, self.k)
        if m == 1:
            # split_with_sizes: one op for every part (Tensor.split and slicing cost 2-3x)
            return [out] if len(self.rows) == 1 else list(out.split_with_sizes(self.rows, -1))
        if len(self.rows) == 1:
            return [out.view(*lead, self.total)]
        outs, start = [], 0
        for n in self.rows:
            outs.append(out[start : start + m * n].view(*lead, n))
            start += m * n
        return outs
