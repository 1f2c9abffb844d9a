"""Which tokens of the evaluation text each forward pass reads, and which it scores.

llama.cpp's ``perplexity`` scores only the second half of each window: a token predicted
from a handful of tokens of context is hard for *any* model, and scoring it would make
the numbers say more about the window edges than about the model. Throwing away half of
every forward pass is expensive, though: 2,048 scored tokens cost 4,096 token-forwards
per model. Here a window reads ``window`` tokens and only its first ``prefix`` tokens
(64 by default) are context-only; every scored token still sees at least ``prefix + 1``
tokens of text, and 2,048 scored tokens cost ``2,048 + windows x prefix`` token-forwards
(2,368 with the default 512-token window, 5 windows instead of 8).

What it changes in the numbers: scored tokens see between 65 and 512 tokens of context
(before: 257 to 512), 288 on average (before: 384). Less context makes every model a
little less sure, so PPL rises slightly for both models; the KLD and same-top of a
weight-only INT8 model barely move (docs/gates.md, "Similarity: what is measured", has the measured
before/after figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError

if TYPE_CHECKING:
    from ..sides.base import ModelSide

#: Window used when the caller gives none (capped by the model's context length).
DEFAULT_WINDOW = 512
#: Context-only tokens at the start of every window (at most half the window).
DEFAULT_PREFIX = 64


@dataclass(frozen=True)
class Window:
    """One forward pass: the model reads ``ids[start:stop]``; its last ``n_scored``
    positions are scored, predicting ``ids[stop - n_scored + 1 : stop + 1]``."""

    start: int
    stop: int
    n_scored: int

    @property
    def targets(self) -> slice:
        return slice(self.stop - self.n_scored + 1, self.stop + 1)


def shared_context(reference: ModelSide, int8: ModelSide) -> int | None:
    """The shorter of the two sides' context lengths (None when neither says)."""
    contexts = [c for c in (reference.context_length(), int8.context_length()) if c]
    return min(contexts) if contexts else None


def window_for(reference: ModelSide, int8: ModelSide, window: int | None = None) -> int:
    """The window a measurement of this pair reads: ``window`` (default
    :data:`DEFAULT_WINDOW`) capped by the shorter context, so that no forward pass of
    either side is longer than it accepts. :attr:`~.metrics.SimilarityResult.window`
    records it."""
    limit = shared_context(reference, int8)
    window = DEFAULT_WINDOW if window is None else window
    return window if limit is None else min(window, limit)


def default_prefix(window: int) -> int:
    """:data:`DEFAULT_PREFIX`, but never more than half a short model's window."""
    return max(1, min(DEFAULT_PREFIX, window // 2))


def plan_windows(
    n_text_tokens: int, n_tokens: int, window: int, prefix: int | None = None
) -> list[Window]:
    """Windows that score exactly ``n_tokens`` consecutive tokens, each once.

    The first ``prefix`` tokens of every window (default :func:`default_prefix`) are
    context only and the rest are scored, so every scored token is predicted from at
    least ``prefix + 1`` tokens of text; ``prefix = window // 2`` is llama.cpp's plan.
    Unlike llama.cpp, which evaluates disjoint chunks and never scores the first half
    of the text in each, windows here advance by the scored length, so the scored spans
    are contiguous and the text is used almost entirely: ``n_tokens + prefix + 1``
    tokens are needed. The last window is shortened to what is left to score, never
    lengthened, so no forward pass exceeds ``window``.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if prefix is None:
        prefix = default_prefix(window)
    if not 1 <= prefix < window:
        raise ValueError(f"prefix must be between 1 and window - 1 = {window - 1}, got {prefix}")
    stride = window - prefix
    needed = n_tokens + prefix + 1
    if n_text_tokens < needed:
        raise LlmqUsageError(
            f"evaluation text has only {n_text_tokens} tokens, {needed} needed for "
            f"--llmq-eval-tokens={n_tokens}; pass a longer --llmq-eval-text or lower "
            f"--llmq-eval-tokens"
        )
    windows = []
    start, left = 0, n_tokens
    while left > 0:
        k = min(stride, left)
        windows.append(Window(start, start + prefix + k, k))
        start += stride
        left -= k
    return windows
