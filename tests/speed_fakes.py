"""Stand-ins for the speed gate's tests: a fake clock, a pure-Python model side whose
decode steps take injected durations, and a CPU meter that reports an injected load.

Nothing here touches torch, a model or the real clock, so the tests that use them can
state exact numbers.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_llmquant.speed.contention import CpuCounters


class FakeClock:
    """Time only moves when a fake step (or a fake sleep) takes time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    """A side's :class:`~pytest_llmquant.sides.base.DecodeTimer`: each step takes the
    next duration, advances the clock and is logged as ``(label, prompt, step)``."""

    def __init__(self, side: FakeSide) -> None:
        self.side = side

    def step(self, prompt: int, step: int) -> float:
        side = self.side
        side.log.append((side.label, prompt, step))
        if side.probe is not None:
            side.probed.append(side.probe())
        seconds = next(side.durations)
        side.clock.now += seconds
        return seconds


class FakeSide:
    """A :class:`~pytest_llmquant.sides.base.ModelSide` with injected step durations."""

    runtime = "torch"  # stands in for a torch pair: the messages name no runtime
    origin = None
    dtype = "float32"

    def __init__(
        self,
        label: str,
        durations: Iterator[float],
        clock: FakeClock,
        *,
        device: str = "cpu",
        log: list[tuple[str, int, int]] | None = None,
        probe: Callable[[], Any] | None = None,
    ) -> None:
        self.label = label
        self.durations = durations
        self.clock = clock
        self.device = device
        self.log = log if log is not None else []
        self.probe = probe
        self.probed: list[Any] = []
        self.threads_seen: list[int] = []
        self.timer_prompts: list[list[int]] = []

    def context_length(self) -> int | None:
        return None

    def vocab_size(self) -> int:
        return 5

    @contextmanager
    def measuring(self, threads: int) -> Iterator[None]:
        self.threads_seen.append(threads)
        yield

    def decode_timer(
        self, prompts: Sequence[Sequence[int]], *, steps_per_prompt: int, clock: Callable[[], float]
    ) -> FakeTimer:
        self.timer_prompts = [list(p) for p in prompts]
        return FakeTimer(self)

    def scored_logits(self, input_ids: Any, n_scored: int) -> Any:
        raise NotImplementedError

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> Any:
        raise NotImplementedError

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        raise NotImplementedError

    def weight_bytes(self) -> dict[str, int]:
        return {}

    def shipped_file(self, directory: Path) -> Any:
        raise NotImplementedError

    def probe_spec(self, workdir: Path) -> Any:
        raise NotImplementedError


class FakeMeter:
    """A :class:`~pytest_llmquant.speed.contention.CpuMeter` under a steady injected load:
    other processes use ``others`` cores, and the gate's threads wait ``stalled`` of their
    runnable time. ``None`` for both: counters that do not exist (as on macOS)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        cores: int = 2,
        others: float | None = 0.0,
        stalled: float | None = 0.0,
    ) -> None:
        self.clock = clock
        self.n_cores = cores
        self.others = others
        self.stalled = stalled
        self.slept: list[float] = []

    def cores(self) -> int:
        return self.n_cores

    def read(self) -> CpuCounters:
        t = self.clock()
        return CpuCounters(
            wall=t,
            own_cpu=0.0,
            cpu_busy=None if self.others is None else self.others * t,
            cpu_total=None if self.others is None else self.n_cores * t,
            threads_run=None if self.stalled is None else (1 - self.stalled) * t,
            threads_wait=None if self.stalled is None else self.stalled * t,
        )

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if isinstance(self.clock, FakeClock):
            self.clock.now += seconds
        else:
            time.sleep(seconds)


def quiet_meter() -> FakeMeter:
    """A quiet CPU on the real clock: for tests of the real decode path on a shared box."""
    return FakeMeter(time.perf_counter)


def constant(seconds: float) -> Iterator[float]:
    return itertools.repeat(seconds)


def jitter(base: float, spread: float = 0.01) -> Iterator[float]:
    """Deterministic small wobble: base * (1 +- spread). The phase depends on ``base``, so
    that two streams do not wobble in lockstep: that would make every pair's ratio the
    same number, a sample of nothing but ties."""
    for i in itertools.count():
        yield base * (1 + spread * math.sin(1.7 * i + 1000 * base))


def borderline(threshold: float, pair_seconds: float) -> tuple[Iterator[float], Iterator[float]]:
    """Pairs whose ratio wobbles up to 10% either side of the threshold (all different,
    symmetric about it), each pair taking exactly ``pair_seconds``: the interval keeps
    holding the threshold."""
    reference: list[float] = []
    int8: list[float] = []
    pairs = itertools.count()

    def gen(which: list[float]) -> Iterator[float]:
        while True:
            if not which:
                r = threshold * math.exp(0.1 * math.sin(2.4 * next(pairs) + 0.5))
                b = pair_seconds / (1 + r)
                reference.append(pair_seconds - b)
                int8.append(b)
            yield which.pop(0)

    return gen(reference), gen(int8)
