"""The stored form of the reference side: 16-bit log-probs and exact side data, written one
window at a time and read back a slice of rows at a time (see :mod:`.reference` for what
is kept and why it is exact enough)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .forward import window_input
from .metrics import first_argmax
from .windows import Window

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..sides.base import ModelSide
    from .codes_file import CodesFile

_LEVELS = 65535  # codes 1.._LEVELS for finite log-probs, 0 for -inf
_CHUNK_ELEMENTS = 1 << 17  # rows encoded at once: ~1 MB per float64 tensor
CODES = "logprobs.npy"
ROWS = "rows.npz"
#: the per-token arrays of :data:`ROWS`, besides the codes
_SIDE_DATA = ("base", "step", "target_logp", "top", "masked")


def encode_log_probs(logp: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, base, step) of (N, V) float64 log-probs: ``codes`` uint16 (N, V), ``base``
    and ``step`` float64 (N,), such that :func:`decode_log_probs` gives ``base + step *
    code`` (``-inf`` for code 0).

    Finite entries get codes 1..65535 spread linearly over the row's own range; ``base``
    is chosen so that the decoded row is normalised exactly (in float64), which spares
    every reader a log-sum-exp pass over the vocabulary.
    """
    import torch

    logp = logp.double()
    top = logp.amax(dim=1, keepdim=True)
    masked = bool(logp.numel()) and bool(logp.amin() == float("-inf"))
    if masked:
        finite = torch.isfinite(logp)
        low = torch.where(finite, logp, torch.full_like(logp, float("inf")))
        low = low.amin(dim=1, keepdim=True)
    else:
        low = logp.amin(dim=1, keepdim=True)
    step = (top - low) / (_LEVELS - 1)
    step = torch.where(step > 0, step, torch.ones_like(step))  # a flat row: every code is 1
    inv = 1.0 / step
    # round((logp - low) / step) + 1, as one fused pass and one in-place rounding
    codes = torch.addcmul(1.0 - low * inv, logp, inv).round_()
    if masked:
        codes = codes.masked_fill_(~finite, 0.0)
    raw = torch.addcmul(low - step, codes, step)
    if masked:
        raw = raw.masked_fill_(~finite, float("-inf"))
    base = (low - step) - torch.logsumexp(raw, dim=1, keepdim=True)
    return (
        codes.to(torch.int32).cpu().numpy().astype("uint16"),
        base[:, 0].cpu().numpy(),
        step[:, 0].cpu().numpy(),
    )


def decode_log_probs(
    codes: np.ndarray, base: np.ndarray | Sequence[float], step: np.ndarray | Sequence[float]
) -> torch.Tensor:
    """Normalised float64 log-probs ``base + step * code`` (``-inf`` for code 0), (N, V)."""
    import numpy as np
    import torch

    codes = np.asarray(codes)
    c = torch.from_numpy(codes.astype(np.float64))
    st = torch.from_numpy(np.asarray(step, dtype=np.float64))[:, None]
    b = torch.from_numpy(np.asarray(base, dtype=np.float64))[:, None]
    logp = torch.addcmul(b, c, st)
    if codes.size and codes.min() == 0:
        logp = logp.masked_fill(c == 0, float("-inf"))
    return logp


@dataclass
class StoredReference:
    """Rows of a stored reference: :class:`~.metrics.ReferenceRows` for the measurement.

    Read from the cache entry, ``codes`` is a :class:`~.codes_file.CodesFile`: one
    window's rows are read from the file when :meth:`rows` slices them.
    """

    codes: np.ndarray | CodesFile  # (N, V) uint16; read a slice of rows at a time
    base: np.ndarray  # (N,) float64
    step: np.ndarray  # (N,) float64
    target_logp: np.ndarray  # (N,) float64, exact
    top: np.ndarray  # (N,) int64, exact
    targets: np.ndarray  # (N,) int64
    masked: np.ndarray  # (N,) bool: the row has a -inf log-prob (code 0)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def vocab(self) -> int:
        return int(self.codes.shape[1])

    def log_probs(self, lo: int, hi: int) -> torch.Tensor:
        return decode_log_probs(self.codes[lo:hi], self.base[lo:hi], self.step[lo:hi])

    def has_masked(self, lo: int, hi: int) -> bool:
        """Whether rows ``lo:hi`` have a ``-inf`` log-prob (a masked vocabulary entry)."""
        return bool(self.masked[lo:hi].any())

    def rows(self, lo: int, hi: int) -> StoredReference:
        return StoredReference(*(getattr(self, name)[lo:hi] for name in self.__dataclass_fields__))


