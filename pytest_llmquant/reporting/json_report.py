"""The JSON report (``--llmq-report=FILE``).

Every pair, its coverage and every gate result with its measurement, thresholds,
verdict, message and table rows, plus the versions and settings the numbers were taken
with, so a CI artifact can be read without the log. Strict JSON, written atomically
(:mod:`pytest_llmquant.jsonfiles`, which also holds the rules the baseline file shares).
Its keys are those every earlier version wrote (the merge tool reads older reports).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from ..jsonfiles import REPORT_KIND, SCHEMA_VERSION, atomic_write, json_text, strict_copy, versions
from ..jsonfiles import strict_json as strict_json  # plugin.py imports it from here

if TYPE_CHECKING:
    from ..run.record import RunRecord
    from ..verdicts import GateResult


class ModelEntry(TypedDict):
    label: str  # the short name results carry
    spec: str  # the --llmq-model value


class ReportSettings(TypedDict, total=False):
    """What the numbers were taken with; the last four only when the run had settings."""

    threads: int | None
    device: str
    schemes: list[str]
    models: list[ModelEntry]
    reference_dtype: str
    eval_tokens: int
    new_tokens: int
    time_budget: float


class ReportPair(TypedDict, total=False):
    """One pair: its summary (model, reference dtype, INT8 origin), coverage and gates."""

    model: str
    reference_dtype: str
    int8: dict[str, object]  # Int8Origin.as_dict
    coverage: dict[str, object] | None  # Coverage.as_dict; None for a pair without one
    passed: bool
    gates: list[dict[str, object]]  # GateResult.as_dict, plus "verdict": pass or fail


class Counts(TypedDict):
    gates: int
    failed: int


class ReportDict(TypedDict):
    schema_version: int
    kind: str  # REPORT_KIND
    created: str  # ISO 8601, UTC
    versions: dict[str, str]
    settings: ReportSettings
    load_times_s: dict[str, float]  # --llmq-model value -> seconds
    passed: bool
    counts: Counts
    pairs: dict[str, ReportPair]


def _settings(record: RunRecord) -> ReportSettings:
    out = ReportSettings(
        threads=record.threads,
        device=record.device,
        schemes=list(record.schemes),
        models=[ModelEntry(label=s.label, spec=s.spec) for s in record.sources],
    )
    if record.settings is not None:
        out["reference_dtype"] = record.settings.reference_dtype
        out["eval_tokens"] = record.settings.eval_tokens
        out["new_tokens"] = record.settings.new_tokens
        out["time_budget"] = record.settings.time_budget
    return out


def _pair(record: RunRecord, name: str, results: list[GateResult]) -> ReportPair:
    summary = record.pairs.get(name) or {}
    out = ReportPair()
    if "model" in summary:
        out["model"] = summary["model"]
    if "reference_dtype" in summary:
        out["reference_dtype"] = summary["reference_dtype"]
    if "int8" in summary:
        out["int8"] = dict(summary["int8"])
    cov = record.coverages.get(name)
    out["coverage"] = cov.as_dict() if cov is not None else None
    out["passed"] = all(r.passed for r in results)
    out["gates"] = [{**r.as_dict(), "verdict": "pass" if r.passed else "fail"} for r in results]
    return out


def report_dict(record: RunRecord) -> ReportDict:
    """Everything measured and decided in this run, as strict-JSON-ready data."""
    results = record.results
    return strict_copy(
        ReportDict(
            schema_version=SCHEMA_VERSION,
            kind=REPORT_KIND,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            versions=versions(),
            settings=_settings(record),
            load_times_s={spec: load.seconds for spec, load in record.loads.items()},
            passed=all(r.passed for r in results),
            counts=Counts(gates=len(results), failed=sum(not r.passed for r in results)),
            pairs={
                name: _pair(record, name, pair_results)
                for name, pair_results in record.results_by_pair().items()
            },
        )
    )


def write_json_report(record: RunRecord, path: str | os.PathLike[str]) -> Path:
    """Write :func:`report_dict` to ``path`` atomically; returns the path written."""
    return atomic_write(path, json_text(report_dict(record)))
