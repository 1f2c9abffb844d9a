"""Read a transformers ``quantization_config`` (a dict from config.json, or the config
object of a loaded model) into an :class:`Int8Description`, without torch.

Why a separate reader: a checkpoint must be labelled before it is loaded (test ids, and
the one-line errors when loading fails for want of a kernel), and a loaded model whose
layers we cannot read (a GPTQ ``QuantLinear`` of some kernel package) still carries the
same config. Unknown methods keep their own name and whatever ``bits`` they declare.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .description import Int8Description

#: old torchao ``quant_type`` strings (transformers < 4.50 era) and their config names
_TORCHAO_OLD_NAMES = {
    "int8_weight_only": "Int8WeightOnly",
    "int8_dynamic_activation_int8_weight": "Int8DynamicActivationInt8Weight",
    "int4_weight_only": "Int4WeightOnly",
    "int8_dynamic_activation_int4_weight": "Int8DynamicActivationInt4Weight",
    "float8_weight_only": "Float8WeightOnly",
    "float8_dynamic_activation_float8_weight": "Float8DynamicActivationFloat8Weight",
}


def as_plain_dict(config: Any) -> dict[str, Any]:
    """A ``quantization_config`` as a plain dict, whatever form transformers keeps it in."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        try:
            out = to_dict()
        except Exception:  # a config whose to_dict needs its library: read its attributes
            out = None
        if isinstance(out, Mapping):
            return dict(out)
    return {k: v for k, v in vars(config).items() if not k.startswith("__")}


def _text(value: Any) -> str:
    """An enum member (transformers' ``QuantizationMethod``) or a string, as its value."""
    return str(getattr(value, "value", value))


def quant_method(config: Mapping[str, Any]) -> str | None:
    method = config.get("quant_method")
    return _text(method).lower() if method is not None else None


def _bits_of_name(name: str) -> int | None:
    """Weight bits from a torchao config name: the number before "Weight"
    (Int8DynamicActivationInt4Weight -> 4), else the first number (Float8... -> 8)."""
    weight = re.findall(r"(\d+)_?[Ww]eight", name)
    if weight:
        return int(weight[-1])
    first = re.search(r"(\d+)", name)
    return int(first.group(1)) if first else None


def _torchao_names(quant_type: Any) -> list[str]:
    if isinstance(quant_type, str):
        return [_TORCHAO_OLD_NAMES.get(quant_type, quant_type)]
    if isinstance(quant_type, Mapping):
        if "_type" in quant_type:
            return [str(quant_type["_type"])]
        names: list[str] = []
        for key in sorted(quant_type, key=lambda k: k != "default"):  # "default" first
            names += _torchao_names(quant_type[key])
        return names
    if quant_type is not None:  # an AOBaseConfig object
        return [type(quant_type).__name__]
    return []


def torchao_label(config_name: str) -> str:
    """``Int8WeightOnlyConfig`` -> ``torchao Int8WeightOnly`` (the name users type)."""
    name = config_name[: -len("Config")] if config_name.endswith("Config") else config_name
    return f"torchao {name}"


def torchao_method(config_name: str) -> str:
    activations = (
        "activations quantized at run time"
        if "DynamicActivation" in config_name or "StaticActivation" in config_name
        else "float activations"
    )
    return f"torchao tensor-subclass weights ({config_name}), {activations}"


def _torchao(config: Mapping[str, Any]) -> Int8Description:
    names = list(dict.fromkeys(n for n in _torchao_names(config.get("quant_type")) if n))
    if not names:
        return Int8Description(
            "torchao", None, "torchao (no quant_type)", "torchao", None, "torchao"
        )
    label = " + ".join(torchao_label(n) for n in names)
    bits = {b for b in map(_bits_of_name, names) if b is not None}
    return Int8Description(
        label,
        min(bits) if bits else None,
        torchao_method(names[0]),
        "torchao",
        quant_method="torchao",
    )


def _flag(config: Mapping[str, Any], name: str) -> bool:
    return bool(config.get(name) or config.get("_" + name))


def _bitsandbytes(config: Mapping[str, Any]) -> Int8Description:
    if _flag(config, "load_in_4bit"):
        kind = _text(config.get("bnb_4bit_quant_type", "fp4"))
        return Int8Description(
            f"bitsandbytes 4-bit {kind}",
            4,
            f"bitsandbytes Linear4bit: {kind} weights in blocks, float compute",
            "bitsandbytes",
            quant_method="bitsandbytes",
        )
    return Int8Description(
        "bitsandbytes LLM.int8",
        8,
        "bitsandbytes Linear8bitLt: int8 weights per row, int8 matmul with fp16 outlier columns",
        "bitsandbytes",
        quant_method="bitsandbytes",
    )


def _compressed_tensors(config: Mapping[str, Any]) -> Int8Description:
    groups = config.get("config_groups") or {}
    weight_bits: set[int] = set()
    act_bits: set[int] = set()
    kinds: set[str] = set()
    for group in groups.values() if isinstance(groups, Mapping) else []:
        weights = (group or {}).get("weights") or {}
        if weights.get("num_bits") is not None:
            weight_bits.add(int(weights["num_bits"]))
            kinds.add(str(weights.get("type", "int")))
        acts = (group or {}).get("input_activations") or {}
        act_bits.add(int(acts["num_bits"]) if acts.get("num_bits") is not None else 16)
    fmt = _text(config.get("format", "unknown format"))
    bits = min(weight_bits) if weight_bits else None
    label = "compressed-tensors"
    if bits is not None:
        kind = "FP" if kinds == {"float"} else ""
        label += f" {kind}W{bits}A{min(act_bits) if act_bits else 16}"
    return Int8Description(
        label,
        bits,
        f"compressed-tensors checkpoint ({fmt}); its INT8 runtime is vLLM, transformers "
        "may dequantize it on load",
        "compressed-tensors",
        quant_method="compressed-tensors",
    )


def _quanto(config: Mapping[str, Any]) -> Int8Description:
    weights = _text(config.get("weights", "int8"))
    bits = _bits_of_name(weights)
    return Int8Description(
        f"quanto q{weights}",
        bits,
        f"optimum-quanto QLinear, {weights} weights",
        "quanto",
        quant_method="quanto",
    )


def describe_quant_config(config: Any) -> Int8Description:
    """An :class:`Int8Description` from a ``quantization_config`` (dict or config object)."""
    plain = as_plain_dict(config)
    method = quant_method(plain) or "unknown"
    if method == "torchao":
        return _torchao(plain)
    if method == "bitsandbytes":
        return _bitsandbytes(plain)
    if method == "compressed-tensors":
        return _compressed_tensors(plain)
    if method == "quanto":
        return _quanto(plain)
    bits = plain.get("bits", plain.get("w_bit", plain.get("num_bits")))
    bits = int(bits) if isinstance(bits, (int, float, str)) and str(bits).isdigit() else None
    library = method if method in ("gptq", "awq") else "transformers"
    label = f"{method} {bits}-bit" if bits is not None else method
    return Int8Description(
        label,
        bits,
        f"transformers quant_method {method!r}"
        + (f", {bits}-bit weights" if bits is not None else ", weight bits not declared"),
        library,
        quant_method=method,
    )
