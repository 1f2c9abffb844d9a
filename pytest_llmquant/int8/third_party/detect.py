"""Name the INT8 model a user hands the gates: which library made it, how many bits.

Why detect from the layers and not trust a flag: ``quantize_`` (torchao) and
``quantize`` (quanto) leave no config behind, transformers drops the
``quantization_config`` of a checkpoint it dequantizes on load, and a report that calls
a 4-bit GPTQ model "INT8" is wrong. So each linear layer is read for what it holds:

- torchao: an ``nn.Linear`` whose ``weight`` is a torchao tensor subclass (``Int8Tensor``
  in 0.18; ``AffineQuantizedTensor`` / ``LinearActivationQuantizedTensor`` before).
  Classes are recognised by their module (``torchao.*``) and their attributes
  (``act_quant_kwargs``, ``input_quant_func``, ``quant_min``/``quant_max``,
  ``target_dtype``), never by a repr.
- bitsandbytes ``Linear8bitLt`` / ``Linear4bit``; optimum-quanto ``QLinear`` (its
  ``weight_qtype``, and whether it was frozen); GPTQ/AWQ ``QuantLinear`` (``bits``);
  compressed-tensors layers (``quantization_scheme`` and an integer weight).
- our schemes (:mod:`pytest_llmquant.schemes`): each scheme's ``is_quantized_module``.
- anything else holding int8/uint8 tensors is a "custom" layer (a user's own class).

``model.config.quantization_config`` adds ``quant_method`` and, where no layer says,
the label. :func:`describe_checkpoint` reads only a directory's JSON files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import LlmqUsageError
from .configs import as_plain_dict, describe_quant_config, quant_method
from .description import NOT_QUANTIZED, Int8Description

if TYPE_CHECKING:
    from torch import nn

#: the file quanto's own safetensors save writes next to the weights (see :mod:`.save`)
QUANTO_MAP_FILE = "quanto_qmap.json"


# -- one layer -------------------------------------------------------------------------


def _from(obj: Any, *packages: str) -> bool:
    return type(obj).__module__.split(".")[0] in packages or any(
        type(obj).__module__.startswith(p + ".") for p in packages
    )


def _bits_from_attrs(t: Any) -> int | None:
    """Weight bits of a quantized tensor, from what it says about itself."""
    name = type(t).__name__
    match = re.match(r"(?:U?Int|Float|NF)(\d+)", name)
    if match:
        return int(match.group(1))
    target = getattr(t, "target_dtype", None)
    if target is not None:
        digits = re.search(r"(\d+)", str(target))
        if digits:
            return int(digits.group(1))
    qmin, qmax = getattr(t, "quant_min", None), getattr(t, "quant_max", None)
    if isinstance(qmin, int) and isinstance(qmax, int) and qmax > qmin:
        return int(qmax - qmin).bit_length()
    for attr in ("qdata", "int_data", "_data"):
        inner = getattr(t, attr, None)
        if inner is not None and str(getattr(inner, "dtype", "")) in ("torch.int8", "torch.uint8"):
            return 8
    return None


def _torchao_weight(weight: Any) -> Int8Description:
    """torchao's label for one quantized weight: the config name that makes such a weight."""
    inner, dynamic = weight, False
    if hasattr(weight, "input_quant_func") or hasattr(weight, "original_weight_tensor"):
        inner, dynamic = getattr(weight, "original_weight_tensor", weight), True  # torchao < 0.15
    if getattr(inner, "act_quant_kwargs", None) is not None:
        dynamic = True
    bits = _bits_from_attrs(inner)
    name = type(inner).__name__
    if name.startswith("Float8"):
        config = "Float8DynamicActivationFloat8Weight" if dynamic else "Float8WeightOnly"
    elif name.startswith("NF4"):
        config = "NF4"
    elif bits is not None:
        config = f"Int8DynamicActivationInt{bits}Weight" if dynamic else f"Int{bits}WeightOnly"
    else:
        config = name
    activations = (
        "int8 activations quantized per token at run time" if dynamic else "float activations"
    )
    return Int8Description(
        f"torchao {config}",
        bits,
        f"torchao {name} weights, {activations}",
        "torchao",
    )


