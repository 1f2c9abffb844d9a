"""A model side with no model behind it: the smallest thing the gates can measure.

Its next-token logits come from a fixed table (the logits after token ``t`` are row
``t``), its decode steps take the time it is told, and its weights weigh what it is told.
A test that gates it shows that every gate reads a model only through the ModelSide
protocol: nothing here is an ``nn.Module``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pytest_llmquant.errors import LlmqSkip
from pytest_llmquant.origin import Int8Origin
from pytest_llmquant.sides.base import ProbeSpec, ShippedFile


def logit_table(vocab: int, *, seed: int, scale: float = 3.0) -> torch.Tensor:
    """Row ``t``: the logits of the token after token ``t``."""
    return torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * scale


@dataclass
class Timer:
    """Decode steps that take ``seconds`` each, with a small deterministic wobble (a real
    clock never returns the same time twice, and the statistics expect ties to be rare)."""

    seconds: float
    calls: int = 0

    def step(self, prompt: int, step: int) -> float:
        self.calls += 1
        return self.seconds * (1 + 0.02 * ((self.calls * 7919) % 13) / 13)


@dataclass
class FakeSide:
    table: torch.Tensor
    step_seconds: float
    weights: dict[str, int]
    label: str
    origin: Int8Origin | None = None
    runtime: str = "fake"
    device: str = "cpu"
    dtype: str = "float32"
    timers: list[Timer] = field(default_factory=list)

    def context_length(self) -> int | None:
        return 1024

    def vocab_size(self) -> int:
        return int(self.table.shape[0])

    @contextlib.contextmanager
    def measuring(self, threads: int) -> Iterator[None]:
        yield

    def scored_logits(self, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
        return self.table[input_ids[0, -n_scored:]]

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.table[torch.tensor([p[-1] for p in prompts])]

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        out = []
        for ids in prompts:
            last, tokens = ids[-1], []
            for _ in range(new_tokens):
                last = int(self.table[last].argmax())
                tokens.append(last)
            out.append(tokens)
        return out

    def decode_timer(
        self, prompts: Sequence[Sequence[int]], *, steps_per_prompt: int, clock: Callable[[], float]
    ) -> Timer:
        timer = Timer(self.step_seconds)
        self.timers.append(timer)
        return timer

    def weight_bytes(self) -> dict[str, int]:
        return dict(self.weights)

    def shipped_file(self, directory: Path) -> ShippedFile:
        raise LlmqSkip(f"{self.label} is a stand-in: it ships no file")

    def probe_spec(self, workdir: Path) -> ProbeSpec:
        raise LlmqSkip(f"{self.label} is a stand-in: no fresh process can load it")
