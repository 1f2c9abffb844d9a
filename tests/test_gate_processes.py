"""A runtime side's child process is part of the gate, not "another process".

Two llama.cpp children timed in turn once read as a machine kept busy by others (2.0 of 2
cores) and their threads as stalled, because the meter counted only the pytest process.
The child's CPU now counts as the gate's own, and the child's OpenMP threads stop spinning
soon after each step so that they do not slow the other side's (``CHILD_SPINCOUNT``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_llmquant import gate_processes
from pytest_llmquant.sides.child import CHILD_SPINCOUNT, ChildSide
from pytest_llmquant.speed import contention
from pytest_llmquant.speed.contention import ProcMeter

STANDIN = '''
import os
import time

import numpy as np


class Busy:
    """Says who it is, and burns CPU for a while when asked to score."""

    def __init__(self, path, threads=1):
        pass

    def describe(self):
        return {"vocab_size": 8, "context_length": 64, "pid": os.getpid(),
                "spincount": os.environ.get("GOMP_SPINCOUNT")}

    def set_threads(self, threads):
        pass

    def scored_logits(self, ids, n_scored):
        until = time.process_time() + 0.4
        while time.process_time() < until:
            sum(i * i for i in range(10_000))
        return np.zeros((n_scored, 8), dtype=np.float32)
'''


@pytest.fixture
def busy_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "standin_busy.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    side = ChildSide(
        "standin_busy:Busy", {"path": "m.bin", "threads": 1}, label="busy", runtime="stand-in",
        what="m.bin",
    )  # fmt: skip
    yield side
    side.close()


def test_a_runtime_child_counts_as_the_gate_while_it_lives(busy_side: ChildSide) -> None:
    pid = int(str(busy_side.facts()["pid"]))
    assert pid in gate_processes.GATE_PROCESSES
    busy_side.close()
    assert pid not in gate_processes.GATE_PROCESSES


def test_the_childs_openmp_threads_spin_briefly_unless_the_user_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_side: ChildSide
) -> None:
    assert busy_side.facts()["spincount"] == CHILD_SPINCOUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "77")
    mine = ChildSide("standin_busy:Busy", {"path": "m.bin"}, label="b", runtime="s", what="m")
    try:
        assert mine.facts()["spincount"] == "77"
    finally:
        mine.close()


@pytest.mark.skipif(
    not Path("/proc/self/schedstat").exists(), reason="the kernel counters are Linux's"
)
def test_the_childs_cpu_time_is_the_gates_own(busy_side: ChildSide) -> None:
    import torch

    busy_side.facts()  # started, so its loading is not in the window
    meter = ProcMeter()
    start, own = meter.read(), time.process_time()
    busy_side.scored_logits(torch.zeros(1, 4, dtype=torch.long), 2)  # 0.4 s of child CPU
    end = meter.read()
    assert time.process_time() - own < 0.2  # this process itself mostly waited
    assert end.own_cpu - start.own_cpu >= 0.35  # and the child's CPU counts as the gate's


def test_a_helpers_threads_are_summed_with_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for task, stat in (("self/task/1", "2000000000 100000000 5"), ("42/task/42", "1000000000 0 3")):
        (tmp_path / task).mkdir(parents=True)
        (tmp_path / task / "schedstat").write_text(stat)
    monkeypatch.setattr(contention, "_PROC", tmp_path)
    monkeypatch.setattr(contention, "_TASKS", tmp_path / "self" / "task")
    monkeypatch.setattr(gate_processes, "GATE_PROCESSES", {42})
    counters = ProcMeter().read()
    assert (counters.threads_run, counters.threads_wait) == (3.0, 0.1)
    assert counters.own_cpu >= 1.0  # the helper's second of CPU is ours
    monkeypatch.setattr(gate_processes, "GATE_PROCESSES", {43})  # a helper that has ended
    assert (ProcMeter().read().threads_run, ProcMeter().read().threads_wait) == (2.0, 0.1)
