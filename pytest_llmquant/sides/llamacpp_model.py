"""llama.cpp through llama-cpp-python, inside a side's child process (:mod:`.host`).

Never imported by the pytest process: a native crash here must end this child only.

Why two ``Llama`` instances: scoring needs every position's logits (``logits_all``), which
makes llama-cpp-python keep an ``n_ctx x vocab`` float32 array (100 MB for a 512-token
window of a 49k vocabulary), sized once per window length; decode timing and greedy
decoding read only the last position, as serving does, from an instance without it. Both
map the same file, so the weights are in memory once.

Determinism: CPU logits repeat for fixed ``n_threads``, ``n_batch`` and ``n_ubatch``
(changing the batch sizes changes the kernels); all three are fixed here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import sample_ids

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

#: prompt batch and micro-batch: fixed, so the same kernels run every time
N_BATCH = 512
#: the decoding instance's context: decode prompts are short (cut to fit)
DECODE_CONTEXT = 1024


class LlamaCppModel:
    """The :class:`~.host.RuntimeModel` of one GGUF file in llama.cpp."""

    def __init__(self, path: str, threads: int = 1, facts: dict[str, object] | None = None) -> None:
        self.path, self.threads = path, int(threads)
        self.facts = dict(facts or {})
        self._decoder = self._llama(DECODE_CONTEXT, logits_all=False)
        self._scorer: Llama | None = None
        self._scorer_context = 0  # the n_ctx it was made with (its arrays' length)
        self._prompts: list[list[int]] = []
        self._token = 0

    def _llama(self, n_ctx: int, *, logits_all: bool) -> Llama:
        from llama_cpp import Llama

        return Llama(
            model_path=self.path,
            n_ctx=n_ctx,
            n_batch=N_BATCH,
            n_ubatch=N_BATCH,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            logits_all=logits_all,
            verbose=False,
        )

    def describe(self) -> dict[str, object]:
        llm = self._decoder
        vocab = int(llm.n_vocab())
        return {
            **self.facts,
            "vocab_size": vocab,
            "token_sample": [llm._model.token_get_text(i) for i in sample_ids(vocab)],
            "context_length": int(llm._model.n_ctx_train()),
            "runtime_weight_bytes": int(llm._model.size()),
        }

    def set_threads(self, threads: int) -> None:
        self.threads = int(threads)
        for llm in (self._decoder, self._scorer):
            if llm is not None:
                llm._ctx.set_n_threads(self.threads, self.threads)

    def _last_logits(self, llm: Llama) -> np.ndarray:
        import numpy as np

        row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
        return np.array(row, dtype=np.float32)  # a copy: the next eval overwrites it

    def scored_logits(self, ids: Sequence[int], n_scored: int) -> np.ndarray:
        import numpy as np

        if self._scorer is None or self._scorer_context < len(ids):
            self._scorer = None  # free the old scores array first
            self._scorer_context = -(-len(ids) // 256) * 256  # llama.cpp pads to 256 too
            self._scorer = self._llama(self._scorer_context, logits_all=True)
        llm = self._scorer
        llm.reset()
        llm.eval(list(ids))
        return np.array(llm.scores[len(ids) - n_scored : len(ids)], dtype=np.float32)

    def _prefill(self, ids: Sequence[int]) -> np.ndarray:
        llm = self._decoder
        llm.reset()
        llm.eval(list(ids))
        return self._last_logits(llm)

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        import numpy as np

        return np.stack([self._prefill(p) for p in prompts])

    def greedy(
        self, prompts: Sequence[Sequence[int]], new_tokens: int, suppress: Sequence[int]
    ) -> list[list[int]]:
        out = []
        for prompt in prompts:
            logits = self._prefill(prompt)
            row: list[int] = []
            for _ in range(new_tokens):
                logits[list(suppress)] = -float("inf")
                row.append(int(logits.argmax()))
                if len(row) < new_tokens:
                    self._decoder.eval([row[-1]])
                    logits = self._last_logits(self._decoder)
            out.append(row)
        return out

    def decode_prepare(self, prompts: Sequence[Sequence[int]], steps_per_prompt: int) -> None:
        self._prompts = [list(p) for p in prompts]

    def decode_step(self, prompt: int, step: int) -> float:
        """One token against the cache and its greedy pick, as generation repeats it; step
        0 first prefills the prompt into a fresh cache, untimed."""
        llm = self._decoder
        if step == 0:
            self._token = int(self._prefill(self._prompts[prompt % len(self._prompts)]).argmax())
        start = time.perf_counter()
        llm.eval([self._token])
        self._token = int(self._last_logits(llm).argmax())
        return time.perf_counter() - start
