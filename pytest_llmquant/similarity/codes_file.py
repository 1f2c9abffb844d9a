"""The stored reference's 16-bit log-prob codes, read from their ``.npy`` file a slice of
rows at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class CodesFile:
    """Rows ``lo:hi`` of an (N, V) uint16 ``.npy`` file as an ordinary array, read when asked.

    A memory map would do the same reads, but every page it touches stays in the
    process's RSS until the map is closed: scoring 2,048 tokens of a 49k vocabulary
    would add the whole 0.2 GB file to the suite's peak memory, window by window. Read
    per window, only one window's rows (~44 MB) are alive at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            fmt = np.lib.format
            major, _ = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype != np.dtype("<u2") or len(shape) != 2:
            raise ValueError(f"{path} does not hold a C-ordered (N, V) uint16 array")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        if path.stat().st_size != self.offset + 2 * self.shape[0] * self.shape[1]:
            raise ValueError(f"{path} is truncated")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("CodesFile reads contiguous row slices only")
        lo, hi, _ = rows.indices(self.shape[0])
        hi = max(lo, hi)
        vocab = self.shape[1]
        data = np.fromfile(
            self.path, dtype="<u2", count=(hi - lo) * vocab, offset=self.offset + 2 * lo * vocab
        )
        return data.reshape(hi - lo, vocab)
