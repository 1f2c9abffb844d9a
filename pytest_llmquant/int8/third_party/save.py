"""Save the user's INT8 model the way its maker saves it, so file size is the real one.

Why not one saver for all: the file gate must measure the bytes a user would ship, and
each library has its own safe (safetensors) format:

- our schemes: ``get_scheme(name).save`` (safetensors + ``llmq-recipe.json``);
- a model quantized by transformers (``hf_quantizer`` set: TorchAoConfig,
  BitsAndBytesConfig, compressed-tensors...) whose quantizer is serializable:
  ``save_pretrained(dir, safe_serialization=True)``;
- optimum-quanto: its documented save, ``model.state_dict()`` to safetensors plus
  ``quantization_map(model)`` as JSON (transformers cannot save quanto models);
- a ``--llmq-int8-model`` directory (``origin``): its own files, not saved again.

Where no safe way exists (torchao ``quantize_`` or bitsandbytes layers built by hand,
with no transformers quantizer; a quanto model never frozen; a user's own layers; any
save that would write a pickle), :func:`save_int8` returns a one-line reason naming the
fix instead of raising another library's (or another scheme's) error.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqUsageError
from .description import Int8Description
from .detect import QUANTO_MAP_FILE, describe_checkpoint, describe_int8

if TYPE_CHECKING:
    import torch

    from ...types import CausalLM

#: the files that make a model (counted by the file gate); tokenizers and READMEs are not
MODEL_FILE_SUFFIXES = (".safetensors", ".safetensors.index.json")
MODEL_FILE_NAMES = ("config.json", "generation_config.json", "llmq-recipe.json", QUANTO_MAP_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
FIX = "pass the saved checkpoint with --llmq-int8-model=DIR"


@dataclass(frozen=True)
class SaveOutcome:
    """Where the INT8 model's files are, how many bytes they take, and how to load them."""

    directory: str
    bytes: int  # the model files only (weights, configs, recipe/map); see MODEL_FILE_NAMES
    files: tuple[str, ...]
    how: str  # one line for reports: which saver wrote the files
    loader: str  # how a fresh process loads them: see probe.LOADERS
    reused: bool  # True: the user's --llmq-int8-model directory, not saved again

    @property
    def probe(self) -> dict[str, str]:
        """JSON-able arguments of :func:`.probe.load_saved_int8` (for the memory probe)."""
        return {"int8_dir": self.directory, "int8_loader": self.loader}


def model_files(directory: Path) -> list[Path]:
    """The files of ``directory`` that make the model, sorted by name."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and (p.name in MODEL_FILE_NAMES or p.name.endswith(MODEL_FILE_SUFFIXES))
    )


def _outcome(directory: Path, how: str, loader: str, reused: bool) -> SaveOutcome:
    files = model_files(directory)
    seen: set[tuple[int, int]] = set()
    total = 0
    for f in files:  # hard links (the HF cache) count once
        st = f.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return SaveOutcome(str(directory), total, tuple(f.name for f in files), how, loader, reused)


def _reason(desc: Int8Description, why: str) -> str:
    return f"cannot save the {desc.label} model safely: {why}; {FIX}"


# -- the savers ---------------------------------------------------------------------------


def _from_origin(origin: Path) -> SaveOutcome | str:
    from .probe import loader_for

    if not origin.is_dir():
        return f"--llmq-int8-model={origin} is not a directory; {FIX}"
    desc = describe_checkpoint(origin)
    if not desc.is_quantized:
        return f"--llmq-int8-model={origin} is not quantized (no recipe, no quantization_config); {FIX}"
    names = [p.name for p in origin.iterdir()]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        held = f"only pickle weights ({pickles[0]})" if pickles else "no *.safetensors weights"
        return f"--llmq-int8-model={origin} holds {held}; re-save it with safe_serialization=True"
    return _outcome(origin, f"the checkpoint's own files ({desc.label})", loader_for(origin), True)


def _serializable(quantizer: object) -> bool:
    check = getattr(quantizer, "is_serializable", False)
    if not callable(check):
        return bool(check)  # a property in some transformers versions
    try:
        return bool(check(safe_serialization=True))
    except TypeError:  # transformers 5: no argument
        return bool(check())


def _save_pretrained(model: CausalLM, desc: Int8Description, directory: Path) -> SaveOutcome | str:
    try:
        model.save_pretrained(directory, safe_serialization=True)  # type: ignore[operator]
    except Exception as exc:  # the library's own refusal: reported, not raised
        # e.g. transformers 5.24 cannot re-save a bitsandbytes checkpoint it loaded
        # (NotImplementedError): measure such a model through its origin directory
        _clear(directory)
        first = " ".join(str(exc).split())[:160] or "no message"
        return _reason(desc, f"save_pretrained failed ({type(exc).__name__}: {first})")
    pickles = [p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        _clear(directory)
        return _reason(desc, f"save_pretrained wrote pickle files ({pickles[0]})")
    return _outcome(directory, "save_pretrained(safe_serialization=True)", "transformers", False)


def _clear(directory: Path) -> None:
    """Remove a failed save's files, so no half checkpoint is measured or loaded later."""
    for p in directory.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _save_quanto(model: CausalLM, desc: Int8Description, directory: Path) -> SaveOutcome | str:
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    unfrozen = [
        n
        for n, m in model.named_modules()
        if hasattr(m, "weight_qtype") and not type(m.weight).__module__.startswith("optimum.")
    ]
    if unfrozen:
        return (
            f"cannot save the {desc.label} model: {unfrozen[0]} is not frozen (its weights are "
            "still float); call optimum.quanto.freeze(model) after quantize()"
        )
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, value in model.state_dict().items():
        ident = (value.data_ptr(), tuple(value.shape))
        if ident in seen:  # tied weights: safetensors refuses shared tensors, keep one
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().contiguous().cpu()
    config = model.config.to_dict()  # type: ignore[union-attr, operator]
    config.pop("quantization_config", None)  # the map below is what quanto reloads from
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"tied": json.dumps(tied)})
    qmap = quantization_map(model)
    (directory / QUANTO_MAP_FILE).write_text(json.dumps(qmap, indent=1), encoding="utf-8")
    return _outcome(directory, "optimum-quanto safetensors + quantization map", "quanto", False)


