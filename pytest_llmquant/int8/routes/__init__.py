"""The INT8 routes table: one handler per way an INT8 model reaches the gates.

=============  =====================================  ======================================
route          build or load                          ships as / a probe process loads
=============  =====================================  ======================================
``scheme``     a built-in scheme on a private copy    the scheme's save / rebuilt there
``hook``       the user's ``pytest_llmq_quantize``     its library's safe save / that save
``fixture``    an overridden ``int8_model`` fixture   its library's safe save / that save
``checkpoint`` a ``--llmq-int8-model`` directory      its own files / those files
``gguf``       a ``--llmq-int8-model`` Q8_0 file       the file / the file, losslessly
=============  =====================================  ======================================

Each handler (:class:`~.base.Route`) answers all four questions for its models, so "which
INT8 model is this, how is it loaded, saved and reloaded in a child" lives here only.
:func:`route_for` finds the handler of an :class:`~pytest_llmquant.origin.Int8Origin`,
:func:`route_for_path` the one of a ``--llmq-int8-model`` path (the one place that tells a
GGUF file from a directory), and :func:`int8_side` makes the INT8 model side the gates
measure. A new runtime (llama.cpp, ONNX Runtime) is one more handler here.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqUsageError
from .base import Int8Built, Int8Request, ProbeArgs, ProbeLoaded, ReferenceLoader, Route
from .checkpoint import CheckpointRoute
from .gguf import GgufRoute
from .scheme import SchemeRoute
from .user_model import FixtureRoute, HookRoute, origin_of_model

if TYPE_CHECKING:
    from ...origin import Int8Origin
    from ...sides.torch_side import TorchSide
    from ...types import CausalLM, Tokenizer

__all__ = [
    "ROUTES",
    "Int8Built",
    "Int8Request",
    "ProbeLoaded",
    "Route",
    "build_or_load",
    "checkpoint_origin",
    "int8_side",
    "is_gguf",
    "load_in_probe",
    "origin_of_model",
    "route_for",
    "route_for_path",
]

ROUTES: dict[str, Route] = {
    route.name: route
    for route in (SchemeRoute(), HookRoute(), FixtureRoute(), CheckpointRoute(), GgufRoute())
}


def is_gguf(path: str | Path) -> bool:
    """A ``--llmq-int8-model`` that is a file is a GGUF; a directory is a checkpoint."""
    return Path(path).expanduser().is_file()


def route_for_path(path: str) -> CheckpointRoute | GgufRoute:
    """The handler of a ``--llmq-int8-model`` path; a path that is neither is refused."""
    p = Path(path).expanduser()
    if is_gguf(p):
        return GgufRoute()
    if not p.is_dir():
        raise LlmqUsageError(
            f"--llmq-int8-model={path}: no such file or directory; pass a directory saved by a "
            "pytest-llmquant scheme or a transformers quantized checkpoint, or a Q8_0 .gguf file"
        )
    return CheckpointRoute()


def route_for(origin: Int8Origin) -> Route:
    """The handler that made the model of ``origin`` (a checkpoint: by what its path is)."""
    if origin.route == "checkpoint" and origin.checkpoint is not None:
        return ROUTES["gguf" if is_gguf(origin.checkpoint) else "checkpoint"]
    return ROUTES[origin.route]


def checkpoint_origin(path: str) -> Int8Origin:
    """What the ``--llmq-int8-model`` at ``path`` is, from its metadata alone (no torch, no
    weights): checked at start-up, so a wrong path or a float save exits 4 at once."""
    return route_for_path(path).origin_of(path)


def build_or_load(request: Int8Request) -> Int8Built:
    """The INT8 model of a pair: the checkpoint's route when one is given, else the hook's
    when it returns a model, else the built-in scheme's."""
    if request.checkpoint is not None:
        routes: list[Route] = [route_for_path(request.checkpoint)]
    else:
        routes = [ROUTES["hook"], ROUTES["scheme"]]
    for route in routes:
        built = route.build_or_load(request)
        if built is not None:
            return built
    raise LlmqUsageError(f"no INT8 route made a model of {request.label}")  # pragma: no cover


def nn_module() -> type[CausalLM]:
    import torch

    return torch.nn.Module


def int8_side(
    model: CausalLM | Int8Built,
    origin: Int8Origin | None = None,
    tokenizer: Tokenizer | None = None,
) -> TorchSide:
    """The INT8 model side the gates measure: ``model`` (or a built one, with its origin)
    saved and reloaded by the route of ``origin`` (None: described as a fixture's model)."""
    from ...sides.torch_side import TorchSide

    if isinstance(model, Int8Built):
        origin = origin or model.origin
        if not isinstance(model.model, nn_module()):
            raise TypeError("a runtime's INT8 side is its own model side: use Int8Built.model")
        model = model.model
    if origin is None:
        origin = origin_of_model(model, "fixture")
    route = route_for(origin)
    return TorchSide(
        model,
        origin.label,
        origin=origin,
        tokenizer=tokenizer,
        ship=partial(route.ship, model, origin),
        probe=partial(route.probe, model, tokenizer, origin),
    )


def load_in_probe(args: ProbeArgs, reference: ReferenceLoader) -> ProbeLoaded:
    """In a probe process: the INT8 model its arguments describe, loaded by the route that
    wrote them (``args["route"]``; a probe given only a scheme builds it)."""
    name = str(args.get("route") or _route_of_old_args(args))
    if name not in ROUTES:
        raise LlmqUsageError(f"unknown INT8 route {name!r}; valid: {', '.join(ROUTES)}")
    return ROUTES[name].load_in_probe(args, reference)


def _route_of_old_args(args: ProbeArgs) -> str:
    """The route of probe arguments written without one (before the table existed)."""
    return "gguf" if args.get("int8_gguf") else "checkpoint" if args.get("int8_dir") else "scheme"
