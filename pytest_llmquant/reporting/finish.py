"""The end of a run: write the files the options ask for, compare with a baseline.

The plugin calls :func:`finish_session` once per run (after the terminal summary, and
still under ``--no-summary``); its return value is the exit status to force, so a
quality regression can fail a run whose tests all passed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..baseline.compare import DEFAULT_Z, compare_to_baseline
from ..baseline.store import baseline_dict, load_baseline
from ..errors import LlmqUsageError
from ..jsonfiles import atomic_write, json_text
from .json_report import write_json_report
from .markdown import write_markdown
from .session_view import option


def _say(tr: Any, line: str, **markup: bool) -> None:
    if tr is not None:
        tr.write_line(line, **markup)
    else:  # no terminal reporter (-p no:terminal): still tell the user
        sys.stderr.write(line + "\n")


def obtained_path(baseline: str | os.PathLike[str]) -> Path:
    """Where a regressed run leaves its own baseline: ``base.json`` ->
    ``base.obtained.json`` next to it (pytest-regressions' convention)."""
    path = Path(baseline)
    return path.with_name(f"{path.stem}.obtained{path.suffix or '.json'}")


def _regressed(session: Any, baseline: str) -> str:
    """The closing line of a regressed run; writes the obtained baseline beside the
    expected one, so that accepting the change is one copy and a diff shows it."""
    line = f"pytest-llmquant: quality regressed against baseline {baseline}"
    obtained = obtained_path(baseline)
    try:
        atomic_write(obtained, json_text(baseline_dict(session)))
    except OSError as exc:
        return f"{line}; could not write this run's baseline to {obtained}: {exc}"
    return (
        f"{line}; this run's baseline is in {obtained}: review it and copy it over "
        f"{baseline} to accept the change"
    )


def finish_session(session: Any, terminalreporter: Any) -> int | None:
    """Write the files the options ask for and compare with ``--llmq-baseline``.

    Returns the exit status to force, or None: 1 when a metric regressed against the
    baseline (this run's baseline is then written beside it, see :func:`obtained_path`),
    4 (pytest's usage error) when an output or the baseline could not be written or
    read, or the baseline was measured on another text or setting. Does nothing in an
    xdist worker: the controller writes the files.
    """
    config = getattr(session, "config", None)
    if config is not None and hasattr(config, "workerinput"):
        return None
    tr = terminalreporter
    status: int | None = None

    def failed(what: str, exc: BaseException) -> None:
        nonlocal status
        _say(tr, f"pytest-llmquant: {what}: {exc}", red=True)
        status = status or 4

    report = option(session, "report")
    if report:
        try:
            _say(tr, f"pytest-llmquant: wrote report {write_json_report(session, report)}")
        except OSError as exc:
            failed(f"could not write report {report}", exc)
    try:
        written = write_markdown(session)
    except OSError as exc:
        failed("could not write the Markdown summary", exc)
    else:
        if written is not None:
            path, appended = written
            verb = "appended Markdown summary to" if appended else "wrote Markdown summary"
            _say(tr, f"pytest-llmquant: {verb} {path}")
    save = option(session, "save_baseline")
    if save:
        data = baseline_dict(session)
        if not data["pairs"]:
            _say(
                tr,
                f"pytest-llmquant: baseline {save} not written: no gate measured anything "
                "in this run",
                yellow=True,
            )
        else:
            try:
                atomic_write(save, json_text(data))
                _say(tr, f"pytest-llmquant: wrote baseline {save}")
            except OSError as exc:
                failed(f"could not write baseline {save}", exc)
    compare = option(session, "baseline")
    if compare:
        try:
            baseline = load_baseline(compare)
        except LlmqUsageError as exc:
            _say(tr, f"pytest-llmquant: {exc}", red=True)
            return status or 4
        notes: list[str] = []
        z = option(session, "baseline_z")
        try:
            regressions = compare_to_baseline(
                session, baseline, notes=notes, z=DEFAULT_Z if z is None else z, source=compare
            )
        except LlmqUsageError as exc:  # measured on another text or setting
            _say(tr, f"pytest-llmquant: {exc}", red=True)
            return status or 4
        for line in notes:
            _say(tr, f"note: {line}")
        for line in regressions:
            _say(tr, line, red=True)
        if regressions:
            _say(tr, _regressed(session, compare), red=True)
            return 1
        _say(tr, f"pytest-llmquant: no regression against baseline {compare}", green=True)
    return status
