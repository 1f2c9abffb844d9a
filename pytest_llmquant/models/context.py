"""Keep prompts inside the model's context window.

A prompt longer than the context would crash deep inside the model (a position
embedding index out of range) or silently degrade. It is truncated from the left —
the end of a prompt is what the next token depends on — with one warning per length.
"""

from __future__ import annotations

import warnings
from typing import Any

_warned: set[tuple[int, int]] = set()


class LlmqPromptWarning(UserWarning):
    """A prompt was shortened to fit the model's context."""


def context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_to_context(inputs: Any, model: Any, new_tokens: int = 0) -> Any:
    """Left-truncate tokenizer output (a mapping with ``input_ids``) so that prompt plus
    ``new_tokens`` fits the context of ``model``."""
    ctx = context_length(model)
    ids = inputs["input_ids"]
    if ctx is None or ids.shape[-1] + new_tokens <= ctx:
        return inputs
    keep = max(ctx - new_tokens, 1)
    key = (int(ids.shape[-1]), ctx)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            LlmqPromptWarning(
                f"prompt of {ids.shape[-1]} tokens (+{new_tokens} new) is longer than the model's "
                f"context ({ctx}); keeping its last {keep} tokens"
            ),
            stacklevel=2,
        )
    return {
        k: (v[..., -keep:] if hasattr(v, "shape") and v.shape[-1] == ids.shape[-1] else v)
        for k, v in dict(inputs).items()
    }
