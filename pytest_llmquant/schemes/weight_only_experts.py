"""The expert layers of ``weight-only-int8``: a mixture-of-experts bank in Q8_0 blocks.

Why a layer of its own: in transformers 5 an MoE layer keeps its experts as two 3-D
parameters (``MixtralExperts``: ``gate_up_proj`` (experts, 2·intermediate, hidden) and
``down_proj`` (experts, hidden, intermediate)) and its ``forward(hidden_states,
top_k_index, top_k_weights)`` loops over the experts the router hit. No ``nn.Linear`` is
involved, so quantizing linear layers alone leaves most of an MoE model's bytes float.

:class:`Int8Experts` holds each expert's two matrices as :class:`WeightOnlyInt8Linear`
layers (the same Q8_0 blocks and packed layout as the dense layers, the same C kernel):
decode runs only the hit experts, each through one kernel call for both halves of
``gate_up`` and one for ``down``; a prompt's tokens per expert above
``KERNEL_MAX_TOKENS`` go a slab at a time, as a dense layer's do. The router and the
top-k choice are not touched: they stay float and exact, in the model's MoE block.

Only the API above is known (and its variant with separate 3-D ``gate_proj`` and
``up_proj``): a class that differs (transposed or biased banks, its own gating, another
forward) is refused in one line naming it (:func:`expert_matrices`), never skipped.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
from torch import nn

from ..errors import LlmqUnsupportedLayerError
from .weight_only_linear import WeightOnlyInt8Linear, quantize_weight

#: the forward every known expert layer has (names after ``self``)
FORWARD = ("hidden_states", "top_k_index", "top_k_weights")
#: the parameter sets of the known layouts: fused gate_up, or gate and up apart
LAYOUTS = ({"gate_up_proj", "down_proj"}, {"gate_proj", "up_proj", "down_proj"})
#: transformers' ``use_experts_implementation`` flags, at the values the loop above means
FLAGS = {
    "is_transposed": False,
    "has_bias": False,
    "has_gate": True,
    "is_concatenated": True,
    "has_post_expert_norm": False,
}


def _mismatch(module: nn.Module) -> str | None:
    """What in ``module`` differs from the known expert API, or None."""
    try:
        params = list(inspect.signature(type(module).forward).parameters)[1:]
    except (TypeError, ValueError):
        params = []
    if tuple(params) != FORWARD:
        return f"its forward takes ({', '.join(params)}), not ({', '.join(FORWARD)})"
    for flag, want in FLAGS.items():
        if getattr(module, flag, want) != want:
            return f"it sets {flag}={getattr(module, flag)!r}"
    gate = getattr(type(module), "_apply_gate", None)
    if gate is not None and getattr(gate, "__name__", "") != "_default_apply_gate":
        return "it has its own _apply_gate"
    if not callable(getattr(module, "act_fn", None)):
        return "it has no act_fn"
    names = {n for n, _ in module.named_parameters(recurse=False)}
    if names not in LAYOUTS or list(module.buffers(recurse=False)):
        return f"it holds {', '.join(sorted(names)) or 'no parameters'}"
    if any(list(m.parameters()) for m in module.children()):
        return "a module inside it holds weights"
    return None


def _shapes_mismatch(gate_up: torch.Tensor, down: torch.Tensor) -> str | None:
    if gate_up.dim() != 3 or down.dim() != 3:
        return "its banks are not 3-D"
    experts, double, hidden = gate_up.shape
    if double % 2 or tuple(down.shape) != (experts, hidden, double // 2):
        return (
            f"gate_up {tuple(gate_up.shape)} and down_proj {tuple(down.shape)} are not "
            "(experts, 2*intermediate, hidden) and (experts, hidden, intermediate)"
        )
    return None


def expert_matrices(name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate_up, down)``, (experts, 2I, H) and (experts, H, I), of the expert layer
    ``name``; :class:`LlmqUnsupportedLayerError` where its class is not one we know."""
    why = _mismatch(module)
    gate_up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    if why is None:
        params = dict(module.named_parameters(recurse=False))
        if "gate_up_proj" in params:
            gate_up = params["gate_up_proj"]
        else:  # gate and up apart: stacked as the fused layout's two halves
            gate_up = torch.cat([params["gate_proj"], params["up_proj"]], dim=1)
        down = params["down_proj"]
        why = _shapes_mismatch(gate_up, down)
    if why is not None or gate_up is None or down is None:
        raise LlmqUnsupportedLayerError(
            f"weight-only-int8 cannot quantize the expert layer {name} "
            f"({type(module).__name__}): {why}; it knows gate_up_proj (or gate_proj and "
            "up_proj) and down_proj as 3-D banks, an act_fn and forward(hidden_states, "
            "top_k_index, top_k_weights). Quantize this model in a pytest_llmq_quantize "
            "hook, or use --llmq-scheme=dynamic-int8, which leaves experts float and says so"
        )
    return gate_up.detach(), down.detach()