def _bitsandbytes_layer(module: Any) -> Int8Description | None:
    name = type(module).__name__
    if "8bit" in name:
        return describe_quant_config({"quant_method": "bitsandbytes", "load_in_8bit": True})
    if "4bit" in name or name in ("LinearNF4", "LinearFP4"):
        kind = getattr(getattr(module, "weight", None), "quant_type", None) or "fp4"
        return describe_quant_config(
            {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": kind}
        )
    return None


def _quanto_layer(module: Any) -> Int8Description:
    qtype = module.weight_qtype
    name = str(getattr(qtype, "name", qtype))
    bits = getattr(qtype, "bits", None)
    frozen = _from(getattr(module, "weight", None), "optimum")
    state = (
        "frozen: integer weights in memory"
        if frozen
        else "NOT frozen: float weights, quantized again on every call (optimum.quanto.freeze)"
    )
    return Int8Description(
        f"quanto {name}", bits, f"optimum-quanto {type(module).__name__}, {state}", "quanto"
    )


def _gptq_layer(module: Any) -> Int8Description:
    library = "awq" if "awq" in type(module).__module__.lower() else "gptq"
    bits = getattr(module, "bits", None) or getattr(module, "w_bit", None)
    bits = int(bits) if isinstance(bits, int) else None
    label = f"{library} {bits}-bit" if bits else library
    return Int8Description(
        label, bits, f"{type(module).__name__} packed {library} weights", library
    )


def _compressed_tensors_layer(module: Any) -> Int8Description | None:
    weight = getattr(module, "weight", None)
    if weight is None or getattr(weight, "dtype", None) is None or weight.dtype.is_floating_point:
        return None  # dequantized (or fake-quant) weights: float in memory
    scheme = module.quantization_scheme
    bits = getattr(getattr(scheme, "weights", None), "num_bits", None)
    acts = getattr(getattr(scheme, "input_activations", None), "num_bits", None) or 16
    label = f"compressed-tensors W{bits}A{acts}" if bits else "compressed-tensors"
    return Int8Description(
        label,
        bits,
        "compressed-tensors layer: integer weights, decompressed to float on every call",
        "compressed-tensors",
    )


def _plain_tensors(module: Any) -> list[Any]:
    import torch

    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    return tensors


def _custom_layer(module: Any) -> Int8Description | None:
    import torch

    if "Embedding" in type(module).__name__:
        return None  # a quantized embedding table is not a linear layer
    ints = [t for t in _plain_tensors(module) if t.dtype in (torch.int8, torch.uint8)]
    if not ints:
        return None
    name = type(module).__name__
    return Int8Description(
        f"custom {name}",
        8 if all(t.dtype == torch.int8 for t in ints) else None,
        f"{name} layers holding int8 tensors (not a library we know)",
        "custom",
    )


def _ours(schemes: list[Any], module: Any) -> Int8Description | None:
    for scheme in schemes:
        if scheme.is_quantized_module(module):
            return Int8Description(scheme.name, 8, scheme.summary, "llmq", scheme=scheme.name)
    return None


def describe_layer(module: nn.Module, schemes: list[Any] | None = None) -> Int8Description | None:
    """What one module is, if it is a quantized layer; ``None`` for anything else."""
    if schemes is None:
        schemes = _our_schemes()
    mine = _ours(schemes, module)
    if mine is not None:
        return mine
    if _from(module, "bitsandbytes"):
        return _bitsandbytes_layer(module)
    if _from(module, "optimum") and hasattr(module, "weight_qtype"):
        return _quanto_layer(module)
    weight = getattr(module, "weight", None)
    if weight is not None and _from(weight, "torchao"):
        return _torchao_weight(weight)
    if "QuantLinear" in type(module).__name__ or _from(module, "gptqmodel", "auto_gptq", "awq"):
        return _gptq_layer(module)
    if getattr(module, "quantization_scheme", None) is not None:
        return _compressed_tensors_layer(module)
    return _custom_layer(module)


def _our_schemes() -> list[Any]:
    from ...schemes import REGISTRY, get_scheme

    return [get_scheme(name) for name in REGISTRY]


# -- the whole model ---------------------------------------------------------------------


def _float_linear_count(model: nn.Module) -> int:
    from ...layers import is_float_layer, linear_like_layers

    return sum(1 for m in linear_like_layers(model).values() if is_float_layer(m))


def _float_expert_banks(model: nn.Module) -> int:
    """Expert banks (3-D float parameters of MoE layers) the model still holds in float:
    no library that quantizes ``nn.Linear`` layers touches them."""
    from ...weight_kinds import expert_bank_names, expert_layers

    return sum(len(expert_bank_names(m)) for m in expert_layers(model).values())


def describe_int8(model: nn.Module) -> Int8Description:
    """Label ``model`` by the quantized layers it holds (the most common kind wins; the
    others are named in ``method``), with ``quant_method`` from its transformers config.

    A model with no quantized layer is ``library="none"``; if its config still declares a
    ``quantization_config``, ``method`` says so (a checkpoint dequantized on load).
    """
    schemes = _our_schemes()
    found: dict[str, Int8Description] = {}
    counts: Counter[str] = Counter()
    prefixes: list[str] = []  # inside a quantized layer, sub-modules are its own business
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in prefixes):
            continue
        desc = describe_layer(module, schemes)
        if desc is not None:
            found.setdefault(desc.label, desc)
            counts[desc.label] += 1
            prefixes.append(name + ".")
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    method = quant_method(as_plain_dict(config)) if config is not None else None
    floats = _float_linear_count(model)
    if not counts:
        if method is None:
            return NOT_QUANTIZED
        declared = describe_quant_config(config)
        return Int8Description(
            "not quantized",
            None,
            f"config declares {declared.label} but every linear layer holds a float weight",
            "none",
            quant_method=method,
            layers=0,
        )
    (top, n), *others = counts.most_common()
    main = found[top]
    extra = "".join(f"; also {k} ({v} layers)" for k, v in others)
    kept = f"; {floats} linear layers still float" if floats else ""
    banks = _float_expert_banks(model)
    kept += f"; {banks} expert banks still float (experts not quantized)" if banks else ""
    return Int8Description(
        main.label,
        main.bits,
        main.method + extra + kept,
        main.library,
        scheme=main.scheme,
        quant_method=method,
        layers=sum(counts.values()),
    )


