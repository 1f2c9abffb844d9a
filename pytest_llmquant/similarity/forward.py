"""Running one model over token ids: the pieces the measurement and the stored reference share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def context_length(model: Any) -> int | None:
    """The longest sequence the model's position encoding supports, if the config says."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_device(model: Any) -> torch.device:
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: Any) -> str:
    """The dtype the reference is computed in ("float32" today), a key of the stored reference."""
    for tensor in model.parameters():
        return str(tensor.dtype).removeprefix("torch.")
    return "unknown"


def _forward_kwargs(model: Any, n_keep: int) -> dict[str, Any]:
    """``use_cache=False`` and, where supported, ``logits_to_keep`` so the lm_head runs
    only on the scored positions (it is the biggest matmul of a small model)."""
    import inspect

    kwargs: dict[str, Any] = {"use_cache": False}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return kwargs
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = n_keep
    return kwargs


def scored_logits(model: Any, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
    """The (n_scored, V) logits of the last ``n_scored`` positions of one sequence."""
    out = model(input_ids=input_ids.to(model_device(model)), **_forward_kwargs(model, n_scored))
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[0, -n_scored:]


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
