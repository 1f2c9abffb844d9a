"""Per-session state: which models and schemes to test, and the loaded models.

Models are loaded on first use and kept for the session, so a run that uses no model
fixture never imports torch, and each model is converted and quantized once however
many tests use it. A load that failed is remembered, so every test that needs that
model reports the same one-line error instead of retrying a 30-second load.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .errors import LlmqError, LlmqUsageError
from .models.sources import ModelSource, resolve, unique_labels
from .settings import Settings, set_where

if TYPE_CHECKING:
    from .int8.build import Int8Built
    from .layers import Coverage
    from .models.cache import ModelCache
    from .origin import Int8Origin
    from .progress import Progress

SESSION_KEY = pytest.StashKey["LlmqSession"]()
REFERENCE_LABELS = {"float32": "FP32", "bfloat16": "BF16", "float16": "FP16"}


@dataclass
class ModelPair:
    """What a gate needs: both models, the tokenizer, and how the INT8 one was made."""

    model_id: str
    label: str
    scheme: str
    fp32: Any
    int8: Any
    tokenizer: Any
    coverage: Coverage
    device: str = "cpu"
    threads: int = 1
    origin: Int8Origin | None = None  # None only for pairs built by hand (assertion helpers)
    reference_dtype: str = "float32"

    @property
    def reference(self) -> Any:
        """The model every gate compares against (``fp32`` is its first name)."""
        return self.fp32

    @property
    def reference_label(self) -> str:
        return REFERENCE_LABELS.get(self.reference_dtype, self.reference_dtype)

    @property
    def int8_label(self) -> str:
        return self.origin.label if self.origin is not None else self.scheme

    @property
    def name(self) -> str:
        return f"{self.label} [{self.int8_label}]"

    def summary(self) -> dict[str, Any]:
        """What the reports say about this pair besides its measurements."""
        return {
            "model": self.model_id,
            "reference_dtype": self.reference_dtype,
            "int8": self.origin.as_dict() if self.origin is not None else {"label": self.scheme},
            "coverage": self.coverage.as_dict(),
        }

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity for caching measurements: a user-supplied INT8 model is its own key."""
        return (self.model_id, self.scheme, id(self.int8))


