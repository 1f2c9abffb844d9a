"""The child process that runs a runtime side: ``python -m pytest_llmquant.sides.host``.

A native runtime (llama.cpp, ONNX Runtime) can segfault, abort or be killed for memory.
In the pytest process that would end the session; here it ends this process, and the
parent (:class:`~.child.ChildSide`) turns that into "llama.cpp crashed (signal 11) while
measuring FILE" on the tests that needed it, and starts a fresh child for the next one.

The protocol is JSON lines on two pipe descriptors the parent passes in (never stdout,
which a C library may print to): ``{"op": NAME, "args": {...}}`` in, ``{"ok": VALUE}`` or
``{"error": LINE, "kind": "usage" | "model"}`` out. The first line out answers the load:
``{"ok": {...}}`` with what the model says about itself (:meth:`RuntimeModel.describe`).
Logits go through a ``.npy`` file in the child's work directory (``{"ok": {"npy": PATH}}``),
never through the pipe: a window of 512 positions of a 49k vocabulary is 100 MB.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from ..errors import LlmqError, LlmqUsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

#: a JSON value a runtime model returns (an ndarray is sent as a file instead)
Reply = dict[str, object]


class RuntimeModel(Protocol):
    """What a runtime implements inside the child; :class:`~.child.ChildSide` calls each
    method by name. Arrays are float32 numpy arrays; token ids are plain ints."""

    def describe(self) -> dict[str, object]:
        """``vocab_size``, ``context_length`` (or None), ``dtype`` and ``weight_bytes``."""
        ...

    def set_threads(self, threads: int) -> None: ...

    def scored_logits(self, ids: Sequence[int], n_scored: int) -> np.ndarray: ...

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> np.ndarray: ...

    def greedy(
        self, prompts: Sequence[Sequence[int]], new_tokens: int, suppress: Sequence[int]
    ) -> list[list[int]]: ...

    def decode_prepare(self, prompts: Sequence[Sequence[int]], steps_per_prompt: int) -> None: ...

    def decode_step(self, prompt: int, step: int) -> float:
        """Seconds of one decode step, timed here with ``time.perf_counter``."""
        ...


def load_factory(path: str) -> Callable[..., RuntimeModel]:
    module, _, name = path.partition(":")
    factory: Callable[..., RuntimeModel] = getattr(importlib.import_module(module), name)
    return factory


def _answer(value: object, workdir: Path, counter: itertools.count[int]) -> Reply:
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        import numpy as np

        path = workdir / f"out-{next(counter)}.npy"
        np.save(path, cast("np.ndarray", value), allow_pickle=False)
        return {"ok": {"npy": str(path)}}
    return {"ok": value}


def _failure(exc: BaseException) -> Reply:
    if isinstance(exc, LlmqError):
        kind = "usage" if isinstance(exc, LlmqUsageError) else "model"
        return {"error": str(exc), "kind": kind}
    first = (str(exc).strip().splitlines() or [""])[0]
    return {
        "error": f"{type(exc).__name__}: {first}" if first else type(exc).__name__,
        "kind": "model",
    }


def serve(
    reader: Callable[[], str], write: Callable[[Reply], None], spec: dict[str, object]
) -> None:
    """Load the model ``spec`` names, answer the load, then each request until EOF."""
    workdir = Path(str(spec["workdir"]))
    counter = itertools.count()
    try:
        args = spec.get("args") or {}
        assert isinstance(args, dict)
        model = load_factory(str(spec["factory"]))(**args)
        write({"ok": model.describe()})
    except Exception as exc:  # the load's own error, as one line: the parent adds the file
        write(_failure(exc))
        return
    while line := reader():
        request = json.loads(line)
        try:
            method = getattr(model, str(request["op"]))
            write(_answer(method(**request.get("args", {})), workdir, counter))
        except Exception as exc:
            write(_failure(exc))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    read_fd, write_fd = int(argv[0]), int(argv[1])
    spec = json.loads(argv[2])
    with (
        os.fdopen(read_fd, "r", encoding="utf-8") as rin,
        os.fdopen(write_fd, "w", encoding="utf-8") as wout,
    ):

        def write(reply: Reply) -> None:
            wout.write(json.dumps(reply) + "\n")
            wout.flush()

        serve(rin.readline, write, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
