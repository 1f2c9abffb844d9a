"""The ``peak_rss`` memory kind: resident memory of fresh processes that serve the model.

Fresh processes (``python -m pytest_llmquant.memory.rss_probe``, see
:mod:`.rss_probe`) load the model (FP32; or FP32, build the INT8 copy, free the FP32)
and generate 8 tokens greedily. Compared: the peak from "loaded" through generating
(the serve phase), minus the peak of a process that does the same imports and builds
the model on the meta device. Fresh, because this process holds pytest, both models
and whatever other tests loaded. The whole-life peaks, loading included, are in
``details``: the INT8 one always exceeds the FP32 one, since the INT8 copy is built
from an FP32 model in the same process.

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
from typing import Any, Literal

from ..errors import LlmqModelError, LlmqUsageError

Precision = Literal["fp32", "int8"]

PROBE_MARK = "LLMQ-PROBE "
PROBE_TIMEOUT_S = 900.0
PROBE_MODULE = "pytest_llmquant.memory.rss_probe"


def _probe_args(spec: dict[str, Any] | str) -> dict[str, Any]:
    args = {"model": spec} if isinstance(spec, str) else dict(spec)
    if not isinstance(args.get("model"), str) or not args["model"]:
        raise LlmqUsageError(
            "peak_rss needs spec={'model': MODEL} (a --llmq-model value) or the model string itself"
        )
    return args


def _start_probe(args: dict[str, Any]) -> subprocess.Popen[str]:
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
    """Run :mod:`.rss_probe` once and return its JSON report (all sizes in bytes).

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


def measure_rss(
    spec: dict[str, Any] | str, int8_probe: dict[str, Any] | str | None
) -> tuple[int, int, dict[str, Any]]:
    """(reference, INT8, details): serve-phase peaks minus the baseline.

    ``int8_probe`` is the INT8 probe's own arguments (``{"scheme": ...}``, a saved directory or
    a GGUF; see :mod:`..int8.on_disk`), or a scheme name. The three probes run one after
    another: side by side they would each be fine on their own RSS, but together they can
    hold three models at once, which a machine sized for one model does not have.
    """
    base_args = _probe_args(spec)
    extra = (
        {"scheme": int8_probe}
        if isinstance(int8_probe, str) or int8_probe is None
        else dict(int8_probe)
    )
    runs = {
        "baseline": {**base_args, "mode": "baseline"},
        "fp32": {**base_args, "mode": "fp32"},
        "int8": {**base_args, **{k: v for k, v in extra.items() if v is not None}, "mode": "int8"},
    }
    reports = {mode: _finish_probe(_start_probe(a), a, PROBE_TIMEOUT_S) for mode, a in runs.items()}
    base = int(reports["baseline"]["peak_bytes"])
    phase = (
        "serve" if all(reports[m].get("serve_peak_bytes") for m in ("fp32", "int8")) else "total"
    )
    key = "serve_peak_bytes" if phase == "serve" else "peak_bytes"
    fp32 = int(reports["fp32"][key]) - base
    int8 = int(reports["int8"][key]) - base
    details = {"phase": phase, "baseline_bytes": base, "probes": reports}
    return fp32, int8, details
