"""What a runtime's model file is, read from its metadata alone (no runtime, no torch).

Each format module (:mod:`.gguf.inventory`, :mod:`.onnx_file`) fills one of these, so
that a runtime side's label, coverage and weight bytes are known at collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..layers import Coverage


@dataclass(frozen=True)
class FileFacts:
    """What a runtime's model file is, from its metadata (no runtime, no torch)."""

    path: Path  # the file (a .gguf) or the model.onnx
    label: str  # "llama.cpp Q4_1", "onnxruntime MatMulNBits int8"
    bits: int | None  # weight bit width where one type dominates
    bits_text: str  # "5.0 bits/weight", "8-bit weights"
    weight_bytes: dict[str, int]  # by role
    quantized: tuple[str, ...]
    kept_float: tuple[str, ...]
    shipped: tuple[Path, ...]  # the files that ship (a .gguf; model.onnx + its data)
    dtype: str  # what the stored reference's key calls it

    def coverage(self) -> Coverage:
        from ..layers import Coverage

        return Coverage(list(self.quantized), list(self.kept_float))
