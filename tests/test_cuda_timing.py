"""The speed gate on CUDA: the clock reads finished GPU work, and warm-up is longer there.

GPU launches return before the work is done, so a decode step is timed between two
``torch.cuda.synchronize`` calls; and cuBLAS and attention pick their kernels lazily on
the first calls, so CUDA gets :data:`CUDA_EXTRA_WARMUP` more untimed steps, decided from the
sides' ``device``. These tests run on the CPU with stand-ins that report a CUDA device and a
recorded ``synchronize``; on the CPU nothing changes (the other timing tests hold that).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from speed_fakes import FakeClock, FakeMeter, FakeSide  # noqa: E402

from pytest_llmquant.sides.torch_decode import DecodeStream  # noqa: E402
from pytest_llmquant.speed.timing import CUDA_EXTRA_WARMUP, measure_speedup, on_cuda  # noqa: E402


class Output(dict):
    """What a transformers forward returns: keys and attributes alike."""

    __getattr__ = dict.__getitem__


class FakeCudaModel:
    """Says it lives on ``cuda``; each call appends to the shared event log."""

    def __init__(self, log: list[str], device: str = "cuda") -> None:
        self.device = torch.device(device)
        self.log = log

    def __call__(self, input_ids: Any, **kwargs: Any) -> Output:
        self.log.append("forward")
        return Output(logits=torch.zeros(1, input_ids.shape[-1], 5), cache=object())


def test_a_cuda_step_is_timed_between_two_synchronizes(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    ticks = itertools.count()

    def clock() -> float:
        log.append("clock")
        return float(next(ticks))

    stream = DecodeStream(
        FakeCudaModel(log), [{"input_ids": torch.ones(1, 3, dtype=torch.long)}],
        steps_per_prompt=4, clock=clock,
    )  # fmt: skip
    stream.step(0, 0)
    log.clear()  # the prefill is not timed
    stream.step(0, 1)
    assert log == ["sync", "clock", "forward", "sync", "clock"]


def test_a_cpu_step_never_synchronizes(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    stream = DecodeStream(
        FakeCudaModel(log, "cpu"), [{"input_ids": torch.ones(1, 3, dtype=torch.long)}],
        steps_per_prompt=4,
    )  # fmt: skip
    stream.step(0, 0)
    stream.step(0, 1)
    assert "sync" not in log


def test_on_cuda_reads_the_sides_device() -> None:
    clock = FakeClock()
    cpu, cuda = (FakeSide("FP32", iter(()), clock, device=d) for d in ("cpu", "cuda:0"))
    assert on_cuda(cpu, cuda) and not on_cuda(cpu, cpu)


@pytest.mark.parametrize(("device", "extra"), [("cpu", 0), ("cuda", CUDA_EXTRA_WARMUP)])
def test_cuda_adds_warm_up_steps(device: str, extra: int) -> None:
    clock = FakeClock()
    reference = FakeSide("BF16", iter(()), clock, device=device)
    int8 = FakeSide("INT8", iter(()), clock, device=device)
    calls: list[tuple[object, int, int]] = []

    def runner(side: object, prompt: int, step: int) -> float:
        calls.append((side, prompt, step))
        seconds = 0.010 if side is reference else 0.004
        clock.now += seconds
        return seconds

    result = measure_speedup(
        reference, int8, None, threshold=1.5, prompts=("p",), threads=1, warmup=4,
        min_pairs=8, max_pairs=8, clock=clock, runner=runner, cpu=FakeMeter(clock),
    )  # fmt: skip
    assert CUDA_EXTRA_WARMUP > 0 and result.warmup == 4 + extra
    assert len(calls) == 2 * (4 + extra) + 2 * result.n_pairs
    assert result.n_pairs == 8 and result.verdict == "pass"
    assert result.reference_label == "BF16"
