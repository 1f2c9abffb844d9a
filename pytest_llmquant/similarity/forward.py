"""Token ids of the evaluation text: the pieces the measurement and the stored reference share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..models.causal_lm import context_length, model_device, model_dtype

if TYPE_CHECKING:
    pass

__all__ = [
    "bos_to_insert",
    "context_length",
    "model_device",
    "model_dtype",
    "tokenize",
]


def bos_to_insert(tokenizer: Any) -> int | None:
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


def tokenize(tokenizer: Any, text: str) -> list[int]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence longer than model_max_length": we window it
        encoded = tokenizer(text, add_special_tokens=False, verbose=False)
    return list(encoded["input_ids"])
