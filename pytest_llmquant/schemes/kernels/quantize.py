"""Quantizing a float32 weight with the C kernel: :func:`int8_math.quantize_per_channel`
in one pass.

Why: the torch reference makes several float64 passes over every weight (a finiteness
check, abs, amax, divide, round, clamp, cast); building SmolLM2's INT8 model took 1.24 s
with it and 0.49 s with this, on the project's 2-core machine. The kernel reads each row
block twice, in float32. It computes the same numbers in the same precision, so the INT8
model is bit-identical whichever path built it (tests/test_schemes.py compares them on odd
shapes, short last blocks, all-zero rows, ties and extreme magnitudes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lib_or_raise, check_status, threads_for

if TYPE_CHECKING:
    import torch

#: the status int8.c returns for an inf or a nan in the weight
ENONFINITE = 3


def quantize_rows(w: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 (rows, cols), scales float32 (rows, n_groups))`` of a contiguous float32
    CPU weight with at least one column, as ``quantize_per_channel(w, group_size)`` gives
    them; ValueError with the reference's message for an inf or a nan."""
    import torch

    from ..int8_math import NON_FINITE_WEIGHT, n_groups

    if w.dim() != 2 or w.dtype != torch.float32 or not w.is_contiguous() or w.shape[1] < 1:
        raise ValueError(f"quantize_rows needs a contiguous 2-D float32 weight, not {w.shape}")
    rows, cols = w.shape
    block = group_size or cols
    q = torch.empty(rows, cols, dtype=torch.int8)
    scales = torch.empty(rows, n_groups(cols, group_size), dtype=torch.float32)
    status = _lib_or_raise().llmq_quantize_rows(
        w.data_ptr(), q.data_ptr(), scales.data_ptr(), rows, cols, block,
        threads_for(rows * cols * 8),
    )  # fmt: skip
    if status == ENONFINITE:
        raise ValueError(NON_FINITE_WEIGHT)
    check_status(status, "llmq_quantize_rows", 0, rows, cols)
    return q, scales
