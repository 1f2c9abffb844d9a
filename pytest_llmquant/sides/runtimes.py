"""The runtimes a side can run in besides torch, and how each one's model file is read.

A runtime is one entry of :data:`RUNTIMES_BY_NAME`: the Python package that must be
installed (checked at start-up with ``find_spec``, never imported here), the extra that
installs it, the :class:`~.host.RuntimeModel` its child process runs, and how its file is
described from metadata alone (the label and bits for test ids at collection). The model
itself only ever loads in a child process (:class:`~.child.ChildSide`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from ..formats.facts import FileFacts

if TYPE_CHECKING:
    from ..origin import Int8Origin
    from .base import ShippedFile


@dataclass(frozen=True)
class Runtime:
    name: str
    package: str  # the module find_spec looks for
    extra: str  # pytest-llmquant[EXTRA]
    factory: str  # "module:callable" of its RuntimeModel, run in the child
    describe: Callable[[str, str], FileFacts]  # (path, option) -> facts


def _gguf_facts(path: str, option: str) -> FileFacts:
    from ..formats.gguf.inventory import inventory
    from ..formats.gguf.q8_0 import read_q8_0_header

    p = Path(path).expanduser()
    if not p.is_file():
        raise LlmqUsageError(f"{option}={path}: the llama.cpp runtime runs a .gguf file; pass one")
    inv = inventory(read_q8_0_header(p))
    bits = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "F16": 16, "F32": 32}
    return FileFacts(
        p,
        f"llama.cpp {inv.file_type}",
        bits.get(inv.file_type),
        inv.label_bits,
        inv.weight_bytes,
        inv.quantized,
        inv.kept_float,
        (p,),
        f"gguf {inv.file_type}",
    )


def _onnx_facts(path: str, option: str) -> FileFacts:
    from ..formats.onnx_file import describe_onnx

    return describe_onnx(path, option)


RUNTIMES_BY_NAME: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime(
            "llama.cpp",
            "llama_cpp",
            "llamacpp",
            "pytest_llmquant.sides.llamacpp_model:LlamaCppModel",
            _gguf_facts,
        ),
        Runtime(
            "onnxruntime",
            "onnxruntime",
            "onnx",
            "pytest_llmquant.sides.onnx_model:OnnxModel",
            _onnx_facts,
        ),
    )
}


def runtime(name: str, option: str) -> Runtime:
    """The runtime ``name``, installed, or one line naming the extra that installs it."""
    found = RUNTIMES_BY_NAME[name]
    if importlib.util.find_spec(found.package) is None:
        raise LlmqUsageError(
            f"{option}={name} needs the {found.package} package, which is not installed; "
            f"install it with: pip install 'pytest-llmquant[{found.extra}]'"
        )
    return found


def file_origin(facts: FileFacts, runtime_name: str) -> Int8Origin:
    from ..origin import Int8Origin

    return Int8Origin(
        "checkpoint",
        facts.label,
        facts.bits,
        checkpoint=str(facts.path),
        runtime=runtime_name,
        bits_label=facts.bits_text,
    )


def shipped(facts: FileFacts) -> ShippedFile:
    """The runtime's files as they ship: the bytes of each, as they are on disk."""
    from .base import ShippedFile

    return ShippedFile(
        facts.path,
        sum(p.stat().st_size for p in facts.shipped),
        f"the {facts.label.split()[0]} file{'s' * (len(facts.shipped) > 1)} as given",
        tuple(p.name for p in facts.shipped),
    )