@dataclass
class LlmqSession:
    config: pytest.Config  # for hooks only; settings are read from ``settings``
    settings: Settings
    sources: list[ModelSource]
    labels: list[str]
    schemes: list[str]
    _fp32: dict[str, Any] = field(default_factory=dict)
    _int8: dict[tuple[str, str], Any] = field(default_factory=dict)
    _cache: ModelCache | None = None
    load_times: dict[str, float] = field(default_factory=dict)
    load_notes: dict[str, str] = field(default_factory=dict)
    coverages: dict[str, Coverage] = field(default_factory=dict)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> ModelPair.summary()
    results: list[Any] = field(default_factory=list)  # GateResult, in run order
    measurements: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    benchmark_medians: dict[tuple[str, str, str], float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config, settings: Settings) -> LlmqSession:
        from .schemes import check_name, default_scheme

        def checked(name: str, check: Any, value: Any) -> Any:
            try:
                return check(value)
            except LlmqUsageError as exc:
                raise LlmqUsageError(f"{exc} ({set_where(settings, name)})") from None

        from .models.devices import check_available

        checked("device", check_available, settings.device)
        sources = [checked("model", resolve, s) for s in settings.model]
        schemes = list(settings.scheme) or [default_scheme()]
        for s in schemes:
            checked("scheme", check_name, s)
        if settings.int8_model:
            from .int8.checkpoint import checkpoint_origin

            schemes = [checked("int8_model", checkpoint_origin, settings.int8_model).label]
        return cls(
            config=config,
            settings=settings,
            sources=sources,
            labels=unique_labels(sources),
            schemes=list(dict.fromkeys(schemes)),
        )

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def threads(self) -> int:
        return self.settings.threads

    @property
    def int8_path(self) -> str | None:
        return self.settings.int8_model

    def label_of(self, spec: str) -> str:
        for src, label in zip(self.sources, self.labels, strict=False):
            if src.spec == spec:
                return label
        return spec

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            from .models.cache import ModelCache

            self._cache = ModelCache(self.settings.cache_dir)
        return self._cache

    def _torch_setup(self) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(self.threads)
        hf_logging.disable_progress_bar()

    def fp32(self, spec: str) -> tuple[Any, Any]:
        if spec not in self._fp32:
            from .models.loading import load_fp32

            self._torch_setup()
            start = time.perf_counter()
            hits, builds = self.cache.hits, self.cache.builds
            try:
                self._fp32[spec] = load_fp32(
                    spec,
                    device=self.device,
                    cache=self.cache,
                    trust_remote_code=self.settings.trust_remote_code,
                    progress=self.progress(),
                    dtype=self.settings.reference_dtype,
                )
            except LlmqError as exc:
                self._fp32[spec] = exc
            self.load_times[spec] = time.perf_counter() - start
            if self.cache.hits > hits:
                self.load_notes[spec] = "FP32 weights from the cache"
            elif self.cache.builds > builds:
                self.load_notes[spec] = "converted to FP32 safetensors and cached"
        value = self._fp32[spec]
        if isinstance(value, LlmqError):
            raise value
        return value

    def int8(self, spec: str, scheme: str, fp32_model: Any = None) -> Int8Built:
        """The INT8 model of this pair: the ``--llmq-int8-model`` checkpoint, or what the
        quantize hook or the built-in ``scheme`` makes from ``fp32_model`` (default: the
        loaded reference of ``spec``). Built once per model and scheme."""
        key = (spec, scheme)
        if key not in self._int8:
            model = fp32_model if fp32_model is not None else self.fp32(spec)[0]
            label = self.label_of(spec)
            try:
                if self.int8_path:
                    from .int8.checkpoint import load_int8_checkpoint

                    self._int8[key] = load_int8_checkpoint(
                        self.int8_path, model, device=self.device
                    )
                else:
                    from .int8.build import make_int8

                    hook = self.config.hook.pytest_llmq_quantize
                    self._int8[key] = make_int8(
                        model,
                        scheme,
                        device=self.device,
                        label=label,
                        quantize_hook=hook if hook.get_hookimpls() else None,
                    )
            except LlmqError as exc:
                self._int8[key] = exc
        value = self._int8[key]
        if isinstance(value, LlmqError):
            raise value
        name = f"{self.label_of(spec)} [{value.origin.label}]"
        self.coverages[name] = value.coverage
        self.pairs.setdefault(name, {"int8": value.origin.as_dict()})
        return value

    def built_int8(self, spec: str, scheme: str) -> Int8Built | None:
        """What :meth:`int8` built for this pair, if anything (None: a fixture override)."""
        value = self._int8.get((spec, scheme))
        return None if value is None or isinstance(value, LlmqError) else value

    def progress(self) -> Progress:
        """A fresh throttled progress line on the terminal (quiet under -q)."""
        from .progress import terminal_progress

        return terminal_progress(self.config).start()

    # -- measurements, shared by markers, helpers and the suite -------------------------
    def similarity(self, pair: ModelPair) -> Any:
        """Deterministic, so measured once per pair and shared by every gate that asks.

        The FP32 side comes from the cache dir's stored reference (computed and stored
        on first use), unless the FP32 model or tokenizer is not the session's own
        (a user fixture overrides it: then nothing says which model it is).
        """
        from .evaltext import load_eval_text
        from .similarity import (
            DEFAULT_WINDOW,
            ReferenceStore,
            context_length,
            measure_similarity,
        )

        key = ("similarity", *pair.key)
        if key not in self.measurements:
            text = load_eval_text(self.settings.eval_text)
            # the window measure_similarity would pick unasked (the default, capped by the
            # shorter context), chosen here so that the window recorded is the one used
            contexts = [c for c in (context_length(pair.fp32), context_length(pair.int8)) if c]
            window = min([DEFAULT_WINDOW, *contexts])
            reference = None
            loaded = self._fp32.get(pair.model_id)
            source = next((s for s in self.sources if s.spec == pair.model_id), None)
            if (
                source is not None
                and isinstance(loaded, tuple)
                and loaded[0] is pair.fp32
                and loaded[1] is pair.tokenizer
            ):
                reference = ReferenceStore.for_source(
                    self.cache, source, pair.fp32, label=pair.label
                )
            result = measure_similarity(
                pair.fp32,
                pair.int8,
                pair.tokenizer,
                text=text,
                n_tokens=self.settings.eval_tokens,
                window=window,
                progress=self.progress(),
                reference=reference,
            )
            # what the numbers were measured on, so a baseline can refuse to compare
            # numbers from another text or setting (see baseline.compare)
            result.measured_on = {  # type: ignore[attr-defined]
                "eval_text": self.settings.eval_text or "built-in corpus",
                "eval_text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "window": window,
                "reference_dtype": pair.reference_dtype,
                "device": pair.device,
            }
            self.measurements[key] = result
            from .heap import give_back_freed_memory

            give_back_freed_memory()
        return self.measurements[key]

    def speedup(self, pair: ModelPair, threshold: float) -> Any:
        """Sampled per threshold: the adaptive stop depends on it."""
        from .speed.timing import measure_speedup

        key = ("speedup", *pair.key, threshold)
        if key not in self.measurements:
            self.measurements[key] = measure_speedup(
                pair.fp32,
                pair.int8,
                pair.tokenizer,
                threshold=threshold,
                new_tokens=self.settings.new_tokens,
                # not set: the speed gate takes the cores free when it starts
                threads=None if self.settings.origin.get("threads") == "default" else self.threads,
                time_budget=self.settings.time_budget,
                progress=self.progress(),
            )
        return self.measurements[key]

    def memory(self, pair: ModelPair, kind: str) -> Any:
        from .memory import measure_memory

        key = ("memory", *pair.key, kind)
        if key not in self.measurements:
            spec = {
                "model": pair.model_id,
                "cache_dir": self.settings.cache_dir,
                "dtype": self.settings.reference_dtype,
                "device": self.settings.device,
                "threads": self.settings.threads,
                "trust_remote_code": self.settings.trust_remote_code,
            }
            self.measurements[key] = measure_memory(
                pair.fp32,
                pair.int8,
                kind,
                spec=spec,
                scheme=pair.scheme,
                origin=pair.origin,
                tokenizer=pair.tokenizer,
            )
        return self.measurements[key]


def get_session(config: pytest.Config) -> LlmqSession:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        raise LlmqUsageError(
            "pytest-llmquant is not configured; is the plugin disabled (-p no:llmquant)?"
        )
    return session
