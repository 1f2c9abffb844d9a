"""The ``peak_rss`` memory kind: resident memory of fresh processes that serve the model.

Fresh processes (``python -m pytest_llmquant.memory.rss_probe``, see
:mod:`.rss_probe`) load the model (the reference; or the INT8 side as its route loads it:
its saved files, or the reference, the INT8 copy built from it, the reference freed)
and generate 8 tokens greedily. Compared: the peak from "loaded" through generating
(the serve phase), minus the peak of a process that does the same imports and builds
the model on the meta device. Fresh, because this process holds pytest, both models
and whatever other tests loaded. The whole-life peaks, loading included, are in
``details``: for a rebuilt INT8 side it exceeds the reference's, since the INT8 copy is
built from the reference in the same process.

This module is the parent side (start the probes, read their one-line reports); the
child is :mod:`.rss_probe`, kept apart so that ``python -m`` runs a module the package
has not imported yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal, TypedDict

from ..errors import LlmqModelError, LlmqUsageError

#: the probe modes that load a model: the reference (``fp32``, its name in the reports'
#: JSON, whatever its dtype) and the INT8 side
Precision = Literal["fp32", "int8"]
#: a probe's arguments, and its one-line report: JSON objects of plain values
ProbeArgs = dict[str, str | int | bool | None]
ProbeReport = dict[str, str | int | bool | None]


class ProbeDetails(TypedDict, total=False):
    """What a ``peak_rss`` or ``vram`` comparison keeps besides the two numbers."""

    phase: str  # "serve" (the high-water mark reset once loaded) or "total"
    baseline_bytes: int  # peak_rss: the process that holds no weights
    probes: dict[str, ProbeReport]  # each probe's report, by mode


PROBE_MARK = "LLMQ-PROBE "
PROBE_TIMEOUT_S = 900.0
PROBE_MODULE = "pytest_llmquant.memory.rss_probe"


def _probe_args(spec: ProbeArgs | str) -> ProbeArgs:
    args: ProbeArgs = {"model": spec} if isinstance(spec, str) else dict(spec)
    if args.get("route") == "runtime":  # a reference in another runtime: its file, no model
        return args
    if not isinstance(args.get("model"), str) or not args["model"]:
        raise LlmqUsageError(
            "peak_rss needs spec={'model': MODEL} (a --llmq-model value) or the model string itself"
        )
    return args


def _start_probe(args: ProbeArgs) -> subprocess.Popen[str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the directory above pytest_llmquant
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A fixed glibc mmap threshold (the default value, 128 KiB, but fixed: setting it turns
    # off glibc's dynamic raise of it) makes every large tensor its own mapping, returned
    # to the OS when freed. Without it, the memory of the FP32 model an INT8 copy was built
    # from stays in the malloc heap and is counted as INT8 memory (measured: +170 MB for a
    # 220 MB model). Set for every probe alike; other C libraries ignore it.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    return subprocess.Popen(
        [sys.executable, "-m", PROBE_MODULE, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish_probe(proc: subprocess.Popen[str], args: ProbeArgs, timeout: float) -> ProbeReport:
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
    result: ProbeReport = json.loads(lines[-1])
    if "error" in result:
        cls = LlmqUsageError if result.get("error_kind") == "usage" else LlmqModelError
        raise cls(str(result["error"]))
    return result


def report_bytes(report: ProbeReport, key: str) -> int:
    """A size from a probe's report (a probe that could not measure it says so)."""
    value = report.get(key)
    if not isinstance(value, int):
        raise LlmqModelError(f"the memory probe ({report.get('mode')}) reported no {key}")
    return value


def probe(
    spec: ProbeArgs | str | None,
    mode: Literal["fp32", "int8", "baseline"],
    *,
    timeout: float = PROBE_TIMEOUT_S,
) -> ProbeReport:
    """Run :mod:`.rss_probe` once and return its JSON report (all sizes in bytes).

    ``spec`` is a model string (as for ``--llmq-model``) or a dict with ``model`` and
    optionally ``scheme``, ``cache_dir``, ``device``, ``trust_remote_code``,
    ``new_tokens`` (8) and ``threads``. Only ``baseline`` may go without a model.
    """
    if mode == "baseline" and spec is None:
        args: ProbeArgs = {"mode": mode}
    else:
        args = {**_probe_args(spec if spec is not None else {}), "mode": mode}
    return _finish_probe(_start_probe(args), args, timeout)


