"""The Markdown summary: ``--llmq-report-md=FILE``, else ``$GITHUB_STEP_SUMMARY``.

One table per pair and a one-line overall verdict. The step summary is *appended* to,
because other steps of the same job write there too; it is left alone when no gate and
no model ran, so installing the plugin does not clutter unrelated jobs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..jsonfiles import atomic_write
from .session_view import option, results_by_pair


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


_VERDICT_MD = {"ok": "✅ ok", "FAIL": "❌ **FAIL**", "info": "info"}


def overall_verdict(session: Any) -> str:
    """One line: how many gates ran and which failed."""
    results = list(getattr(session, "results", None) or [])
    if not results:
        return "pytest-llmquant: no quantization gate ran"
    failed = [r for r in results if not r.passed]
    n_pairs = len({r.pair for r in results})
    where = f"on {n_pairs} pair{'s' if n_pairs != 1 else ''}"
    if not failed:
        return f"pytest-llmquant: all {len(results)} gates passed {where}"
    names = "; ".join(f"{r.pair}: {r.gate}" for r in failed)
    return f"pytest-llmquant: {len(failed)} of {len(results)} gates FAILED {where} ({names})"


def markdown_summary(session: Any) -> str:
    """A Markdown section: settings, then per pair its coverage and one table of all its
    gates' rows, then the overall verdict line."""
    results = list(getattr(session, "results", None) or [])
    failed = any(not r.passed for r in results)
    schemes = ", ".join(getattr(session, "schemes", None) or []) or "-"
    lines = [
        "## pytest-llmquant",
        "",
        f"{getattr(session, 'threads', '?')} threads, device {getattr(session, 'device', '?')}, "
        f"schemes: {schemes}",
        "",
    ]
    coverages = getattr(session, "coverages", None) or {}
    for name, pair_results in results_by_pair(session).items():
        lines += [f"### {_cell(name)}", ""]
        cov = coverages.get(name)
        if cov is not None:
            lines += [f"Coverage: {_cell(cov)}", ""]
        rows = [row for r in pair_results for row in r.rows]
        if rows:
            lines.append("| metric | FP32 | INT8 | ratio | threshold | verdict |")
            lines.append("|---|---|---|---|---|---|")
            for row in rows:
                cells = (row.metric, row.fp32, row.int8, row.ratio, row.threshold)
                verdict = _VERDICT_MD.get(row.verdict, row.verdict)
                lines.append("| " + " | ".join(_cell(c) for c in (*cells, verdict)) + " |")
            lines.append("")
        for r in pair_results:
            if not r.passed or r.close:
                lines += [f"> {_cell(r.message)}", ""]
    mark = "❌" if failed else ("✅" if results else "ℹ️")
    lines.append(f"**{mark} {overall_verdict(session)}**")
    return "\n".join(lines) + "\n"


def write_markdown(session: Any) -> tuple[Path, bool] | None:
    """Write the summary to ``--llmq-report-md`` (replaced), else append it to
    ``$GITHUB_STEP_SUMMARY``; returns (path, appended) or None when nothing was written.

    The step summary is only written when a model or gate ran: every pytest run in a
    job with the plugin installed would otherwise add an empty section.
    """
    target = option(session, "report_md")
    if target:
        return atomic_write(target, markdown_summary(session)), False
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not step_summary:
        return None
    if not (getattr(session, "results", None) or getattr(session, "coverages", None)):
        return None
    path = Path(step_summary)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + markdown_summary(session))
    return path, True
