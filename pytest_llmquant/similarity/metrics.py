"""The per-token numbers (KLD, same top, target log-probs, Δp) and their summary.

Computed in float64 from ``log_softmax``, a chunk of rows at a time, and kept per token
only; :func:`summarize` turns them into means with llama.cpp's standard errors (see the
package docstring for the formulas and why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict

from ..errors import LlmqUsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..types import JSONValue

    #: logits or ids as a tensor or an array (:func:`torch.as_tensor` reads both)
    Numbers = torch.Tensor | np.ndarray

#: llama.cpp refuses to print KLD statistics for fewer scored tokens than this.
MIN_TOKENS = 100
#: Elements of (rows x vocab) float64 handled at once in :func:`token_stats` (~1 MB per
#: tensor: small enough to stay in a CPU core's cache, see :func:`_compare`).
_CHUNK_ELEMENTS = 1 << 17


@dataclass
class TokenStats:
    """Per scored token numbers, float64 (``same_top`` is bool); all of length n."""

    kld: np.ndarray
    same_top: np.ndarray
    logp_reference: np.ndarray
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
                for name in ("kld", "same_top", "logp_reference", "logp_int8", "dp")
            )
        )


def _check_shapes(n: int, vocab: int, int8_logits: torch.Tensor, targets: torch.Tensor) -> None:
    if int8_logits.ndim != 2 or tuple(int8_logits.shape) != (n, vocab):
        raise ValueError(
            f"logits must both be (N, V), got {(n, vocab)} and {tuple(int8_logits.shape)}"
        )
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be ({n},), got {tuple(targets.shape)}")


def token_stats(reference_logits: Numbers, int8_logits: Numbers, targets: Numbers) -> TokenStats:
    """KLD, top-1 agreement, target log-probs and Δp for each of N positions.

    ``reference_logits`` and ``int8_logits`` are (N, V) float tensors for the same
    positions, ``targets`` the (N,) token ids that actually follow. Rows are
    processed in chunks so that a large vocabulary never needs more than a few
    (chunk x V) float64 temporaries.
    """
    import torch

    ref_logits = torch.as_tensor(reference_logits)
    int8 = torch.as_tensor(int8_logits).to(ref_logits.device)
    ids = torch.as_tensor(targets, dtype=torch.long).to(ref_logits.device)
    if ref_logits.ndim != 2:
        raise ValueError(f"logits must both be (N, V), got {tuple(ref_logits.shape)}")
    n, vocab = ref_logits.shape
    _check_shapes(n, vocab, int8, ids)

    def reference(lo: int, hi: int) -> _ReferenceChunk:
        logits = ref_logits[lo:hi]
        logp = torch.log_softmax(logits.double(), dim=-1)
        lp_t = logp.gather(1, ids[lo:hi].unsqueeze(1)).squeeze(1)
        masked = bool(logits.numel()) and bool(logits.amin() == float("-inf"))
        return logp, lp_t, first_argmax(logits), masked

    return _compare(reference, int8, ids)


class ReferenceRows(Protocol):
    """The reference side of N scored positions, as a stored reference gives it back.

    ``log_probs`` may be approximate (16-bit storage: it only feeds KLD, whose error
    is second order in it); ``target_logp`` (PPL, Δp) and ``top`` (same top) are exact.
    """

    target_logp: np.ndarray  # (N,) float64
    top: np.ndarray  # (N,) int64: argmax of the reference log-probs

    def __len__(self) -> int: ...

    @property
    def vocab(self) -> int: ...

    def log_probs(self, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo:hi`` as a normalised (hi - lo, V) float64 tensor of log-probs."""
        ...

    def has_masked(self, lo: int, hi: int) -> bool:
        """Whether rows ``lo:hi`` have a ``-inf`` log-prob."""
        ...


