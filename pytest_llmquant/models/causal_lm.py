"""What every gate asks of a transformers causal LM before running it: how long a sequence
it takes, where it lives, and a prompt encoded to fit.

One copy of each, so that the similarity gate, the speed gate and the suite cut prompts
and windows the same way. A prompt longer than the context would crash deep inside the
model (a position embedding index out of range) or silently degrade: it is truncated
from the left (the end of a prompt is what the next token depends on), with one warning
per length.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..types import Tokenizer

_warned: set[tuple[int, int]] = set()

#: config keys that bound the sequence, in the order transformers' configs use them
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class LlmqPromptWarning(UserWarning):
    """A prompt was shortened to fit the model's context."""


def context_length(model: object) -> int | None:
    """The longest sequence the model's position encoding supports, if its config says
    (the text config of a multimodal model)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights (``model.device`` where transformers says it)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> str:
    """The dtype the model computes in ("float32", "bfloat16"), a key of the stored reference."""
    for tensor in model.parameters():
        return str(tensor.dtype).removeprefix("torch.")
    return "unknown"


def vocab_size(model: object) -> int:
    """Rows of the model's output distribution: its lm_head's, else the config's."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    rows = getattr(head, "out_features", None)
    if rows is None and head is not None and getattr(head, "weight", None) is not None:
        rows = head.weight.shape[0]
    if rows is None:
        rows = model.config.vocab_size  # type: ignore[attr-defined]
    return int(rows)


def kept_length(length: int, context: int | None, new_tokens: int = 0) -> int:
    """How many of a prompt's last ``length`` tokens fit ``context`` with room for
    ``new_tokens`` more (a warning, once per length, when that cuts it)."""
    if context is None or length + new_tokens <= context:
        return length
    keep = max(context - new_tokens, 1)
    if (length, context) not in _warned:
        _warned.add((length, context))
        warnings.warn(
            LlmqPromptWarning(
                f"prompt of {length} tokens (+{new_tokens} new) is longer than the model's "
                f"context ({context}); keeping its last {keep} tokens"
            ),
            stacklevel=3,
        )
    return keep


def encode_prompt(
    tokenizer: Tokenizer, prompt: str, *, context: int | None, new_tokens: int = 0
) -> list[int]:
    """The prompt's token ids as a generation sees them (special tokens added), cut from
    the left to leave room for ``new_tokens`` within ``context``."""
    ids = [int(i) for i in tokenizer(prompt)["input_ids"]]
    return ids[len(ids) - kept_length(len(ids), context, new_tokens) :]


def fit_to_context(
    inputs: Mapping[str, torch.Tensor], model: object, new_tokens: int = 0
) -> dict[str, torch.Tensor]:
    """Left-truncate tokenizer output (a mapping with ``input_ids`` tensors) so that prompt
    plus ``new_tokens`` fits the context of ``model``."""
    ids = inputs["input_ids"]
    length = int(ids.shape[-1])
    keep = kept_length(length, context_length(model), new_tokens)
    if keep == length:
        return dict(inputs)
    return {
        k: (v[..., -keep:] if hasattr(v, "shape") and v.shape[-1] == length else v)
        for k, v in inputs.items()
    }
