"""The Markdown summary: ``--llmq-report-md=FILE``, else ``$GITHUB_STEP_SUMMARY``.

One table per pair and a one-line overall verdict. The step summary is *appended* to,
because other steps of the same job write there too; it is left alone when no gate and
no model ran, so installing the plugin does not clutter unrelated jobs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..jsonfiles import atomic_write

if TYPE_CHECKING:
    from ..run.record import RunRecord
    from ..verdicts import GateResult, Row


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


_VERDICT_MD = {"ok": "✅ ok", "FAIL": "❌ **FAIL**", "info": "info"}


def _reference_cell(row: Row) -> str:
    """The reference column of a row, whether ``verdicts.Row`` names it ``reference``
    or (before its rename) ``fp32``."""
    cells: dict[str, str] = vars(row)
    return cells["reference"] if "reference" in cells else cells["fp32"]


def overall_verdict(record: RunRecord) -> str:
    """One line: how many gates ran and which failed."""
    results = record.results
    if not results:
        return "pytest-llmquant: no quantization gate ran"
    failed = [r for r in results if not r.passed]
    n_pairs = len({r.pair for r in results})
    where = f"on {n_pairs} pair{'s' if n_pairs != 1 else ''}"
    if not failed:
        return f"pytest-llmquant: all {len(results)} gates passed {where}"
    names = "; ".join(f"{r.pair}: {r.gate}" for r in failed)
    return f"pytest-llmquant: {len(failed)} of {len(results)} gates FAILED {where} ({names})"


def _table(results: list[GateResult]) -> list[str]:
    """One table of all of a pair's rows, the reference column named by its precision."""
    rows = [row for r in results for row in r.rows]
    if not rows:
        return []
    lines = [
        f"| metric | {results[0].reference} | INT8 | ratio | threshold | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.metric, _reference_cell(row), row.int8, row.ratio, row.threshold)
        verdict = _VERDICT_MD.get(row.verdict, row.verdict)
        lines.append("| " + " | ".join(_cell(c) for c in (*cells, verdict)) + " |")
    return [*lines, ""]


def markdown_summary(record: RunRecord) -> str:
    """A Markdown section: settings, then per pair its coverage and one table of all its
    gates' rows, then the overall verdict line."""
    results = record.results
    failed = any(not r.passed for r in results)
    schemes = ", ".join(record.schemes) or "-"
    threads = "?" if record.threads is None else record.threads
    lines = [
        "## pytest-llmquant",
        "",
        f"{threads} threads, device {record.device}, schemes: {schemes}",
        "",
    ]
    for name, pair_results in record.results_by_pair().items():
        lines += [f"### {_cell(name)}", ""]
        cov = record.coverages.get(name)
        if cov is not None:
            lines += [f"Coverage: {_cell(cov)}", ""]
        lines += _table(pair_results)
        for r in pair_results:
            if not r.passed or r.close:
                lines += [f"> {_cell(r.message)}", ""]
    mark = "❌" if failed else ("✅" if results else "ℹ️")
    lines.append(f"**{mark} {overall_verdict(record)}**")
    return "\n".join(lines) + "\n"


def write_markdown(record: RunRecord) -> tuple[Path, bool] | None:
    """Write the summary to ``--llmq-report-md`` (replaced), else append it to
    ``$GITHUB_STEP_SUMMARY``; returns (path, appended) or None when nothing was written.

    The step summary is only written when a model or gate ran: every pytest run in a
    job with the plugin installed would otherwise add an empty section.
    """
    target = record.settings.report_md if record.settings is not None else None
    if target:
        return atomic_write(target, markdown_summary(record)), False
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not step_summary:
        return None
    if not (record.results or record.coverages):
        return None
    path = Path(step_summary)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + markdown_summary(record))
    return path, True
