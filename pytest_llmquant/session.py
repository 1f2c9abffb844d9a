"""The plugin's session: the start-up checks, and the three parts a run's state is split into.

- :class:`~pytest_llmquant.run.store.ModelStore`: loaded models, once per session;
- :class:`~pytest_llmquant.run.memo.Measurements`: each measurement once per pair;
- :class:`~pytest_llmquant.run.record.RunRecord`: what the run measured, the one input
  of reporting, baselines and the xdist relay.

Every option was read and checked into ``settings`` before this object exists; what is
checked here (the device is there, the models and schemes exist) needs those values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

import pytest

from .errors import LlmqUsageError
from .models.sources import ModelSource, resolve, unique_labels
from .run.memo import Measurements
from .run.pair import REFERENCE_LABELS, ModelPair
from .run.record import RunRecord, SourceLabel
from .run.store import ModelStore, QuantizeHook
from .settings import Settings, set_where

if TYPE_CHECKING:
    from collections.abc import Callable

    from .progress import Progress
    from .sides.base import ModelSide
    from .verdicts import GateResult

__all__ = ["REFERENCE_LABELS", "SESSION_KEY", "LlmqSession", "ModelPair", "get_session"]

SESSION_KEY = pytest.StashKey["LlmqSession"]()
T = TypeVar("T")


def _checked(settings: Settings, name: str, check: Callable[[str], T], value: str) -> T:
    """``check(value)``, its usage error naming where the option was set."""
    try:
        return check(value)
    except LlmqUsageError as exc:
        raise LlmqUsageError(f"{exc} ({set_where(settings, name)})") from None


@dataclass
class LlmqSession:
    """What the plugin knows for one pytest run (``llmq_session`` fixture)."""

    config: pytest.Config  # for hooks and the terminal only; settings are in ``settings``
    settings: Settings
    sources: list[ModelSource]
    schemes: list[str]
    record: RunRecord = field(init=False)
    store: ModelStore = field(init=False)
    memo: Measurements = field(init=False)

    def __post_init__(self) -> None:
        labels = unique_labels(self.sources)
        self.record = RunRecord(
            self.settings,
            [SourceLabel(s.spec, label) for s, label in zip(self.sources, labels, strict=True)],
            list(self.schemes),
        )
        self.store = ModelStore(
            self.settings,
            self.sources,
            self.record,
            progress=self.progress,
            quantize_hook=self._quantize_hook,
        )
        self.memo = Measurements(self.settings, self.store, progress=self.progress)

    @classmethod
    def from_config(cls, config: pytest.Config, settings: Settings) -> LlmqSession:
        """Check what the settings name (device, models, schemes, checkpoint) exists."""
        from .models.devices import check_available
        from .schemes import check_name, default_scheme

        _checked(settings, "device", check_available, settings.device)
        sources = [_checked(settings, "model", resolve, s) for s in settings.model]
        schemes = list(settings.scheme) or [default_scheme()]
        for s in schemes:
            _checked(settings, "scheme", check_name, s)
        if settings.int8_runtime != "torch" or settings.reference_runtime != "torch":
            from .run.runtime_sides import check_runtimes

            label = check_runtimes(settings, sources)
            if label is not None:
                schemes = [label]
        elif settings.int8_model:
            from .int8.checkpoint import checkpoint_origin

            schemes = [
                _checked(settings, "int8_model", checkpoint_origin, settings.int8_model).label
            ]
        return cls(config, settings, sources, list(dict.fromkeys(schemes)))

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.record.sources]

    @property
    def results(self) -> list[GateResult]:
        """Every gate result of the run, in run order (the run record's)."""
        return self.record.results

    def label_of(self, spec: str) -> str:
        return self.record.label_of(spec)

    def _quantize_hook(self) -> QuantizeHook | None:
        hook = self.config.hook.pytest_llmq_quantize
        return hook if hook.get_hookimpls() else None

    def progress(self) -> Progress:
        """A fresh throttled progress line on the terminal (quiet under -q)."""
        from .progress import terminal_progress

        return terminal_progress(self.config).start()

    def pair(
        self, spec: str, scheme: str, reference: object, int8: object, tokenizer: object
    ) -> ModelPair:
        """The pair the gates of one test measure, recorded for the reports."""
        from .int8.routes import origin_of_model
        from .layers import Coverage, coverage
        from .origin import Int8Origin
        from .run.pair import is_side

        built = self.store.built_int8(spec, scheme)
        if built is not None and built.model is int8:
            origin, cov = built.origin, built.coverage
        elif is_side(int8):  # a model side from a fixture: it says where it came from
            side = cast("ModelSide", int8)
            origin = side.origin or Int8Origin("fixture", side.label, bits=None)
            cov = Coverage()
        else:  # the int8_model fixture is overridden: describe the model it returned
            origin, cov = origin_of_model(int8, "fixture"), coverage(reference, int8)  # type: ignore[arg-type]
        if is_side(int8) or is_side(reference):
            from .run.runtime_sides import check_same_vocabulary

            check_same_vocabulary(reference, int8, tokenizer)  # type: ignore[arg-type]
        pair = ModelPair(
            spec,
            self.label_of(spec),
            scheme,
            reference,  # type: ignore[arg-type]
            int8,  # type: ignore[arg-type]
            tokenizer,  # type: ignore[arg-type]
            cov,
            device=self.settings.device,
            threads=self.settings.threads,
            origin=origin,
            reference_dtype=self.settings.reference_dtype,
            reference_probe=self.memo.reference_probe(spec),
        )
        self.record.add_pair(pair.name, pair.summary(), cov)
        return pair


def get_session(config: pytest.Config) -> LlmqSession:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        raise LlmqUsageError(
            "pytest-llmquant is not configured; is the plugin disabled (-p no:llmquant)?"
        )
    return session
