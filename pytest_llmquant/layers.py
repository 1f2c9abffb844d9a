"""Finding the layers INT8 schemes act on, and counting what was quantized.

GPT-2 style models use ``transformers.pytorch_utils.Conv1D`` (weight stored as
(in, out), ``y = x @ W + b``) instead of ``nn.Linear``. ``quantize_dynamic``
and most INT8 libraries skip it silently, so the torch.ao dynamic recipe
(``quantize_dynamic(model, {nn.Linear}, qint8)``) quantizes only ``lm_head`` of
GPT-2. Every scheme here goes through :func:`conv1d_to_linear` first, and
coverage is counted against the FP32 model's linear-like layers, its expert banks
(mixture-of-experts layers keep their experts as 3-D parameters, not ``nn.Linear``) and
its weight bytes by kind (:mod:`.weight_kinds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .weight_kinds import (
    EXPERTS,
    KINDS,
    LINEAR,
    LM_HEAD,
    QUANTIZABLE,
    expert_bank_names,
    expert_layers,
    lm_head_name,
    weights_by_kind,
)

if TYPE_CHECKING:
    from torch import nn


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return None
    return Conv1D


#: ``nn.Linear`` subclasses of transformers models that compute exactly ``x @ W.T + b``:
#: Falcon's ``FalconLinear`` only adds the bias after the product. They are linear layers
#: (quantized by every scheme, converted to ``nn.Linear`` first as ``Conv1D`` is); other
#: subclasses (routers returning tuples, grouped or quantized layers) are not.
PLAIN_LINEAR_SUBCLASSES: tuple[str, ...] = (
    "transformers.models.falcon.modeling_falcon.FalconLinear",
)


def _is_plain_subclass(module: nn.Module) -> bool:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}" in PLAIN_LINEAR_SUBCLASSES


def is_linear_like(module: nn.Module) -> bool:
    """A float ``nn.Linear``, transformers ``Conv1D`` or one of
    :data:`PLAIN_LINEAR_SUBCLASSES` (exact types, not quantized subclasses)."""
    from torch import nn

    conv1d = _conv1d_type()
    if type(module) is nn.Linear or _is_plain_subclass(module):
        return True
    return conv1d is not None and type(module) is conv1d


def linear_like_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and is_linear_like(m)}


def conv1d_to_linear(module: Any) -> nn.Module:
    """An ``nn.Linear`` that computes exactly what the ``Conv1D`` computes."""
    import torch
    from torch import nn

    weight = module.weight  # (in, out)
    in_features, out_features = weight.shape
    linear = nn.Linear(
        in_features,
        out_features,
        bias=module.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(weight.t().contiguous())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _plain_linear(module: Any) -> nn.Module:
    """An ``nn.Linear`` holding the very parameters of a :data:`PLAIN_LINEAR_SUBCLASSES` layer."""
    from torch import nn

    linear = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
    linear.weight = module.weight
    linear.bias = module.bias
    return linear


def convert_conv1d(model: nn.Module) -> int:
    """Replace every ``Conv1D`` (and :data:`PLAIN_LINEAR_SUBCLASSES` layer) of ``model`` in
    place by an equivalent ``nn.Linear``, so that every scheme sees plain linear layers."""
    conv1d = _conv1d_type()
    names = []
    for name, m in model.named_modules():
        if conv1d is not None and type(m) is conv1d:
            names.append((name, conv1d_to_linear))
        elif _is_plain_subclass(m):
            names.append((name, _plain_linear))
    for name, convert in names:
        set_submodule(model, name, convert(model.get_submodule(name)))
    return len(names)


def _mb(nbytes: int) -> str:
    """A kind's size in the summary: tiny kinds (norms) by name only."""
    return f" {nbytes / 1e6:.1f} MB" if nbytes >= 50_000 else ""


