"""The baseline file: the comparable metrics of a run, written and read back.

Only what a later run can be compared with is kept, per pair: ``mean_kld``,
``same_top``, ``ppl_ratio`` (similarity) each with its standard error (``<metric>_se``),
``speedup`` with its interval, ``memory_ratio`` (weights) or ``memory_ratio_<kind>``
(other memory kinds), and ``measured_on``: what the numbers depend on besides the
models (the evaluation text's SHA-256, the scored tokens, the window, the reference
dtype, the device), so that a later run on another text or setting is refused rather
than compared. A file that cannot be read, or is not a baseline, is a one-line usage
error that says how to make one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import LlmqUsageError
from ..jsonfiles import (
    BASELINE_KIND,
    REPORT_KIND,
    SCHEMA_VERSION,
    atomic_write,
    finite_number,
    json_text,
    strict_copy,
    versions,
)
from ..reporting.session_view import results_by_pair

#: similarity metric -> the measurement key of its standard error
SIMILARITY_SE = {"mean_kld": "kld_se", "same_top": "same_top_se", "ppl_ratio": "ppl_ratio_se"}
#: what a similarity measurement was taken on: baseline key -> measurement key
SIMILARITY_SETUP = {
    "eval_text": "eval_text",
    "eval_text_sha256": "eval_text_sha256",
    "eval_tokens": "n_tokens",
    "window": "window",
}


def _measured_on(results: list[Any], summary: dict[str, Any], device: Any) -> dict[str, Any]:
    """What one pair's numbers depend on besides the models; only what is known."""
    out: dict[str, Any] = {}
    for r in results:
        m = r.measurement or {}
        if r.gate == "quant_similarity":
            out.update({k: m[key] for k, key in SIMILARITY_SETUP.items() if m.get(key) is not None})
            for key in ("reference_dtype", "device"):
                if m.get(key) is not None:
                    out.setdefault(key, m[key])
    if summary.get("reference_dtype"):
        out.setdefault("reference_dtype", summary["reference_dtype"])
    if device:
        out.setdefault("device", device)
    return out


def _pair_metrics(results: Iterable[Any]) -> dict[str, Any]:
    """The comparable metrics of one pair's gate results.

    Similarity is deterministic, so any of its results will do. Of several speedup
    measurements (one per threshold) the one with the most pairs is kept: it has the
    narrowest interval. Memory ratios are kept per kind: ``memory_ratio`` for weights,
    ``memory_ratio_<kind>`` for the others, which measure different things.
    """
    out: dict[str, Any] = {}
    best_pairs = -1
    for r in results:
        m = r.measurement or {}
        if r.gate == "quant_similarity":
            for key, se in SIMILARITY_SE.items():
                if finite_number(m.get(key)) is not None:
                    out[key] = finite_number(m.get(key))
                    if finite_number(m.get(se)) is not None:
                        out[f"{key}_se"] = finite_number(m.get(se))
        elif r.gate == "quant_speedup" and finite_number(m.get("speedup")) is not None:
            n = int(finite_number(m.get("n_pairs")) or 0)
            if n > best_pairs:
                best_pairs = n
                out["speedup"] = finite_number(m.get("speedup"))
                out["speedup_ci_low"] = finite_number(m.get("ci_low"))
                out["speedup_ci_high"] = finite_number(m.get("ci_high"))
        elif r.gate == "quant_memory" and finite_number(m.get("ratio")) is not None:
            kind = str(m.get("kind") or r.thresholds.get("kind") or "weights")
            key = "memory_ratio" if kind == "weights" else f"memory_ratio_{kind}"
            out[key] = finite_number(m.get("ratio"))
    return out


def baseline_dict(session: Any) -> dict[str, Any]:
    """The metrics of this run that a later run can be compared with (only those measured)."""
    pairs: dict[str, Any] = {}
    summaries = getattr(session, "pairs", None) or {}
    for name, results in results_by_pair(session).items():
        metrics = _pair_metrics(results)
        if metrics:
            setup = _measured_on(
                results, summaries.get(name) or {}, getattr(session, "device", None)
            )
            pairs[name] = {**metrics, **({"measured_on": setup} if setup else {})}
    return strict_copy(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": BASELINE_KIND,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "pairs": pairs,
        }
    )


def write_baseline(session: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`baseline_dict` to ``path`` atomically; returns the path written."""
    return atomic_write(path, json_text(baseline_dict(session)))


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline file, or raise a one-line :class:`LlmqUsageError` saying how to fix it."""
    fix = f"create it with --llmq-save-baseline={path} on a good run"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmqUsageError(f"baseline file {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise LlmqUsageError(f"cannot read baseline file {path} ({reason}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmqUsageError(
            f"baseline file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); re-{fix}"
        ) from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == REPORT_KIND:
        raise LlmqUsageError(f"baseline file {path} is a --llmq-report file, not a baseline; {fix}")
    problem = None
    if not isinstance(data, dict):
        problem = "not a JSON object"
    elif data.get("schema_version") != SCHEMA_VERSION:
        problem = f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
    elif kind not in (None, BASELINE_KIND):
        problem = f"kind {kind!r}"
    elif not isinstance(data.get("pairs"), dict) or not all(
        isinstance(v, dict) for v in data["pairs"].values()
    ):
        problem = "no 'pairs' object of per-pair metrics"
    if problem:
        raise LlmqUsageError(
            f"baseline file {path} is not a pytest-llmquant baseline ({problem}); re-{fix}"
        )
    return data


def pair_key(name: str, device: Any) -> str:
    """The key of a pair in a baseline or a merged report: its name, plus ``@ device`` off
    the CPU, so that one file can hold the same pair measured on several devices (a CI
    matrix, see :mod:`pytest_llmquant.merge`)."""
    return name if not device or device == "cpu" else f"{name} @ {device}"


def find_pair(pairs: Mapping[str, Any], name: str, device: Any) -> tuple[str, Any] | None:
    """(key, entry) of pair ``name`` measured on ``device``: the device-qualified key of a
    merged file first, then the plain name of a single run's file."""
    for key in dict.fromkeys((pair_key(name, device), name)):
        if key in pairs:
            return key, pairs[key]
    return None