def _layers(q: torch.Tensor, scales: torch.Tensor, group: int | None) -> list[WeightOnlyInt8Linear]:
    return [WeightOnlyInt8Linear(q[e], scales[e], None, group) for e in range(q.shape[0])]


def _quantized(bank: torch.Tensor, group: int | None) -> list[WeightOnlyInt8Linear]:
    out = []
    for e in range(bank.shape[0]):
        q, scales = quantize_weight(bank[e].to(torch.float32), group)
        out.append(WeightOnlyInt8Linear(q, scales, None, group))
    return out


class Int8Experts(nn.Module):
    """An expert layer whose matrices are int8 (one ``gate_up`` and one ``down``
    :class:`WeightOnlyInt8Linear` per expert); computes what the float layer's loop does.

    Like the dense layer it has no float weight attribute (no ``gate_up_proj``), so
    nothing can fall back to float unnoticed and coverage counts its banks as quantized.
    """

    def __init__(
        self,
        gate_up: list[WeightOnlyInt8Linear],
        down: list[WeightOnlyInt8Linear],
        act_fn: Any,
        group_size: int | None,
    ) -> None:
        super().__init__()
        self.num_experts = len(gate_up)
        self.gate_up = nn.ModuleList(gate_up)
        self.down = nn.ModuleList(down)
        self.act_fn = act_fn
        self.group_size = group_size
        self.hidden_dim, self.intermediate_dim = down[0].out_features, down[0].in_features

    @classmethod
    def from_experts(cls, name: str, module: nn.Module, group_size: int | None) -> Int8Experts:
        """The float expert layer ``module`` (named ``name``) quantized, or refused."""
        gate_up, down = expert_matrices(name, module)
        return cls(
            _quantized(gate_up, group_size), _quantized(down, group_size), module.act_fn, group_size
        )

    @classmethod
    def from_saved(
        cls,
        name: str,
        tensors: dict[str, torch.Tensor],
        group_size: int | None,
        empty: nn.Module,
    ) -> Int8Experts:
        """Layer ``name`` as :meth:`int8_state` saved it; ``empty`` (the float layer the
        config builds at its place) gives the activation, and is checked as at quantize
        time (another transformers version may have changed the class)."""
        expert_matrices(name, empty)
        gate_up = _layers(tensors["gate_up_int8"], tensors["gate_up_scales"], group_size)
        down = _layers(tensors["down_int8"], tensors["down_scales"], group_size)
        return cls(gate_up, down, empty.act_fn, group_size)

    def int8_state(self) -> dict[str, torch.Tensor]:
        """Each bank as row-major int8 (experts, rows, cols) and float32 scales (experts,
        rows, groups): the file layout, which outlives the kernel's packed one."""
        out = {}
        for part, layers in (("gate_up", self.gate_up), ("down", self.down)):
            states = [cast(WeightOnlyInt8Linear, layer).int8_state() for layer in layers]
            out[f"{part}_int8"] = torch.stack([q for q, _ in states])
            out[f"{part}_scales"] = torch.stack([s for _, s in states])
        return out

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            mask = mask.permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        for e in hit:
            if e == self.num_experts:  # the slot transformers uses for "no expert"
                continue
            position, token = torch.where(mask[e])
            gate, up = self.gate_up[e](hidden_states[token]).chunk(2, dim=-1)
            out = self.down[e](self.act_fn(gate) * up)
            out = out * top_k_weights[token, position, None]
            final.index_add_(0, token, out.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, hidden={self.hidden_dim}, "
            f"intermediate={self.intermediate_dim}, group_size={self.group_size}"
        )
