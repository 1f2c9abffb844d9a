"""What one INT8 route is: the :class:`Route` protocol every handler of the table implements.

A route is one way an INT8 model reaches the gates (our scheme, the user's hook, the
``int8_model`` fixture, a checkpoint directory, a GGUF file). Each answers, for its models,
the four questions the gates ask, in one place (as torchao keeps one handler per config):

- **build or load**: the model, its coverage and its :class:`~pytest_llmquant.origin.Int8Origin`;
- **ship**: what is on disk when the user ships it (the ``file`` memory kind);
- **probe**: how a fresh process loads the same model (``peak_rss``, ``vram``);
- **load in probe**: that fresh process's side of it (:mod:`pytest_llmquant.memory.rss_probe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ...layers import Coverage
    from ...origin import Int8Origin
    from ...sides.base import ModelSide, ProbeSpec, ShippedFile
    from ...types import CausalLM, Tokenizer

#: JSON-ready arguments of a probe process (:attr:`~pytest_llmquant.sides.base.ProbeSpec.args`)
ProbeArgs = dict[str, str | int | bool | None]
#: the ``pytest_llmq_quantize`` hook: ``(model=, scheme=, config=)`` -> a model,
#: ``(model, label)`` or None
QuantizeHook = Callable[..., object]


@dataclass
class Int8Built:
    """An INT8 model with its coverage and where it came from."""

    model: CausalLM | ModelSide  # a side: a runtime runs the file (--llmq-int8-runtime)
    coverage: Coverage
    origin: Int8Origin


@dataclass(frozen=True)
class Int8Request:
    """Everything a route may need to make the INT8 model of one pair."""

    reference: CausalLM  # the reference model (only read: every route works on a copy)
    scheme: str = ""  # the --llmq-scheme of the pair ("": the default scheme)
    device: str = "cpu"
    label: str = "the model"  # the model's name in messages
    hook: QuantizeHook | None = None  # the user's pytest_llmq_quantize, when implemented
    checkpoint: str | None = None  # --llmq-int8-model: a directory or a .gguf file
    model: CausalLM | None = None  # what an overridden int8_model fixture returned


@dataclass
class ProbeLoaded:
    """What a probe process holds once a route loaded its model: the model, its tokenizer
    and facts for the probe's report (``{"scheme": ..., "coverage": ...}``)."""

    model: CausalLM
    tokenizer: Tokenizer
    extra: ProbeArgs = field(default_factory=dict)


#: loads the reference in a probe process (from the probe's arguments), when a route needs it
ReferenceLoader = Callable[[], "tuple[CausalLM, Tokenizer]"]


class Route(Protocol):
    """One handler of the INT8 routes table (:data:`pytest_llmquant.int8.routes.ROUTES`)."""

    #: its key in the table: ``scheme``, ``hook``, ``fixture``, ``checkpoint``, ``gguf``
    name: str

    def build_or_load(self, request: Int8Request) -> Int8Built | None:
        """The INT8 model of ``request`` (None: this route makes none for it, e.g. a hook
        that returned None)."""
        ...

    def ship(self, model: CausalLM, origin: Int8Origin, directory: Path) -> ShippedFile:
        """Save ``model`` under ``directory`` (new) as it ships, or point at the file it is;
        raise :class:`~pytest_llmquant.errors.LlmqSkip` where no safe way exists."""
        ...

    def probe(
        self, model: CausalLM, tokenizer: Tokenizer | None, origin: Int8Origin, workdir: Path
    ) -> ProbeSpec:
        """How a fresh process loads ``model`` (files written under ``workdir``)."""
        ...

    def load_in_probe(self, args: ProbeArgs, reference: ReferenceLoader) -> ProbeLoaded:
        """In the probe process: load the model :meth:`probe` described (``args`` holds its
        :class:`~pytest_llmquant.sides.base.ProbeSpec` over the reference's)."""
        ...
