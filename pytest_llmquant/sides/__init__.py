"""Model sides: what a gate needs from a model (:mod:`.base`), one implementation per
runtime: :mod:`.torch_side` in this process, :mod:`.child` for llama.cpp and ONNX Runtime
(:mod:`.runtimes`), each in a child process of its own."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .base import DecodeTimer, ModelSide, ProbeSpec, ShippedFile

if TYPE_CHECKING:
    from ..types import CausalLM, Tokenizer

__all__ = ["DecodeTimer", "ModelSide", "ProbeSpec", "ShippedFile", "as_side"]


def as_side(
    model: ModelSide | CausalLM, label: str, tokenizer: Tokenizer | None = None
) -> ModelSide:
    """``model`` itself if it is a side already, else an ``nn.Module`` in a
    :class:`~.torch_side.TorchSide` called ``label``: for public functions that took
    modules before sides existed."""
    torch = sys.modules.get("torch")  # a module needs torch imported: never import it here
    if torch is None or not isinstance(model, torch.nn.Module):
        return model  # type: ignore[return-value]
    from .torch_side import TorchSide

    return TorchSide(model, label=label, tokenizer=tokenizer)
