"""Running the FP32 and INT8 models over the evaluation text, one window at a time.

The text is tokenized once and read in overlapping windows (:func:`plan_windows`); each
window's scored logits of both models (or the INT8 model's and the stored FP32
reference's, :mod:`.reference`) go straight into :func:`~.metrics.token_stats`, so only
per-token numbers are kept, never a (tokens x vocabulary) logits matrix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LlmqUsageError
from ..sides.torch_side import scored_logits
from .forward import bos_to_insert, context_length, tokenize
from .greedy import greedy_match, match_fraction
from .greedy import greedy_tokens as generate_greedy
from .metrics import (
    MIN_TOKENS,
    SimilarityResult,
    TokenStats,
    reference_token_stats,
    summarize,
    token_stats,
)
from .windows import DEFAULT_WINDOW, Window, default_prefix, plan_windows

if TYPE_CHECKING:
    from .reference import ReferenceStore

__all__ = [
    "DEFAULT_WINDOW",
    "Window",
    "context_length",
    "default_prefix",
    "greedy_match",
    "measure_similarity",
    "plan_windows",
]


def measure_similarity(
    fp32_model: Any,
    int8_model: Any,
    tokenizer: Any,
    *,
    text: str | None = None,
    n_tokens: int = 2048,
    window: int | None = None,
    prompts: Sequence[str] | None = None,
    greedy_tokens: int = 16,
    progress: Callable[[str], None] | None = None,
    prefix: int | None = None,
    reference: ReferenceStore | None = None,
) -> SimilarityResult:
    """Teacher-forced KLD statistics of ``int8_model`` against ``fp32_model`` on ``text``.

    The text (default: :func:`~pytest_llmquant.evaltext.default_corpus`) is tokenized
    once and read in windows (see :func:`plan_windows`) of ``window`` tokens, default
    ``min(context, 512)`` and never more than the model's context, whose first
    ``prefix`` tokens (default 64, at most half the window) are context only; exactly
    ``n_tokens`` tokens are scored. Both models run in eval mode under
    ``torch.inference_mode()`` on their own device, one window at a time; their
    training flags are restored afterwards. Then each model greedily continues
    ``prompts`` (default :data:`~pytest_llmquant.evaltext.EVAL_PROMPTS`; pass ``()``
    to skip) for :func:`greedy_match`. ``progress`` hears how many windows are done.

    With a ``reference`` store the FP32 side (its log-probs in the stored form, and its
    greedy continuations) is read from the cache, or computed and cached first: a warm
    run only runs ``int8_model``.
    """
    import torch

    from ..evaltext import EVAL_PROMPTS, default_corpus

    if n_tokens < MIN_TOKENS:
        raise LlmqUsageError(
            f"--llmq-eval-tokens={n_tokens} is below the {MIN_TOKENS} scored tokens that "
            f"KLD statistics need (llama.cpp's minimum); raise --llmq-eval-tokens"
        )
    contexts = [c for c in (context_length(fp32_model), context_length(int8_model)) if c]
    limit = min(contexts) if contexts else None
    if window is None:
        window = min(limit, DEFAULT_WINDOW) if limit else DEFAULT_WINDOW
    elif limit is not None:
        window = min(window, limit)
    if prefix is not None:
        prefix = min(prefix, window - 1)  # a window capped by the context keeps a scored part

    text = default_corpus() if text is None else text
    ids = tokenize(tokenizer, text)
    plan = plan_windows(len(ids), n_tokens, window, prefix)
    bos = bos_to_insert(tokenizer)
    all_ids = torch.tensor(ids, dtype=torch.long)
    prompts = EVAL_PROMPTS if prompts is None else prompts

    was_training = [(m, m.training) for m in (fp32_model, int8_model)]
    fp32_model.eval()
    int8_model.eval()
    try:
        stored = None
        if reference is not None:
            stored = reference.kld_reference(
                fp32_model,
                ids,
                plan,
                text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                bos=bos,
                progress=progress,
            )
        parts = []
        row = 0
        with torch.inference_mode():
            for i, w in enumerate(plan):
                if progress is not None:
                    progress(
                        f"similarity: window {i + 1} of {len(plan)} ({w.n_scored} tokens each)"
                    )
                input_ids = all_ids[w.start : w.stop].clone().unsqueeze(0)
                if bos is not None:
                    input_ids[0, 0] = bos
                lq = scored_logits(int8_model, input_ids, w.n_scored)
                if stored is not None:
                    rows = stored.rows(row, row + w.n_scored)
                    parts.append(reference_token_stats(rows, lq, all_ids[w.targets]))
                else:
                    lf = scored_logits(fp32_model, input_ids, w.n_scored)
                    parts.append(token_stats(lf, lq.to(lf.device), all_ids[w.targets]))
                    del lf
                del lq
                row += w.n_scored
        stats = TokenStats.concat(parts)
        match = None
        if prompts and greedy_tokens >= 1:
            if reference is not None:
                fp32_tokens = reference.greedy_tokens(fp32_model, tokenizer, prompts, greedy_tokens)
            else:
                fp32_tokens = generate_greedy(fp32_model, tokenizer, prompts, greedy_tokens)
            int8_tokens = generate_greedy(int8_model, tokenizer, prompts, greedy_tokens)
            match = match_fraction(fp32_tokens, int8_tokens, greedy_tokens)
    finally:
        for model, training in was_training:
            model.train(training)
    return summarize(stats, greedy_match=match)
