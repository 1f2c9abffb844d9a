"""Bytes of model files on disk, as the ``file`` memory kind counts them: each inode once,
links to blobs (the Hugging Face cache) counted at their target."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LlmqUsageError


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
