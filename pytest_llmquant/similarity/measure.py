"""Running the reference and INT8 sides over the evaluation text, one window at a time.

The text is tokenized once, with the reference's tokenizer, and read in overlapping
windows (:func:`plan_windows`); each window's scored logits of both sides (or the INT8
side's and the stored reference's, :mod:`.reference`) go straight into
:func:`~.metrics.token_stats`, so only per-token numbers are kept, never a (tokens x
vocabulary) logits matrix. A side is a :class:`~pytest_llmquant.sides.base.ModelSide`;
an ``nn.Module`` passed instead is measured through a
:class:`~pytest_llmquant.sides.torch_side.TorchSide`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from ..settings import Settings
from .forward import EvalIds
from .greedy import GREEDY_TOKENS, continuations_match, greedy_match
from .metrics import (
    MIN_TOKENS,
    SimilarityResult,
    TokenStats,
    reference_token_stats,
    summarize,
    token_stats,
)
from .pair import as_sides, measuring
from .windows import DEFAULT_WINDOW, Window, default_prefix, plan_windows, window_for

if TYPE_CHECKING:
    from ..sides.base import ModelSide
    from ..types import CausalLM, Tokenizer
    from .reference import ReferenceStore
    from .stored import StoredReference

__all__ = [
    "DEFAULT_WINDOW",
    "Window",
    "default_prefix",
    "greedy_match",
    "measure_similarity",
    "plan_windows",
]

Progress = Callable[[str], None]


def measure_similarity(
    reference: ModelSide | CausalLM,
    int8: ModelSide | CausalLM,
    tokenizer: Tokenizer,
    /,
    *,
    text: str | None = None,
    n_tokens: int = Settings.eval_tokens,
    window: int | None = None,
    prompts: Sequence[str] | None = None,
    greedy_tokens: int = GREEDY_TOKENS,
    progress: Progress | None = None,
    prefix: int | None = None,
    store: ReferenceStore | None = None,
    threads: int | None = None,
    **legacy: ReferenceStore | None,
) -> SimilarityResult:
    """Teacher-forced KLD statistics of ``int8`` against ``reference`` on ``text``.

    Both are :class:`~pytest_llmquant.sides.base.ModelSide`\\ s or ``nn.Module``\\ s
    (the reference may be BF16); ``tokenizer`` is the reference's. The text (default:
    :func:`~pytest_llmquant.evaltext.default_corpus`) is tokenized once and read in
    windows (see :func:`plan_windows`) of ``window`` tokens, default ``min(context,
    512)`` and never more than either side's context (:func:`~.windows.window_for`;
    :attr:`SimilarityResult.window` says which was read), whose first ``prefix`` tokens
    (default 64, at most half the window) are context only; exactly ``n_tokens`` tokens
    are scored. Both sides run in their measuring state (eval mode, no autograd,
    ``threads`` threads, None: torch's current number), one window at a time, and are
    handed back as they were. Then each side greedily continues ``prompts`` (default
    :data:`~pytest_llmquant.evaltext.EVAL_PROMPTS`; pass ``()`` to skip) for
    :func:`greedy_match`. ``progress`` hears how many windows are done.

    With a ``store`` the reference side (its log-probs in the stored form, and its
    greedy continuations) is read from the cache, or computed and cached first: a warm
    run only runs ``int8``; ``reference=`` is the store's name from before model sides,
    still accepted.
    """
    from ..evaltext import EVAL_PROMPTS, default_corpus

    store = _legacy_store(store, legacy)
    _check_token_count(n_tokens)
    reference_side, int8_side = as_sides(reference, int8, tokenizer)
    window = window_for(reference_side, int8_side, window)
    if prefix is not None:
        prefix = min(prefix, window - 1)  # a window capped by the context keeps a scored part
    text = default_corpus() if text is None else text
    evaluation = EvalIds.read(tokenizer, text, n_tokens, window, prefix)
    prompts = EVAL_PROMPTS if prompts is None else prompts
    with measuring(threads, reference_side, int8_side):
        stats = _window_stats(reference_side, int8_side, evaluation, store, progress)
        match = continuations_match(
            reference_side, int8_side, tokenizer, prompts, greedy_tokens, store
        )
    return replace(summarize(stats, greedy_match=match), window=window)


def _legacy_store(
    store: ReferenceStore | None, legacy: dict[str, ReferenceStore | None]
) -> ReferenceStore | None:
    """``store``, or the store passed by its old keyword ``reference=``."""
    unknown = set(legacy) - {"reference"}
    if unknown:
        raise TypeError(f"measure_similarity() got unexpected keyword arguments {sorted(unknown)}")
    if store is not None and legacy.get("reference") is not None:
        raise TypeError("measure_similarity() got both store= and reference= (its old name)")
    return store if store is not None else legacy.get("reference")


def _check_token_count(n_tokens: int) -> None:
    if n_tokens < MIN_TOKENS:
        raise LlmqUsageError(
            f"--llmq-eval-tokens={n_tokens} is below the {MIN_TOKENS} scored tokens that "
            f"KLD statistics need (llama.cpp's minimum); raise --llmq-eval-tokens"
        )


def _window_stats(
    reference: ModelSide,
    int8: ModelSide,
    evaluation: EvalIds,
    store: ReferenceStore | None,
    progress: Progress | None,
) -> TokenStats:
    """The per-token numbers of every planned window, the reference side from ``store``
    when there is one."""
    stored: StoredReference | None = None
    if store is not None:
        stored = store.kld_reference(
            reference,
            evaluation.ids,
            evaluation.plan,
            text_sha256=evaluation.text_sha256,
            bos=evaluation.bos,
            progress=progress,
        )
    parts = []
    row = 0
    for i, w in enumerate(evaluation.plan):
        if progress is not None:
            n_windows = len(evaluation.plan)
            progress(f"similarity: window {i + 1} of {n_windows} ({w.n_scored} tokens each)")
        input_ids, targets = evaluation.window_input(w), evaluation.targets(w)
        lq = int8.scored_logits(input_ids, w.n_scored)
        if stored is not None:
            rows = stored.rows(row, row + w.n_scored)
            parts.append(reference_token_stats(rows, lq, targets))
        else:
            lp = reference.scored_logits(input_ids, w.n_scored)
            parts.append(token_stats(lp, lq.to(lp.device), targets))
            del lp
        del lq
        row += w.n_scored
    return TokenStats.concat(parts)
