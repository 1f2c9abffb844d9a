"""How much memory the INT8 model saves, measured four ways (the ``kind``).

- ``weights`` (:mod:`.weights`): bytes of the tensors the model holds, int8 weights as
  1 byte plus their scales. Exact and instant; what "4x smaller" means.
- ``file`` (:mod:`.files`): bytes on disk after saving both models.
- ``peak_rss`` (:mod:`.rss`): resident memory of fresh processes that load the model
  and generate 8 tokens, minus a process that only imports the libraries.
- ``vram`` (:mod:`.vram`): GPU memory torch allocates in fresh processes that load the
  model on CUDA and generate 8 tokens; skips on any other device.

What stays FP32 in the INT8 model (embeddings, norms, biases, layers a scheme skips)
is reported as ``MemoryResult.kept_float`` so a small ratio can be explained.
:func:`measure_memory` is the one entry point the gates and ``assert_memory`` use.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LlmqUsageError
from ..formats.sizes import file_bytes
from ..sides.torch_weights import file_kept_float
from .rss import (
    PROBE_MARK,
    PROBE_TIMEOUT_S,
    Precision,
    baseline_rss,
    measure_rss,
    peak_rss,
    probe,
)
from .vram import check_vram_device, measure_vram, vram_note

if TYPE_CHECKING:
    from ..origin import Int8Origin
from ..sides.torch_weights import (
    FLOAT_BIAS,
    FLOAT_EMBED,
    FLOAT_LINEAR,
    FLOAT_NORM,
    FLOAT_OTHER,
    INT8,
    OTHER,
    QPARAM_BYTES,
    ROLES,
    kept_float,
    weights_breakdown,
    weights_bytes,
)

__all__ = [
    "FLOAT_BIAS",
    "FLOAT_EMBED",
    "FLOAT_LINEAR",
    "FLOAT_NORM",
    "FLOAT_OTHER",
    "INT8",
    "KINDS",
    "OTHER",
    "PROBE_MARK",
    "PROBE_TIMEOUT_S",
    "QPARAM_BYTES",
    "ROLES",
    "MemoryResult",
    "Precision",
    "baseline_rss",
    "file_bytes",
    "file_kept_float",
    "kept_float",
    "measure_memory",
    "peak_rss",
    "probe",
    "weights_breakdown",
    "weights_bytes",
]

KINDS: tuple[str, ...] = ("weights", "file", "peak_rss", "vram")


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
    origin: Int8Origin | None = None,
    tokenizer: Any = None,
) -> MemoryResult:
    """Compare the memory of the reference and INT8 models; ``kind`` is one of :data:`KINDS`.

    - ``weights``: :func:`weights_bytes` of both models (in this process).
    - ``file``: :func:`file_bytes` of the reference's ``save_pretrained`` against the INT8
      model saved the way its maker saves it: with ``origin`` (where it came from: see
      :mod:`pytest_llmquant.int8.on_disk`; a model with no safe save skips), else with
      ``save(model, dir)`` or ``scheme``'s save.
    - ``peak_rss``: fresh processes, one at a time, load ``spec`` (the reference) and the
      same INT8 model (``origin``: the user's files, else ``scheme`` rebuilt from the
      reference) and generate 8 tokens; the models passed in are not used otherwise.
      Compares the peak RSS while generating (the reference an INT8 copy was built from
      freed, the high-water mark reset), each minus a process that only imports the
      libraries. The whole-life peaks, which include loading, are in ``details``.
    - ``vram``: the same fresh processes on the CUDA device of ``spec``, comparing the GPU
      memory torch allocates from the loaded model through generating (:mod:`.vram`);
      raises :class:`~pytest_llmquant.errors.LlmqSkip` when the device is not CUDA.
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
        return _file_sizes(fp32_model, int8_model, scheme, save, origin)
    if kind == "vram":  # before anything is saved or started
        device = _device(spec, fp32_model)
        check_vram_device(device)
        if spec is not None:
            spec = {**({"model": spec} if isinstance(spec, str) else spec), "device": device}
    if spec is None:
        raise LlmqUsageError(
            f"memory kind {kind!r} needs spec= (the --llmq-model value) so "
            "fresh processes can load the model"
        )
    with tempfile.TemporaryDirectory(prefix=f"llmq-{kind}-") as tmp:
        if origin is not None:
            from ..int8.on_disk import probe_args

            int8_args = probe_args(int8_model, tokenizer, origin, Path(tmp))
        else:
            int8_args = {"scheme": scheme}
        if kind == "vram":
            fp32, int8, details = measure_vram(spec, int8_args)
        else:
            fp32, int8, details = measure_rss(spec, int8_args)
    made = "built from the reference in-process" if "scheme" in int8_args else "loaded as saved"
    if kind == "vram":
        note = vram_note(details, made)
        return MemoryResult(kind, fp32, int8, _ratio(fp32, int8), None, note, details)
    probes = details["probes"]
    note = (
        f"peak RSS while generating 8 tokens in a fresh process, minus "
        f"{details['baseline_bytes'] / 1e6:.0f} MB for python+torch+transformers "
        f"(phase {details['phase']}); whole-life peaks incl. loading: reference "
        f"{probes['fp32']['peak_bytes'] / 1e6:.0f} MB, INT8 "
        f"{probes['int8']['peak_bytes'] / 1e6:.0f} MB ({made})"
    )
    return MemoryResult(kind, fp32, int8, _ratio(fp32, int8), None, note, details)


def _device(spec: dict[str, Any] | str | None, model: Any) -> str:
    """The device the probes would use: ``spec["device"]``, else the model's, else cpu."""
    if isinstance(spec, dict) and spec.get("device"):
        return str(spec["device"])
    device = getattr(model, "device", None)
    return str(device) if device is not None else "cpu"


def _file_sizes(
    fp32_model: Any,
    int8_model: Any,
    scheme: str | None,
    save: Callable[[Any, Path], None] | None,
    origin: Int8Origin | None,
) -> MemoryResult:
    if save is None and scheme is None and origin is None:
        raise LlmqUsageError(
            "memory kind 'file' needs scheme= (a --llmq-scheme name), origin= or "
            "save=callable(model, dir) to save the INT8 model"
        )
    with tempfile.TemporaryDirectory(prefix="llmq-mem-") as tmp:
        fp32_dir, int8_dir = Path(tmp, "fp32"), Path(tmp, "int8")
        fp32_dir.mkdir()
        _save_fp32(fp32_model, fp32_dir)
        fp32 = file_bytes(fp32_dir)
        if origin is not None and save is None:
            from ..int8.on_disk import save as save_as_maker

            saved = save_as_maker(int8_model, origin, int8_dir)
            int8, how, where = saved.bytes, saved.how, saved.directory
        else:
            int8_dir.mkdir()
            if save is None:
                from ..schemes import get_scheme

                save = get_scheme(str(scheme)).save
            save(int8_model, int8_dir)
            int8, how, where = file_bytes(int8_dir), "the scheme's save", int8_dir
        kept = file_kept_float(where, int8_model) if where.is_dir() else {}
        files = {
            "fp32": sorted(p.name for p in fp32_dir.iterdir()),
            "int8": sorted(p.name for p in where.iterdir()) if where.is_dir() else [where.name],
        }
    note = f"saved size: reference save_pretrained(safetensors) vs INT8 saved with {how}"
    return MemoryResult("file", fp32, int8, _ratio(fp32, int8), kept, note, {"files": files})
