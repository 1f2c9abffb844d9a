"""What each weight of a model is: the kinds coverage and memory messages count bytes by.

Why by kind and by bytes, not by module: in transformers 5 a mixture-of-experts layer
keeps its experts as 3-D parameters (``MixtralExperts.gate_up_proj`` is (experts,
2·intermediate, hidden)), not as ``nn.Linear`` layers. Counting only linear layers said
"9 of 9" for a Mixtral whose experts (most of its weights) had stayed float. Counting
every weight-bearing parameter by kind says what share of the bytes is quantized and
names what is not.

The kinds (:data:`KINDS`):

- ``linear``: ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), except the output head;
- ``experts``: a module holding a floating parameter of 3 or more dimensions (an *expert
  bank*: one such parameter; an *expert layer*: the module holding them);
- ``embeddings``: ``nn.Embedding`` and other ``*Embedding`` modules;
- ``lm_head``: the model's output embeddings (``get_output_embeddings()``);
- ``norms``: modules whose class name has ``Norm``;
- ``other``: every other parameter (MoE routers, positional tables, scalars).

Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

LINEAR = "linear"
EXPERTS = "experts"
EMBEDDINGS = "embeddings"
LM_HEAD = "lm_head"
NORMS = "norms"
OTHER = "other"
KINDS: tuple[str, ...] = (LINEAR, EXPERTS, EMBEDDINGS, LM_HEAD, NORMS, OTHER)
#: the kinds an INT8 model is expected to quantize unless its maker says otherwise
#: (embeddings are gathered, not multiplied, and norms are a few vectors: both stay float)
QUANTIZABLE: tuple[str, ...] = (LINEAR, LM_HEAD, EXPERTS)


def _bank_params(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [
        (n, p)
        for n, p in module.named_parameters(recurse=False)
        if p.dim() >= 3 and p.dtype.is_floating_point
    ]


def expert_bank_names(module: nn.Module) -> list[str]:
    """The names of ``module``'s own float parameters of 3 or more dimensions."""
    return [n for n, _ in _bank_params(module)]


def is_expert_layer(module: nn.Module) -> bool:
    """Whether ``module`` itself holds an expert bank (a float >=3-D parameter)."""
    return bool(_bank_params(module))


def expert_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` holding an expert bank, by name."""
    return {name: m for name, m in model.named_modules() if name and is_expert_layer(m)}


def lm_head_name(model: nn.Module) -> str | None:
    """The module name of ``model``'s output head, when it has one."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return None
    return next((name for name, m in model.named_modules() if m is head), None)


def kind_of(name: str, module: nn.Module, head: str | None) -> str:
    """The kind of ``module``'s own parameters (``head``: the output head's name)."""
    from .layers import is_linear_like

    if head is not None and name == head:
        return LM_HEAD
    if is_expert_layer(module):
        return EXPERTS
    if is_linear_like(module):
        return LINEAR
    class_name = type(module).__name__
    if "Embedding" in class_name:
        return EMBEDDINGS
    if "Norm" in class_name:
        return NORMS
    return OTHER


@dataclass(frozen=True)
class Weight:
    """One parameter of a model: where it is, its kind and its bytes."""

    module: str
    param: str
    kind: str
    nbytes: int


def weights_by_kind(model: nn.Module) -> list[Weight]:
    """Every parameter of ``model``, counted once per storage (a tied ``lm_head`` counts
    under the module met first, the input embeddings), with its kind."""
    head = lm_head_name(model)
    seen: set[tuple[str, int]] = set()
    out: list[Weight] = []
    for name, module in model.named_modules():
        kind = kind_of(name, module, head)
        for pname, p in module.named_parameters(recurse=False):
            key = (p.device.type, p.data_ptr()) if p.data_ptr() else ("id", id(p))
            if key in seen:
                continue
            seen.add(key)
            out.append(Weight(name, pname, kind, p.numel() * p.element_size()))
    return out