@dataclass
class _SideData:
    """The exact per-token arrays of :data:`ROWS`, gathered chunk by chunk."""

    parts: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {k: [] for k in (*_SIDE_DATA, "targets")}
    )

    def add(
        self,
        logits: torch.Tensor,
        logp: torch.Tensor,
        targets: torch.Tensor,
        encoded: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """One chunk of rows: its logits, float64 log-probs, target ids and their
        :func:`encode_log_probs`."""
        import numpy as np

        codes, base, step = encoded
        self.parts["base"].append(base)
        self.parts["step"].append(step)
        self.parts["target_logp"].append(logp.gather(1, targets.unsqueeze(1)).squeeze(1).numpy())
        self.parts["top"].append(first_argmax(logits).numpy().astype(np.int64))
        self.parts["masked"].append((codes == 0).any(axis=1))

    def save(self, path: Path) -> None:
        import numpy as np

        joined = {k: np.concatenate(v) for k, v in self.parts.items()}
        np.savez(
            path,
            base=joined["base"],
            step=joined["step"],
            target_logp=joined["target_logp"],
            top=joined["top"],
            masked=joined["masked"],
            targets=joined["targets"],
        )


def _encode_window(
    codes: np.ndarray, row: int, logits: torch.Tensor, targets: torch.Tensor, side: _SideData
) -> None:
    """One window's ``(n_scored, V)`` logits into ``codes[row:]`` and ``side``, a chunk of
    rows at a time (float64 log-probs of a whole window would be too big)."""
    import numpy as np
    import torch

    rows = max(1, _CHUNK_ELEMENTS // logits.shape[1])
    for lo in range(0, logits.shape[0], rows):
        chunk = logits[lo : lo + rows]
        logp = torch.log_softmax(chunk.double(), dim=-1)
        encoded = encode_log_probs(logp)
        codes[row + lo : row + lo + len(chunk)] = encoded[0]
        side.add(chunk, logp, targets[lo : lo + rows], encoded)
    side.parts["targets"].append(targets.numpy().astype(np.int64))


def write_reference(
    directory: Path,
    reference: ModelSide,
    all_ids: torch.Tensor,
    plan: Sequence[Window],
    bos: int | None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run the reference side over the planned windows and write the stored form into
    ``directory``.

    The (N, V) codes go straight into a memory-mapped ``.npy`` file, one window at a
    time, so the full table is never in memory.
    """
    import numpy as np
    import torch

    n_tokens = sum(w.n_scored for w in plan)
    codes: np.memmap | None = None
    side = _SideData()
    row = 0
    with torch.inference_mode():
        for i, w in enumerate(plan):
            if progress is not None:
                progress(f"similarity: reference, window {i + 1} of {len(plan)} (cached)")
            logits = reference.scored_logits(window_input(all_ids, w, bos), w.n_scored).cpu()
            if codes is None:
                shape = (n_tokens, logits.shape[1])
                codes = np.lib.format.open_memmap(
                    directory / CODES, mode="w+", dtype=np.uint16, shape=shape
                )
            _encode_window(codes, row, logits, all_ids[w.targets], side)
            row += w.n_scored
    if codes is not None:
        codes.flush()
        del codes
    side.save(directory / ROWS)


def read_reference(entry: Path) -> StoredReference:
    """The stored form in cache entry ``entry``; ``ValueError`` if its arrays do not fit."""
    import numpy as np

    from .codes_file import CodesFile

    codes = CodesFile(entry / CODES)
    with np.load(entry / ROWS, allow_pickle=False) as rows:
        side = {k: rows[k] for k in (*_SIDE_DATA, "targets")}
    if side["masked"].dtype != np.bool_ or any(len(v) != len(codes) for v in side.values()):
        raise ValueError("the side arrays do not fit the log-probs")
    return StoredReference(codes=codes, **side)