def _save_ours(model: CausalLM, desc: Int8Description, directory: Path) -> SaveOutcome | str:
    from ...schemes import get_scheme

    get_scheme(str(desc.scheme)).save(model, directory)
    return _outcome(directory, f"pytest-llmquant {desc.scheme} recipe", "llmq-recipe", False)


_IN_MEMORY_ONLY = {
    "torchao": "torchao quantize_ keeps it in memory only; save it through transformers "
    "(from_pretrained(..., quantization_config=TorchAoConfig(config)).save_pretrained(DIR))",
    "bitsandbytes": "bitsandbytes layers built without transformers have no safe save; "
    "load with BitsAndBytesConfig and save_pretrained(DIR)",
    "custom": "its layers belong to no library pytest-llmquant can save",
}


def save_int8(
    model: CausalLM,
    directory: str | os.PathLike[str],
    *,
    origin: str | os.PathLike[str] | None = None,
) -> SaveOutcome | str:
    """Save ``model`` under ``directory`` with its maker's safe format, or say why not.

    ``directory`` must be new or empty (a failed save empties it again). ``origin`` is
    the ``--llmq-int8-model`` directory the model was loaded from: its files are
    measured as they are (``directory`` is then unused); pass it for every model loaded
    from a checkpoint, as some cannot be saved again (bitsandbytes, transformers 5.24).
    Returns a :class:`SaveOutcome`, or a one-line reason (a ``str``) the gate reports
    as a skip.
    """
    if origin is not None:
        return _from_origin(Path(origin).expanduser())
    desc = describe_int8(model)
    if not desc.is_quantized:
        return f"the INT8 model is not quantized (every linear layer holds a float weight); {FIX}"
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LlmqUsageError(f"save_int8 needs a new or empty directory; {target} is not")
    target.mkdir(parents=True, exist_ok=True)
    try:
        return _dispatch(model, desc, target)
    except Exception as exc:  # a library's (or a scheme's) own error: reported, not raised
        _clear(target)
        first = " ".join(str(exc).split())[:160] or "no message"
        return _reason(desc, f"saving failed ({type(exc).__name__}: {first})")


def _dispatch(model: CausalLM, desc: Int8Description, target: Path) -> SaveOutcome | str:
    if desc.library == "llmq":
        return _save_ours(model, desc, target)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and _serializable(quantizer):
        return _save_pretrained(model, desc, target)
    if desc.library == "quanto":
        return _save_quanto(model, desc, target)
    if quantizer is not None:
        return _reason(desc, f"transformers cannot serialize {type(quantizer).__name__} models")
    why = _IN_MEMORY_ONLY.get(
        desc.library, f"it has no transformers quantizer to save a {desc.library} model"
    )
    return _reason(desc, why)
