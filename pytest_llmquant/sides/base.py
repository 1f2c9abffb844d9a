"""What every gate needs from a model: the model side.

Read this first if you are adding a runtime (llama.cpp, ONNX Runtime, a server): a gate
never touches an ``nn.Module``. It asks a :class:`ModelSide` for the few things it
measures, so a new runtime is one new class in this package and one route in
:mod:`pytest_llmquant.int8`, and no gate changes.

The gates ask for:

- **similarity**: :meth:`ModelSide.scored_logits` of token windows (the same ids on both
  sides, tokenized once with the reference's tokenizer) and :meth:`ModelSide.greedy`
  continuations of fixed prompts;
- **the suite's prompt checks**: :meth:`ModelSide.next_token_logits` of a batch of prompts;
- **speed**: a :class:`DecodeTimer` from :meth:`ModelSide.decode_timer`: one greedy decode
  step at a time from the side's own KV cache, at a fixed position, so that both sides
  of a pair time the same work; the gate interleaves the two;
- **memory**: :meth:`ModelSide.weight_bytes` by kind, :meth:`ModelSide.shipped_file`
  (what is on disk when you ship it) and :meth:`ModelSide.probe_spec` (how a fresh
  process loads it, for peak RSS and VRAM);
- **every report**: :attr:`ModelSide.label`, :attr:`ModelSide.runtime` and
  :attr:`ModelSide.origin` (where the INT8 side came from, with its bit width), so that a
  result never names another model than the one measured.

Everything a side returns is plain data or a ``torch.Tensor`` of logits on the CPU or the
side's device: a runtime side running in a child process converts its arrays at the
boundary. Timing, statistics, thresholds and messages stay in the gates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ..origin import Int8Origin

#: the runtimes a side may run in; the torch one is :class:`~.torch_side.TorchSide`
RUNTIMES: tuple[str, ...] = ("torch", "llama.cpp", "onnxruntime")


@dataclass(frozen=True)
class ShippedFile:
    """The side on disk, as it ships: the directory or file, its size, and how it was saved."""

    path: Path  # a directory of model files, or one file (a .gguf)
    bytes: int  # model files only: weights, configs, recipe or map; never a tokenizer
    how: str  # one line for the report: "weight-only-int8's safetensors + recipe"
    files: tuple[str, ...] = ()  # the file names counted, for the report
    kept_float: dict[str, int] = field(default_factory=dict)  # float bytes in the file, by role


@dataclass(frozen=True)
class ProbeSpec:
    """How a fresh probe process (:mod:`pytest_llmquant.memory.rss_probe`) loads this side.

    ``args`` are JSON-ready keyword arguments the probe understands; files they name must
    outlive the probe. ``made`` says, for the report, whether the probe loads what ships
    ("loaded as saved") or rebuilds it ("built from the reference in-process").
    """

    args: dict[str, str | int | bool | None]
    made: str = "loaded as saved"


class DecodeTimer(Protocol):
    """Greedy decode steps of one side, timed one at a time.

    ``step(prompt, step)`` returns the seconds of decode step ``step`` (from 0) of prompt
    ``prompt``; step 0 prefills that prompt into a fresh cache, untimed. Steps come in
    order, so that step ``s`` of both sides of a pair attends over the same number of
    positions and does the same work.
    """

    def step(self, prompt: int, step: int) -> float: ...


@runtime_checkable
class ModelSide(Protocol):
    """One model as the gates see it: the reference, or the INT8 model under test.

    Implementations: :class:`~.torch_side.TorchSide` (any transformers causal LM in this
    process) and :class:`~.child.ChildSide` (a runtime's model in a child process). A side is cheap to make; what it wraps is loaded once per session by the
    model store (:mod:`pytest_llmquant.run.store`).
    """

    @property
    def label(self) -> str:
        """What the report calls it: ``FP32``, ``BF16``, ``weight-only-int8``, ``llama.cpp Q4_1``."""
        ...

    @property
    def runtime(self) -> str:
        """One of :data:`RUNTIMES`: a baseline never compares numbers across runtimes."""
        ...

    @property
    def device(self) -> str:
        """Where it computes: ``cpu``, ``cuda:0``."""
        ...

    @property
    def origin(self) -> Int8Origin | None:
        """Where the INT8 side came from, with its bit width (None for a reference)."""
        ...

    @property
    def dtype(self) -> str:
        """What it computes in: ``float32``, ``bfloat16`` (a llama.cpp side: its file
        type); part of the stored similarity reference's key."""
        ...

    def context_length(self) -> int | None:
        """The longest sequence it accepts, if it says; windows and prompts are cut to fit."""
        ...

    def vocab_size(self) -> int:
        """Rows of its output distribution: both sides of a pair must agree."""
        ...

    def measuring(self, threads: int) -> AbstractContextManager[None]:
        """Eval mode, no autograd and ``threads`` compute threads while a gate measures;
        everything restored afterwards."""
        ...

    def scored_logits(self, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
        """The ``(n_scored, vocab)`` float logits of the last ``n_scored`` positions of one
        window ``input_ids`` of shape ``(1, T)``, without a KV cache."""
        ...

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """The ``(len(prompts), vocab)`` float logits of the token after each prompt (token
        ids), batched where the runtime can: each prompt is read as if alone."""
        ...

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        """Exactly ``new_tokens`` greedily chosen ids after each prompt (EOS suppressed)."""
        ...

    def decode_timer(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        steps_per_prompt: int,
        clock: Callable[[], float],
    ) -> DecodeTimer:
        """A :class:`DecodeTimer` over ``prompts`` (token ids, already cut to fit)."""
        ...

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of the weights it holds in memory, by kind (the roles of
        :mod:`pytest_llmquant.memory.weights`: ``int8``, ``float: embeddings``, ...); tied
        tensors once."""
        ...

    def shipped_file(self, directory: Path) -> ShippedFile:
        """Save it under ``directory`` (new, empty) the way it ships, or point at the file
        it already is; raise :class:`~pytest_llmquant.errors.LlmqSkip` with the fix where
        no safe way exists."""
        ...

    def probe_spec(self, workdir: Path) -> ProbeSpec:
        """How a fresh process loads the same model (files go under ``workdir``)."""
        ...


def total_bytes(kinds: dict[str, int]) -> int:
    """All bytes of a :meth:`ModelSide.weight_bytes` breakdown."""
    return sum(kinds.values())


def sample_ids(vocab: int, n: int = 32) -> list[int]:
    """Token ids spread over the vocabulary whose spelling a runtime's file reports, so that
    the pair can check both sides read ids as the same tokens."""
    return sorted({i * vocab // n for i in range(n)})


def in_runtime(label: str, runtime: str) -> str:
    """``llama.cpp Q4_1``, ``torch FP32``: a label with the runtime that computed it (a
    cross-runtime ratio answers another question than a same-runtime one, so say both)."""
    return label if label.startswith(runtime) else f"{runtime} {label}"
