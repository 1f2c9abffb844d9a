"""Running the FP32 and INT8 models over the evaluation text, one window at a time.

The text is tokenized once and read in overlapping windows (:func:`plan_windows`); each
window's scored logits of both models go straight into :func:`~.metrics.token_stats`,
so only per-token numbers are kept, never a (tokens x vocabulary) logits matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LlmqUsageError
from .metrics import MIN_TOKENS, SimilarityResult, TokenStats, summarize, token_stats

if TYPE_CHECKING:
    import torch

#: Window used when the caller gives none (capped by the model's context length).
DEFAULT_WINDOW = 512


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


def plan_windows(n_text_tokens: int, n_tokens: int, window: int) -> list[Window]:
    """Windows that score exactly ``n_tokens`` consecutive tokens, each once.

    As in llama.cpp, the first half of every window (``window // 2`` tokens) is
    context only and the logits of the second half are scored, so every scored
    token is predicted from at least ``window // 2 + 1`` tokens of text. Unlike
    llama.cpp, which evaluates disjoint chunks and never scores the first half of
    the text in each, windows here advance by the scored length, so the scored
    spans are contiguous and the text is used almost entirely: ``n_tokens +
    window // 2 + 1`` tokens are needed. The last window is shortened to what is
    left to score, never lengthened, so no forward pass exceeds ``window``.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    context = window // 2
    stride = window - context
    needed = n_tokens + context + 1
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
        windows.append(Window(start, start + context + k, k))
        start += stride
        left -= k
    return windows


def context_length(model: Any) -> int | None:
    """The longest sequence the model's position encoding supports, if the config says."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _device(model: Any) -> torch.device:
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _forward_kwargs(model: Any, n_keep: int) -> dict[str, Any]:
    """``use_cache=False`` and, where supported, ``logits_to_keep`` so the lm_head runs
    only on the scored half (it is the biggest matmul of a small model)."""
    import inspect

    kwargs: dict[str, Any] = {"use_cache": False}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return kwargs
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = n_keep
    return kwargs


def _scored_logits(model: Any, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
    out = model(input_ids=input_ids.to(_device(model)), **_forward_kwargs(model, n_scored))
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[0, -n_scored:]


def _bos_to_insert(tokenizer: Any) -> int | None:
    """The BOS id if this tokenizer puts one in front of every text, else None.

    Such models are trained to always see BOS at position 0; like llama.cpp we
    overwrite the first (context) token of every window with it.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # pragma: no cover - tokenizer without __call__
        return None
    return bos if ids and ids[0] == bos else None


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence longer than model_max_length": we window it
        encoded = tokenizer(text, add_special_tokens=False, verbose=False)
    return list(encoded["input_ids"])


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
    import torch

    if not prompts or new_tokens < 1:
        return None
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    same = total = 0
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt")
            outputs = []
            for model in (fp32_model, int8_model):
                device = _device(model)
                generated = model.generate(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=pad,
                )
                outputs.append(generated[0, enc["input_ids"].shape[1] :].cpu())
            a, b = outputs
            n = min(len(a), len(b), new_tokens)
            same += int((a[:n] == b[:n]).sum())
            total += new_tokens
    return same / total


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
) -> SimilarityResult:
    """Teacher-forced KLD statistics of ``int8_model`` against ``fp32_model`` on ``text``.

    The text (default: :func:`~pytest_llmquant.evaltext.default_corpus`) is tokenized
    once and read in windows (see :func:`plan_windows`) of ``window`` tokens,
    default ``min(context, 512)`` and never more than the model's context; exactly
    ``n_tokens`` tokens are scored. Both models run in eval mode under
    ``torch.inference_mode()`` on their own device, one window at a time; their
    training flags are restored afterwards. Then each model greedily continues
    ``prompts`` (default :data:`~pytest_llmquant.evaltext.EVAL_PROMPTS`; pass ``()``
    to skip) for :func:`greedy_match`. ``progress`` hears how many windows are done.
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

    ids = _tokenize(tokenizer, default_corpus() if text is None else text)
    plan = plan_windows(len(ids), n_tokens, window)
    bos = _bos_to_insert(tokenizer)
    all_ids = torch.tensor(ids, dtype=torch.long)

    was_training = [(m, m.training) for m in (fp32_model, int8_model)]
    fp32_model.eval()
    int8_model.eval()
    try:
        parts = []
        with torch.inference_mode():
            for i, w in enumerate(plan):
                if progress is not None:
                    progress(
                        f"similarity: window {i + 1} of {len(plan)} ({w.n_scored} tokens each)"
                    )
                input_ids = all_ids[w.start : w.stop].clone().unsqueeze(0)
                if bos is not None:
                    input_ids[0, 0] = bos
                lf = _scored_logits(fp32_model, input_ids, w.n_scored)
                lq = _scored_logits(int8_model, input_ids, w.n_scored)
                parts.append(token_stats(lf, lq.to(lf.device), all_ids[w.targets]))
                del lf, lq
        stats = TokenStats.concat(parts)
        match = greedy_match(
            fp32_model,
            int8_model,
            tokenizer,
            EVAL_PROMPTS if prompts is None else prompts,
            greedy_tokens,
        )
    finally:
        for model, training in was_training:
            model.train(training)
    return summarize(stats, greedy_match=match)
