"""Merge the JSON reports, or the baselines, of several jobs into one file.

A CI matrix (model × scheme × device, see ``examples/ci/matrix.yml``) runs one job per
cell, and each writes its own ``--llmq-report`` and ``--llmq-save-baseline``. This joins
them so that one file holds every pair::

    python -m pytest_llmquant.merge --out merged.json a.json b.json ...

Reports and baselines are told apart by their ``kind``; mixing them, or files of another
``schema_version``, is refused in one line. A pair is keyed by its name, plus
``@ device`` off the CPU (:func:`~pytest_llmquant.baseline.store.pair_key`), so the same
model and scheme measured on CPU and CUDA are two entries, and ``--llmq-baseline`` finds
a job's own entry in the merged baseline. The same pair measured differently in two
files is refused unless ``--last-wins`` (then the later file's entry is kept). Entries
that are equal merge silently: re-running a merge over the same artifacts is harmless.

Exit status: 0 merged (also when some gates failed: the jobs themselves fail for
that), 2 refused, with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .baseline.store import pair_key
from .errors import LlmqUsageError
from .jsonfiles import BASELINE_KIND, REPORT_KIND, SCHEMA_VERSION, atomic_write, json_text

_WHAT = {REPORT_KIND: "report", BASELINE_KIND: "baseline"}
#: what a merged entry gains and two measurements of a pair may differ in harmlessly
_BOOKKEEPING = ("source",)


def _read(path: str) -> dict[str, Any]:
    """One input file, checked: a JSON object of a known kind and this schema version."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlmqUsageError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmqUsageError(
            f"cannot read {path} ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    except json.JSONDecodeError as exc:
        raise LlmqUsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict):
        raise LlmqUsageError(
            f"{path} is not a pytest-llmquant report or baseline (no 'pairs' object); "
            "pass files written by --llmq-report or --llmq-save-baseline"
        )
    if data.get("kind") not in _WHAT:
        raise LlmqUsageError(
            f"{path} has kind {data.get('kind')!r}, not {REPORT_KIND!r} or {BASELINE_KIND!r}; "
            "pass files written by --llmq-report or --llmq-save-baseline"
        )
    return data


