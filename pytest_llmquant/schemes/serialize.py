"""Shared save/load for every built-in scheme: one safetensors file plus a JSON recipe.

Quantized layers are stored as plain tensors (int8 weights, scales, bias) that each
scheme produces and consumes, so the file never holds a pickled or a torch-quantized
tensor, and loading needs only the model's config, not the FP32 checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LlmqUsageError
from ..layers import convert_conv1d, set_submodule
from .base import FORMAT, RECIPE_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from torch import nn

    from .base import QuantScheme


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def save_int8(scheme: QuantScheme, model: Any, directory: Path) -> None:
    from safetensors.torch import save_file

    quantized = {n: m for n, m in model.named_modules() if n and scheme.is_quantized_module(m)}
    if not quantized:
        raise LlmqUsageError(
            f"the model has no {scheme.name!r} layers to save; quantize it with that scheme first"
        )
    prefixes = tuple(n + "." for n in quantized)
    tensors: dict[str, Any] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, value in model.state_dict(keep_vars=False).items():
        if key.startswith(prefixes):
            continue
        ident = (value.data_ptr(), tuple(value.shape))
        if ident in seen:  # tied weights: store once, remember the alias
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().contiguous()
    layers: dict[str, Any] = {}
    for name, module in quantized.items():
        parts, meta = scheme.state_tensors(name, module)
        for k, t in parts.items():
            tensors[f"{name}.{k}"] = t.detach().contiguous().cpu()
        layers[name] = meta
    recipe = {
        "format": FORMAT,
        "scheme": scheme.name,
        "scheme_version": scheme.version,
        "config": scheme.config,
        "layers": layers,
        "tied": tied,
        "versions": _versions(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(directory)
    # write-then-rename, so a crash never leaves a half file under the final name
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "scheme": scheme.name})
        os.replace(tmp, directory / WEIGHTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=1), encoding="utf-8")


def load_int8(scheme: QuantScheme, directory: Path, *, device: str = "cpu") -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    recipe = scheme.read_recipe(directory)
    if recipe["scheme"] != scheme.name:
        raise LlmqUsageError(
            f"{directory} holds a {recipe['scheme']!r} model, not {scheme.name!r}; "
            f"load it with --llmq-scheme={recipe['scheme']}"
        )
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise LlmqUsageError(
            f"{directory / WEIGHTS_FILE} is unreadable ({exc}); save the model again"
        ) from None
    config = AutoConfig.from_pretrained(directory)
    float_tensors = {
        k: v
        for k, v in tensors.items()
        if not k.startswith(tuple(n + "." for n in recipe["layers"]))
    }
    model = AutoModelForCausalLM.from_config(config, dtype=_saved_float_dtype(float_tensors))
    convert_conv1d(model)
    result = model.load_state_dict(float_tensors, strict=False)
    missing = [
        k
        for k in result.missing_keys
        if k not in recipe["tied"] and not k.startswith(tuple(n + "." for n in recipe["layers"]))
    ]
    if missing or result.unexpected_keys:
        raise LlmqUsageError(
            f"{directory} does not match its config (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); save the model again"
        )
    for name, meta in recipe["layers"].items():
        prefix = name + "."
        parts = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        set_submodule(model, name, scheme.module_from_tensors(parts, meta))
    for alias, source in recipe["tied"].items():
        if alias in result.missing_keys:  # alias of a tensor we stored once
            owner, _, attr = alias.rpartition(".")
            src_owner, _, src_attr = source.rpartition(".")
            setattr(
                model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr)
            )
    return model.to(device).eval()


def _saved_float_dtype(tensors: dict[str, Any]) -> Any:
    """The dtype most of the saved float tensors (embeddings, norms) are in, float32 if none.

    The model is rebuilt in it, so the INT8 model of a bfloat16 reference (on CUDA, or
    ``--llmq-reference-dtype=bfloat16``) reloads as bfloat16 and gives the same logits,
    instead of being widened to float32 on the way back in."""
    import torch

    counts: dict[Any, int] = {}
    for t in tensors.values():
        if t.dtype.is_floating_point:
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=lambda d: counts[d]) if counts else torch.float32
