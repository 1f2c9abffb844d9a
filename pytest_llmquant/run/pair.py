"""A model pair: the reference and the INT8 model under test, as the gates see them.

A pair holds what the fixtures gave (``reference``, ``int8``: transformers models, or
:class:`~pytest_llmquant.sides.base.ModelSide` objects such as a runtime or a test
double) and hands the gates a model side for each (:attr:`ModelPair.reference_side`,
:attr:`ModelPair.int8_side`), so no gate touches an ``nn.Module``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..sides.base import ModelSide, ProbeSpec

if TYPE_CHECKING:
    from ..layers import Coverage
    from ..origin import Int8Origin
    from ..types import CausalLM, Tokenizer
    from .record import PairSummary

#: what a fixture may give for either model of a pair
ModelLike = Union["CausalLM", ModelSide]

REFERENCE_LABELS = {"float32": "FP32", "bfloat16": "BF16", "float16": "FP16"}

#: a probe spec value: the session's model spec of a reference (JSON-ready)
ProbeArgs = dict[str, "str | int | bool | None"]


def is_side(model: object) -> bool:
    """A model side already (a runtime, a test double), not a module to wrap."""
    return isinstance(model, ModelSide)


@dataclass(eq=False)
class ModelPair:
    """What a gate needs: both models, the tokenizer, and how the INT8 one was made."""

    model_id: str
    label: str
    scheme: str
    reference: ModelLike
    int8: ModelLike
    tokenizer: Tokenizer
    coverage: Coverage
    device: str = "cpu"
    threads: int = 1
    origin: Int8Origin | None = None  # None only for pairs built by hand (assertion helpers)
    reference_dtype: str = "float32"
    #: how a fresh process loads the reference (the session's model spec); None: it cannot
    reference_probe: ProbeArgs | None = field(default=None, repr=False)

    @property
    def fp32(self) -> ModelLike:
        """The reference under its first name (kept for compatibility)."""
        return self.reference

    @property
    def reference_label(self) -> str:
        if is_side(self.reference):  # a runtime names what it runs: "llama.cpp F32"
            return str(self.reference.label)  # type: ignore[union-attr]
        return REFERENCE_LABELS.get(self.reference_dtype, self.reference_dtype)

    @property
    def int8_label(self) -> str:
        return self.origin.label if self.origin is not None else self.scheme

    @property
    def name(self) -> str:
        return f"{self.label} [{self.int8_label}]"

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity for caching measurements: a user-supplied INT8 model is its own key."""
        return (self.model_id, self.scheme, id(self.int8))

    def summary(self) -> PairSummary:
        """What the reports say about this pair besides its measurements."""
        return {
            "model": self.model_id,
            "reference_dtype": self.reference_dtype,
            "reference_runtime": self.reference_side.runtime,
            "int8": self.origin.as_dict() if self.origin is not None else {"label": self.scheme},
            "coverage": self.coverage.as_dict(),
        }

    @cached_property
    def reference_side(self) -> ModelSide:
        """The reference as a model side (a torch model is wrapped, a side is itself)."""
        if is_side(self.reference):
            return self.reference  # type: ignore[return-value]
        from ..sides.torch_side import TorchSide

        probe = self.reference_probe

        def probe_spec(workdir: Path) -> ProbeSpec:
            return ProbeSpec(dict(probe or {}))

        return TorchSide(
            self.reference,  # type: ignore[arg-type]
            self.reference_label,
            tokenizer=self.tokenizer,
            probe=probe_spec if probe is not None else None,
        )

    @cached_property
    def int8_side(self) -> ModelSide:
        """The INT8 model as a model side, saved and probed the way its route says."""
        if is_side(self.int8):
            return self.int8  # type: ignore[return-value]
        from ..int8.routes import int8_side
        from ..origin import Int8Origin

        origin = self.origin or Int8Origin("scheme", self.scheme, scheme=self.scheme)
        return int8_side(self.int8, origin, self.tokenizer)  # type: ignore[arg-type]
