"""How much memory the INT8 model saves, measured four ways (the ``kind``).

- ``weights`` (``ModelSide.weight_bytes``): bytes of the tensors the model holds, int8
  weights as 1 byte plus their scales. Exact and instant; what "4x smaller" means.
- ``file``: bytes on disk of both models as they ship (``ModelSide.shipped_file``).
- ``peak_rss`` (:mod:`.rss`): resident memory of fresh processes that load the model
  and generate 8 tokens, minus a process that only imports the libraries.
- ``vram`` (:mod:`.vram`): GPU memory torch allocates in fresh processes that load the
  model on CUDA and generate 8 tokens; skips on any other device.

What stays in float in the INT8 model (embeddings, norms, biases, layers a scheme skips)
is reported as ``MemoryResult.kept_float`` so a small ratio can be explained.
:func:`measure_memory` is the one entry point the gates and ``assert_memory`` use; it
measures two model sides (:class:`~pytest_llmquant.sides.base.ModelSide`), or two
``nn.Module`` objects it wraps into sides (:mod:`.wrap`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from ..formats.sizes import file_bytes
from ..sides.base import ModelSide, total_bytes
from ..sides.torch_weights import (
    FLOAT_BIAS,
    FLOAT_EMBED,
    FLOAT_EXPERTS,
    FLOAT_LINEAR,
    FLOAT_NORM,
    FLOAT_OTHER,
    INT8,
    OTHER,
    QPARAM_BYTES,
    ROLES,
    file_kept_float,
    kept_float,
    weights_breakdown,
    weights_bytes,
)
from .rss import (
    PROBE_MARK,
    PROBE_TIMEOUT_S,
    Precision,
    baseline_rss,
    measure_rss,
    peak_rss,
    probe,
    rss_note,
)
from .vram import check_vram_device, measure_vram, vram_note
from .wrap import ProbeSource, SpecArg, as_sides

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..origin import Int8Origin
    from ..types import CausalLM, Tokenizer

__all__ = [
    "FLOAT_BIAS",
    "FLOAT_EMBED",
    "FLOAT_EXPERTS",
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

WEIGHTS_NOTE = (
    "parameters + buffers (tied once), int8 weights as 1 byte + 8 bytes of "
    "scale/zero point per tensor or channel; backend packed copies not counted"
)


@dataclass
class MemoryResult:
    """One memory comparison; ``ratio`` is reference bytes / INT8 bytes (bigger is better).

    In :meth:`as_dict` (the JSON reports and baselines) ``reference_bytes`` keeps its old
    key, ``fp32_bytes``; so do the reference's keys inside ``details`` (``fp32_breakdown``,
    ``files.fp32``, ``probes.fp32``).
    """

    kind: str
    reference_bytes: int
    int8_bytes: int
    ratio: float  # nan when a side measured nothing (peak_rss of a model smaller than noise)
    kept_float: dict[str, int] | None  # bytes the INT8 model still stores in float, by role
    note: str
    details: dict[str, object] = field(default_factory=dict)

    @property
    def fp32_bytes(self) -> int:
        """The reference's bytes, by their old name (reports, verdicts, baselines)."""
        return self.reference_bytes

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out = {"kind": out.pop("kind"), "fp32_bytes": out.pop("reference_bytes"), **out}
        if not math.isfinite(self.ratio):
            out["ratio"] = None  # strict JSON has no NaN
        return out


def _ratio(reference: int, int8: int) -> float:
    return reference / int8 if reference > 0 and int8 > 0 else math.nan


