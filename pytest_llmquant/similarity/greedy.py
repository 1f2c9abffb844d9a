"""Greedy generation from fixed prompts, and how often two models chose the same token.

The prompts are encoded once, with the reference's tokenizer, and each side continues
the same ids itself, token by token (:meth:`~pytest_llmquant.sides.base.ModelSide.greedy`).
Checking the reference continuation with one INT8 forward pass, as speculative decoding
checks a draft, would be 2x faster for a good INT8 model, but it is only the same as
generating when a position's output does not depend on the rest of the forward pass;
torch.ao's dynamic recipe quantizes activations per tensor, so its choices change with
the sequence around them (on SmolLM2 the greedy match read 7% that way against 19%
generated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..models.causal_lm import encode_prompt
from .pair import as_sides, measuring
from .windows import shared_context

if TYPE_CHECKING:
    from ..sides.base import ModelSide
    from ..types import CausalLM, Tokenizer
    from .reference import ReferenceStore

#: tokens each side generates after every prompt for the greedy match
GREEDY_TOKENS = 16


def encode_prompts(
    tokenizer: Tokenizer, prompts: Sequence[str], *, context: int | None, new_tokens: int
) -> list[list[int]]:
    """Each prompt's ids as a generation sees them (special tokens added), cut from the
    left to leave room for ``new_tokens`` within ``context``."""
    return [encode_prompt(tokenizer, p, context=context, new_tokens=new_tokens) for p in prompts]


def match_fraction(
    reference: Sequence[Sequence[int]], other: Sequence[Sequence[int]], new_tokens: int
) -> float:
    """Position-wise agreement of two sets of continuations, over ``new_tokens`` per prompt."""
    same = 0
    for a, b in zip(reference, other, strict=True):
        same += sum(x == y for x, y in zip(a[:new_tokens], b[:new_tokens], strict=False))
    return same / (new_tokens * len(reference))


def continuations_match(
    reference: ModelSide,
    int8: ModelSide,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    new_tokens: int,
    store: ReferenceStore | None = None,
) -> float | None:
    """:func:`greedy_match` of two sides already measuring; with a ``store`` the
    reference's continuations come from the cache (generated and stored first on a miss)."""
    if not prompts or new_tokens < 1:
        return None
    context = shared_context(reference, int8)
    prompt_ids = encode_prompts(tokenizer, prompts, context=context, new_tokens=new_tokens)
    if store is not None:
        reference_tokens = store.greedy_tokens(reference, prompt_ids, new_tokens)
    else:
        reference_tokens = reference.greedy(prompt_ids, new_tokens)
    return match_fraction(reference_tokens, int8.greedy(prompt_ids, new_tokens), new_tokens)


def greedy_match(
    reference: ModelSide | CausalLM,
    int8: ModelSide | CausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    new_tokens: int = GREEDY_TOKENS,
    *,
    threads: int | None = None,
) -> float | None:
    """Fraction of greedily generated positions where both models chose the same token.

    Each model (a :class:`~pytest_llmquant.sides.base.ModelSide` or an ``nn.Module``)
    generates exactly ``new_tokens`` tokens (EOS suppressed) after each prompt, from its
    *own* previous tokens; agreement is counted position by position over all of them.
    After a first disagreement the two continuations condition on different text, so
    later agreement is partly coincidence; the stricter "matching prefix" would instead
    make one early near-tie flip worth as much as a collapse. Position-wise is the
    steadier number for a report, and it is information only: no gate reads it.
    ``None`` when there is nothing to generate.
    """
    reference_side, int8_side = as_sides(reference, int8, tokenizer)
    with measuring(threads, reference_side, int8_side):
        return continuations_match(reference_side, int8_side, tokenizer, prompts, new_tokens)
