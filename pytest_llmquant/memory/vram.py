"""The ``vram`` memory kind: GPU memory of fresh processes that load the model and generate.

Same probes as ``peak_rss`` (:mod:`.rss_probe`, one fresh process per model, one after
the other so two models never share the card), asked for a ``"vram"`` report: torch's
own counters, ``torch.cuda.max_memory_allocated``, which count the bytes of live tensors
and nothing else. Compared: the peak from "model ready" through generating 8 tokens (the
high-water mark reset with ``torch.cuda.reset_peak_memory_stats`` once the reference an
INT8 copy was built from is freed), i.e. the resident weights plus what generating with
them allocates. The whole-life peaks, loading included, are in ``details``.

Why no baseline process as ``peak_rss`` has: a fresh process holds no tensor, so its
allocated bytes start at 0; the CUDA context and the caching allocator's reserve are
not tensors and are the same for both models, so they are left out of both.

On a device other than CUDA there is no GPU memory to measure: :func:`check_vram_device`
raises :class:`~pytest_llmquant.errors.LlmqSkip`, which the gate turns into a skip.
"""

from __future__ import annotations

from ..errors import LlmqSkip
from .rss import (
    PROBE_TIMEOUT_S,
    ProbeArgs,
    ProbeDetails,
    _finish_probe,
    _probe_args,
    _start_probe,
    report_bytes,
    with_int8,
)

#: what the probe is asked for (``args["report"]``) and the keys its report then holds
REPORT = "vram"


def check_vram_device(device: str) -> None:
    """Raise :class:`LlmqSkip` (one line, with the fix) unless ``device`` is CUDA."""
    if not str(device).startswith("cuda"):
        raise LlmqSkip(
            f"memory kind 'vram' measures GPU memory, and this run is on {device!r}; "
            "run with --llmq-device=cuda on a machine with a GPU, or use kind='peak_rss' "
            "for the CPU"
        )


def measure_vram(
    spec: ProbeArgs | str, int8_probe: ProbeArgs | str | None
) -> tuple[int, int, ProbeDetails]:
    """(reference, INT8, details): serve-phase peaks of GPU memory allocated by torch.

    ``spec`` holds the model and its ``device`` (a CUDA device: see
    :func:`check_vram_device`); ``int8_probe`` is the INT8 side's probe arguments (its
    :class:`~pytest_llmquant.sides.base.ProbeSpec`), or a scheme name.
    """
    base = _probe_args(spec)
    check_vram_device(str(base.get("device", "cpu")))
    runs: dict[str, ProbeArgs] = {
        "fp32": {**base, "mode": "fp32", "report": REPORT},
        "int8": {**with_int8(base, int8_probe), "report": REPORT},
    }
    # one at a time: side by side, two models would have to fit on the card together
    reports = {mode: _finish_probe(_start_probe(a), a, PROBE_TIMEOUT_S) for mode, a in runs.items()}
    reference = report_bytes(reports["fp32"], "vram_serve_peak_bytes")
    int8 = report_bytes(reports["int8"], "vram_serve_peak_bytes")
    return reference, int8, {"phase": "serve", "probes": reports}


def vram_note(details: ProbeDetails, made: str) -> str:
    """One line for the report: what was compared, and the whole-life peaks."""
    probes = details["probes"]
    return (
        "peak GPU memory allocated by torch from the loaded model through generating 8 "
        "tokens, in a fresh process each (CUDA context not counted); whole-life peaks "
        f"incl. loading: reference {report_bytes(probes['fp32'], 'vram_peak_bytes') / 1e6:.0f} "
        f"MB, INT8 {report_bytes(probes['int8'], 'vram_peak_bytes') / 1e6:.0f} MB ({made})"
    )
