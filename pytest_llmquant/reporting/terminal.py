"""The terminal summary: coverage per pair, then one table per pair of every gate run."""

from __future__ import annotations

from typing import Any

from ..verdicts import format_table


def write_terminal_summary(tr: Any, session: Any) -> None:
    from ..session import REFERENCE_LABELS

    tr.write_sep("=", "pytest-llmquant summary")
    dtype = session.settings.reference_dtype
    reference = REFERENCE_LABELS.get(dtype, dtype)  # the precision the reference was loaded in
    for spec, seconds in session.load_times.items():
        note = session.load_notes.get(spec)
        tr.write_line(
            f"{session.label_of(spec)}: {reference} loaded in {seconds:.1f} s"
            + (f" ({note})" if note else "")
        )
    for name, cov in session.coverages.items():
        int8 = (getattr(session, "pairs", {}).get(name) or {}).get("int8") or {}
        made = f"; {int8['label']}, made by the {int8['made_by']}" if "made_by" in int8 else ""
        runs = f", runs on the {int8['path']}" if int8.get("path") else ""
        tr.write_line(f"{name}: {cov}{made}{runs}")
    by_pair: dict[str, list[Any]] = {}
    for result in session.results:
        by_pair.setdefault(result.pair, []).append(result)
    for pair, results in by_pair.items():
        tr.write_line("")
        tr.write_line(f"{pair}  ({session.threads} threads, device {session.device})")
        rows = [row for r in results for row in r.rows]
        tr.write_line(format_table(rows, results[0].reference))
        for r in results:
            if r.close:
                tr.write_line(f"note: {r.message}")
