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
from ..versions import library_versions
from .base import FORMAT, RECIPE_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from torch import nn

    from .base import QuantScheme


def save_int8(scheme: QuantScheme, model: Any, directory: Path) -> None:
    from safetensors.torch import save_file

    quantized: dict[str, Any] = {}
    for n, m in model.named_modules():
        # a quantized layer's own quantized parts (an expert layer's per-expert layers)
        # are its business: it saves them in its state_tensors
        if (
            n
            and scheme.is_quantized_module(m)
            and not n.startswith(tuple(p + "." for p in quantized))
        ):
            quantized[n] = m
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
        "versions": library_versions(),
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
    """The model ``save_int8`` wrote. The file is read a layer at a time (safetensors'
    memory map), so a reload holds one layer's file tensors beside the model, never a
    second copy of all INT8 weights."""
    from safetensors import SafetensorError, safe_open

    recipe = scheme.read_recipe(directory)
    if recipe["scheme"] != scheme.name:
        raise LlmqUsageError(
            f"{directory} holds a {recipe['scheme']!r} model, not {scheme.name!r}; "
            f"load it with --llmq-scheme={recipe['scheme']}"
        )
    try:
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as weights:
            model = _rebuild(scheme, directory, recipe, weights, str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise LlmqUsageError(
            f"{directory / WEIGHTS_FILE} is unreadable ({exc}); save the model again"
        ) from None
    return model.to(device).eval()


def _rebuild(
    scheme: QuantScheme, directory: Path, recipe: dict[str, Any], weights: Any, path: str
) -> Any:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    keys = list(weights.keys())
    layer_prefixes = tuple(n + "." for n in recipe["layers"])
    float_tensors = {k: weights.get_tensor(k) for k in keys if not k.startswith(layer_prefixes)}
    config = AutoConfig.from_pretrained(directory)
    with _no_weight_init():
        model = AutoModelForCausalLM.from_config(config, dtype=_saved_float_dtype(float_tensors))
    convert_conv1d(model)
    # assign: the tensors read from the file become the parameters (no second copy)
    result = model.load_state_dict(float_tensors, strict=False, assign=True)
    del float_tensors
    missing = [
        k
        for k in result.missing_keys
        if k not in recipe["tied"] and not k.startswith(layer_prefixes)
    ]
    if missing or result.unexpected_keys:
        raise LlmqUsageError(
            f"{directory} does not match its config (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); save the model again"
        )
    for name, meta in recipe["layers"].items():
        prefix = name + "."
        # a map of its own per layer: the file pages a layer's tensors touched leave RSS
        # when the layer has made its own (repacked) copy, instead of staying mapped
        with safe_open(path, framework="pt") as layer_file:
            parts = {
                k[len(prefix) :]: layer_file.get_tensor(k) for k in keys if k.startswith(prefix)
            }
            empty = model.get_submodule(name)
            set_submodule(model, name, scheme.rebuild_module(name, parts, meta, empty))
            del parts
    for alias, source in recipe["tied"].items():
        if alias in result.missing_keys:  # alias of a tensor we stored once
            owner, _, attr = alias.rpartition(".")
            src_owner, _, src_attr = source.rpartition(".")
            setattr(
                model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr)
            )
    return model


def _no_weight_init() -> Any:
    """transformers' switch that skips random initialisation while a model is built.

    The model is built from its config, then every weight is filled from the file and one
    the file lacks is refused above; initialising ~135M random weights first would cost
    ~1 s and ~0.4 GB of peak RSS for SmolLM2 and decide nothing."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # where it is not (transformers 4): the slower load, same check
        return contextlib.nullcontext()
    return no_init_weights()


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