def _device(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Any:
    if data.get("kind") == BASELINE_KIND:
        return (entry.get("measured_on") or {}).get("device")
    return entry.get("device") or (data.get("settings") or {}).get("device")


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    for key in dict.fromkeys([*a, *b]):
        if key not in _BOOKKEEPING and a.get(key) != b.get(key):
            shown = [json.dumps(x.get(key), ensure_ascii=False) for x in (a, b)]
            if max(len(s) for s in shown) > 40:
                return f"their {key} differ"
            return f"{key} {shown[0]} vs {shown[1]}"
    return "nothing"


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = (set(a) | set(b)) - set(_BOOKKEEPING)
    return all(a.get(k) == b.get(k) for k in keys)


def _common(values: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The entries every mapping shares with the same value (e.g. the torch version)."""
    if not values:
        return {}
    first = values[0]
    return {k: v for k, v in first.items() if all(m.get(k, object()) == v for m in values[1:])}


def merge_files(
    paths: Sequence[str], *, last_wins: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """(merged data, replaced): the files' pairs in one dict of their kind, and one line per
    pair that ``last_wins`` replaced. Raises a one-line :class:`LlmqUsageError` for a file
    that cannot be merged."""
    if not paths:
        raise LlmqUsageError("nothing to merge; pass the JSON reports or baselines to merge")
    files = [(p, _read(p)) for p in paths]
    first_path, first = files[0]
    for path, data in files[1:]:
        if data.get("schema_version") != first.get("schema_version"):
            raise LlmqUsageError(
                f"cannot merge {first_path} (schema_version {first.get('schema_version')!r}) "
                f"with {path} (schema_version {data.get('schema_version')!r}); merge files "
                "written by the same pytest-llmquant"
            )
        if data["kind"] != first["kind"]:
            raise LlmqUsageError(
                f"cannot merge {first_path} (a {_WHAT[first['kind']]}) with {path} (a "
                f"{_WHAT[data['kind']]}); merge reports and baselines separately"
            )
    if first.get("schema_version") != SCHEMA_VERSION:
        raise LlmqUsageError(
            f"{first_path} has schema_version {first.get('schema_version')!r}; this "
            f"pytest-llmquant merges version {SCHEMA_VERSION}: use the version that wrote it"
        )
    pairs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    replaced: list[str] = []
    for path, data in files:
        for name, entry in data["pairs"].items():
            if not isinstance(entry, dict):
                raise LlmqUsageError(f"{path}: pair {name!r} is not a JSON object")
            device = _device(data, entry)
            key = name if name.endswith(f" @ {device}") else pair_key(name, device)
            entry = {**entry, "source": entry.get("source") or Path(path).name}
            if data["kind"] == REPORT_KIND and device is not None:
                entry.setdefault("device", device)
            if key in pairs and not _same(pairs[key], entry):
                if not last_wins:
                    raise LlmqUsageError(
                        f"{origin[key]} and {path} both hold {key!r}, measured differently "
                        f"({_first_difference(pairs[key], entry)}); merge one of them, or "
                        "pass --last-wins to keep the later file's"
                    )
                replaced.append(f"{key}: {origin[key]} replaced by {path}")
            pairs[key] = entry
            origin[key] = path
    sources = [
        {
            "file": Path(path).name,
            **{
                k: data[k]
                for k in ("created", "versions", "settings", "load_times_s", "passed", "counts")
                if k in data
            },  # fmt: skip
        }
        for path, data in files
    ]
    merged: dict[str, Any] = {
        "schema_version": first["schema_version"],
        "kind": first["kind"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _common([d.get("versions") or {} for _, d in files]),
    }
    if first["kind"] == REPORT_KIND:
        gates = [g for e in pairs.values() for g in e.get("gates") or []]
        merged["settings"] = _common([d.get("settings") or {} for _, d in files])
        merged["passed"] = all(e.get("passed") is not False for e in pairs.values())
        merged["counts"] = {
            "gates": len(gates),
            "failed": sum(g.get("passed") is False for g in gates),
        }
    merged["merged_from"] = sources
    merged["pairs"] = pairs
    return merged, replaced


def summary(merged: Mapping[str, Any], out: str, n_files: int) -> list[str]:
    """A few lines for the log: how many pairs, and which passed or failed."""
    pairs: Mapping[str, Any] = merged["pairs"]
    what = _WHAT[merged["kind"]]
    lines = [f"pytest-llmquant merge: {n_files} {what}s -> {out}: {len(pairs)} pairs"]
    if merged["kind"] == BASELINE_KIND:
        lines += [f"  {name}" for name in pairs]
        return lines
    failed = [name for name, e in pairs.items() if e.get("passed") is False]
    counts = merged["counts"]
    lines[0] += (
        f", {len(pairs) - len(failed)} passed, {len(failed)} failed "
        f"({counts['gates']} gates, {counts['failed']} failed)"
    )
    for name, entry in pairs.items():
        bad = [g.get("gate", "?") for g in entry.get("gates") or [] if g.get("passed") is False]
        lines.append(
            f"  {'FAILED' if bad else 'passed'} {name}" + (f": {', '.join(bad)}" if bad else "")
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmquant.merge",
        description="Merge the --llmq-report files, or the --llmq-save-baseline files, of "
        "several jobs into one.",
    )
    parser.add_argument("--out", required=True, help="the merged file (written atomically)")
    parser.add_argument(
        "--last-wins",
        action="store_true",
        help="when two files hold the same pair measured differently, keep the later one's",
    )
    parser.add_argument("files", nargs="+", help="reports or baselines (not both)")
    args = parser.parse_args(argv)
    try:
        merged, replaced = merge_files(args.files, last_wins=args.last_wins)
        atomic_write(args.out, json_text(merged))
    except LlmqUsageError as exc:
        print(f"pytest-llmquant merge: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pytest-llmquant merge: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    for line in summary(merged, args.out, len(args.files)):
        print(line)
    for line in replaced:
        print(f"  replaced (--last-wins): {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
