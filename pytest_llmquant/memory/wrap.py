"""``nn.Module`` arguments of :func:`~pytest_llmquant.memory.measure_memory`, as model sides.

The gates hand :func:`~pytest_llmquant.memory.measure_memory` two
:class:`~pytest_llmquant.sides.base.ModelSide`\\s. Its older callers (``assert_memory``,
the benchmarks, users' tests) pass the models themselves, with keywords saying how they
ship and load again: ``spec`` (how a fresh process loads the reference), ``origin``
(where the INT8 model came from: its route saves and reloads it), ``save`` or ``scheme``.
This module is the one place that turns those into sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from ..sides.base import ModelSide, ProbeSpec, ShippedFile

if TYPE_CHECKING:
    from ..origin import Int8Origin
    from ..types import CausalLM, Tokenizer

#: how a fresh process loads a side: ``side.probe_spec``, or a spec given by keyword
ProbeSource = Callable[[Path], ProbeSpec]
#: the reference's probe spec as callers pass it: a ``--llmq-model`` value, or the dict
#: ``{"model", "cache_dir", "dtype", "device", "threads", "trust_remote_code"}``
SpecArg = dict[str, str | int | bool | None] | str | None
SaveFn = Callable[["CausalLM", Path], None]


@dataclass(frozen=True)
class MemorySides:
    """The two sides of one memory comparison (None: no model in this process, only how a
    fresh process builds it), and how a probe process loads the INT8 one."""

    reference: ModelSide | None
    int8: ModelSide | None
    reference_probe: ProbeSource
    int8_probe: ProbeSource

    def loaded(self, kind: str) -> tuple[ModelSide, ModelSide]:
        if self.reference is None or self.int8 is None:
            raise LlmqUsageError(
                f"memory kind {kind!r} measures the models in this process; pass both models"
            )
        return self.reference, self.int8

    def device(self, spec: SpecArg) -> str:
        """The device the probes use: ``spec["device"]``, else the reference's, else cpu."""
        if isinstance(spec, dict) and spec.get("device"):
            return str(spec["device"])
        return self.reference.device if self.reference is not None else "cpu"


def _spec_args(spec: SpecArg, kind: str, _workdir: Path) -> ProbeSpec:
    if spec is None:
        raise LlmqUsageError(
            f"memory kind {kind!r} needs spec= (the --llmq-model value) so "
            "fresh processes can load the model"
        )
    return ProbeSpec({"model": spec} if isinstance(spec, str) else dict(spec))


def _ship_with(save: SaveFn, model: CausalLM, how: str, directory: Path) -> ShippedFile:
    from ..formats.sizes import file_bytes
    from ..sides.torch_weights import file_kept_float

    directory.mkdir(parents=True, exist_ok=True)
    save(model, directory)
    names = tuple(sorted(p.name for p in directory.iterdir()))
    return ShippedFile(
        directory, file_bytes(directory), how, names, file_kept_float(directory, model)
    )


def _no_save(directory: Path) -> ShippedFile:
    raise LlmqUsageError(
        "memory kind 'file' needs scheme= (a --llmq-scheme name), origin= or "
        "save=callable(model, dir) to save the INT8 model"
    )


def _int8_side(
    model: CausalLM,
    scheme: str | None,
    save: SaveFn | None,
    origin: Int8Origin | None,
    tokenizer: Tokenizer | None,
) -> ModelSide:
    from ..sides.torch_side import TorchSide

    if origin is not None:  # saved and reloaded by the route that made it
        from ..int8.routes import int8_side

        side = int8_side(model, origin, tokenizer)
    else:
        probe = ProbeSpec({"scheme": scheme}, "built from the reference in-process")
        side = TorchSide(model, scheme or "INT8 model", tokenizer=tokenizer, probe=lambda _: probe)
    if save is None and origin is None and scheme is not None:
        from ..schemes import get_scheme

        save = get_scheme(scheme).save
    if save is not None:
        side = replace(side, ship=partial(_ship_with, save, model, "the scheme's save"))
    elif origin is None:
        side = replace(side, ship=_no_save)
    return side


def as_sides(
    reference: ModelSide | CausalLM | None,
    int8: ModelSide | CausalLM | None,
    kind: str,
    *,
    spec: SpecArg,
    scheme: str | None,
    save: SaveFn | None,
    origin: Int8Origin | None,
    tokenizer: Tokenizer | None,
) -> MemorySides:
    """Sides as they are; models wrapped in :class:`~pytest_llmquant.sides.torch_side.TorchSide`.

    A fresh process loads the reference as ``spec`` says when given (else as a side says),
    and the INT8 model as its side says (no model: ``scheme`` rebuilt from the reference).
    """
    from ..sides.torch_side import TorchSide

    reference_probe: ProbeSource = partial(_spec_args, spec, kind)
    if reference is not None and not isinstance(reference, ModelSide):
        reference = TorchSide(reference, "reference", tokenizer=tokenizer, probe=reference_probe)
    elif reference is not None and spec is None:
        reference_probe = reference.probe_spec
    if int8 is not None and not isinstance(int8, ModelSide):
        int8 = _int8_side(int8, scheme, save, origin, tokenizer)
    if int8 is not None:
        return MemorySides(reference, int8, reference_probe, int8.probe_spec)
    probe = ProbeSpec({"scheme": scheme}, "built from the reference in-process")
    return MemorySides(reference, None, reference_probe, lambda _workdir: probe)
