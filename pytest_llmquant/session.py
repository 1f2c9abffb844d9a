"""Per-session state: which models and schemes to test, and the loaded models.

Models are loaded on first use and kept for the session, so a run that uses no model
fixture never imports torch, and each model is converted and quantized once however
many tests use it. A load that failed is remembered, so every test that needs that
model reports the same one-line error instead of retrying a 30-second load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .errors import LlmqError, LlmqUsageError
from .settings import Settings, set_where
from .sources import ModelSource, resolve, unique_labels

if TYPE_CHECKING:
    from .cache import ModelCache
    from .layers import Coverage
    from .progress import Progress

SESSION_KEY = pytest.StashKey["LlmqSession"]()


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

    @property
    def name(self) -> str:
        return f"{self.label} [{self.scheme}]"

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
    results: list[Any] = field(default_factory=list)  # GateResult, in run order
    measurements: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    benchmark_medians: dict[tuple[str, str, str], float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config, settings: Settings) -> LlmqSession:
        from .schemes import DEFAULT_SCHEME, check_name

        def checked(name: str, check: Any, value: Any) -> Any:
            try:
                return check(value)
            except LlmqUsageError as exc:
                raise LlmqUsageError(f"{exc} ({set_where(settings, name)})") from None

        sources = [checked("model", resolve, s) for s in settings.model]
        schemes = list(settings.scheme) or [DEFAULT_SCHEME]
        for s in schemes:
            checked("scheme", check_name, s)
        if settings.int8_model:
            from .int8.checkpoint import int8_checkpoint_label

            schemes = [checked("int8_model", int8_checkpoint_label, settings.int8_model)]
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
            from .cache import ModelCache

            self._cache = ModelCache(self.settings.cache_dir)
        return self._cache

    def _torch_setup(self) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(self.threads)
        hf_logging.disable_progress_bar()

    def fp32(self, spec: str) -> tuple[Any, Any]:
        if spec not in self._fp32:
            from .loading import load_fp32

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

    def int8(self, spec: str, scheme: str, fp32_model: Any = None) -> tuple[Any, Coverage]:
        """The INT8 copy of ``fp32_model`` (default: the loaded FP32 model of ``spec``)."""
        key = (spec, scheme)
        if key not in self._int8:
            from .int8.build import build_int8

            model = fp32_model if fp32_model is not None else self.fp32(spec)[0]
            label = self.label_of(spec)
            hook = self.config.hook.pytest_llmq_quantize
            try:
                if self.int8_path:
                    from .int8.checkpoint import load_int8_checkpoint

                    self._int8[key] = load_int8_checkpoint(
                        self.int8_path, model, device=self.device
                    )
                else:
                    self._int8[key] = build_int8(
                        model,
                        scheme,
                        device=self.device,
                        label=label,
                        quantize_hook=lambda **kw: hook(
                            **{**kw, "config": {**kw["config"], "label": label}}
                        ),
                    )
            except LlmqError as exc:
                self._int8[key] = exc
        value = self._int8[key]
        if isinstance(value, LlmqError):
            raise value
        self.coverages[f"{self.label_of(spec)} [{scheme}]"] = value[1]
        return value

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
        from .similarity import ReferenceStore, measure_similarity

        key = ("similarity", *pair.key)
        if key not in self.measurements:
            text = load_eval_text(self.settings.eval_text)
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
            self.measurements[key] = measure_similarity(
                pair.fp32,
                pair.int8,
                pair.tokenizer,
                text=text,
                n_tokens=self.settings.eval_tokens,
                progress=self.progress(),
                reference=reference,
            )
        return self.measurements[key]

    def speedup(self, pair: ModelPair, threshold: float) -> Any:
        """Sampled per threshold: the adaptive stop depends on it."""
        from .timing import measure_speedup

        key = ("speedup", *pair.key, threshold)
        if key not in self.measurements:
            self.measurements[key] = measure_speedup(
                pair.fp32,
                pair.int8,
                pair.tokenizer,
                threshold=threshold,
                new_tokens=self.settings.new_tokens,
                threads=self.threads,
                time_budget=self.settings.time_budget,
            )
        return self.measurements[key]

    def memory(self, pair: ModelPair, kind: str) -> Any:
        from .memory import measure_memory

        key = ("memory", *pair.key, kind)
        if key not in self.measurements:
            self.measurements[key] = measure_memory(
                pair.fp32, pair.int8, kind, spec=pair.model_id, scheme=pair.scheme
            )
        return self.measurements[key]


def get_session(config: pytest.Config) -> LlmqSession:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        raise LlmqUsageError(
            "pytest-llmquant is not configured; is the plugin disabled (-p no:llmquant)?"
        )
    return session
