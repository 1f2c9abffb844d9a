"""The JSON report (``--llmq-report=FILE``).

Every pair, its coverage and every gate result with its measurement, thresholds,
verdict, message and table rows, plus the versions and settings the numbers were taken
with, so a CI artifact can be read without the log. Strict JSON, written atomically
(:mod:`pytest_llmquant.jsonfiles`, which also holds the rules the baseline file shares).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..jsonfiles import REPORT_KIND, SCHEMA_VERSION, atomic_write, json_text, strict_copy, versions
from ..jsonfiles import strict_json as strict_json  # plugin.py imports it from here
from .session_view import option, results_by_pair


def _models(session: Any) -> list[dict[str, str]]:
    sources = getattr(session, "sources", None) or []
    labels = getattr(session, "labels", None) or []
    return [
        {"label": label, "spec": str(getattr(src, "spec", src))}
        for src, label in zip(sources, labels, strict=False)
    ]


# -- JSON report -------------------------------------------------------------------------------


def report_dict(session: Any) -> dict[str, Any]:
    """Everything measured and decided in this run, as strict-JSON-ready data."""
    settings: dict[str, Any] = {
        "threads": getattr(session, "threads", None),
        "device": getattr(session, "device", None),
        "schemes": list(getattr(session, "schemes", None) or []),
        "models": _models(session),
    }
    for name in ("reference_dtype", "eval_tokens", "new_tokens", "time_budget"):
        value = option(session, name)
        if value is not None:
            settings[name] = value
    coverages = getattr(session, "coverages", None) or {}
    known = getattr(session, "pairs", None) or {}
    pairs: dict[str, Any] = {}
    for name, results in results_by_pair(session).items():
        cov = coverages.get(name)
        pairs[name] = {
            **{k: v for k, v in known.get(name, {}).items() if k != "coverage"},
            "coverage": cov.as_dict() if cov is not None else None,
            "passed": all(r.passed for r in results),
            "gates": [{**r.as_dict(), "verdict": "pass" if r.passed else "fail"} for r in results],
        }
    results = list(getattr(session, "results", None) or [])
    load_times = getattr(session, "load_times", None) or {}
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": settings,
        "load_times_s": dict(load_times),
        "passed": all(r.passed for r in results),
        "counts": {"gates": len(results), "failed": sum(not r.passed for r in results)},
        "pairs": pairs,
    }
    return strict_copy(data)


def write_json_report(session: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`report_dict` to ``path`` atomically; returns the path written."""
    return atomic_write(path, json_text(report_dict(session)))
