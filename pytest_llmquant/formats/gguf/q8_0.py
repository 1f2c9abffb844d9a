"""llama.cpp ``Q8_0`` blocks: the header check of a Q8_0 file and the bit-exact decoding of
its blocks, torch-free until a tensor is decoded.

A Q8_0 tensor is, per row, blocks of 32 int8 values along the input dimension with one
float16 scale each (``max|w| / 127``). Which layers those blocks become (the INT8 side's
``weight-only-int8`` layers) is the GGUF route's business:
:mod:`pytest_llmquant.int8.gguf_q8_0`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqUsageError

if TYPE_CHECKING:
    import torch

    from .header import GGUFHeader, GGUFTensor

#: the only quantized GGML type that maps onto ``weight-only-int8`` without loss
INT8_TYPE = "Q8_0"
Q8_0_BLOCK = 32
_Q8_0_BYTES = 2 + Q8_0_BLOCK  # float16 scale, then 32 int8
#: types loaded as float32 (norms, embeddings, tensors llama.cpp leaves unquantized)
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
_MAGIC = b"GGUF"


def _option(path: str | Path) -> str:
    return f"--llmq-int8-model={path}"


def read_q8_0_header(path: str | Path) -> GGUFHeader:
    """The file's header and tensor table, or one line saying why it is not a GGUF we read."""
    from .header import GGUFFormatError, read_header

    try:
        with Path(path).expanduser().open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise LlmqUsageError(
            f"cannot read {_option(path)}: {exc.strerror}; check the path"
        ) from None
    if magic != _MAGIC:
        raise LlmqUsageError(
            f"{_option(path)} is not a GGUF file (it does not start with 'GGUF'); pass a "
            "llama.cpp Q8_0 .gguf file or a directory saved by a pytest-llmquant scheme"
        )
    try:
        return read_header(Path(path).expanduser())
    except ImportError:
        raise LlmqUsageError(
            f"reading {_option(path)} needs the gguf package; install it with: pip install gguf"
        ) from None
    except (GGUFFormatError, OSError) as exc:
        raise LlmqUsageError(
            f"{_option(path)} is not a readable GGUF file ({exc}); download or convert it again"
        ) from None


def type_counts(header: GGUFHeader) -> dict[str, int]:
    """How many tensors of each GGML type the file holds, the most common first."""
    counts: dict[str, int] = {}
    for tensor in header.tensors:
        counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def q8_0_blocks(tensor: GGUFTensor, path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 (rows, cols), scales float32 (rows, cols / 32))`` of a Q8_0 tensor, bit-exact;
    a tensor of more dimensions (an MoE layer's experts, stacked) keeps its leading ones:
    ``(experts, rows, cols)`` and ``(experts, rows, cols / 32)``."""
    import numpy as np
    import torch

    lead = tuple(tensor.shape[:-1])
    rows = int(np.prod(lead))
    if tensor.data is None:  # only a type the reader does not know has no data
        raise LlmqUsageError(f"{_option(path)}: tensor {tensor.name} is not readable as Q8_0")
    blocks = tensor.data.reshape(rows, -1, _Q8_0_BYTES)  # uint8, memory-mapped
    scales = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16)[:, :, 0].astype(np.float32)
    q = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(rows, -1)
    if not np.isfinite(scales).all():
        raise LlmqUsageError(
            f"{_option(path)}: tensor {tensor.name} has a non-finite Q8_0 scale (corrupt "
            "file); download or convert it again"
        )
    q, scales = q.reshape(*lead, -1), scales.reshape(*lead, -1)
    return torch.from_numpy(q), torch.from_numpy(scales)
