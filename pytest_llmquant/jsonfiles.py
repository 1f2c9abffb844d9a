"""The JSON files a run leaves (report, baseline) and the merge tool joins: their schema
marks, the strict-JSON rules, the versions they record, and the atomic write.

Reporting, baselines and :mod:`pytest_llmquant.merge` all import this module, and it
imports none of them, so the dependency goes one way. Strict JSON: NaN and infinities
become ``null`` (JSON has no NaN; ``json.loads`` in other languages rejects it). Nothing
here imports pytest, torch or transformers: the merge job runs without them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar, cast

from .types import JSONValue
from .versions import library_versions

#: shared by the report and the baseline file: a reader checks it before trusting a file
SCHEMA_VERSION = 1
REPORT_KIND = "pytest-llmquant report"
BASELINE_KIND = "pytest-llmquant baseline"

_Shape = TypeVar("_Shape", bound=Mapping[str, object])


def strict_json(value: object) -> JSONValue:
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


def strict_copy(data: _Shape) -> _Shape:
    """:func:`strict_json` of a report or baseline dict, typed as its shape: the keys and
    nesting stay, only leaves that JSON cannot hold are replaced."""
    return cast(_Shape, strict_json(data))


def json_text(data: object) -> str:
    """``data`` as indented strict JSON text, ending in a newline."""
    return json.dumps(strict_json(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def finite_number(value: object) -> float | None:
    """A finite float, or None for a missing, null or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def versions() -> dict[str, str]:
    """Versions that change the numbers. torch and transformers are read only when already
    imported: a report must not pay a multi-second torch import (or fail without it)."""
    out = {"python": platform.python_version()}
    try:
        import pytest

        out["pytest"] = pytest.__version__
    except ImportError:  # the merge job runs without pytest
        pass
    out.update(library_versions(imported_only=True))
    try:
        from importlib.metadata import version as dist_version

        out["pytest-llmquant"] = dist_version("pytest-llmquant")
    except Exception:  # not installed as a distribution (a source checkout)
        from . import __version__

        out["pytest-llmquant"] = __version__
    return out


def atomic_write(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file in the target's directory, then ``os.replace`` it:
    readers (and a parallel run) see the old file or the new one, never half of one.
    Creates missing parent directories; returns the path written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target
