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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .baseline.store import pair_key
from .errors import LlmqUsageError
from .jsonfiles import BASELINE_KIND, REPORT_KIND, SCHEMA_VERSION, atomic_write, json_text
from .types import JSONValue

_WHAT = {REPORT_KIND: "report", BASELINE_KIND: "baseline"}
#: what a merged entry gains and two measurements of a pair may differ in harmlessly
_BOOKKEEPING = ("source",)
#: what each input file's ``merged_from`` entry keeps of its top level
_KEPT = ("created", "versions", "settings", "load_times_s", "passed", "counts")

#: a JSON object: a file's top level, a pair's entry
JSONObject = dict[str, JSONValue]


@dataclass(frozen=True)
class _Input:
    """One input file, read and checked: a JSON object of a known kind with ``pairs``."""

    path: str
    data: JSONObject
    pairs: JSONObject  # pair key -> entry (each checked to be an object when merged)

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def schema_version(self) -> JSONValue:
        return self.data.get("schema_version")


def _object(value: JSONValue) -> JSONObject:
    """``value`` when it is a JSON object, else {} (a missing or odd optional field)."""
    return value if isinstance(value, dict) else {}


def _list(value: JSONValue) -> list[JSONValue]:
    """``value`` when it is a JSON array, else []."""
    return value if isinstance(value, list) else []


def _read(path: str) -> _Input:
    """One input file, checked: a JSON object of a known kind and this schema version."""
    try:
        data: JSONValue = json.loads(Path(path).read_text(encoding="utf-8"))
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
    return _Input(path, data, _object(data["pairs"]))


def _device(file: _Input, entry: JSONObject) -> JSONValue:
    if file.kind == BASELINE_KIND:
        return _object(entry.get("measured_on")).get("device")
    return entry.get("device") or _object(file.data.get("settings")).get("device")


def _first_difference(a: Mapping[str, JSONValue], b: Mapping[str, JSONValue]) -> str:
    for key in dict.fromkeys([*a, *b]):
        if key not in _BOOKKEEPING and a.get(key) != b.get(key):
            shown = [json.dumps(x.get(key), ensure_ascii=False) for x in (a, b)]
            if max(len(s) for s in shown) > 40:
                return f"their {key} differ"
            return f"{key} {shown[0]} vs {shown[1]}"
    return "nothing"


def _same(a: Mapping[str, JSONValue], b: Mapping[str, JSONValue]) -> bool:
    keys = (set(a) | set(b)) - set(_BOOKKEEPING)
    return all(a.get(k) == b.get(k) for k in keys)


def _common(values: Sequence[JSONObject]) -> JSONObject:
    """The entries every mapping shares with the same value (e.g. the torch version)."""
    if not values:
        return {}
    first = values[0]
    return {k: v for k, v in first.items() if all(m.get(k, object()) == v for m in values[1:])}


def _check_mergeable(files: Sequence[_Input]) -> None:
    """All of one kind and one schema version, the version this merge writes."""
    first = files[0]
    for file in files[1:]:
        if file.schema_version != first.schema_version:
            raise LlmqUsageError(
                f"cannot merge {first.path} (schema_version {first.schema_version!r}) "
                f"with {file.path} (schema_version {file.schema_version!r}); merge files "
                "written by the same pytest-llmquant"
            )
        if file.kind != first.kind:
            raise LlmqUsageError(
                f"cannot merge {first.path} (a {_WHAT[first.kind]}) with {file.path} (a "
                f"{_WHAT[file.kind]}); merge reports and baselines separately"
            )
    if first.schema_version != SCHEMA_VERSION:
        raise LlmqUsageError(
            f"{first.path} has schema_version {first.schema_version!r}; this "
            f"pytest-llmquant merges version {SCHEMA_VERSION}: use the version that wrote it"
        )