def peak_rss(
    spec: ProbeArgs | str, precision: Precision, *, timeout: float = PROBE_TIMEOUT_S
) -> int:
    """Peak RSS in bytes of a fresh process that loads the model and generates 8 tokens.

    ``precision="fp32"`` loads the reference; ``"int8"`` loads it and builds the INT8 copy
    in that process (the ``scheme`` route), so its peak includes the reference it was built
    from; the ``serve_peak_bytes`` of :func:`probe` is the peak after the reference is freed.
    The number includes the interpreter, torch and transformers: subtract
    :func:`baseline_rss` to get the model's share.
    """
    if precision not in ("fp32", "int8"):
        raise LlmqUsageError(f"peak_rss(precision={precision!r}): use 'fp32' or 'int8'")
    return report_bytes(probe(spec, precision, timeout=timeout), "peak_bytes")


def baseline_rss(spec: ProbeArgs | str | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> int:
    """Peak RSS of a fresh process that does what a probe does except hold weights:
    the same imports and, given ``spec``, the same tokenizer and model code (the model
    built on the meta device). Subtract it from :func:`peak_rss`."""
    return report_bytes(probe(spec, "baseline", timeout=timeout), "peak_bytes")


def with_int8(base: ProbeArgs, int8_probe: ProbeArgs | str | None) -> ProbeArgs:
    """The INT8 probe's arguments: the reference's, with the INT8 side's own over them
    (``{"route": ..., ...}`` from its probe spec; a scheme name: that scheme rebuilt)."""
    extra = (
        {"scheme": int8_probe} if isinstance(int8_probe, str) or int8_probe is None else int8_probe
    )
    if base.get("route") == "runtime" and extra.get("route") != "runtime":
        # the reference runs in a runtime and the INT8 side in torch: not the reference's file
        base = {k: v for k, v in base.items() if k not in ("route", "runtime", "runtime_file")}
    return {**base, **{k: v for k, v in extra.items() if v is not None}, "mode": "int8"}


def measure_rss(
    spec: ProbeArgs | str, int8_probe: ProbeArgs | str | None
) -> tuple[int, int, ProbeDetails]:
    """(reference, INT8, details): serve-phase peaks minus the baseline.

    ``int8_probe`` is the INT8 side's probe arguments (its
    :class:`~pytest_llmquant.sides.base.ProbeSpec`), or a scheme name. The three probes
    run one after another: side by side they would each be fine on their own RSS, but
    together they can hold three models at once, which a machine sized for one model
    does not have.
    """
    base_args = _probe_args(spec)
    if isinstance(int8_probe, dict) and int8_probe.get("preload"):
        # every probe imports the runtimes alike (both sides' where they differ)
        wanted = [str(base_args.get("preload") or ""), str(int8_probe["preload"])]
        base_args["preload"] = ",".join(dict.fromkeys(m for w in wanted for m in w.split(",") if m))
    runs: dict[str, ProbeArgs] = {
        "baseline": {**base_args, "mode": "baseline"},
        "fp32": {**base_args, "mode": "fp32"},
        "int8": with_int8(base_args, int8_probe),
    }
    reports = {mode: _finish_probe(_start_probe(a), a, PROBE_TIMEOUT_S) for mode, a in runs.items()}
    base = report_bytes(reports["baseline"], "peak_bytes")
    phase = (
        "serve" if all(reports[m].get("serve_peak_bytes") for m in ("fp32", "int8")) else "total"
    )
    key = "serve_peak_bytes" if phase == "serve" else "peak_bytes"
    reference = report_bytes(reports["fp32"], key) - base
    int8 = report_bytes(reports["int8"], key) - base
    return reference, int8, {"phase": phase, "baseline_bytes": base, "probes": reports}


def rss_note(details: ProbeDetails, made: str) -> str:
    """One line for the report: what was compared, and the whole-life peaks."""
    probes = details["probes"]
    note = (
        f"peak RSS while generating 8 tokens in a fresh process, minus "
        f"{details['baseline_bytes'] / 1e6:.0f} MB for python+torch+transformers "
        f"(phase {details['phase']}); whole-life peaks incl. loading: reference "
        f"{report_bytes(probes['fp32'], 'peak_bytes') / 1e6:.0f} MB, INT8 "
        f"{report_bytes(probes['int8'], 'peak_bytes') / 1e6:.0f} MB ({made})"
    )
    anon, mapped = probes["int8"].get("serve_anon_bytes"), probes["int8"].get("serve_file_bytes")
    if isinstance(anon, int) and isinstance(mapped, int):  # a runtime that maps its file
        note += f"; INT8 resident after generating: {anon / 1e6:.0f} MB anonymous, "
        note += f"{mapped / 1e6:.0f} MB file-backed (its mapped file, which the kernel may drop)"
    return note
