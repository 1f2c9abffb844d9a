"""The baseline file: the comparable metrics of a run, written and read back.

Only what a later run can be compared with is kept, per pair: ``mean_kld``,
``same_top``, ``ppl_ratio`` (similarity) each with its standard error (``<metric>_se``),
``speedup`` with its interval and the CPU contention it was sampled under (an
inconclusive speedup is not kept), ``memory_ratio`` (weights) or ``memory_ratio_<kind>``
(other memory kinds), and ``measured_on``: what the numbers depend on besides the
models (the evaluation text's SHA-256, the scored tokens, the window, the reference
dtype, the device), so that a later run on another text or setting is refused rather
than compared. A file that cannot be read, or is not a baseline, is a one-line usage
error that says how to make one.

The file's keys are those every earlier version wrote: none was renamed, so a baseline
saved by any version with ``schema_version`` 1 is read as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypedDict, TypeVar, cast

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
from ..types import JSONValue

if TYPE_CHECKING:
    from ..run.record import PairSummary, RunRecord
    from ..verdicts import GateResult

#: one pair's entry: metric name -> value (``memory_ratio_<kind>`` names vary, so not a
#: TypedDict), ``<metric>_se`` standard errors, and ``measured_on`` (a JSON object)
BaselinePair: TypeAlias = "dict[str, JSONValue]"


class BaselineDict(TypedDict, total=False):
    """A baseline file. A hand-written one may hold ``pairs`` alone (and ``schema_version``)."""

    schema_version: int
    kind: str  # BASELINE_KIND
    created: str  # ISO 8601, UTC
    versions: dict[str, str]  # python, pytest, pytest-llmquant, torch, transformers
    pairs: dict[str, BaselinePair]  # pair key (see pair_key) -> its metrics


#: similarity metric -> the measurement key of its standard error
SIMILARITY_SE = {"mean_kld": "kld_se", "same_top": "same_top_se", "ppl_ratio": "ppl_ratio_se"}
#: what a similarity measurement was taken on: baseline key -> measurement key
SIMILARITY_SETUP = {
    "eval_text": "eval_text",
    "eval_text_sha256": "eval_text_sha256",
    "eval_tokens": "n_tokens",
    "window": "window",
}


def measured_on(entry: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """What a baseline pair entry says it was measured on ({} when it does not say)."""
    value = entry.get("measured_on")
    return value if isinstance(value, dict) else {}


def _measured_on(
    results: Iterable[GateResult], summary: PairSummary, device: str
) -> dict[str, JSONValue]:
    """What one pair's numbers depend on besides the models; only what is known."""
    out: dict[str, JSONValue] = {}
    for r in results:
        m = r.measurement
        if r.gate == "quant_similarity":
            out.update({k: m[key] for k, key in SIMILARITY_SETUP.items() if m.get(key) is not None})
            for key in ("reference_dtype", "device"):
                if m.get(key) is not None:
                    out.setdefault(key, m[key])
    if summary.get("reference_dtype"):
        out.setdefault("reference_dtype", summary["reference_dtype"])
    # a ratio across runtimes answers another question: never compared with a same-runtime one
    int8 = summary.get("int8") or {}
    out["int8_runtime"] = str(int8.get("runtime") or "torch")
    out["reference_runtime"] = summary.get("reference_runtime") or "torch"
    if device:
        out.setdefault("device", device)
    return out


def _decided_speedup(m: Mapping[str, JSONValue]) -> bool:
    """A speedup the gate could judge: an inconclusive one (the CPU too busy) measured
    the machine's load as much as the models, so no later run is compared with it."""
    return m.get("verdict") != "inconclusive" and finite_number(m.get("speedup")) is not None


