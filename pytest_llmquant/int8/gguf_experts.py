"""The GGUF route's expert banks: a mixture-of-experts layer of a GGUF file put into the
INT8 model, its ``Q8_0`` blocks unchanged.

Why a module of its own: llama.cpp stores each MoE layer's experts as three stacked 3-D
tensors (``blk.N.ffn_gate_exps``, ``ffn_up_exps``: (experts, intermediate, hidden);
``ffn_down_exps``: (experts, hidden, intermediate)), blocks of 32 along the last
dimension, while transformers 5 holds them as ``gate_up_proj`` (experts, 2·intermediate,
hidden) and ``down_proj`` in one expert module per layer. No name table maps one onto the
other (transformers' own loader merges them per architecture, in float), so this module
does it for every architecture whose experts :class:`Int8Experts` knows: gate and up are
stacked along the rows, which keeps each row's blocks and scales whole, so the file's
numbers are what the INT8 model computes with. A bank held in a float type stays float
(put into the model's own bank parameters), and coverage says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from ..formats.gguf.q8_0 import INT8_TYPE, Q8_0_BLOCK, q8_0_blocks

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..formats.gguf.header import GGUFTensor

#: a stacked expert tensor of layer ``layer``
EXPERT_TENSOR = re.compile(r"blk\.(?P<layer>\d+)\.ffn_(?P<part>gate|up|down)_exps\.weight")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
PARTS = ("gate", "up", "down")


def _option(path: str | Path) -> str:
    return f"--llmq-int8-model={path}"


@dataclass
class ExpertTensors:
    """The stacked expert tensors of a GGUF, by layer index and part (gate, up, down)."""

    by_layer: dict[int, dict[str, GGUFTensor]] = field(default_factory=dict)

    def take(self, tensor: GGUFTensor) -> bool:
        """Keep ``tensor`` if it is a stacked expert tensor; whether it was."""
        match = EXPERT_TENSOR.fullmatch(tensor.name)
        if match is None:
            return False
        self.by_layer.setdefault(int(match["layer"]), {})[match["part"]] = tensor
        return True


def expert_modules(model: nn.Module) -> dict[int, str]:
    """Layer index -> name of the module holding that layer's expert banks."""
    from ..weight_kinds import expert_layers

    out: dict[int, str] = {}
    for name in expert_layers(model):
        match = _LAYER.search(f".{name}.")
        if match is not None:
            out[int(match[1])] = name
    return out


def _float_bank(tensor: GGUFTensor, path: str | Path) -> torch.Tensor:
    import numpy as np
    import torch
    from gguf.quants import dequantize

    if tensor.data is None:
        raise LlmqUsageError(
            f"{_option(path)}: tensor {tensor.name} has type {tensor.type_name}, which gguf "
            "cannot read"
        )
    values = dequantize(tensor.data, tensor.qtype)
    return torch.from_numpy(np.array(values, dtype=np.float32))


def _check_bank(parts: dict[str, GGUFTensor], module: nn.Module, name: str, path: str) -> None:
    """The three tensors are there and have the FP32 model's expert shapes."""
    from ..schemes.weight_only_experts import expert_matrices

    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise LlmqUsageError(
            f"{_option(path)} has no ffn_{missing[0]}_exps tensor for the experts of {name}; "
            "pass the GGUF of --llmq-model, converted by llama.cpp's convert_hf_to_gguf"
        )
    gate_up, down = expert_matrices(name, module)
    experts, double, hidden = gate_up.shape
    want = {
        "gate": (experts, double // 2, hidden),
        "up": (experts, double // 2, hidden),
        "down": tuple(down.shape),
    }
    for part, tensor in parts.items():
        if tuple(tensor.shape) != want[part]:
            raise LlmqUsageError(
                f"{_option(path)}: tensor {tensor.name} has shape {tuple(tensor.shape)} but the "
                f"FP32 model's experts at {name} need {want[part]}; pass the GGUF of "
                "--llmq-model"
            )


def _int8_bank(parts: dict[str, GGUFTensor], module: nn.Module, name: str, path: str) -> nn.Module:
    import torch

    from ..schemes.weight_only_experts import Int8Experts

    (gq, gs), (uq, us) = q8_0_blocks(parts["gate"], path), q8_0_blocks(parts["up"], path)
    dq, ds = q8_0_blocks(parts["down"], path)
    tensors = {
        "gate_up_int8": torch.cat([gq, uq], dim=1),
        "gate_up_scales": torch.cat([gs, us], dim=1),
        "down_int8": dq,
        "down_scales": ds,
    }
    return Int8Experts.from_saved(name, tensors, Q8_0_BLOCK, module)


def _float_params(
    parts: dict[str, GGUFTensor], module: nn.Module, name: str, path: str
) -> dict[str, torch.Tensor]:
    import torch

    gate, up = _float_bank(parts["gate"], path), _float_bank(parts["up"], path)
    own = {n for n, _ in module.named_parameters(recurse=False)}
    out = {f"{name}.down_proj": _float_bank(parts["down"], path)}
    if "gate_up_proj" in own:
        out[f"{name}.gate_up_proj"] = torch.cat([gate, up], dim=1)
    else:
        out[f"{name}.gate_proj"], out[f"{name}.up_proj"] = gate, up
    return out


def load_experts(
    found: ExpertTensors, model: nn.Module, path: str | Path
) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """``(int8 expert layers by module name, float bank parameters by name)`` for every
    expert layer of ``model`` (a meta skeleton): a layer whose three tensors are all
    ``Q8_0`` becomes an :class:`Int8Experts` holding their blocks, any other stays float.
    One line for a file whose experts do not match the model's."""
    modules = expert_modules(model)
    extra = sorted(set(found.by_layer) - set(modules))
    if extra:
        raise LlmqUsageError(
            f"{_option(path)} has expert tensors for layer {extra[0]}, where the FP32 model has "
            "no mixture-of-experts layer; pass the GGUF of --llmq-model"
        )
    int8: dict[str, nn.Module] = {}
    floats: dict[str, torch.Tensor] = {}
    for layer, name in modules.items():
        parts = found.by_layer.get(layer, {})
        module = model.get_submodule(name)
        _check_bank(parts, module, name, str(path))
        if all(parts[p].type_name == INT8_TYPE for p in PARTS):
            int8[name] = _int8_bank(parts, module, name, str(path))
        else:
            floats.update(_float_params(parts, module, name, str(path)))
    return int8, floats
