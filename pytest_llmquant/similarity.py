"""How close the INT8 model's predictions are to the FP32 model's: llama.cpp's KLD statistics.

The numbers and their uncertainties are the ones ``llama-perplexity
--kl-divergence`` prints (``tools/perplexity/perplexity.cpp`` in llama.cpp), so a
result here can be read against the many published llama.cpp tables:

* **KLD** per scored token, ``sum_v p_v (log p_v - log q_v)`` over the whole
  vocabulary, ``p`` the FP32 softmax and ``q`` the INT8 one. It sees every change of
  the distribution, not only changes of the chosen token, which is why it is the
  gate's main number. (llama.cpp stores the base log-probs in 16 bits and skips
  entries with ``log p < -16``; we keep float64 and sum every entry, so results on
  near-identical models can differ from llama.cpp's in the last printed digits.)
* **same top**: fraction of tokens where both models' argmax agree.
* **PPL** of each model on the text, and their ratio ``PPL(INT8) / PPL(FP32)``.
* **RMS Δp**: root mean square of ``q(target) - p(target)``.

Uncertainties are standard errors of the mean over tokens, exactly as llama.cpp
computes them: ``std(ddof=1) / sqrt(n)`` for means, ``sqrt(p (1 - p) / (n - 1))``
for the same-top fraction, the *paired* log-probability difference for the PPL
ratio (the two models err on the same hard tokens, so their PPLs are strongly
correlated and the ratio is far better known than either PPL), and the delta method
for RMS Δp. Tokens of one text are not independent, so these errors are somewhat
optimistic; they are for telling noise from a real change, not for publication.

Everything is computed in float64 from ``log_softmax`` (a 50k-way softmax of float32
logits loses the small probabilities that KLD is made of), one window at a time,
so that only per-token numbers are kept: the logits of 2,048 tokens x 49k vocabulary
in float64 would be 800 MB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import LlmqUsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

#: llama.cpp refuses to print KLD statistics for fewer scored tokens than this.
MIN_TOKENS = 100
#: Window used when the caller gives none (capped by the model's context length).
DEFAULT_WINDOW = 512
#: Rows of (rows x vocab) float64 handled at once in :func:`token_stats` (~64 MB per tensor).
_CHUNK_ELEMENTS = 1 << 23


@dataclass
class TokenStats:
    """Per scored token numbers, float64 (``same_top`` is bool); all of length n."""

    kld: np.ndarray
    same_top: np.ndarray
    logp_fp32: np.ndarray
    logp_int8: np.ndarray
    dp: np.ndarray

    def __len__(self) -> int:
        return int(self.kld.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[TokenStats]) -> TokenStats:
        """Join the stats of several windows, in order."""
        import numpy as np

        return cls(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("kld", "same_top", "logp_fp32", "logp_int8", "dp")
            )
        )


def token_stats(fp32_logits: Any, int8_logits: Any, targets: Any) -> TokenStats:
    """KLD, top-1 agreement, target log-probs and Δp for each of N positions.

    ``fp32_logits`` and ``int8_logits`` are (N, V) float tensors for the same
    positions, ``targets`` the (N,) token ids that actually follow. Rows are
    processed in chunks so that a large vocabulary never needs more than a few
    (chunk x V) float64 temporaries.
    """
    import numpy as np
    import torch

    fp32_logits = torch.as_tensor(fp32_logits)
    int8_logits = torch.as_tensor(int8_logits).to(fp32_logits.device)
    targets = torch.as_tensor(targets, dtype=torch.long).to(fp32_logits.device)
    if fp32_logits.ndim != 2 or fp32_logits.shape != int8_logits.shape:
        raise ValueError(
            f"logits must both be (N, V), got {tuple(fp32_logits.shape)} "
            f"and {tuple(int8_logits.shape)}"
        )
    if targets.shape != fp32_logits.shape[:1]:
        raise ValueError(f"targets must be ({fp32_logits.shape[0]},), got {tuple(targets.shape)}")
    n, vocab = fp32_logits.shape
    rows = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("kld", "same", "lp", "lq", "dp")}
    with torch.inference_mode():
        for lo in range(0, n, rows):
            logp = torch.log_softmax(fp32_logits[lo : lo + rows].double(), dim=-1)
            logq = torch.log_softmax(int8_logits[lo : lo + rows].double(), dim=-1)
            p = logp.exp()
            # where p == 0 the term is 0 even if log p or log q is -inf (masked logits)
            terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
            t = targets[lo : lo + rows].unsqueeze(1)
            lp_t = logp.gather(1, t).squeeze(1)
            lq_t = logq.gather(1, t).squeeze(1)
            out["kld"].append(terms.sum(dim=-1))
            out["same"].append(logp.argmax(dim=-1) == logq.argmax(dim=-1))
            out["lp"].append(lp_t)
            out["lq"].append(lq_t)
            out["dp"].append(lq_t.exp() - lp_t.exp())

    def cat(key: str, dtype: Any) -> np.ndarray:
        if not out[key]:
            return np.zeros(0, dtype=dtype)
        return torch.cat(out[key]).cpu().numpy().astype(dtype)

    return TokenStats(
        kld=cat("kld", np.float64),
        same_top=cat("same", np.bool_),
        logp_fp32=cat("lp", np.float64),
        logp_int8=cat("lq", np.float64),
        dp=cat("dp", np.float64),
    )


@dataclass
class SimilarityResult:
    """The similarity of an INT8 model to its FP32 original on one text.

    ``ppl_ratio`` is ``PPL(INT8) / PPL(FP32)`` (above 1: INT8 is worse).
    ``greedy_match`` is information only (see :func:`greedy_match`), ``None`` when
    no prompts were generated. ``kld_values`` keeps every token's KLD for a
    histogram; it is left out of ``repr`` and, unless asked, of :meth:`as_dict`.
    """

    n_tokens: int
    mean_kld: float
    kld_se: float
    p99_kld: float
    max_kld: float
    same_top: float
    same_top_se: float
    ppl_fp32: float
    ppl_int8: float
    ppl_ratio: float
    ppl_ratio_se: float
    rms_dp: float
    rms_dp_se: float | None = None
    greedy_match: float | None = None
    kld_values: list[float] = field(default_factory=list, repr=False)

    def as_dict(self, *, include_kld_values: bool = False) -> dict[str, Any]:
        """Plain JSON types only; a non-finite number (a broken INT8 model) becomes None."""
        data = asdict(self)
        if not include_kld_values:
            del data["kld_values"]
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None
        return data

    def __str__(self) -> str:
        text = (
            f"KLD {self.mean_kld:.5f} ± {self.kld_se:.5f} (p99 {self.p99_kld:.4f}), "
            f"same top {100 * self.same_top:.2f} ± {100 * self.same_top_se:.2f}%, "
            f"PPL {self.ppl_fp32:.3f} -> {self.ppl_int8:.3f} "
            f"(x{self.ppl_ratio:.4f} ± {self.ppl_ratio_se:.4f}), "
            f"RMS Δp {100 * self.rms_dp:.2f}%, {self.n_tokens} tokens"
        )
        if self.greedy_match is not None:
            text += f", greedy match {100 * self.greedy_match:.1f}%"
        return text


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n))


def summarize(stats: TokenStats, greedy_match: float | None = None) -> SimilarityResult:
    """Means, llama.cpp's standard errors and the KLD tail of per-token stats."""
    import numpy as np

    n = len(stats)
    if n < MIN_TOKENS:
        raise LlmqUsageError(
            f"similarity needs at least {MIN_TOKENS} scored tokens (llama.cpp's minimum), "
            f"got {n}; raise --llmq-eval-tokens"
        )
    kld = np.asarray(stats.kld, dtype=np.float64)
    mean_kld, kld_se = _mean_se(kld)
    same_top = float(np.mean(stats.same_top))
    # the ratio of PPLs is exp of the paired mean log-prob difference: its SE comes from
    # the spread of the *differences*, which includes the covariance of the two models
    diff = np.asarray(stats.logp_fp32, dtype=np.float64) - np.asarray(
        stats.logp_int8, dtype=np.float64
    )
    mean_diff, diff_se = _mean_se(diff)
    ratio = math.exp(mean_diff)
    dp2 = np.square(np.asarray(stats.dp, dtype=np.float64))
    mse, mse_se = _mean_se(dp2)
    rms = math.sqrt(mse)
    return SimilarityResult(
        n_tokens=n,
        mean_kld=mean_kld,
        kld_se=kld_se,
        p99_kld=float(np.percentile(kld, 99)),
        max_kld=float(kld.max()),
        same_top=same_top,
        same_top_se=math.sqrt(same_top * (1.0 - same_top) / (n - 1)),
        ppl_fp32=math.exp(-float(np.mean(stats.logp_fp32))),
        ppl_int8=math.exp(-float(np.mean(stats.logp_int8))),
        ppl_ratio=ratio,
        ppl_ratio_se=ratio * diff_se,
        rms_dp=rms,
        rms_dp_se=0.5 * mse_se / rms if rms > 0 else 0.0,  # d sqrt(x) = dx / (2 sqrt(x))
        greedy_match=greedy_match,
        kld_values=kld.tolist(),
    )


# -- running the models --------------------------------------------------------------


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
) -> SimilarityResult:
    """Teacher-forced KLD statistics of ``int8_model`` against ``fp32_model`` on ``text``.

    The text (default: :func:`~pytest_llmquant.evaltext.default_corpus`) is tokenized
    once and read in windows (see :func:`plan_windows`) of ``window`` tokens,
    default ``min(context, 512)`` and never more than the model's context; exactly
    ``n_tokens`` tokens are scored. Both models run in eval mode under
    ``torch.inference_mode()`` on their own device, one window at a time; their
    training flags are restored afterwards. Then each model greedily continues
    ``prompts`` (default :data:`~pytest_llmquant.evaltext.EVAL_PROMPTS`; pass ``()``
    to skip) for :func:`greedy_match`.
    """
    import torch

    from .evaltext import EVAL_PROMPTS, default_corpus

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
            for w in plan:
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
