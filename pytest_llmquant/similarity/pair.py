"""The two sides a similarity measurement reads, and the state they are measured in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from ..sides import as_side

if TYPE_CHECKING:
    from ..sides.base import ModelSide
    from ..types import CausalLM, Tokenizer

#: what a module passed instead of a side is called
REFERENCE_LABEL = "reference"
INT8_LABEL = "INT8"


def as_sides(
    reference: ModelSide | CausalLM, int8: ModelSide | CausalLM, tokenizer: Tokenizer
) -> tuple[ModelSide, ModelSide]:
    """Both models as sides: an ``nn.Module`` is wrapped in a
    :class:`~pytest_llmquant.sides.torch_side.TorchSide`, a side is used as it is."""
    return as_side(reference, REFERENCE_LABEL, tokenizer), as_side(int8, INT8_LABEL, tokenizer)


@contextmanager
def measuring(threads: int | None, *sides: ModelSide) -> Iterator[None]:
    """Every side in its measuring state (:meth:`ModelSide.measuring`: eval mode, no
    autograd) with ``threads`` compute threads (None: torch's current number), restored
    afterwards; the same model twice is fine."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    with ExitStack() as stack:
        for side in sides:
            stack.enter_context(side.measuring(threads))
        yield
