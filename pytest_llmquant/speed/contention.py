"""How contended the CPU was while the speed gate sampled, from the kernel's own counters.

Why the gate needs this: the paired design assumes that both halves of a pair suffer the
same machine. On a busy machine they do not. A reference that runs two threads in each
parallel region stalls at every barrier whenever one of its threads is descheduled, while
an INT8 step that runs mostly on one thread barely notices. On a 2-core box with one core
kept busy the gate measured FP32 at 275-777 ms/token against 31 quiet, and reported
2.5-6.4x against a true 1.31x (issue 21). More pairs do not help: the bias is in every
pair. So the gate measures the contention and refuses to decide where it could be fooled
(:mod:`.sampler`).

Two figures, both over the sampling window only (warm-up excluded):

* ``stalled``: the fraction of the time the gate's own threads were ready to run but
  waited for a core (``/proc/self/task/*/schedstat``: run and run-queue wait nanoseconds
  per thread). It is the direct measure of the harm: a quiet machine gives ~0-3%, two
  threads beside a busy core ~30-50%. Above :data:`STALL_BOUND` the CPU counts as busy.
* ``others``: cores' worth of CPU that other processes used meanwhile, on the CPUs this
  process may run on (``/proc/stat`` busy time of those CPUs minus this process's own CPU
  time). It explains the stall: "1.0 of 2 cores used by others beside the gate's 2
  threads".

Where the counters do not exist (macOS, Windows, a kernel without schedstats) the figures
are None and the gate decides as it always did; the result says the contention was not
measured.

:func:`free_cores` reads the same counters over a short idle window at the start of a
gate: the gate's default threads are the cores that are really free then
(:func:`timing_threads`), so that the gate itself does not oversubscribe a shared runner.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import gate_processes

#: the gate's threads may wait for a core at most this fraction of their runnable time
#: while it samples; above it the CPU counts as busy (quiet: ~0-3%; 2 threads beside a
#: busy core on 2 cores: ~30-50%)
STALL_BOUND = 0.10

#: seconds the gate watches an idle CPU before it picks its default threads
FREE_CORES_WINDOW_S = 0.25

#: a core counts as free when at least this fraction of it was idle: 1.75 idle cores
#: give 2 threads, 1.6 give 1
FREE_CORE_IDLE = 0.75

_PROC_STAT = Path("/proc/stat")
_PROC = Path("/proc")
_TASKS = _PROC / "self" / "task"
_IDLE_COLUMNS = (3, 4)  # idle, iowait in a /proc/stat "cpuN" line (after the name)
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal


@dataclass(frozen=True)
class CpuCounters:
    """One reading of the counters contention is computed from (cumulative seconds)."""

    wall: float  # time.monotonic()
    own_cpu: float  # CPU seconds of this process, all threads (time.process_time)
    cpu_busy: float | None = None  # non-idle seconds of the CPUs this process may use
    cpu_total: float | None = None  # all seconds of those CPUs (busy + idle)
    threads_run: float | None = None  # seconds this process's threads ran on a core
    threads_wait: float | None = None  # seconds they waited, runnable, for a core


@dataclass(frozen=True)
class Contention:
    """How busy the CPU was over one window (see the module docstring)."""

    cores: int  # CPUs this process may run on
    threads: int  # compute threads the gate ran
    seconds: float  # length of the window
    others: float | None  # cores' worth of CPU used by other processes meanwhile
    stalled: float | None  # fraction of their runnable time the gate's threads waited

    @property
    def measured(self) -> bool:
        return self.stalled is not None

    @property
    def busy(self) -> bool:
        """Whether the gate's threads waited for a core more than :data:`STALL_BOUND`."""
        return self.stalled is not None and self.stalled > STALL_BOUND

    def describe(self) -> str:
        """One clause for a message: ``3.0 threads wanted the 2 cores (the gate's 2 and
        1.0 from other processes) and the gate's threads waited for a core 41% of the time``."""
        if self.stalled is None:
            return "the CPU contention could not be measured here (no /proc schedstat)"
        waited = f"waited for a core {self.stalled:.0%} of the time"
        if self.others is None:
            return f"the gate's {_threads(self.threads)} {waited}"
        wanted = self.threads + self.others
        return (
            f"{wanted:.1f} threads wanted the {self.cores} "
            f"core{'s' if self.cores != 1 else ''} (the gate's {self.threads} and "
            f"{self.others:.1f} from other processes) and the gate's threads {waited}"
        )

    def short(self) -> str:
        """For a table cell: ``waited 41%, others 1.0 of 2 cores``."""
        if self.stalled is None:
            return "not measured"
        others = "" if self.others is None else f", others {self.others:.1f} of {self.cores} cores"
        return f"waited {self.stalled:.0%}{others}"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


class CpuMeter(Protocol):
    """Where counters come from: :class:`ProcMeter` on Linux; tests inject readings."""

    def cores(self) -> int: ...

    def read(self) -> CpuCounters: ...

    def sleep(self, seconds: float) -> None: ...


