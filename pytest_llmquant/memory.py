"""How much memory the INT8 model saves, measured three ways.

``weights``
    Bytes of the tensors the model holds: parameters, buffers (persistent or not) and
    the int8 weights that ``torch.ao`` quantized layers hide in ``_packed_params``,
    counted once per storage so tied weights count once. This is the *logical* size:
    an int8 weight is one byte, plus 4 bytes of scale and 4 of zero point per tensor
    (or per channel). It is exact and instant, and it is what a user means by "the
    model is 4x smaller", but it is not resident memory: fbgemm (the CPU backend of
    ``dynamic-int8``) keeps the unpacked int8 weight *and* a packed copy, about
    2.3 bytes per weight in RSS.
``file``
    Bytes on disk after saving both models: the FP32 one with
    ``save_pretrained(dir, safe_serialization=True)``, the INT8 one with its scheme's
    ``save`` (safetensors plus a JSON recipe). Config files count on both sides.
``peak_rss``
    Resident memory of fresh processes (``python -m pytest_llmquant.memory_probe``)
    that load the model (FP32; or FP32, build the INT8 copy, free the FP32) and
    generate 8 tokens greedily. Compared: the peak from "loaded" through generating
    (the serve phase), minus the peak of a process that does the same imports and
    builds the model on the meta device. Fresh, because this process holds pytest,
    both models and whatever other tests loaded. The whole-life peaks, loading
    included, are in ``details``: the INT8 one always exceeds the FP32 one, since the
    INT8 copy is built from an FP32 model in the same process. See :mod:`.memory_probe`.

What stays FP32 in the INT8 model (embeddings, norms, biases, layers a scheme skips)
is reported as ``MemoryResult.kept_float`` so a small ratio can be explained.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import LlmqModelError, LlmqUsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

KINDS: tuple[str, ...] = ("weights", "file", "peak_rss")
Precision = Literal["fp32", "int8"]

#: roles of :func:`weights_breakdown`; every key starting with "float" stays in float
INT8 = "int8 layers (weights + scales)"
FLOAT_BIAS = "float: biases of int8 layers"
FLOAT_EMBED = "float: embeddings"
FLOAT_NORM = "float: norms"
FLOAT_LINEAR = "float: linear layers (not quantized)"
FLOAT_OTHER = "float: other (positional tables, buffers, ...)"
OTHER = "other (integer and bool buffers)"
ROLES: tuple[str, ...] = (
    INT8,
    FLOAT_BIAS,
    FLOAT_EMBED,
    FLOAT_NORM,
    FLOAT_LINEAR,
    FLOAT_OTHER,
    OTHER,
)

#: what one quantization parameter costs: a float32 scale and an int32 zero point
QPARAM_BYTES = 4 + 4

PROBE_MARK = "LLMQ-PROBE "
PROBE_TIMEOUT_S = 900.0


# -- counting tensors ----------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """One counted allocation: ``key`` identifies its storage for de-duplication."""

    key: tuple[Any, ...]
    nbytes: int
    dtype: str
    role: str
    #: the tensor itself, kept alive until counting ends so that no address is reused
    #: by a temporary (``_weight_bias()`` may build fresh tensors on some backends)
    ref: Any = field(default=None, compare=False, repr=False)


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


def _float_role(module: nn.Module) -> str:
    from torch import nn

    from .layers import is_linear_like

    name = type(module).__name__
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
        extra: dict[str, Any] = {}
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
                role = _float_role(module)
            else:
                role = OTHER
            yield from _pieces(t, role)


def _unique(model: nn.Module) -> list[_Piece]:
    seen: set[tuple[Any, ...]] = set()
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
    int8 layers, embeddings, norms, linear layers the scheme did not quantize, other
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


# -- files ---------------------------------------------------------------------------


def file_bytes(directory: str | os.PathLike[str]) -> int:
    """Total size of the files under ``directory`` (or of one file), each inode once.

    Symlinked files count their target (the Hugging Face cache links to blobs);
    symlinked directories are not followed, so a link loop cannot hang the count.
    """
    path = Path(directory)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise LlmqUsageError(f"cannot measure the size of {path}: no such file or directory")
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:  # dangling link
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


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
            elif _float_only(owner):
                role = _float_role(owner)
            elif attr.startswith("bias"):
                role = FLOAT_BIAS
            else:
                continue  # the float scales of an int8 layer are part of that layer
            out[role] = out.get(role, 0) + int(end - begin)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _float_only(module: nn.Module) -> bool:
    """True if ``module`` is an ordinary float module (not a quantized layer)."""
    if getattr(module, "_packed_params", None) is not None:
        return False
    return not any(_is_int8_like(t) or _is_wrapper_subclass(t) for _, t in _local_tensors(module))


# -- peak RSS in a fresh process --------------------------------------------------------


def _probe_args(spec: dict[str, Any] | str) -> dict[str, Any]:
    args = {"model": spec} if isinstance(spec, str) else dict(spec)
    if not isinstance(args.get("model"), str) or not args["model"]:
        raise LlmqUsageError(
            "peak_rss needs spec={'model': MODEL} (a --llmq-model value) or the model string itself"
        )
    return args


def _start_probe(args: dict[str, Any]) -> subprocess.Popen[str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A fixed glibc mmap threshold (the default value, 128 KiB, but fixed: setting it turns
    # off glibc's dynamic raise of it) makes every large tensor its own mapping, returned
    # to the OS when freed. Without it, the memory of the FP32 model an INT8 copy was built
    # from stays in the malloc heap and is counted as INT8 memory (measured: +170 MB for a
    # 220 MB model). Set for every probe alike; other C libraries ignore it.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    return subprocess.Popen(
        [sys.executable, "-m", "pytest_llmquant.memory_probe", json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish_probe(
    proc: subprocess.Popen[str], args: dict[str, Any], timeout: float
) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise LlmqModelError(
            f"the memory probe ({args['mode']}) of {args.get('model')} ran "
            f"longer than {timeout:.0f} s and was stopped"
        ) from None
    lines = [ln[len(PROBE_MARK) :] for ln in out.splitlines() if ln.startswith(PROBE_MARK)]
    if not lines:
        tail = " ".join(err.strip().splitlines()[-1:]) or f"exit code {proc.returncode}"
        raise LlmqModelError(
            f"the memory probe ({args['mode']}) of {args.get('model')} failed: {tail}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        cls = LlmqUsageError if result.get("error_kind") == "usage" else LlmqModelError
        raise cls(result["error"])
    return result


def probe(
    spec: dict[str, Any] | str | None,
    mode: Literal["fp32", "int8", "baseline"],
    *,
    timeout: float = PROBE_TIMEOUT_S,
) -> dict[str, Any]:
    """Run :mod:`.memory_probe` once and return its JSON report (all sizes in bytes).

    ``spec`` is a model string (as for ``--llmq-model``) or a dict with ``model`` and
    optionally ``scheme``, ``cache_dir``, ``device``, ``trust_remote_code``,
    ``new_tokens`` (8) and ``threads``. Only ``baseline`` may go without a model.
    """
    if mode == "baseline" and spec is None:
        args: dict[str, Any] = {"mode": mode}
    else:
        args = {**_probe_args(spec if spec is not None else {}), "mode": mode}
    return _finish_probe(_start_probe(args), args, timeout)


def peak_rss(
    spec: dict[str, Any] | str, precision: Precision, *, timeout: float = PROBE_TIMEOUT_S
) -> int:
    """Peak RSS in bytes of a fresh process that loads the model and generates 8 tokens.

    ``precision="int8"`` loads the FP32 model and builds the INT8 copy in that process
    (``int8.build.build_int8``), so its peak includes the FP32 model it was built from;
    the ``serve_peak_bytes`` of :func:`probe` is the peak after the FP32 model is freed.
    The number includes the interpreter, torch and transformers: subtract
    :func:`baseline_rss` to get the model's share.
    """
    if precision not in ("fp32", "int8"):
        raise LlmqUsageError(f"peak_rss(precision={precision!r}): use 'fp32' or 'int8'")
    return int(probe(spec, precision, timeout=timeout)["peak_bytes"])


def baseline_rss(
    spec: dict[str, Any] | str | None = None, *, timeout: float = PROBE_TIMEOUT_S
) -> int:
    """Peak RSS of a fresh process that does what a probe does except hold weights:
    the same imports and, given ``spec``, the same tokenizer and model code (the model
    built on the meta device). Subtract it from :func:`peak_rss`."""
    return int(probe(spec, "baseline", timeout=timeout)["peak_bytes"])


def _measure_rss(spec: dict[str, Any] | str, scheme: str | None) -> tuple[int, int, dict[str, Any]]:
    """(FP32, INT8, details): serve-phase peaks minus the baseline, three probes at once."""
    base_args = _probe_args(spec)
    if scheme is not None:
        base_args["scheme"] = scheme
    runs = {mode: {**base_args, "mode": mode} for mode in ("baseline", "fp32", "int8")}
    # concurrently: each probe is its own process, so its RSS is its own; this only saves time
    procs = {mode: _start_probe(a) for mode, a in runs.items()}
    try:
        reports = {mode: _finish_probe(p, runs[mode], PROBE_TIMEOUT_S) for mode, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    base = int(reports["baseline"]["peak_bytes"])
    phase = (
        "serve" if all(reports[m].get("serve_peak_bytes") for m in ("fp32", "int8")) else "total"
    )
    key = "serve_peak_bytes" if phase == "serve" else "peak_bytes"
    fp32 = int(reports["fp32"][key]) - base
    int8 = int(reports["int8"][key]) - base
    details = {"phase": phase, "baseline_bytes": base, "probes": reports}
    return fp32, int8, details


# -- the result ----------------------------------------------------------------------


@dataclass
class MemoryResult:
    """One memory comparison; ``ratio`` is FP32 bytes / INT8 bytes (bigger is better)."""

    kind: str
    fp32_bytes: int
    int8_bytes: int
    ratio: float  # nan when a side measured nothing (peak_rss of a model smaller than noise)
    kept_float: dict[str, int] | None  # bytes the INT8 model still stores in float, by role
    note: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not math.isfinite(self.ratio):
            out["ratio"] = None  # strict JSON has no NaN
        return out


def _ratio(fp32: int, int8: int) -> float:
    return fp32 / int8 if fp32 > 0 and int8 > 0 else math.nan


def _save_fp32(model: Any, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def measure_memory(
    fp32_model: Any,
    int8_model: Any,
    kind: str = "weights",
    *,
    spec: dict[str, Any] | str | None = None,
    scheme: str | None = None,
    save: Callable[[Any, Path], None] | None = None,
) -> MemoryResult:
    """Compare the memory of the FP32 and INT8 models; ``kind`` is one of :data:`KINDS`.

    - ``weights``: :func:`weights_bytes` of both models (in this process).
    - ``file``: :func:`file_bytes` after saving both to temporary directories. The INT8
      model is saved with ``save(model, dir)`` if given, else with ``scheme``'s
      ``save``; one of them is required.
    - ``peak_rss``: fresh processes load ``spec`` (FP32, and FP32 then INT8 with
      ``scheme``) and generate 8 tokens; the models passed in are not used. Compares
      the peak RSS after loading (the FP32 source of the INT8 copy freed, the high-water
      mark reset) while generating, each minus a process that only imports the
      libraries. The whole-life peaks, which include loading, are in ``details``.
    """
    if kind not in KINDS:
        raise LlmqUsageError(f"unknown memory kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind == "weights":
        fp32 = weights_bytes(fp32_model)
        parts = weights_breakdown(int8_model)
        int8 = sum(parts.values())
        kept = kept_float(parts)
        note = (
            "parameters + buffers (tied once), int8 weights as 1 byte + 8 bytes of "
            "scale/zero point per tensor or channel; backend packed copies not counted"
        )
        return MemoryResult(
            kind,
            fp32,
            int8,
            _ratio(fp32, int8),
            kept,
            note,
            {"int8_breakdown": parts, "fp32_breakdown": weights_breakdown(fp32_model)},
        )
    if kind == "file":
        if save is None and scheme is None:
            raise LlmqUsageError(
                "memory kind 'file' needs scheme= (a --llmq-scheme name) or "
                "save=callable(model, dir) to save the INT8 model"
            )
        if save is None:
            from .schemes import get_scheme

            save = get_scheme(str(scheme)).save
        with tempfile.TemporaryDirectory(prefix="llmq-mem-") as tmp:
            fp32_dir, int8_dir = Path(tmp, "fp32"), Path(tmp, "int8")
            fp32_dir.mkdir()
            int8_dir.mkdir()
            _save_fp32(fp32_model, fp32_dir)
            save(int8_model, int8_dir)
            fp32, int8 = file_bytes(fp32_dir), file_bytes(int8_dir)
            kept = file_kept_float(int8_dir, int8_model)
            files = {
                "fp32": sorted(p.name for p in fp32_dir.iterdir()),
                "int8": sorted(p.name for p in int8_dir.iterdir()),
            }
        note = (
            "saved size: FP32 save_pretrained(safetensors) vs the scheme's INT8 "
            "safetensors + recipe; config files on both sides"
        )
        return MemoryResult(kind, fp32, int8, _ratio(fp32, int8), kept, note, {"files": files})
    if spec is None:
        raise LlmqUsageError(
            "memory kind 'peak_rss' needs spec= (the --llmq-model value) so "
            "fresh processes can load the model"
        )
    fp32, int8, details = _measure_rss(spec, scheme)
    probes = details["probes"]
    note = (
        f"peak RSS while generating 8 tokens in a fresh process, minus "
        f"{details['baseline_bytes'] / 1e6:.0f} MB for python+torch+transformers "
        f"(phase {details['phase']}); whole-life peaks incl. loading: FP32 "
        f"{probes['fp32']['peak_bytes'] / 1e6:.0f} MB, INT8 "
        f"{probes['int8']['peak_bytes'] / 1e6:.0f} MB (built from FP32 in-process)"
    )
    return MemoryResult(kind, fp32, int8, _ratio(fp32, int8), None, note, details)
