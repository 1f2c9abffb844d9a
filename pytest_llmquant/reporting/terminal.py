"""The terminal summary: load times, coverage per pair, then one table per pair of every
gate run. Also the few terminal methods every writer of this package uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..verdicts import format_table

if TYPE_CHECKING:
    from ..run.record import RunRecord
    from ..verdicts import GateResult


class TerminalLines(Protocol):
    """What the writers need of pytest's ``TerminalReporter``: whole lines, with markup."""

    def write_line(self, line: str, **markup: bool) -> None: ...


class TerminalSummary(TerminalLines, Protocol):
    """...and a separator line, for the summary's title."""

    def write_sep(self, sep: str, title: str | None = None, **markup: bool) -> None: ...


def write_terminal_summary(tr: TerminalSummary, record: RunRecord) -> None:
    tr.write_sep("=", "pytest-llmquant summary")
    reference = record.reference_label  # the precision the reference was loaded in
    for spec, load in record.loads.items():
        tr.write_line(
            f"{record.label_of(spec)}: {reference} loaded in {load.seconds:.1f} s"
            + (f" ({load.note})" if load.note else "")
        )
    for name, cov in record.coverages.items():
        int8 = (record.pairs.get(name) or {}).get("int8") or {}
        made = f"; {int8['label']}, made by the {int8['made_by']}" if "made_by" in int8 else ""
        if int8.get("bits_label"):
            made += f" ({int8['bits_label']})"
        runs = f", runs on the {int8['path']}" if int8.get("path") else ""
        tr.write_line(f"{name}: {cov}{made}{runs}")
    threads = "?" if record.threads is None else record.threads
    by_pair: dict[str, list[GateResult]] = {}  # in the order the gates ran
    for result in record.results:
        by_pair.setdefault(result.pair, []).append(result)
    for pair, results in by_pair.items():
        tr.write_line("")
        tr.write_line(f"{pair}  ({threads} threads, device {record.device})")
        rows = [row for r in results for row in r.rows]
        tr.write_line(format_table(rows, results[0].reference))
        for r in results:
            if r.close:
                tr.write_line(f"note: {r.message}")
