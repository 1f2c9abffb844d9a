"""How contended the CPU was: the counters read from /proc, the figures made from two
readings, and the default threads chosen from the cores that are free.

The figures are checked on fixed counter text and injected readings; one test reads the
real counters of this machine and checks only that they are there and in range.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from speed_fakes import FakeClock, FakeMeter

from pytest_llmquant.speed import contention
from pytest_llmquant.speed.contention import (
    Contention,
    CpuCounters,
    ProcMeter,
    between,
    free_cores,
    timing_threads,
)

STAT = """cpu  300 0 100 500 10 0 5 0 0 0
cpu0 100 0 50 200 5 0 5 0 0 0
cpu1 200 0 50 300 5 0 0 0 0 0
cpu2 999 0 999 0 0 0 0 0 0 0
intr 12345
"""


def test_cpu_seconds_sum_only_the_cpus_this_process_may_use() -> None:
    hz = contention.os.sysconf("SC_CLK_TCK")
    busy, total = contention._cpu_seconds(STAT, [0, 1])  # type: ignore[misc]
    # busy: user + nice + system + irq + softirq + steal; idle and iowait are idle
    assert busy == pytest.approx((100 + 50 + 5 + 200 + 50) / hz)
    assert total == pytest.approx((100 + 50 + 5 + 200 + 5 + 200 + 50 + 300 + 5) / hz)
    assert contention._cpu_seconds(STAT, [7]) is None


def test_thread_seconds_sum_every_thread_of_the_process(tmp_path: Path) -> None:
    for tid, text in (("11", "2000000000 500000000 7\n"), ("12", "1000000000 0 3\n")):
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "schedstat").write_text(text)
    (tmp_path / "13").mkdir()  # a thread whose schedstat is gone: skipped
    assert contention._thread_seconds(tmp_path) == (3.0, 0.5)
    assert contention._thread_seconds(tmp_path / "missing") is None


def test_between_two_readings() -> None:
    """Others' CPU is everyone's busy time less this process's own; the stall is the
    share of the gate's runnable thread time spent waiting for a core."""
    start = CpuCounters(wall=10.0, own_cpu=5.0, cpu_busy=100.0, cpu_total=400.0,
                        threads_run=4.0, threads_wait=1.0)  # fmt: skip
    # 2 s on 2 cores: 4 s of CPU, 3.5 s of it busy, 1.5 s of that ours
    end = CpuCounters(wall=12.0, own_cpu=6.5, cpu_busy=103.5, cpu_total=404.0,
                      threads_run=5.5, threads_wait=2.0)  # fmt: skip
    seen = between(start, end, cores=2, threads=1)
    assert seen.seconds == pytest.approx(2.0)
    assert seen.others == pytest.approx(2 * 3.5 / 4.0 - 1.5 / 2.0)  # 1.0 core
    assert seen.stalled == pytest.approx(1.0 / (1.5 + 1.0))  # 40%
    assert seen.busy and seen.measured


def test_without_counters_nothing_is_measured() -> None:
    bare = CpuCounters(wall=1.0, own_cpu=0.0)
    seen = between(bare, CpuCounters(wall=2.0, own_cpu=0.5), cores=2, threads=2)
    assert seen.others is None and seen.stalled is None
    assert not seen.measured and not seen.busy
    assert seen.short() == "not measured"


def test_the_figures_read_as_one_clause() -> None:
    seen = Contention(cores=2, threads=2, seconds=3.0, others=1.04, stalled=0.413)
    assert seen.describe() == (
        "3.0 threads wanted the 2 cores (the gate's 2 and 1.0 from other processes) and the "
        "gate's threads waited for a core 41% of the time"
    )
    assert seen.short() == "waited 41%, others 1.0 of 2 cores"
    no_stat = Contention(cores=1, threads=1, seconds=3.0, others=None, stalled=0.02)
    assert no_stat.describe() == "the gate's 1 thread waited for a core 2% of the time"


def test_free_cores_watch_an_idle_window() -> None:
    clock = FakeClock()
    meter = FakeMeter(clock, cores=4, others=1.5)
    assert free_cores(meter, window=0.25) == pytest.approx(2.5)
    assert meter.slept == [0.25]
    assert free_cores(FakeMeter(clock, others=None)) is None


@pytest.mark.parametrize(
    ("asked", "others", "expected"),
    [
        (3, 1.9, 3),  # asked for: kept, whatever the load
        (None, 0.0, 4),  # a quiet machine: all cores
        (None, 0.25, 4),  # a core 75% idle counts as free
        (None, 1.0, 3),  # one core busy: one thread fewer
        (None, 1.3, 2),
        (None, 3.9, 1),  # at least one
        (None, None, 4),  # no counters: all cores, as before
    ],
)
def test_timing_threads(asked: int | None, others: float | None, expected: int) -> None:
    meter = FakeMeter(FakeClock(), cores=4, others=others)
    threads, note = timing_threads(asked, meter, all_cores=4)
    assert threads == expected
    assert (note == "") == (threads == 4 or asked is not None)


def test_the_note_says_why_fewer_threads() -> None:
    threads, note = timing_threads(None, FakeMeter(FakeClock(), cores=2, others=1.0), 2)
    assert (threads, note) == (1, "1 thread, not 2: 1.0 of 2 cores were free when the gate started")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/schedstat").exists(),
    reason="the kernel counters are Linux's (with schedstats)",
)
def test_the_real_counters_are_read_on_linux() -> None:
    meter = ProcMeter()
    start = meter.read()
    # Work of our own for a few of /proc/stat's 10 ms ticks: over a window shorter than one
    # tick the CPU's busy and total times may not move, and `others` is then rightly None.
    until = time.monotonic() + 0.2
    while time.monotonic() < until:
        sum(i * i for i in range(10_000))
    seen = between(start, meter.read(), cores=meter.cores(), threads=1)
    assert meter.cores() >= 1 and seen.measured
    assert seen.stalled is not None and 0.0 <= seen.stalled <= 1.0
    assert seen.others is not None and 0.0 <= seen.others <= meter.cores()