def _entries(file: _Input) -> list[tuple[str, JSONObject]]:
    """(merged key, entry) of each pair of one file: keyed by device, marked with its file."""
    out = []
    for name, value in file.pairs.items():
        if not isinstance(value, dict):
            raise LlmqUsageError(f"{file.path}: pair {name!r} is not a JSON object")
        device = _device(file, value)
        key = name if name.endswith(f" @ {device}") else pair_key(name, device)
        entry: JSONObject = {**value, "source": value.get("source") or Path(file.path).name}
        if file.kind == REPORT_KIND and device is not None:
            entry.setdefault("device", device)
        out.append((key, entry))
    return out


def _merge_pairs(files: Sequence[_Input], last_wins: bool) -> tuple[JSONObject, list[str]]:
    """(pairs, replaced): every file's pairs in file order; the same pair measured
    differently is refused, or with ``last_wins`` replaced (one line each)."""
    pairs: JSONObject = {}
    origin: dict[str, str] = {}
    replaced: list[str] = []
    for file in files:
        for key, entry in _entries(file):
            if key in pairs and not _same(_object(pairs[key]), entry):
                if not last_wins:
                    raise LlmqUsageError(
                        f"{origin[key]} and {file.path} both hold {key!r}, measured differently "
                        f"({_first_difference(_object(pairs[key]), entry)}); merge one of them, "
                        "or pass --last-wins to keep the later file's"
                    )
                replaced.append(f"{key}: {origin[key]} replaced by {file.path}")
            pairs[key] = entry
            origin[key] = file.path
    return pairs, replaced


def _merged(files: Sequence[_Input], pairs: JSONObject) -> JSONObject:
    """The merged file: the top level the inputs share, their own in ``merged_from``."""
    first = files[0]
    merged: JSONObject = {
        "schema_version": first.schema_version,
        "kind": first.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _common([_object(f.data.get("versions")) for f in files]),
    }
    if first.kind == REPORT_KIND:
        entries = [_object(e) for e in pairs.values()]
        gates = [_object(g) for e in entries for g in _list(e.get("gates"))]
        merged["settings"] = _common([_object(f.data.get("settings")) for f in files])
        merged["passed"] = all(e.get("passed") is not False for e in entries)
        merged["counts"] = {
            "gates": len(gates),
            "failed": sum(g.get("passed") is False for g in gates),
        }
    merged["merged_from"] = [
        {"file": Path(f.path).name, **{k: f.data[k] for k in _KEPT if k in f.data}} for f in files
    ]
    merged["pairs"] = pairs
    return merged


def merge_files(paths: Sequence[str], *, last_wins: bool = False) -> tuple[JSONObject, list[str]]:
    """(merged data, replaced): the files' pairs in one dict of their kind, and one line per
    pair that ``last_wins`` replaced. Raises a one-line :class:`LlmqUsageError` for a file
    that cannot be merged."""
    if not paths:
        raise LlmqUsageError("nothing to merge; pass the JSON reports or baselines to merge")
    files = [_read(p) for p in paths]
    _check_mergeable(files)
    pairs, replaced = _merge_pairs(files, last_wins)
    return _merged(files, pairs), replaced


def summary(merged: JSONObject, out: str, n_files: int) -> list[str]:
    """A few lines for the log: how many pairs, and which passed or failed."""
    pairs = {name: _object(e) for name, e in _object(merged["pairs"]).items()}
    kind = str(merged["kind"])
    lines = [f"pytest-llmquant merge: {n_files} {_WHAT[kind]}s -> {out}: {len(pairs)} pairs"]
    if kind == BASELINE_KIND:
        lines += [f"  {name}" for name in pairs]
        return lines
    failed = [name for name, e in pairs.items() if e.get("passed") is False]
    counts = _object(merged["counts"])
    lines[0] += (
        f", {len(pairs) - len(failed)} passed, {len(failed)} failed "
        f"({counts['gates']} gates, {counts['failed']} failed)"
    )
    for name, entry in pairs.items():
        gates = [_object(g) for g in _list(entry.get("gates"))]
        bad = [str(g.get("gate", "?")) for g in gates if g.get("passed") is False]
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
