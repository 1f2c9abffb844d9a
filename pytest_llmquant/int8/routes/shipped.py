"""The :class:`~pytest_llmquant.sides.base.ShippedFile` of a saved directory or a single file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...sides.base import ShippedFile
    from ...types import CausalLM


def shipped_directory(
    directory: Path, model: CausalLM, how: str, size: int | None = None
) -> ShippedFile:
    """``directory``'s model files (``size``: their bytes, when the saver counted them),
    with the float bytes they still hold by role."""
    from ...formats.sizes import file_bytes
    from ...sides.base import ShippedFile
    from ...sides.torch_weights import file_kept_float

    names = tuple(sorted(p.name for p in directory.iterdir()))
    total = file_bytes(directory) if size is None else size
    return ShippedFile(directory, total, how, names, file_kept_float(directory, model))


def shipped_single_file(path: Path, how: str) -> ShippedFile:
    """One file that is the model as it ships (a .gguf): its own size, nothing saved."""
    from ...formats.sizes import file_bytes
    from ...sides.base import ShippedFile

    return ShippedFile(path, file_bytes(path), how, (path.name,), {})
