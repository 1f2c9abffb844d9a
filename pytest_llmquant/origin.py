"""Where the INT8 model under test came from, and what it is, in words a report can print.

A gate result is only worth something if it names the model it measured: a torchao model
made by the user's hook must not be labelled with our scheme's name, and a 4-bit model
must not be called INT8. Every pair carries one of these; a model the user made is
described by :func:`pytest_llmquant.int8.routes.origin_of_model`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

#: how the user handed the INT8 model over (the handler that builds, saves and reloads it is
#: :func:`pytest_llmquant.int8.routes.route_for`'s answer; a checkpoint may be a GGUF file)
Route = Literal["scheme", "hook", "fixture", "checkpoint"]

#: how each route is named in the summary
MADE_BY: dict[str, str] = {
    "scheme": "built-in scheme",
    "hook": "pytest_llmq_quantize hook",
    "fixture": "int8_model fixture",
    "checkpoint": "--llmq-int8-model",
}


@dataclass(frozen=True)
class Int8Origin:
    route: Route
    label: str  # what made it: "weight-only-int8", "torchao Int8WeightOnly", "gguf Q8_0"
    bits: int | None = 8  # weight bit width; None when the model does not say
    checkpoint: str | None = None  # the files the user ships (the checkpoint route)
    scheme: str | None = None  # our scheme's name when one of ours built or saved it
    path: str | None = None  # how its layers run here, when we know ("AVX2 C kernel", ...)
    runtime: str = "torch"  # what computes it: torch, llama.cpp, onnxruntime
    bits_label: str | None = None  # the file's own bit count ("5.0 bits/weight"), if it says

    @property
    def made_by(self) -> str:
        return MADE_BY[self.route]

    @property
    def bits_text(self) -> str:
        if self.bits_label:
            return self.bits_label
        return "bit width unknown" if self.bits is None else f"{self.bits}-bit weights"

    def __str__(self) -> str:
        runs = f"; runs on the {self.path}" if self.path else ""
        return f"{self.label} ({self.bits_text}, made by the {self.made_by}{runs})"

    def as_dict(self) -> dict[str, str | int | None]:
        return {**asdict(self), "made_by": self.made_by}


def id_part(origin_label: str) -> str:
    """A label as a test-id part: no spaces, so ``-k`` can select it."""
    return "-".join(origin_label.replace("/", "-").split())
