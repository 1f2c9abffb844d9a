"""Greedy generation from fixed prompts, and how often two models chose the same token.

Each model runs ``generate()`` itself, token by token. Checking the FP32 continuation with
one INT8 forward pass, as speculative decoding checks a draft, would be 2x faster for a
good INT8 model, but it is only the same as generating when a position's output does not
depend on the rest of the forward pass; torch.ao's dynamic recipe quantizes activations
per tensor, so its choices change with the sequence around them (on SmolLM2 the greedy
match read 7% that way against 19% generated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .forward import model_device


def greedy_tokens(
    model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int
) -> list[list[int]]:
    """The ``new_tokens`` token ids ``model`` generates greedily after each prompt.

    EOS is suppressed (``min_new_tokens``), so every list has exactly ``new_tokens``
    ids; the model runs in whatever mode the caller left it (eval for a measurement).
    """
    import torch

    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    device = model_device(model)
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt")
            generated = model.generate(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=pad,
            )
            out.append([int(t) for t in generated[0, enc["input_ids"].shape[1] :].cpu()])
    return out


def match_fraction(
    reference: Sequence[Sequence[int]], other: Sequence[Sequence[int]], new_tokens: int
) -> float:
    """Position-wise agreement of two sets of continuations, over ``new_tokens`` per prompt."""
    same = 0
    for a, b in zip(reference, other, strict=True):
        same += sum(x == y for x, y in zip(a[:new_tokens], b[:new_tokens], strict=False))
    return same / (new_tokens * len(reference))


def greedy_match(
    fp32_model: Any, int8_model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int = 16
) -> float | None:
    """Fraction of greedily generated positions where both models chose the same token.

    Each model generates exactly ``new_tokens`` tokens (EOS suppressed by
    ``min_new_tokens``) after each prompt, from its *own* previous tokens; agreement
    is counted position by position over all of them. After a first disagreement the
    two continuations condition on different text, so later agreement is partly
    coincidence; the stricter "matching prefix" would instead make one early
    near-tie flip worth as much as a collapse. Position-wise is the steadier number
    for a report, and it is information only: no gate reads it. ``None`` when there
    is nothing to generate.
    """
    if not prompts or new_tokens < 1:
        return None
    return match_fraction(
        greedy_tokens(fp32_model, tokenizer, prompts, new_tokens),
        greedy_tokens(int8_model, tokenizer, prompts, new_tokens),
        new_tokens,
    )