def usable_cpus() -> tuple[int, ...]:
    """The CPU numbers this process may run on (taskset / cgroup cpuset)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return tuple(range(os.cpu_count() or 1))


def _cpu_seconds(stat: str, cpus: Iterable[int]) -> tuple[float, float] | None:
    """``(busy, total)`` seconds of ``cpus`` from the text of ``/proc/stat``."""
    wanted = {f"cpu{n}" for n in cpus}
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = total = 0
    seen = 0
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        ticks = [int(x) for x in rest.split()]
        b = sum(ticks[i] for i in _BUSY_COLUMNS if i < len(ticks))
        busy += b
        total += b + sum(ticks[i] for i in _IDLE_COLUMNS if i < len(ticks))
        seen += 1
    return (busy / hz, total / hz) if seen else None


def _thread_seconds(*task_dirs: Path) -> tuple[float, float] | None:
    """``(run, wait)`` seconds summed over the threads in ``task_dirs`` (schedstat)."""
    run = wait = 0
    entries: list[Path] = []
    for tasks in task_dirs:
        try:
            entries.extend(tasks.iterdir())
        except OSError:  # a helper process that just ended; our own always exists
            if tasks == _TASKS:
                return None
    for task in entries:
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:  # a thread that just ended, or no schedstats
            continue
        if len(fields) >= 2:
            run += int(fields[0])
            wait += int(fields[1])
    return (run / 1e9, wait / 1e9) if run or wait else None


class ProcMeter:
    """The Linux counters: ``/proc/stat`` and ``/proc/self/task/*/schedstat``, plus the
    schedstat of the gate's helper processes (:mod:`..gate_processes`)."""

    def __init__(self) -> None:
        self.cpus = usable_cpus()

    def cores(self) -> int:
        return len(self.cpus)

    def read(self) -> CpuCounters:
        try:
            cpu = _cpu_seconds(_PROC_STAT.read_text(), self.cpus)
        except OSError:
            cpu = None
        helper_tasks = [_PROC / str(pid) / "task" for pid in sorted(gate_processes.GATE_PROCESSES)]
        threads = _thread_seconds(_TASKS, *helper_tasks)
        helpers = _thread_seconds(*helper_tasks)
        return CpuCounters(
            wall=time.monotonic(),
            own_cpu=time.process_time() + (helpers[0] if helpers else 0.0),
            cpu_busy=cpu[0] if cpu else None,
            cpu_total=cpu[1] if cpu else None,
            threads_run=threads[0] if threads else None,
            threads_wait=threads[1] if threads else None,
        )

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def default_meter() -> CpuMeter:
    """The meter the gate uses unless one is injected (tests patch this)."""
    return ProcMeter()


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(b - a, 0.0)


def between(start: CpuCounters, end: CpuCounters, *, cores: int, threads: int) -> Contention:
    """The contention over the window from ``start`` to ``end``."""
    seconds = max(end.wall - start.wall, 1e-9)
    others = None
    busy, total = _delta(start.cpu_busy, end.cpu_busy), _delta(start.cpu_total, end.cpu_total)
    if busy is not None and total:
        used = cores * busy / total  # cores' worth of CPU used by everyone
        own = (end.own_cpu - start.own_cpu) / seconds
        others = min(max(used - own, 0.0), float(cores))
    stalled = None
    run, wait = (
        _delta(start.threads_run, end.threads_run),
        _delta(start.threads_wait, end.threads_wait),
    )
    if run is not None and wait is not None:
        stalled = wait / (run + wait) if run + wait > 0 else 0.0
    return Contention(cores, threads, seconds, others, stalled)


def free_cores(meter: CpuMeter, window: float = FREE_CORES_WINDOW_S) -> float | None:
    """Idle cores' worth of the CPUs this process may use, watched for ``window`` seconds
    while this process sleeps; None where the counters do not exist."""
    start = meter.read()
    meter.sleep(window)
    seen = between(start, meter.read(), cores=meter.cores(), threads=0)
    return None if seen.others is None else meter.cores() - seen.others


def timing_threads(asked: int | None, meter: CpuMeter, all_cores: int) -> tuple[int, str]:
    """The gate's threads, and a note on how they were chosen (empty when asked).

    Threads asked for are kept: the gate then measures what was asked, and says so if the
    machine is too busy for it. By default the gate takes every usable core that is free
    at its start (``all_cores`` at most, one at least), so that on a shared runner its own
    threads do not queue behind a neighbour's.
    """
    if asked is not None:
        return asked, ""
    free = free_cores(meter)
    if free is None:
        return all_cores, ""
    threads = max(1, min(all_cores, math.floor(free + 1 - FREE_CORE_IDLE)))
    if threads == all_cores:
        return threads, ""
    return threads, (
        f"{_threads(threads)}, not {all_cores}: {free:.1f} of {meter.cores()} cores were free "
        "when the gate started"
    )


def watch(meter: CpuMeter, threads: int) -> Callable[[], Contention]:
    """Start watching now: the returned function gives the contention since then."""
    start = meter.read()
    cores = meter.cores()
    return lambda: between(start, meter.read(), cores=cores, threads=threads)
