"""How close the INT8 model's predictions are to the reference's: llama.cpp's KLD statistics.

The numbers and their uncertainties are the ones ``llama-perplexity
--kl-divergence`` prints (``tools/perplexity/perplexity.cpp`` in llama.cpp), so a
result here can be read against the many published llama.cpp tables:

* **KLD** per scored token, ``sum_v p_v (log p_v - log q_v)`` over the whole
  vocabulary, ``p`` the reference's softmax (FP32, or BF16 on a GPU) and ``q`` the
  INT8 one. It sees every change of the distribution, not only changes of the chosen token, which is why it is the
  gate's main number. Every vocabulary entry is summed (llama.cpp skips entries with
  ``log p < -16``), so results on near-identical models can differ from llama.cpp's
  in the last printed digits.
* **same top**: fraction of tokens where both models' argmax agree.
* **PPL** of each model on the text, and their ratio ``PPL(INT8) / PPL(reference)``.
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

Scored tokens: windows of 512 tokens whose first 64 are context only (llama.cpp scores
only the second half of each window; see :mod:`.windows` for why 64 and what it changes).
The reference side can be cached, as llama.cpp's ``--kl-divergence-base`` does: its
log-probs in 16 bits (only KLD reads them; on SmolLM2 that moves it by 4e-5 of its value),
the target log-prob and argmax exactly (:mod:`.reference`).

- :mod:`.metrics`: the per-token numbers and their summary (:class:`SimilarityResult`);
- :mod:`.windows`: which tokens each forward pass reads and scores (:func:`plan_windows`);
- :mod:`.measure`: running both model sides over the text in windows
  (:func:`measure_similarity`);
- :mod:`.pair`: the two sides (an ``nn.Module`` becomes a ``TorchSide``) and their
  measuring state;
- :mod:`.forward`: the text's token ids and each window's; :mod:`.greedy`: greedy
  continuations of the prompts and their match;
- :mod:`.reference`: the stored reference (:class:`ReferenceStore`), in the form
  :mod:`.stored` writes and reads (:mod:`.codes_file`: its rows, a slice at a time).
"""

from __future__ import annotations

from ..models.causal_lm import context_length
from .greedy import GREEDY_TOKENS, greedy_match
from .measure import measure_similarity
from .metrics import (
    MIN_TOKENS,
    MeasuredOn,
    SimilarityResult,
    TokenStats,
    reference_token_stats,
    summarize,
    token_stats,
)
from .reference import ReferenceStore
from .stored import StoredReference
from .windows import (
    DEFAULT_PREFIX,
    DEFAULT_WINDOW,
    Window,
    default_prefix,
    plan_windows,
    shared_context,
    window_for,
)

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_WINDOW",
    "GREEDY_TOKENS",
    "MIN_TOKENS",
    "MeasuredOn",
    "ReferenceStore",
    "SimilarityResult",
    "StoredReference",
    "TokenStats",
    "Window",
    "context_length",
    "default_prefix",
    "greedy_match",
    "measure_similarity",
    "plan_windows",
    "reference_token_stats",
    "shared_context",
    "summarize",
    "token_stats",
    "window_for",
]
