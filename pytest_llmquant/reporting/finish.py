"""The end of a run: write the files the options ask for, compare with a baseline.

The plugin calls :func:`finish_session` once per run in the controller (after the
terminal summary, and still under ``--no-summary``; never in an xdist worker, whose
results the controller has); its return value is the exit status to force, so a
quality regression can fail a run whose tests all passed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..baseline.compare import compare_to_baseline
from ..baseline.store import baseline_dict, load_baseline
from ..errors import LlmqUsageError
from ..jsonfiles import atomic_write, json_text
from ..settings import Settings
from .json_report import write_json_report
from .markdown import write_markdown

if TYPE_CHECKING:
    from ..run.record import RunRecord
    from .terminal import TerminalLines

#: the exit status of a usage error (pytest's): an output or the baseline failed
USAGE_ERROR = 4
#: the exit status of a run whose metrics regressed against the baseline
REGRESSED = 1


def _say(tr: TerminalLines | None, line: str, **markup: bool) -> None:
    if tr is not None:
        tr.write_line(line, **markup)
    else:  # no terminal reporter (-p no:terminal): still tell the user
        sys.stderr.write(line + "\n")


def obtained_path(baseline: str | os.PathLike[str]) -> Path:
    """Where a regressed run leaves its own baseline: ``base.json`` ->
    ``base.obtained.json`` next to it (pytest-regressions' convention)."""
    path = Path(baseline)
    return path.with_name(f"{path.stem}.obtained{path.suffix or '.json'}")


def _regressed(record: RunRecord, baseline: str) -> str:
    """The closing line of a regressed run; writes the obtained baseline beside the
    expected one, so that accepting the change is one copy and a diff shows it."""
    line = f"pytest-llmquant: quality regressed against baseline {baseline}"
    obtained = obtained_path(baseline)
    try:
        atomic_write(obtained, json_text(baseline_dict(record)))
    except OSError as exc:
        return f"{line}; could not write this run's baseline to {obtained}: {exc}"
    return (
        f"{line}; this run's baseline is in {obtained}: review it and copy it over "
        f"{baseline} to accept the change"
    )


def _failed(tr: TerminalLines | None, what: str, exc: BaseException) -> bool:
    _say(tr, f"pytest-llmquant: {what}: {exc}", red=True)
    return True


def _write_report(record: RunRecord, report: str | None, tr: TerminalLines | None) -> bool:
    """``--llmq-report``; True when it could not be written."""
    if not report:
        return False
    try:
        _say(tr, f"pytest-llmquant: wrote report {write_json_report(record, report)}")
    except OSError as exc:
        return _failed(tr, f"could not write report {report}", exc)
    return False


def _write_markdown(record: RunRecord, tr: TerminalLines | None) -> bool:
    """``--llmq-report-md`` or the step summary; True when it could not be written."""
    try:
        written = write_markdown(record)
    except OSError as exc:
        return _failed(tr, "could not write the Markdown summary", exc)
    if written is not None:
        path, appended = written
        verb = "appended Markdown summary to" if appended else "wrote Markdown summary"
        _say(tr, f"pytest-llmquant: {verb} {path}")
    return False


def _save_baseline(record: RunRecord, save: str | None, tr: TerminalLines | None) -> bool:
    """``--llmq-save-baseline`` (not over a good file with nothing); True when it failed."""
    if not save:
        return False
    data = baseline_dict(record)
    if not data.get("pairs"):
        _say(
            tr,
            f"pytest-llmquant: baseline {save} not written: no gate measured anything in this run",
            yellow=True,
        )
        return False
    try:
        atomic_write(save, json_text(data))
    except OSError as exc:
        return _failed(tr, f"could not write baseline {save}", exc)
    _say(tr, f"pytest-llmquant: wrote baseline {save}")
    return False


def _compare(record: RunRecord, settings: Settings, tr: TerminalLines | None) -> int | None:
    """``--llmq-baseline``: the exit status to force (a regression, or a baseline that
    cannot be read or was measured on another text or setting), or None."""
    source = settings.baseline
    if not source:
        return None
    notes: list[str] = []
    try:
        baseline = load_baseline(source)
        regressions = compare_to_baseline(
            record, baseline, notes=notes, z=settings.baseline_z, source=source
        )
    except LlmqUsageError as exc:  # unreadable, or measured on another text or setting
        _say(tr, f"pytest-llmquant: {exc}", red=True)
        return USAGE_ERROR
    for line in notes:
        _say(tr, f"note: {line}")
    for line in regressions:
        _say(tr, line, red=True)
    if regressions:
        _say(tr, _regressed(record, source), red=True)
        return REGRESSED
    _say(tr, f"pytest-llmquant: no regression against baseline {source}", green=True)
    return None


def finish_session(record: RunRecord, terminalreporter: TerminalLines | None) -> int | None:
    """Write the files the options ask for and compare with ``--llmq-baseline``.

    Returns the exit status to force, or None: 1 when a metric regressed against the
    baseline (this run's baseline is then written beside it, see :func:`obtained_path`),
    4 (pytest's usage error) when an output or the baseline could not be written or
    read, or the baseline was measured on another text or setting. A record without
    settings (built by hand) writes only the step summary.
    """
    tr = terminalreporter
    settings = record.settings if record.settings is not None else Settings()
    failed = [
        _write_report(record, settings.report, tr),
        _write_markdown(record, tr),
        _save_baseline(record, settings.save_baseline, tr),
    ]
    return _compare(record, settings, tr) or (USAGE_ERROR if any(failed) else None)