def _pair_metrics(results: Iterable[GateResult]) -> dict[str, float | None]:
    """The comparable metrics of one pair's gate results.

    Similarity is deterministic, so any of its results will do. Of several speedup
    measurements (one per threshold) the one with the most pairs is kept: it has the
    narrowest interval. Memory ratios are kept per kind: ``memory_ratio`` for weights,
    ``memory_ratio_<kind>`` for the others, which measure different things.
    """
    out: dict[str, float | None] = {}
    best_pairs = -1
    for r in results:
        m = r.measurement
        if r.gate == "quant_similarity":
            for key, se in SIMILARITY_SE.items():
                if finite_number(m.get(key)) is not None:
                    out[key] = finite_number(m.get(key))
                    if finite_number(m.get(se)) is not None:
                        out[f"{key}_se"] = finite_number(m.get(se))
        elif r.gate == "quant_speedup" and _decided_speedup(m):
            n = int(finite_number(m.get("n_pairs")) or 0)
            if n > best_pairs:
                best_pairs = n
                out["speedup"] = finite_number(m.get("speedup"))
                out["speedup_ci_low"] = finite_number(m.get("ci_low"))
                out["speedup_ci_high"] = finite_number(m.get("ci_high"))
                # how busy the CPU was while it was sampled (a later run can tell why
                # its speedup moved)
                for key in ("cpu_stalled", "cpu_others"):
                    if finite_number(m.get(key)) is not None:
                        out[f"speedup_{key}"] = finite_number(m.get(key))
        elif r.gate == "quant_memory" and finite_number(m.get("ratio")) is not None:
            kind = str(m.get("kind") or r.thresholds.get("kind") or "weights")
            key = "memory_ratio" if kind == "weights" else f"memory_ratio_{kind}"
            out[key] = finite_number(m.get("ratio"))
    return out


def baseline_dict(record: RunRecord) -> BaselineDict:
    """The metrics of this run that a later run can be compared with (only those measured)."""
    pairs: dict[str, BaselinePair] = {}
    for name, results in record.results_by_pair().items():
        metrics = _pair_metrics(results)
        if metrics:
            entry: BaselinePair = {**metrics}
            setup = _measured_on(results, record.pairs.get(name) or {}, record.device)
            if setup:
                entry["measured_on"] = setup
            pairs[name] = entry
    return strict_copy(
        BaselineDict(
            schema_version=SCHEMA_VERSION,
            kind=BASELINE_KIND,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            versions=versions(),
            pairs=pairs,
        )
    )


def write_baseline(record: RunRecord, path: str | os.PathLike[str]) -> Path:
    """Write :func:`baseline_dict` to ``path`` atomically; returns the path written."""
    return atomic_write(path, json_text(baseline_dict(record)))


def _read_json(path: str | os.PathLike[str], fix: str) -> JSONValue:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmqUsageError(f"baseline file {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise LlmqUsageError(f"cannot read baseline file {path} ({reason}); {fix}") from None
    try:
        data: JSONValue = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmqUsageError(
            f"baseline file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); re-{fix}"
        ) from None
    return data


def _problem(data: JSONValue) -> str | None:
    """Why ``data`` is not a baseline, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
    if data.get("kind") not in (None, BASELINE_KIND):
        return f"kind {data.get('kind')!r}"
    pairs = data.get("pairs")
    if not isinstance(pairs, dict) or not all(isinstance(v, dict) for v in pairs.values()):
        return "no 'pairs' object of per-pair metrics"
    return None


def load_baseline(path: str | os.PathLike[str]) -> BaselineDict:
    """Read a baseline file, or raise a one-line :class:`LlmqUsageError` saying how to fix it."""
    fix = f"create it with --llmq-save-baseline={path} on a good run"
    data = _read_json(path, fix)
    if isinstance(data, dict) and data.get("kind") == REPORT_KIND:
        raise LlmqUsageError(f"baseline file {path} is a --llmq-report file, not a baseline; {fix}")
    problem = _problem(data)
    if problem:
        raise LlmqUsageError(
            f"baseline file {path} is not a pytest-llmquant baseline ({problem}); re-{fix}"
        )
    return cast(BaselineDict, data)  # checked by _problem: an object with an object of pairs


def pair_key(name: str, device: object) -> str:
    """The key of a pair in a baseline or a merged report: its name, plus ``@ device`` off
    the CPU, so that one file can hold the same pair measured on several devices (a CI
    matrix, see :mod:`pytest_llmquant.merge`)."""
    return name if not device or device == "cpu" else f"{name} @ {device}"


_Entry = TypeVar("_Entry")


def find_pair(pairs: Mapping[str, _Entry], name: str, device: object) -> tuple[str, _Entry] | None:
    """(key, entry) of pair ``name`` measured on ``device``: the device-qualified key of a
    merged file first, then the plain name of a single run's file."""
    for key in dict.fromkeys((pair_key(name, device), name)):
        if key in pairs:
            return key, pairs[key]
    return None
