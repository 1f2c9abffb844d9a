"""How much memory the INT8 model saves, measured three ways (the ``kind``).

- ``weights`` (:mod:`.weights`): bytes of the tensors the model holds, int8 weights as
  1 byte plus their scales. Exact and instant; what "4x smaller" means.
- ``file`` (:mod:`.files`): bytes on disk after saving both models.
- ``peak_rss`` (:mod:`.rss`): resident memory of fresh processes that load the model
  and generate 8 tokens, minus a process that only imports the libraries.

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
from typing import Any

from ..errors import LlmqUsageError
from .files import file_bytes, file_kept_float
from .rss import (
    PROBE_MARK,
    PROBE_TIMEOUT_S,
    Precision,
    baseline_rss,
    measure_rss,
    peak_rss,
    probe,
)
from .weights import (
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

KINDS: tuple[str, ...] = ("weights", "file", "peak_rss")


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
            from ..schemes import get_scheme

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
    fp32, int8, details = measure_rss(spec, scheme)
    probes = details["probes"]
    note = (
        f"peak RSS while generating 8 tokens in a fresh process, minus "
        f"{details['baseline_bytes'] / 1e6:.0f} MB for python+torch+transformers "
        f"(phase {details['phase']}); whole-life peaks incl. loading: FP32 "
        f"{probes['fp32']['peak_bytes'] / 1e6:.0f} MB, INT8 "
        f"{probes['int8']['peak_bytes'] / 1e6:.0f} MB (built from FP32 in-process)"
    )
    return MemoryResult(kind, fp32, int8, _ratio(fp32, int8), None, note, details)
