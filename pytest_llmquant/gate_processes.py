"""Which processes measure for the gate: a runtime side's child (:mod:`.sides.child`).

Their CPU time and their threads' waits are the gate's own, not "other processes": two
llama.cpp children timed in turn are one gate, not a busy machine. The children register
here and the contention meter (:mod:`.speed.contention`) reads the set; a module of its
own, so that neither of those sub-packages imports the other for it.
"""

from __future__ import annotations

#: the pids counted as the gate's own CPU
GATE_PROCESSES: set[int] = set()


def count_as_gate(pid: int) -> None:
    """Count process ``pid`` as part of the gate until :func:`stop_counting` (or it ends)."""
    GATE_PROCESSES.add(pid)


def stop_counting(pid: int) -> None:
    GATE_PROCESSES.discard(pid)
