"""Write a GGUF file as another type of the same weights, with the ``gguf`` package.

Why: a quantized GGUF (the packaged SmolLM2 is ``Q4_1``) used as the *reference* in
llama.cpp must run as the float model its weights describe, or the gate would compare
the file with itself. :func:`f32_copy` writes that F32 file once into the cache. The same
copy, with another weight type, makes test files (``Q8_0``, ``Q4_0``) of any GGUF.
Every metadata key is copied, the tokenizer included.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqUsageError

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGMLQuantizationType, ReaderTensor

#: a tensor's new content: (array, raw GGML type, or None for a plain float array)
NewTensor = Callable[["ReaderTensor"], "tuple[np.ndarray, GGMLQuantizationType | None]"]
#: llama.cpp's ``general.file_type`` of each weight type this module writes
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}


def copy_gguf(src: Path, dst: Path, tensor: NewTensor, file_type: int | None = None) -> Path:
    """``src`` to ``dst`` with every metadata key, each tensor replaced by ``tensor(t)``."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    writer = GGUFWriter(tmp, str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        # GGUF.* are virtual fields and GGUFWriter writes general.architecture itself
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "general.file_type" and file_type is not None:
            value = file_type
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
    for t in reader.tensors:
        data, raw_dtype = tensor(t)
        writer.add_tensor(t.name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)  # a reader never sees half a file
    return dst


def rewrite_gguf(src: Path, dst: Path, weight_type: str) -> Path:
    """``src`` as ``dst`` with every 2-D tensor stored as ``weight_type`` (F32, F16, Q8_0,
    Q4_0, ...), from its dequantized values; 1-D tensors (norms) and an MoE router
    (``ffn_gate_inp``) stay F32, as llama.cpp's ``llama-quantize`` keeps them. F16 and
    quantized types go through float16 first, as llama.cpp's own pipeline (HF -> F16 GGUF
    -> llama-quantize) does."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    if weight_type not in FILE_TYPE:
        raise LlmqUsageError(
            f"cannot write GGUF type {weight_type}; use one of {', '.join(FILE_TYPE)}"
        )
    qtype = GGMLQuantizationType[weight_type]

    def convert(t: ReaderTensor) -> tuple[np.ndarray, GGMLQuantizationType | None]:
        import numpy as np

        values = dequantize(t.data, t.tensor_type)  # float32, shape (rows, cols)
        router = t.name.endswith("ffn_gate_inp.weight")
        if values.ndim < 2 or router or qtype == GGMLQuantizationType.F32:
            return values.astype(np.float32), None
        f16 = values.astype(np.float16)
        if qtype == GGMLQuantizationType.F16:
            return f16, None
        return quantize(f16.astype(np.float32), qtype), qtype

    return copy_gguf(src, dst, convert, FILE_TYPE[weight_type])


def f32_copy(src: Path, cache_dir: Path) -> Path:
    """The F32 GGUF of ``src``'s dequantized tensors, written once into ``cache_dir``."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    dst = cache_dir / "gguf-f32" / f"{src.stem}.{key[:12]}.F32.gguf"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        rewrite_gguf(src, dst, "F32")
    return dst
