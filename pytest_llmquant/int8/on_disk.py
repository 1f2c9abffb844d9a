"""The INT8 model under test, on disk: saved the way its maker saves it (for the ``file``
memory gate), and loaded again in a fresh process (for ``peak_rss``).

Each route has its own answer, and where none exists the gate skips with the reason and
the fix, rather than measuring another model:

- our scheme: the scheme's own save; the probe rebuilds it from the reference;
- ``--llmq-int8-model`` directory: its own files; the probe loads them as their maker does;
- ``--llmq-int8-model`` GGUF: the file itself; the probe loads it like the session does;
- a hook or fixture model: saved with its library's safe format where one exists
  (transformers ``save_pretrained`` for a transformers-quantized model, quanto's map,
  our schemes); else a skip naming ``--llmq-int8-model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LlmqSkip
from ..origin import Int8Origin
from ..sides.base import ProbeSpec, ShippedFile


@dataclass(frozen=True)
class SavedInt8:
    directory: Path  # where the model files are (the user's own directory, or ours)
    bytes: int  # the model files only: weights, configs, recipe or map
    how: str  # one line for the report


def save(model: Any, origin: Int8Origin, directory: Path) -> SavedInt8:
    """Save ``model`` under ``directory`` (new) as its maker would; raise LlmqSkip where no
    safe way exists."""
    from ..formats.sizes import file_bytes

    checkpoint = Path(origin.checkpoint).expanduser() if origin.checkpoint else None
    if checkpoint is not None and checkpoint.is_file():  # a GGUF: the file is what ships
        return SavedInt8(checkpoint.parent, file_bytes(checkpoint), f"the GGUF file {checkpoint}")
    if origin.route == "scheme" and origin.scheme:
        from ..schemes import get_scheme

        directory.mkdir(parents=True, exist_ok=True)
        get_scheme(origin.scheme).save(model, directory)
        return SavedInt8(
            directory, file_bytes(directory), f"{origin.scheme}'s safetensors + recipe"
        )
    from ..user_int8.save import save_int8

    outcome = save_int8(model, directory, origin=checkpoint)
    if isinstance(outcome, str):
        raise LlmqSkip(f"{origin.label} from the {origin.made_by}: {outcome}")
    return SavedInt8(Path(outcome.directory), outcome.bytes, outcome.how)


def probe_args(model: Any, tokenizer: Any, origin: Int8Origin, workdir: Path) -> dict[str, Any]:
    """Arguments that make a fresh probe process load this same INT8 model (files written
    under ``workdir`` must outlive the probe)."""
    checkpoint = Path(origin.checkpoint).expanduser() if origin.checkpoint else None
    if checkpoint is not None and checkpoint.is_file():
        return {"int8_gguf": str(checkpoint)}
    if origin.route == "scheme":
        return {"scheme": origin.scheme}
    from ..user_int8.probe import loader_for

    if checkpoint is not None:
        saved_dir = checkpoint
    else:
        saved_dir = save(model, origin, workdir / "int8").directory
    tokenizer_dir = workdir / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    return {
        "int8_dir": str(saved_dir),
        "int8_loader": loader_for(saved_dir),
        "tokenizer_dir": str(tokenizer_dir),
    }


def shipped_file(model: Any, origin: Int8Origin, directory: Path) -> ShippedFile:
    """:func:`save`, as the :class:`~pytest_llmquant.sides.base.ShippedFile` a side returns."""
    from ..sides.torch_weights import file_kept_float

    saved = save(model, origin, directory)
    where = saved.directory
    names = tuple(sorted(p.name for p in where.iterdir())) if where.is_dir() else (where.name,)
    kept = file_kept_float(where, model) if where.is_dir() else {}
    return ShippedFile(where, saved.bytes, saved.how, names, kept)


def probe_spec(model: Any, tokenizer: Any, origin: Int8Origin, workdir: Path) -> ProbeSpec:
    """:func:`probe_args`, as the :class:`~pytest_llmquant.sides.base.ProbeSpec` a side returns."""
    if origin.route == "scheme":
        return ProbeSpec({"scheme": origin.scheme}, "built from the reference in-process")
    return ProbeSpec(probe_args(model, tokenizer, origin, workdir))