def reference_token_stats(
    reference: ReferenceRows, int8_logits: Numbers, targets: Numbers
) -> TokenStats:
    """:func:`token_stats` with the reference side read from a stored reference."""
    import torch

    int8 = torch.as_tensor(int8_logits)
    ids = torch.as_tensor(targets, dtype=torch.long).to(int8.device)
    _check_shapes(len(reference), reference.vocab, int8, ids)
    device = int8.device

    def rows(lo: int, hi: int) -> _ReferenceChunk:
        return (
            reference.log_probs(lo, hi).to(device),
            torch.as_tensor(reference.target_logp[lo:hi], dtype=torch.float64).to(device),
            torch.as_tensor(reference.top[lo:hi], dtype=torch.long).to(device),
            reference.has_masked(lo, hi),
        )

    return _compare(rows, int8, ids)


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The first index of each row's maximum, as ``argmax``; ``max(dim)`` is several times
    faster on CPU and documented to return the first maximal index too."""
    return logits.max(dim=-1).indices


#: the reference side of rows ``lo:hi``: float64 log-probs, target log-probs, argmax, and
#: whether any log-prob is ``-inf``
_ReferenceChunk = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", bool]


def _compare(
    reference: Callable[[int, int], _ReferenceChunk],
    int8_logits: torch.Tensor,
    targets: torch.Tensor,
) -> TokenStats:
    """The per-token numbers, a chunk of rows at a time; ``reference(lo, hi)`` gives the
    reference log-probs, target log-probs and argmax of rows ``lo:hi``, and whether any of
    those log-probs is ``-inf``.

    Chunks are small (~1 MB per float64 tensor) so that the dozen elementwise passes
    over them run in the CPU's cache instead of main memory (3-4x faster for a
    49k vocabulary than chunks of 64 MB).
    """
    import numpy as np
    import torch

    n, vocab = int8_logits.shape
    rows = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    # written in place: a few small result tensors kept alive per chunk would sit between
    # the freed chunk-sized blocks and fragment the heap, which then grows by hundreds of
    # MB per window (measured on SmolLM2)
    device = int8_logits.device
    kld, lp, lq, dp = (torch.empty(n, dtype=torch.float64, device=device) for _ in range(4))
    same = torch.empty(n, dtype=torch.bool, device=device)
    with torch.inference_mode():
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            logp, lp_t, top_p, masked = reference(lo, hi)
            chunk = int8_logits[lo:hi]
            logq = torch.log_softmax(chunk.double(), dim=-1)
            p = logp.exp()
            diff = logp - logq
            if masked or bool(chunk.amin() == float("-inf")):
                # where p == 0 the term is 0 even if log p and log q are -inf
                diff = torch.where(p > 0, diff, torch.zeros_like(diff))
            kld[lo:hi] = (p * diff).sum(dim=-1)
            lq_t = logq.gather(1, targets[lo:hi].unsqueeze(1)).squeeze(1)
            same[lo:hi] = top_p == first_argmax(chunk)
            lp[lo:hi] = lp_t
            lq[lo:hi] = lq_t
            dp[lo:hi] = lq_t.exp() - lp_t.exp()
            del logp, lp_t, top_p, logq, p, diff, lq_t

    def numpy(t: torch.Tensor, dtype: type[np.generic]) -> np.ndarray:
        return t.cpu().numpy().astype(dtype)

    return TokenStats(
        kld=numpy(kld, np.float64),
        same_top=numpy(same, np.bool_),
        logp_reference=numpy(lp, np.float64),
        logp_int8=numpy(lq, np.float64),
        dp=numpy(dp, np.float64),
    )


class MeasuredOn(TypedDict):
    """What a similarity result was measured on besides the two models, so that a
    baseline refuses to compare numbers from another text or setting; the session fills it
    in (:attr:`SimilarityResult.measured_on`)."""

    eval_text: str  # the --llmq-eval-text file, or "built-in corpus"
    eval_text_sha256: str
    window: int | None  # :attr:`SimilarityResult.window`
    reference_dtype: str
    device: str


@dataclass
class SimilarityResult:
    """The similarity of an INT8 model to its reference (FP32, or BF16) on one text.

    ``ppl_ratio`` is ``PPL(INT8) / PPL(reference)`` (above 1: INT8 is worse); the
    reference's PPL is ``ppl_fp32``, its JSON name since before BF16 references
    (:attr:`ppl_reference` reads it too). ``greedy_match`` is information only (see
    :func:`greedy_match`), ``None`` when no prompts were generated. ``kld_values`` keeps
    every token's KLD for a histogram; it is left out of ``repr`` and, unless asked, of
    :meth:`as_dict`. ``window`` is the window read (capped by the contexts, see
    :func:`~.windows.window_for`) and ``measured_on`` what the session measured on;
    :meth:`as_dict` leaves both out (the gate's measurement carries them flat).
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
    window: int | None = None
    measured_on: MeasuredOn | None = None

    @property
    def ppl_reference(self) -> float:
        """The reference's perplexity (the field's JSON name is ``ppl_fp32``)."""
        return self.ppl_fp32

    def as_dict(self, *, include_kld_values: bool = False) -> dict[str, JSONValue]:
        """Plain JSON types only; a non-finite number (a broken INT8 model) becomes None."""
        data = asdict(self)
        del data["window"], data["measured_on"]
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
    diff = np.asarray(stats.logp_reference, dtype=np.float64) - np.asarray(
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
        ppl_fp32=math.exp(-float(np.mean(stats.logp_reference))),
        ppl_int8=math.exp(-float(np.mean(stats.logp_int8))),
        ppl_ratio=ratio,
        ppl_ratio_se=ratio * diff_se,
        rms_dp=rms,
        rms_dp_se=0.5 * mse_se / rms if rms > 0 else 0.0,  # d sqrt(x) = dx / (2 sqrt(x))
        greedy_match=greedy_match,
        kld_values=kld.tolist(),
    )
