"""The JSON report (``--llmq-report=FILE``) and the strict-JSON rules all outputs share.

Every pair, its coverage and every gate result with its measurement, thresholds,
verdict, message and table rows, plus the versions and settings the numbers were taken
with, so a CI artifact can be read without the log. Strict JSON: NaN and infinities
become ``null`` (JSON has no NaN; ``json.loads`` in other languages rejects it).
Written atomically (:mod:`.files`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..versions import library_versions
from .files import atomic_write
from .session_view import option, results_by_pair

#: shared by the report and the baseline file: a reader checks it before trusting a file
SCHEMA_VERSION = 1
REPORT_KIND = "pytest-llmquant report"


def strict_json(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Non-finite floats become None; tuples and sets become lists; numpy scalars become
    Python numbers; anything else unknown becomes its ``str`` rather than a crash at
    the end of a long run.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [strict_json(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return strict_json(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def json_text(data: Any) -> str:
    """``data`` as indented strict JSON text, ending in a newline."""
    return json.dumps(strict_json(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def finite_number(value: Any) -> float | None:
    """A finite float, or None for a missing, null or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def versions() -> dict[str, str]:
    """Versions that change the numbers. torch and transformers are read only when already
    imported: a report must not pay a multi-second torch import (or fail without it)."""
    out = {"python": platform.python_version()}
    try:
        import pytest

        out["pytest"] = pytest.__version__
    except ImportError:  # pragma: no cover - we are a pytest plugin
        pass
    out.update(library_versions(imported_only=True))
    try:
        from importlib.metadata import version as dist_version

        out["pytest-llmquant"] = dist_version("pytest-llmquant")
    except Exception:  # not installed as a distribution (a source checkout)
        from .. import __version__

        out["pytest-llmquant"] = __version__
    return out


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
    return strict_json(data)


def write_json_report(session: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`report_dict` to ``path`` atomically; returns the path written."""
    return atomic_write(path, json_text(report_dict(session)))