def measure_memory(
    reference: ModelSide | CausalLM | None,
    int8: ModelSide | CausalLM | None,
    kind: str = "weights",
    *,
    spec: SpecArg = None,
    scheme: str | None = None,
    save: Callable[[CausalLM, Path], None] | None = None,
    origin: Int8Origin | None = None,
    tokenizer: Tokenizer | None = None,
) -> MemoryResult:
    """Compare the memory of the reference and INT8 sides; ``kind`` is one of :data:`KINDS`.

    - ``weights``: :meth:`~pytest_llmquant.sides.base.ModelSide.weight_bytes` of both.
    - ``file``: both sides as they ship (``shipped_file``): the reference's
      ``save_pretrained`` against the INT8 model saved the way its route saves it (a model
      with no safe save skips).
    - ``peak_rss``: fresh processes, one at a time, load each side as its ``probe_spec``
      says (the reference: ``spec``, the session's model; the INT8 side: its route's files,
      or ``scheme`` rebuilt from the reference) and generate 8 tokens. Compares the peak
      RSS while generating (the reference an INT8 copy was built from freed, the
      high-water mark reset), each minus a process that only imports the libraries. The
      whole-life peaks, which include loading, are in ``details``.
    - ``vram``: the same fresh processes on the CUDA device of the reference, comparing the
      GPU memory torch allocates from the loaded model through generating (:mod:`.vram`);
      raises :class:`~pytest_llmquant.errors.LlmqSkip` when the device is not CUDA.

    ``nn.Module`` arguments are wrapped into sides (:func:`.wrap.as_sides`): ``spec`` says
    how a fresh process loads the reference, and ``origin`` (where the INT8 model came
    from), else ``save(model, dir)`` or ``scheme`` how the INT8 model is saved and loaded.
    """
    if kind not in KINDS:
        raise LlmqUsageError(f"unknown memory kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    sides = as_sides(
        reference,
        int8,
        kind,
        spec=spec,
        scheme=scheme,
        save=save,
        origin=origin,
        tokenizer=tokenizer,
    )
    if kind == "weights":
        return _weights(*sides.loaded(kind))
    if kind == "file":
        return _shipped(*sides.loaded(kind))
    return _probed(kind, sides.reference_probe, sides.int8_probe, sides.device(spec))


def _weights(reference: ModelSide, int8: ModelSide) -> MemoryResult:
    ref_parts, int8_parts = reference.weight_bytes(), int8.weight_bytes()
    ref, q = total_bytes(ref_parts), total_bytes(int8_parts)
    details: dict[str, object] = {"int8_breakdown": int8_parts, "fp32_breakdown": ref_parts}
    note = WEIGHTS_NOTE
    if int8.runtime != "torch":
        note = f"{int8.runtime}: the file's tensors as stored (blocks with their scales), by role"
    return MemoryResult("weights", ref, q, _ratio(ref, q), kept_float(int8_parts), note, details)


def _shipped(reference: ModelSide, int8: ModelSide) -> MemoryResult:
    with tempfile.TemporaryDirectory(prefix="llmq-mem-") as tmp:
        ref = reference.shipped_file(Path(tmp, "fp32"))
        q = int8.shipped_file(Path(tmp, "int8"))
    note = f"saved size: reference {ref.how} vs INT8 saved with {q.how}"
    files = {"fp32": list(ref.files), "int8": list(q.files)}
    ratio = _ratio(ref.bytes, q.bytes)
    return MemoryResult(
        "file", ref.bytes, q.bytes, ratio, dict(q.kept_float), note, {"files": files}
    )


def _probed(kind: str, reference: ProbeSource, int8: ProbeSource, device: str) -> MemoryResult:
    """``peak_rss`` or ``vram``: each side loaded by a fresh process as its probe spec says."""
    if kind == "vram":  # before anything is saved or started
        check_vram_device(device)
    with tempfile.TemporaryDirectory(prefix=f"llmq-{kind}-") as tmp:
        ref_args = dict(reference(Path(tmp, "reference")).args)
        int8_spec = int8(Path(tmp, "int8"))
        if kind == "vram":
            ref_args["device"] = device
            ref, q, details = measure_vram(ref_args, int8_spec.args)
        else:
            ref, q, details = measure_rss(ref_args, int8_spec.args)
    if kind == "vram":
        note = vram_note(details, int8_spec.made)
    else:
        note = rss_note(details, int8_spec.made)
    return MemoryResult(kind, ref, q, _ratio(ref, q), None, note, dict(details))
