"""The measurement memo: each measurement taken once per pair, shared by every gate,
assertion helper and suite check that asks for it.

Similarity is deterministic, so it is measured once per pair. Speed is sampled per
threshold (the adaptive stop depends on it), memory per kind. The suite's checks that
need the same deterministic output of the same model (INT8 logits on the fixed prompts,
a greedy run) share it through :meth:`Measurements.once`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    from ..memory import MemoryResult
    from ..progress import Progress
    from ..settings import Settings
    from ..similarity.metrics import SimilarityResult
    from ..similarity.reference import ReferenceStore
    from ..speed.timing import SpeedupResult
    from .pair import ModelPair
    from .store import ModelStore

T = TypeVar("T")


class Measurements:
    """Runs the three measurements on a pair, at most once per key."""

    def __init__(
        self, settings: Settings, store: ModelStore, *, progress: Callable[[], Progress]
    ) -> None:
        self.settings = settings
        self.store = store
        self._progress = progress
        self._done: dict[tuple[Hashable, ...], object] = {}

    def once(self, key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
        """``compute()`` the first time ``key`` is asked for, the same value after."""
        if key not in self._done:
            self._done[key] = compute()
        return cast(T, self._done[key])

    def clear(self) -> None:
        """Forget every measurement (a test that wants to watch one being taken)."""
        self._done.clear()

    def similarity(self, pair: ModelPair) -> SimilarityResult:
        return self.once(("similarity", *pair.key), lambda: self._similarity(pair))

    def _stored_reference(self, pair: ModelPair) -> ReferenceStore | None:
        """The cache dir's stored reference of this pair's model, when the pair's reference
        and tokenizer are the session's own (a fixture override is not: nothing says
        which model it is)."""
        from ..similarity import ReferenceStore

        source = self.store.source(pair.model_id)
        if source is None or not self.store.is_session_reference(
            pair.model_id, pair.reference, pair.tokenizer
        ):
            return None
        return ReferenceStore.for_source(self.store.cache, source, pair.reference, label=pair.label)

    def _similarity(self, pair: ModelPair) -> SimilarityResult:
        from dataclasses import replace

        from ..evaltext import load_eval_text
        from ..heap import give_back_freed_memory
        from ..similarity import MeasuredOn, measure_similarity

        text = load_eval_text(self.settings.eval_text)
        result = measure_similarity(
            pair.reference_side,
            pair.int8_side,
            pair.tokenizer,
            text=text,
            n_tokens=self.settings.eval_tokens,
            progress=self._progress(),
            store=self._stored_reference(pair),
        )
        give_back_freed_memory()
        # what the numbers were measured on, so a baseline can refuse to compare numbers
        # from another text or setting (see baseline.compare)
        measured_on = MeasuredOn(
            eval_text=self.settings.eval_text or "built-in corpus",
            eval_text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            window=result.window,
            reference_dtype=pair.reference_dtype,
            device=pair.device,
        )
        return replace(result, measured_on=measured_on)

    def speedup(self, pair: ModelPair, threshold: float) -> SpeedupResult:
        from ..speed.timing import measure_speedup

        return self.once(
            ("speedup", *pair.key, threshold),
            lambda: measure_speedup(
                pair.reference_side,
                pair.int8_side,
                pair.tokenizer,
                threshold=threshold,
                new_tokens=self.settings.new_tokens,
                # not set: the speed gate takes the cores free when it starts
                threads=None
                if self.settings.origin.get("threads") == "default"
                else self.settings.threads,
                time_budget=self.settings.time_budget,
                progress=self._progress(),
            ),
        )

    def memory(self, pair: ModelPair, kind: str) -> MemoryResult:
        from ..memory import measure_memory

        # a reference in another runtime is probed as its side says (its file in that
        # runtime), not as the torch model of the same --llmq-model
        in_torch = pair.reference_side.runtime == "torch"
        spec = (pair.reference_probe or self.reference_probe(pair.model_id)) if in_torch else None
        return self.once(
            ("memory", *pair.key, kind),
            lambda: measure_memory(pair.reference_side, pair.int8_side, kind, spec=spec),
        )

    def reference_probe(self, spec: str) -> dict[str, str | int | bool | None]:
        """How a fresh probe process loads the reference of ``spec``, as this session does."""
        return {
            "model": spec,
            "cache_dir": self.settings.cache_dir,
            "dtype": self.settings.reference_dtype,
            "device": self.settings.device,
            "threads": self.settings.threads,
            "trust_remote_code": self.settings.trust_remote_code,
        }
