"""The model store: each model loaded once per session, and each INT8 model built once.

Models are loaded on first use and kept, so a run that uses no model fixture never
imports torch, and each model is converted and quantized once however many tests use
it. A load that failed is remembered, so every test that needs that model reports the
same one-line error instead of retrying a 30-second load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from ..errors import LlmqError
from .record import Load, RunRecord

if TYPE_CHECKING:
    from ..int8.build import Int8Built
    from ..models.cache import ModelCache
    from ..models.sources import ModelSource
    from ..progress import Progress
    from ..settings import Settings
    from ..sides.base import ModelSide
    from ..types import CausalLM, Tokenizer

T = TypeVar("T")

#: the user's ``pytest_llmq_quantize`` hook, or None when no plugin implements it
QuantizeHook = Callable[..., object]


class Remembered(Generic[T]):
    """A value, or the one-line error its first attempt raised (raised again on each ask)."""

    def __init__(self, value: T | None = None, error: LlmqError | None = None) -> None:
        self.value, self.error = value, error

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class ModelStore:
    """Loaded references (by ``--llmq-model`` value) and built INT8 models (by value and
    scheme). Load times and what the cache did go into the run record."""

    def __init__(
        self,
        settings: Settings,
        sources: list[ModelSource],
        record: RunRecord,
        *,
        progress: Callable[[], Progress],
        quantize_hook: Callable[[], QuantizeHook | None],
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.record = record
        self._progress = progress
        self._quantize_hook = quantize_hook
        self._references: dict[str, Remembered[tuple[CausalLM, Tokenizer]]] = {}
        self._tokenizers: dict[str, Remembered[Tokenizer]] = {}
        self._int8: dict[tuple[str, str], Remembered[Int8Built]] = {}
        self._reference_sides: dict[str, Remembered[ModelSide]] = {}
        self._cache: ModelCache | None = None

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            from ..models.cache import ModelCache

            self._cache = ModelCache(self.settings.cache_dir)
        return self._cache

    def source(self, spec: str) -> ModelSource | None:
        return next((s for s in self.sources if s.spec == spec), None)

    def _torch_setup(self) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(self.settings.threads)
        hf_logging.disable_progress_bar()

    def reference(self, spec: str) -> tuple[CausalLM, Tokenizer]:
        """The reference model of ``spec`` and its tokenizer, loaded once."""
        if spec not in self._references:
            self._references[spec] = self._load_reference(spec)
        return self._references[spec].get()

    def _load_reference(self, spec: str) -> Remembered[tuple[CausalLM, Tokenizer]]:
        from ..models.loading import load_fp32

        self._torch_setup()
        start = time.perf_counter()
        hits, builds = self.cache.hits, self.cache.builds
        try:
            loaded: Remembered[tuple[CausalLM, Tokenizer]] = Remembered(
                load_fp32(
                    spec,
                    device=self.settings.device,
                    cache=self.cache,
                    trust_remote_code=self.settings.trust_remote_code,
                    progress=self._progress(),
                    dtype=self.settings.reference_dtype,
                )
            )
        except LlmqError as exc:
            loaded = Remembered(error=exc)
        note = ""
        if self.cache.hits > hits:
            note = "FP32 weights from the cache"
        elif self.cache.builds > builds:
            note = "converted to FP32 safetensors and cached"
        self.record.add_load(spec, Load(time.perf_counter() - start, note))
        return loaded

    def tokenizer(self, spec: str) -> Tokenizer:
        """The reference's tokenizer. A reference in another runtime loads only its
        tokenizer here (:func:`~..models.loading.load_tokenizer`), never the torch model."""
        if self.settings.reference_runtime == "torch" or spec in self._references:
            return self.reference(spec)[1]
        if spec not in self._tokenizers:
            from ..models.loading import load_tokenizer

            try:
                self._tokenizers[spec] = Remembered(
                    load_tokenizer(spec, trust_remote_code=self.settings.trust_remote_code)
                )
            except LlmqError as exc:
                self._tokenizers[spec] = Remembered(error=exc)
        return self._tokenizers[spec].get()

    def is_session_reference(self, spec: str, model: object, tokenizer: object) -> bool:
        """Whether ``model`` and ``tokenizer`` are the ones this store loaded for ``spec`` (a
        user fixture may override either: then nothing says which model it is)."""
        loaded = self._references.get(spec)
        if loaded is None or loaded.error is not None or loaded.value is None:
            return False
        return loaded.value[0] is model and loaded.value[1] is tokenizer

    def reference_model(self, spec: str) -> CausalLM | ModelSide:
        """What the ``reference_model`` fixture gives: the torch model, or the side of
        ``--llmq-reference-runtime`` (its model loads in a child process on first use)."""
        if self.settings.reference_runtime == "torch":
            return self.reference(spec)[0]
        if spec not in self._reference_sides:
            self._reference_sides[spec] = self._runtime_reference(spec)
        return self._reference_sides[spec].get()

    def _runtime_reference(self, spec: str) -> Remembered[ModelSide]:
        from pathlib import Path

        from .runtime_sides import reference_side

        source = self.source(spec)
        assert source is not None, spec
        tokenizer = self.tokenizer(spec)
        try:
            cache = Path(self.cache.root)
            return Remembered(reference_side(self.settings, source, tokenizer, cache))
        except LlmqError as exc:
            return Remembered(error=exc)

    def int8(
        self, spec: str, scheme: str, reference: CausalLM | ModelSide | None = None
    ) -> Int8Built:
        """The INT8 model of this pair: the ``--llmq-int8-model`` checkpoint (in
        ``--llmq-int8-runtime``), or what the quantize hook or the built-in ``scheme``
        makes from ``reference`` (default: the loaded reference of ``spec``). Built once
        per model and scheme."""
        key = (spec, scheme)
        if key not in self._int8 and self.settings.int8_runtime != "torch":
            from .runtime_sides import int8_built

            tokenizer = self.tokenizer(spec)
            try:
                self._int8[key] = Remembered(int8_built(self.settings, tokenizer))
            except LlmqError as exc:
                self._int8[key] = Remembered(error=exc)
        if key not in self._int8:
            from .pair import is_side

            if reference is None or is_side(reference):
                reference = self.reference(spec)[0]
            self._int8[key] = self._build_int8(spec, scheme, reference)  # type: ignore[arg-type]
        built = self._int8[key].get()
        name = f"{self.record.label_of(spec)} [{built.origin.label}]"
        self.record.coverages[name] = built.coverage  # shown even if no test asks for the pair
        self.record.pairs.setdefault(name, {"int8": built.origin.as_dict()})
        return built

    def _build_int8(self, spec: str, scheme: str, reference: CausalLM) -> Remembered[Int8Built]:
        try:
            if self.settings.int8_model:
                from ..int8.checkpoint import load_int8_checkpoint

                built = load_int8_checkpoint(
                    self.settings.int8_model, reference, device=self.settings.device
                )
            else:
                from ..int8.build import make_int8

                built = make_int8(
                    reference,
                    scheme,
                    device=self.settings.device,
                    label=self.record.label_of(spec),
                    quantize_hook=self._quantize_hook(),
                )
        except LlmqError as exc:
            return Remembered(error=exc)
        return Remembered(built)

    def built_int8(self, spec: str, scheme: str) -> Int8Built | None:
        """What :meth:`int8` built for this pair, if anything (None: a fixture override)."""
        built = self._int8.get((spec, scheme))
        return None if built is None or built.error is not None else built.value

    @property
    def loaded_references(self) -> int:
        """How many references are loaded (tests check laziness with it)."""
        return sum(1 for r in self._references.values() if r.error is None)

    @property
    def built(self) -> int:
        """How many INT8 models were built."""
        return sum(1 for r in self._int8.values() if r.error is None)
