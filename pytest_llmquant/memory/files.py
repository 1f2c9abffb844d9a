"""The ``file`` memory kind: bytes on disk, and the float tensors in safetensors files.

Both models are saved (the FP32 one with ``save_pretrained(dir,
safe_serialization=True)``, the INT8 one with its scheme's ``save``: safetensors plus a
JSON recipe) and their directories measured; config files count on both sides.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LlmqUsageError
from .weights import FLOAT_BIAS, FLOAT_OTHER, float_role, is_float_module

if TYPE_CHECKING:
    from torch import nn


def file_bytes(directory: str | os.PathLike[str]) -> int:
    """Total size of the files under ``directory`` (or of one file), each inode once.

    Symlinked files count their target (the Hugging Face cache links to blobs);
    symlinked directories are not followed, so a link loop cannot hang the count.
    """
    path = Path(directory)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise LlmqUsageError(f"cannot measure the size of {path}: no such file or directory")
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:  # dangling link
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, Any] = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header


def file_kept_float(
    directory: str | os.PathLike[str], model: nn.Module | None = None
) -> dict[str, int]:
    """Bytes of float tensors in the ``*.safetensors`` files of ``directory``, by role.

    Reads only the safetensors headers. With ``model`` (the model that was saved), each
    tensor is attributed to the role of the module that owns it; without, all float
    tensors count as "float: other".
    """
    modules = dict(model.named_modules()) if model is not None else {}
    out: dict[str, int] = {}
    for path in sorted(Path(directory).rglob("*.safetensors")):
        for name, info in _safetensors_header(path).items():
            if info.get("dtype") not in _FLOAT_DTYPES:
                continue
            begin, end = info["data_offsets"]
            owner_name, _, attr = name.rpartition(".")
            owner = modules.get(owner_name)
            if owner is None:
                role = FLOAT_OTHER
            elif is_float_module(owner):
                role = float_role(owner)
            elif attr.startswith("bias"):
                role = FLOAT_BIAS
            else:
                continue  # the float scales of an int8 layer are part of that layer
            out[role] = out.get(role, 0) + int(end - begin)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