# -- a checkpoint directory ---------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LlmqUsageError(
            f"{path} is unreadable ({exc}); fix or re-save the checkpoint"
        ) from None
    if not isinstance(data, dict):
        raise LlmqUsageError(f"{path} is not a JSON object; fix or re-save the checkpoint")
    return data


def _describe_recipe(directory: Path) -> Int8Description:
    from ...schemes.base import QuantScheme

    recipe = QuantScheme.read_recipe(directory)
    name = str(recipe["scheme"])
    config = recipe.get("config") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(config.items())) or "defaults"
    return Int8Description(
        name,
        8,
        f"pytest-llmquant {name} checkpoint (recipe v{recipe.get('scheme_version', 1)}, {shown})",
        "llmq",
        scheme=name,
    )


def describe_checkpoint(path: str | Path) -> Int8Description:
    """Label a saved model from its JSON files alone (no weights are read, no torch).

    Ours: ``llmq-recipe.json``; quanto's own save: ``quanto_qmap.json``; a transformers
    checkpoint: ``config.json``'s ``quantization_config``. Anything else is
    ``library="none"`` (a float checkpoint).
    """
    from ...schemes.base import RECIPE_FILE

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise LlmqUsageError(
            f"{path}: no such directory; pass a directory saved by a pytest-llmquant scheme "
            "or a transformers quantized checkpoint"
        )
    if (directory / RECIPE_FILE).exists():
        return _describe_recipe(directory)
    if (directory / QUANTO_MAP_FILE).exists():
        qmap = _read_json(directory / QUANTO_MAP_FILE)
        weights = {str((v or {}).get("weights")) for v in qmap.values() if isinstance(v, dict)}
        qtype = sorted(weights)[0] if weights else "qint8"
        desc = describe_quant_config({"quant_method": "quanto", "weights": qtype.removeprefix("q")})
        return Int8Description(
            desc.label, desc.bits, "optimum-quanto safetensors + quantization map", "quanto"
        )
    config_file = directory / "config.json"
    config = _read_json(config_file) if config_file.exists() else {}
    quant = config.get("quantization_config")
    if not quant:
        return NOT_QUANTIZED
    return describe_quant_config(quant)
