"""The ``weights`` memory kind: bytes of the tensors a model holds, and where they go.

Parameters, buffers (persistent or not) and the int8 weights that ``torch.ao``
quantized layers hide in ``_packed_params``, counted once per storage so tied weights
count once. This is the *logical* size: an int8 weight is one byte, plus 4 bytes of
scale and 4 of zero point per tensor (or per channel). It is exact and instant, and it
is what a user means by "the model is 4x smaller", but it is not resident memory:
fbgemm (the CPU backend of ``dynamic-int8``) keeps the unpacked int8 weight *and* a
packed copy, about 2.3 bytes per weight in RSS (see :mod:`.rss`).

:func:`weights_breakdown` splits the bytes by role, so what stays FP32 in the INT8
model (embeddings, norms, biases, layers a scheme skips) explains a small ratio.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import LlmqUsageError

if TYPE_CHECKING:
    import torch
    from torch import nn


#: roles of :func:`weights_breakdown`; every key starting with "float" stays in float
INT8 = "int8 layers (weights + scales)"
FLOAT_BIAS = "float: biases of int8 layers"
FLOAT_EMBED = "float: embeddings"
FLOAT_NORM = "float: norms"
FLOAT_LINEAR = "float: linear layers (not quantized)"
FLOAT_EXPERTS = "float: experts (expert banks not quantized)"
FLOAT_OTHER = "float: other (positional tables, buffers, ...)"
OTHER = "other (integer and bool buffers)"
ROLES: tuple[str, ...] = (
    INT8,
    FLOAT_BIAS,
    FLOAT_EMBED,
    FLOAT_NORM,
    FLOAT_LINEAR,
    FLOAT_EXPERTS,
    FLOAT_OTHER,
    OTHER,
)

#: what one quantization parameter costs: a float32 scale and an int32 zero point
QPARAM_BYTES = 4 + 4


@dataclass(frozen=True)
class _Piece:
    """One counted allocation: ``key`` identifies its storage for de-duplication."""

    key: tuple[Hashable, ...]
    nbytes: int
    dtype: str
    role: str
    #: the tensor itself, kept alive until counting ends so that no address is reused
    #: by a temporary (``_weight_bias()`` may build fresh tensors on some backends)
    ref: torch.Tensor | None = field(default=None, compare=False, repr=False)


def _is_int8_like(t: torch.Tensor) -> bool:
    import torch

    return bool(t.is_quantized) or t.dtype in (torch.int8, torch.uint8)


def _is_wrapper_subclass(t: torch.Tensor) -> bool:
    try:
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    except ImportError:  # pragma: no cover - very old torch
        return False
    return bool(is_traceable_wrapper_subclass(t))


def _qparam_bytes(t: torch.Tensor) -> int:
    import torch

    if t.qscheme() in (
        torch.per_channel_affine,
        torch.per_channel_symmetric,
        torch.per_channel_affine_float_qparams,
    ):
        return int(t.q_per_channel_scales().numel()) * QPARAM_BYTES
    return QPARAM_BYTES


def _pieces(t: torch.Tensor, role: str) -> Iterator[_Piece]:
    """The allocations behind one tensor, however it is stored.

    - a torch quantized tensor: its int8 elements plus scale and zero point;
    - a wrapper subclass (torchao's quantized weights): its inner tensors, recursively;
    - a meta tensor: its nominal size (it has no storage to share);
    - a plain tensor: its whole storage, keyed by address, so views and tied weights
      count once.
    """
    if _is_wrapper_subclass(t):
        attrs, _ = t.__tensor_flatten__()  # type: ignore[attr-defined]
        for a in attrs:
            inner = getattr(t, a)
            if inner is not None:
                yield from _pieces(inner, role)
        return
    if t.is_quantized:
        where = (t.device.type, t.data_ptr())
        yield _Piece(("q", *where), t.numel() * t.element_size(), "torch.int8", role, t)
        yield _Piece(("qp", *where), _qparam_bytes(t), "torch.float32", role, t)
        return
    if t.device.type == "meta" or t.data_ptr() == 0:  # no storage (meta, or empty)
        yield _Piece(("id", id(t)), t.numel() * t.element_size(), str(t.dtype), role, t)
        return
    storage = t.untyped_storage()
    yield _Piece(
        ("s", t.device.type, storage.data_ptr()), int(storage.nbytes()), str(t.dtype), role, t
    )


def float_role(module: nn.Module) -> str:
    """Which of the ``float: ...`` roles a float module's tensors count under."""
    from torch import nn

    from ..layers import is_linear_like
    from ..weight_kinds import is_expert_layer

    name = type(module).__name__
    if is_expert_layer(module):  # 3-D expert banks (transformers 5 MoE layers)
        return FLOAT_EXPERTS
    if isinstance(module, nn.Embedding) or "Embedding" in name:
        return FLOAT_EMBED
    if "Norm" in name:
        return FLOAT_NORM
    if is_linear_like(module):
        return FLOAT_LINEAR
    return FLOAT_OTHER


def _local_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers (non-persistent ones too) owned by ``module`` itself, and
    tensors a custom ``_save_to_state_dict`` writes that are neither."""
    import torch
    from torch import nn

    yield from module.named_parameters(recurse=False)
    yield from ((n, b) for n, b in module.named_buffers(recurse=False) if b is not None)
    if type(module)._save_to_state_dict is not nn.Module._save_to_state_dict:
        extra: dict[str, object] = {}
        try:
            module._save_to_state_dict(extra, "", keep_vars=True)
        except Exception:  # a module whose state cannot be read this way: skip the extras
            return
        known = set(module._parameters) | set(module._buffers)
        yield from (
            (n, v) for n, v in extra.items() if n not in known and isinstance(v, torch.Tensor)
        )


def _walk(model: nn.Module) -> Iterator[_Piece]:
    """Every allocation of ``model``, with its role; duplicates are removed by the caller."""
    handled: list[str] = []
    for name, module in model.named_modules(remove_duplicate=True):
        if any(name.startswith(p) for p in handled):
            continue  # inside a packed layer: already counted through its owner
        packed = getattr(module, "_packed_params", None)
        if packed is not None and (hasattr(packed, "_weight_bias") or hasattr(packed, "_weight")):
            # torch.ao quantized Linear / Embedding: weights live in an opaque C++ object
            if hasattr(packed, "_weight_bias"):
                weight, bias = packed._weight_bias()
            else:
                weight, bias = packed._weight(), None
            yield from _pieces(weight, INT8)
            if bias is not None:
                yield from _pieces(bias, FLOAT_BIAS)
            handled.append(name + "." if name else "")
            continue
        tensors = list(_local_tensors(module))
        quantized = any(_is_int8_like(t) or _is_wrapper_subclass(t) for _, t in tensors)
        for tname, t in tensors:
            if _is_int8_like(t) or _is_wrapper_subclass(t):
                role = INT8
            elif quantized:  # float scales sit next to int8 weights; biases stay float
                role = FLOAT_BIAS if tname.startswith("bias") else INT8
            elif t.dtype.is_floating_point:
                role = float_role(module)
            else:
                role = OTHER
            yield from _pieces(t, role)


def _unique(model: nn.Module) -> list[_Piece]:
    seen: set[tuple[Hashable, ...]] = set()
    out: list[_Piece] = []
    for piece in _walk(model):
        if piece.key not in seen:
            seen.add(piece.key)
            out.append(piece)
    return out


def weights_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, int8 packed weights included, tied weights once.

    Storage-level: a tensor that is a view of a larger storage counts that storage
    (once). Quantized weights count 1 byte per int8 element plus 8 bytes (float32
    scale, int32 zero point) per tensor or per channel; their backend's packed copy
    is not counted (see the module docstring and the ``peak_rss`` kind).
    """
    return sum(p.nbytes for p in _unique(model))


def weights_breakdown(model: nn.Module, by: Literal["role", "dtype"] = "role") -> dict[str, int]:
    """:func:`weights_bytes` split by role (the default) or by dtype, largest first.

    Roles: ``int8 layers (weights + scales)``, then what stays in float: biases of
    int8 layers, embeddings, norms, linear layers and expert banks the scheme did not
    quantize, other
    float tensors (positional tables, rotary buffers), and integer/bool buffers. The
    values add up to :func:`weights_bytes`. A tied embedding counts under the first
    module that holds it (the input embedding, as it comes first).
    """
    if by not in ("role", "dtype"):
        raise LlmqUsageError(f"weights_breakdown(by={by!r}): use by='role' or by='dtype'")
    out: dict[str, int] = {}
    for p in _unique(model):
        key = p.role if by == "role" else p.dtype
        out[key] = out.get(key, 0) + p.nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def kept_float(breakdown: dict[str, int]) -> dict[str, int]:
    """The float part of a role breakdown: what the INT8 model still stores in float."""
    return {k: v for k, v in breakdown.items() if k.startswith("float") and v}


def is_float_module(module: nn.Module) -> bool:
    """True if ``module`` is an ordinary float module (not a quantized layer)."""
    if getattr(module, "_packed_params", None) is not None:
        return False
    return not any(_is_int8_like(t) or _is_wrapper_subclass(t) for _, t in _local_tensors(module))


# -- float tensors in a saved model's safetensors files ------------------------------

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, Any] = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header


def file_kept_float(
    directory: str | os.PathLike[str], model: nn.Module | None = None
) -> dict[str, int]:
    """Bytes of float tensors in the ``*.safetensors`` files of ``directory``, by role.

    Reads only the safetensors headers. With ``model`` (the model that was saved), each
    tensor is attributed to the role of the module that owns it; without, all float
    tensors count as "float: other".
    """
    modules = dict(model.named_modules()) if model is not None else {}
    out: dict[str, int] = {}
    for path in sorted(Path(directory).rglob("*.safetensors")):
        for name, info in _safetensors_header(path).items():
            if info.get("dtype") not in _FLOAT_DTYPES:
                continue
            begin, end = info["data_offsets"]
            owner_name, _, attr = name.rpartition(".")
            owner = modules.get(owner_name)
            if owner is None:
                role = FLOAT_OTHER
            elif all(is_float_module(m) for m in owner.modules()):
                # (a layer that saves its parts' tensors as its own, as an expert layer
                # saves its experts' scales, is not float: its parts are int8)
                role = float_role(owner)
            elif attr.startswith("bias"):
                role = FLOAT_BIAS
            else:
                continue  # the float scales of an int8 layer are part of that layer
            out[role] = out.get(role, 0) + int(end - begin)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
