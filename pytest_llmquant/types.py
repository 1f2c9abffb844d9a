"""The types that cross module boundaries: what the plugin expects of a tokenizer and a
causal LM, named once so that signatures say what they take instead of ``Any``.

They are Protocols (structural): any transformers tokenizer or model fits, and so does a
test double with the same few members. Importing this module imports neither torch nor
transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from torch import nn

#: a causal LM in this process: a transformers ``*ForCausalLM`` model or any module with
#: ``config``, ``forward(input_ids=...)`` returning ``.logits``, and ``generate``
CausalLM: TypeAlias = "nn.Module"

#: JSON-ready values of reports, baselines and probe arguments
JSONValue: TypeAlias = "str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]"


class Tokenizer(Protocol):
    """The part of a transformers tokenizer the gates use."""

    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    def __call__(self, text: str, **kwargs: Any) -> Mapping[str, Any]:
        """Encode ``text``: a mapping with ``input_ids`` (and ``attention_mask``)."""
        ...

    def decode(self, ids: Any, **kwargs: Any) -> str:
        """Token ids back to text."""
        ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """The vocabulary's spelling of each id (a runtime's file must spell them alike)."""
        ...

    def save_pretrained(self, directory: str) -> object:
        """Write the tokenizer files (a probe process loads them)."""
        ...
