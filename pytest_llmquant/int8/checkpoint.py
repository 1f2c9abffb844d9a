"""A quantized model the user ships (``--llmq-int8-model``): a directory or a Q8_0 GGUF file.

The work is the ``checkpoint`` and ``gguf`` routes' (:mod:`.routes`); these two functions
are the names the session and the benchmarks call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .routes import Int8Built, Int8Request, build_or_load, checkpoint_origin

if TYPE_CHECKING:
    from ..types import CausalLM

__all__ = ["checkpoint_origin", "load_int8_checkpoint"]


def load_int8_checkpoint(path: str, reference: CausalLM, *, device: str = "cpu") -> Int8Built:
    """Load the checkpoint as its maker loads it; a GGUF's Q8_0 blocks go losslessly into
    the ``weight-only-int8`` layer (same layout), so no requantizing happens."""
    return build_or_load(Int8Request(reference, device=device, checkpoint=path))
