"""The evaluation text as token ids, and the ids of each window: the pieces the measurement
and the stored reference share, so that both sides read exactly the same inputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .windows import Window, plan_windows

if TYPE_CHECKING:
    import torch

    from ..types import Tokenizer

__all__ = ["EvalIds", "bos_to_insert", "tokenize"]


def bos_to_insert(tokenizer: Tokenizer) -> int | None:
    """The BOS id if this tokenizer puts one in front of every text, else None.

    Such models are trained to always see BOS at position 0; like llama.cpp we
    overwrite the first (context) token of every window with it.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # pragma: no cover - tokenizer without __call__
        return None
    return bos if ids and ids[0] == bos else None


def tokenize(tokenizer: Tokenizer, text: str) -> list[int]:
    """The text's token ids, no special tokens added."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence longer than model_max_length": we window it
        encoded = tokenizer(text, add_special_tokens=False, verbose=False)
    return list(encoded["input_ids"])


@dataclass(frozen=True)
class EvalIds:
    """The evaluation text tokenized once with the reference's tokenizer, and its windows."""

    ids: list[int]
    all_ids: torch.Tensor  # the same ids, (len(ids),) int64
    plan: list[Window]
    bos: int | None  # written over the first token of every window (:func:`bos_to_insert`)
    text_sha256: str

    @classmethod
    def read(
        cls, tokenizer: Tokenizer, text: str, n_tokens: int, window: int, prefix: int | None
    ) -> EvalIds:
        """Tokenize ``text`` and plan the windows that score ``n_tokens`` of it."""
        import torch

        ids = tokenize(tokenizer, text)
        return cls(
            ids=ids,
            all_ids=torch.tensor(ids, dtype=torch.long),
            plan=plan_windows(len(ids), n_tokens, window, prefix),
            bos=bos_to_insert(tokenizer),
            text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )

    def window_input(self, w: Window) -> torch.Tensor:
        """The ``(1, T)`` ids one forward pass reads (BOS written over the first)."""
        return window_input(self.all_ids, w, self.bos)

    def targets(self, w: Window) -> torch.Tensor:
        """The ids the scored positions of ``w`` predict."""
        return self.all_ids[w.targets]


def window_input(all_ids: torch.Tensor, w: Window, bos: int | None) -> torch.Tensor:
    """Window ``w`` of ``all_ids`` as a ``(1, T)`` batch, BOS (if any) at position 0."""
    input_ids = all_ids[w.start : w.stop].clone().unsqueeze(0)
    if bos is not None:
        input_ids[0, 0] = bos
    return input_ids