def _names(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass
class Coverage:
    """What the INT8 model quantized of the reference's weights, by layer and by bytes.

    ``quantized``/``kept_float``: the reference's linear-like layers (``lm_head``
    included), quantized or still float in the INT8 model. ``experts_quantized``/
    ``experts_float``: its expert banks (``<layer>.gate_up_proj``...), and
    ``expert_layers`` the modules holding them. ``bytes_quantized``/``bytes_float``: the
    reference's parameter bytes by kind (:data:`~pytest_llmquant.weight_kinds.KINDS`),
    each storage once. ``expected``: the kinds whoever made the INT8 model claims to
    quantize (the suite's ``coverage`` check fails when one stays float); ``notes``: why a
    kind stays float by design (``dynamic-int8`` has no 3-D path for experts).
    """

    quantized: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    experts_quantized: list[str] = field(default_factory=list)
    experts_float: list[str] = field(default_factory=list)
    expert_layers: int = 0
    bytes_quantized: dict[str, int] = field(default_factory=dict)
    bytes_float: dict[str, int] = field(default_factory=dict)
    expected: tuple[str, ...] = QUANTIZABLE
    notes: dict[str, str] = field(default_factory=dict)
    #: the module name of the output head, which counts as kind ``lm_head``
    head: str | None = "lm_head"

    @property
    def total(self) -> int:
        return len(self.quantized) + len(self.kept_float)

    @property
    def quantized_fraction(self) -> float | None:
        """Share of the reference's weight bytes the INT8 model holds quantized (None: not
        counted, e.g. a coverage read back from an old report)."""
        done, left = sum(self.bytes_quantized.values()), sum(self.bytes_float.values())
        return done / (done + left) if done + left else None

    def problems(self) -> list[str]:
        """One phrase per kind in ``expected`` that stayed float, in the order of KINDS."""
        out = []
        linear = [n for n in self.kept_float if n != self.head]
        if LINEAR in self.expected and linear:
            out.append(
                f"{len(linear)} of {self.total} linear layers stayed float ({_names(linear)})"
            )
        if LM_HEAD in self.expected and self.head in self.kept_float:
            out.append(f"{self.head} stayed float")
        banks = self.experts_float
        if EXPERTS in self.expected and banks:
            n = len(banks) + len(self.experts_quantized)
            out.append(f"{len(banks)} of {n} expert banks stayed float ({_names(banks)})")
        return out

    @property
    def complete(self) -> bool:
        return self.total > 0 and not self.problems()

    def __str__(self) -> str:
        layers = f"{len(self.quantized)} of {self.total} linear layers"
        if self.kept_float:
            layers += f" (FP32: {_names(self.kept_float, 5)})"
        fraction = self.quantized_fraction
        if fraction is None:  # no byte counts: the layer count alone, as reports before them
            return f"quantized {layers}"
        parts = [layers]
        banks = len(self.experts_quantized) + len(self.experts_float)
        if banks:
            parts.append(
                f"{len(self.experts_quantized)} of {banks} expert banks "
                f"({self.expert_layers} layers)"
            )
        text = f"quantized {100 * fraction:.1f}% of weight bytes: " + ", ".join(parts)
        floats = [f"{k}{_mb(self.bytes_float[k])}" for k in KINDS if self.bytes_float.get(k)]
        if floats:
            text += "; float: " + ", ".join(floats)
        for kind, why in self.notes.items():
            if self.bytes_float.get(kind):
                text += f" ({kind} stay float: {why})"
        return text

    def as_dict(self) -> dict[str, object]:
        fraction = self.quantized_fraction
        return {
            "quantized": len(self.quantized),
            "total": self.total,
            "kept_float": list(self.kept_float),
            "quantized_layers": list(self.quantized),
            "quantized_fraction": None if fraction is None else round(fraction, 6),
            "expert_banks": {
                "quantized": list(self.experts_quantized),
                "float": list(self.experts_float),
                "layers": self.expert_layers,
            },
            "weight_bytes": {"quantized": self.bytes_quantized, "float": self.bytes_float},
            "expected": list(self.expected),
            "notes": dict(self.notes),
            "head": self.head,
            "summary": str(self),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Coverage:
        """The coverage :meth:`as_dict` wrote (older reports: the layer lists alone)."""
        banks = data.get("expert_banks") or {}
        weight_bytes = data.get("weight_bytes") or {}
        return cls(
            list(data.get("quantized_layers", [])),
            list(data.get("kept_float", [])),
            list(banks.get("quantized", [])),
            list(banks.get("float", [])),
            int(banks.get("layers", 0)),
            dict(weight_bytes.get("quantized", {})),
            dict(weight_bytes.get("float", {})),
            tuple(data.get("expected", QUANTIZABLE)),
            dict(data.get("notes", {})),
            data.get("head", "lm_head"),
        )


def is_float_layer(module: nn.Module) -> bool:
    """Linear-like and still holding a plain float weight (torchao keeps ``nn.Linear`` but
    swaps the weight for a quantized tensor subclass, which counts as quantized)."""
    import torch

    if not is_linear_like(module):
        return False
    weight = getattr(module, "weight", None)
    return (
        weight is not None and type(weight.data) is torch.Tensor and weight.dtype.is_floating_point
    )


def _holds_quantized(module: nn.Module) -> bool:
    """Whether ``module`` or a module inside it holds int8 tensors or a quantized tensor
    subclass (our expert layers, a library's wrapper)."""
    from .sides.torch_weights import is_float_module

    return any(not is_float_module(m) for m in module.modules())


def is_float_bank(module: nn.Module | None, bank: str) -> bool:
    """Whether the INT8 model's ``module`` still holds expert bank ``bank`` in float: a
    plain float tensor of 3+ dimensions under that name, or no quantized tensor at all."""
    import torch

    if module is None:
        return True
    t = getattr(module, bank, None)
    if isinstance(t, torch.Tensor):
        return type(t.data) is torch.Tensor and t.dtype.is_floating_point and t.dim() >= 3
    return not _holds_quantized(module)


def coverage(
    fp32_model: nn.Module,
    int8_model: nn.Module,
    *,
    expected: tuple[str, ...] = QUANTIZABLE,
    notes: dict[str, str] | None = None,
) -> Coverage:
    """Compare the INT8 model with the reference, layer by layer and byte by byte.

    Works for any INT8 model, ours or the user's, because it only asks what the INT8
    model holds at each of the reference's names: a linear-like layer still holding a
    float weight, an expert bank still a float 3-D tensor, an embedding or norm with no
    int8 tensor are float; anything else there is quantized.
    """
    int8_modules = dict(int8_model.named_modules())
    cov = Coverage(expected=tuple(expected), notes=dict(notes or {}), head=lm_head_name(fp32_model))
    for name in linear_like_layers(fp32_model):
        module = int8_modules.get(name)
        if module is None or is_float_layer(module):
            cov.kept_float.append(name)
        else:
            cov.quantized.append(name)
    banks = expert_layers(fp32_model)
    cov.expert_layers = len(banks)
    for name, module in banks.items():
        for bank in expert_bank_names(module):
            floats = is_float_bank(int8_modules.get(name), bank)
            (cov.experts_float if floats else cov.experts_quantized).append(f"{name}.{bank}")
    _count_bytes(cov, fp32_model, int8_modules)
    return cov


def _count_bytes(cov: Coverage, fp32_model: nn.Module, int8_modules: dict[str, Any]) -> None:
    """Fill ``cov``'s bytes by kind: a reference weight is quantized when its layer (or
    expert bank) is, and an embedding, norm or other weight when the INT8 model's module
    at its name holds quantized tensors."""
    done_layers = set(cov.quantized)
    done_banks = set(cov.experts_quantized)
    done_expert_layers = {b.rpartition(".")[0] for b in cov.experts_quantized}
    for w in weights_by_kind(fp32_model):
        if w.kind in (LINEAR, LM_HEAD):
            done = w.module in done_layers
        elif w.kind == EXPERTS:
            full = f"{w.module}.{w.param}"
            done = full in done_banks or (
                w.module in done_expert_layers and full not in cov.experts_float
            )
        else:
            module = int8_modules.get(w.module)
            done = module is not None and _holds_quantized(module)
        bucket = cov.bytes_quantized if done else cov.bytes_float
        bucket[w.kind] = bucket.get(w.kind, 0) + w.nbytes
