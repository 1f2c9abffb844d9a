"""The run record: what a run measured, and the one input of every output.

Reporting (terminal summary, JSON, Markdown), baselines and the xdist relay read this
typed record, never the session: a worker adds to its own record and sends the additions
to the controller (:mod:`pytest_llmquant.workers`), which adds them to its own, so every
output sees the whole run. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from ..layers import Coverage
    from ..settings import Settings
    from ..verdicts import GateResult


class PairSummary(TypedDict, total=False):
    """What the reports say about a pair besides its measurements."""

    model: str  # the --llmq-model value
    reference_dtype: str  # float32, bfloat16, float16
    reference_runtime: str  # torch, llama.cpp, onnxruntime
    int8: Mapping[str, object]  # :meth:`pytest_llmquant.origin.Int8Origin.as_dict`
    coverage: dict[str, object]  # :meth:`pytest_llmquant.layers.Coverage.as_dict`


@dataclass(frozen=True)
class Load:
    """How long loading one model took, and what the cache did for it."""

    seconds: float
    note: str = ""  # "FP32 weights from the cache", "converted to FP32 safetensors and cached"


@dataclass(frozen=True)
class SourceLabel:
    """A ``--llmq-model`` value and the short label its results carry."""

    spec: str
    label: str


@dataclass
class RunRecord:
    """Results, pairs, coverage and load times of one run, in run order.

    ``settings`` is None only for a record built by hand (tests, the merge tool).
    """

    settings: Settings | None = None
    sources: list[SourceLabel] = field(default_factory=list)
    schemes: list[str] = field(default_factory=list)
    results: list[GateResult] = field(default_factory=list)
    pairs: dict[str, PairSummary] = field(default_factory=dict)  # pair name -> summary
    coverages: dict[str, Coverage] = field(default_factory=dict)  # pair name -> coverage
    loads: dict[str, Load] = field(default_factory=dict)  # --llmq-model value -> load
    #: (model, scheme, role) -> median s per token of the pytest-benchmark entries
    benchmark_medians: dict[tuple[str, str, str], float] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.settings.device if self.settings is not None else "cpu"

    @property
    def threads(self) -> int | None:
        return self.settings.threads if self.settings is not None else None

    @property
    def reference_label(self) -> str:
        """The precision the reference models were loaded in: FP32, BF16, FP16."""
        from ..session import REFERENCE_LABELS  # the labels ModelPair.reference_label uses

        dtype = self.settings.reference_dtype if self.settings is not None else "float32"
        return REFERENCE_LABELS.get(dtype, dtype)

    def label_of(self, spec: str) -> str:
        """The label of a ``--llmq-model`` value (the value itself when unknown)."""
        return next((s.label for s in self.sources if s.spec == spec), spec)

    def add_pair(self, name: str, summary: PairSummary, coverage: Coverage) -> None:
        self.pairs[name] = summary
        self.coverages[name] = coverage

    def add_load(self, spec: str, load: Load) -> None:
        """The first load of a model counts (a worker's later cache hit does not replace it)."""
        self.loads.setdefault(spec, load)

    def results_by_pair(self) -> dict[str, list[GateResult]]:
        """Pair name -> its gate results in run order; pairs with only a coverage included."""
        pairs: dict[str, list[GateResult]] = {name: [] for name in self.coverages}
        for result in self.results:
            pairs.setdefault(result.pair, []).append(result)
        return pairs

    @property
    def empty(self) -> bool:
        """Nothing to report: no model was loaded, no pair built, no gate run."""
        return not (self.loads or self.coverages or self.results)
