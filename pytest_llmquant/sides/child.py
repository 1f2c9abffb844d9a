"""A model side that runs in a child process of its own: how every runtime side runs.

One child per model file, started on first use and kept for the session (loading a
model is the slow part). A crash of the child (a segfault in a native kernel, an
abort, the out-of-memory killer) fails the measurement that was running with one line,
``llama.cpp crashed (signal 11, SIGSEGV) while measuring FILE``, and the next request
starts a fresh child, so the session and the other tests go on. The protocol is in
:mod:`.host`; what a runtime does inside the child is its :class:`~.host.RuntimeModel`.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqModelError, LlmqUsageError
from ..gate_processes import count_as_gate, stop_counting
from .base import ProbeSpec, ShippedFile

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..origin import Int8Origin

HOST_MODULE = "pytest_llmquant.sides.host"
#: the child's stderr lines kept for a crash message
TAIL_LINES = 1
#: GOMP_SPINCOUNT a child gets unless the user set it (or OMP_WAIT_POLICY). libgomp's
#: threads spin ~300,000 times after each parallel region before they sleep, about 14 ms
#: here: an idle child then spins on the cores while the other side times its step. Two
#: llama.cpp children timed in turn measured F32 16.7 -> Q8_0 9.9 ms/token (a 99% CI of
#: 0.82-2.67x) against 10.6 -> 6.1 ms run alone. 3,000 spins keep the alone speed (ggml's
#: barriers between ops are libgomp's; 0 spins made them 2.5x slower) and end the tail.
CHILD_SPINCOUNT = "3000"


def _signal_name(number: int) -> str:
    try:
        return f"signal {number}, {signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


class _Child:
    """One running host process and its two pipes."""

    def __init__(self, spec: dict[str, object], workdir: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if "OMP_WAIT_POLICY" not in env:
            env.setdefault("GOMP_SPINCOUNT", CHILD_SPINCOUNT)
        self.log = workdir / "child.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    HOST_MODULE,
                    str(to_child_r),
                    str(from_child_w),
                    json.dumps({**spec, "workdir": str(workdir)}),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(to_child_r, from_child_w),
                env=env,
            )
        count_as_gate(self.proc.pid)  # its CPU is the gate's, not another process's
        os.close(to_child_r)
        os.close(from_child_w)
        self._out = os.fdopen(self._to_child, "w", encoding="utf-8")
        self._in = os.fdopen(self._from_child, "r", encoding="utf-8")

    def send(self, message: dict[str, object]) -> bool:
        try:
            self._out.write(json.dumps(message) + "\n")
            self._out.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def receive(self, timeout: float | None = None) -> dict[str, object] | None:
        """The child's next answer; None when it has died. :class:`TimeoutError` when no
        answer began within ``timeout`` seconds (the child writes each answer as one line)."""
        if timeout is not None and not select.select([self._in], [], [], timeout)[0]:
            raise TimeoutError
        line = self._in.readline()
        return json.loads(line) if line else None

    def death(self) -> str:
        """Why the child is gone: its signal or exit code, and its last line of output."""
        code = self.proc.wait()
        stop_counting(self.proc.pid)
        how = _signal_name(-code) if code < 0 else f"exit code {code}"
        tail = self.log.read_text(errors="replace").strip().splitlines()[-TAIL_LINES:]
        return how + (f"; its last output: {tail[0][:200]}" if tail else "")

    def close(self) -> None:
        for stream in (self._out, self._in):
            try:
                stream.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        stop_counting(self.proc.pid)


class ChildSide:
    """A :class:`~.base.ModelSide` whose model lives in a child process.

    ``factory`` (``"module:callable"``) makes the child's :class:`~.host.RuntimeModel` from
    ``args`` (JSON-ready). ``what`` names the model in messages (its file), ``runtime`` one
    of :data:`~.base.RUNTIMES` (a test stand-in may name any). ``ship`` and ``probe`` say
    what ships and how a fresh process loads it, as for a torch side.
    """

    def __init__(
        self,
        factory: str,
        args: dict[str, object],
        *,
        label: str,
        runtime: str,
        what: str,
        origin: Int8Origin | None = None,
        eos: Sequence[int] = (),
        ship: Callable[[Path], ShippedFile] | None = None,
        probe: Callable[[Path], ProbeSpec] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.factory, self.args, self.what = factory, dict(args), what
        self.label, self.runtime, self.origin = label, runtime, origin
        self.eos = [int(e) for e in eos]
        self._ship, self._probe = ship, probe
        self.timeout = timeout  # seconds per request (--llmq-runtime-timeout); None: no limit
        self._child: _Child | None = None
        self._facts: dict[str, object] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="llmq-side-"))
        self._threads = int(str(args.get("threads", 1)))
        atexit.register(self.close)

    # -- the child ----------------------------------------------------------------------
    def _started(self, doing: str) -> _Child:
        if self._child is None:
            child = _Child({"factory": self.factory, "args": self.args}, self._workdir)
            answer = self._answer(child, "loading")
            if answer is None:
                self._child = None
                raise LlmqModelError(
                    f"{self.runtime} crashed ({child.death()}) while loading {self.what}"
                )
            if "error" in answer:
                child.close()
                raise self._error(answer, "cannot load")
            facts = answer["ok"]
            assert isinstance(facts, dict), facts
            self._facts = facts
            self._child = child
            if self._threads:
                self._call("set_threads", doing, threads=self._threads)
        return self._child

    def _answer(self, child: _Child, doing: str) -> dict[str, object] | None:
        """The child's answer, or a failed test when it hangs: the child is stopped, and
        the next request starts a fresh one, as after a crash."""
        try:
            return child.receive(self.timeout)
        except TimeoutError:
            self._child = None
            child.close()
            raise LlmqModelError(
                f"{self.runtime} did not answer within {self.timeout:g} s while {doing} "
                f"{self.what}, and was stopped; raise --llmq-runtime-timeout if it is only slow"
            ) from None

    def _error(self, answer: dict[str, object], verb: str) -> Exception:
        cls = LlmqUsageError if answer.get("kind") == "usage" else LlmqModelError
        return cls(f"{self.runtime} {verb} {self.what}: {answer['error']}")

    def _call(self, op: str, doing: str, **args: object) -> object:
        child = self._started(doing)
        answer = self._answer(child, doing) if child.send({"op": op, "args": args}) else None
        if answer is None:
            self._child = None
            why = child.death()
            child.close()
            raise LlmqModelError(f"{self.runtime} crashed ({why}) while {doing} {self.what}")
        if "error" in answer:
            raise self._error(answer, f"failed ({op}) on")
        value = answer["ok"]
        if isinstance(value, dict) and "npy" in value:
            return _load_array(Path(str(value["npy"])))
        return value

    def _tensor(self, op: str, **args: object) -> torch.Tensor:
        import torch

        array = self._call(op, "measuring", **args)
        return torch.from_numpy(array)  # type: ignore[arg-type]

    def facts(self) -> dict[str, object]:
        """What the loaded model says about itself (loads it on first use)."""
        self._started("loading")
        assert self._facts is not None
        return self._facts

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    # -- the model side -----------------------------------------------------------------
    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return str(self.facts().get("dtype", self.runtime))

    def context_length(self) -> int | None:
        value = self.facts().get("context_length")
        return int(str(value)) if value is not None else None

    def vocab_size(self) -> int:
        return int(str(self.facts()["vocab_size"]))

    @contextmanager
    def measuring(self, threads: int) -> Iterator[None]:
        saved = self._threads
        if threads != saved:
            self._threads = threads
            if self._child is not None:
                self._call("set_threads", "measuring", threads=threads)
        try:
            yield
        finally:
            if threads != saved:
                self._threads = saved
                if self._child is not None:
                    self._call("set_threads", "measuring", threads=saved)

    def scored_logits(self, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
        ids = [int(t) for t in input_ids.reshape(-1).tolist()]
        return self._tensor("scored_logits", ids=ids, n_scored=int(n_scored))

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        return self._tensor("next_token_logits", prompts=[list(map(int, p)) for p in prompts])

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        out = self._call(
            "greedy",
            "measuring",
            prompts=[list(map(int, p)) for p in prompts],
            new_tokens=int(new_tokens),
            suppress=self.eos,
        )
        assert isinstance(out, list), out
        return [[int(t) for t in row] for row in out]

    def decode_timer(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        steps_per_prompt: int,
        clock: Callable[[], float],
    ) -> ChildTimer:
        """Steps timed in the child by its own clock (``clock`` is this process's; the pipe
        round trip is not part of a decode step)."""
        self._call(
            "decode_prepare",
            "measuring",
            prompts=[list(map(int, p)) for p in prompts],
            steps_per_prompt=int(steps_per_prompt),
        )
        return ChildTimer(self)

    def weight_bytes(self) -> dict[str, int]:
        kinds = self.facts().get("weight_bytes") or {}
        return {str(k): int(str(v)) for k, v in dict(kinds).items()}  # type: ignore[call-overload]

    def shipped_file(self, directory: Path) -> ShippedFile:
        if self._ship is None:
            from ..errors import LlmqSkip

            raise LlmqSkip(f"{self.label} does not say what it ships as")
        return self._ship(directory)

    def probe_spec(self, workdir: Path) -> ProbeSpec:
        if self._probe is None:
            from ..errors import LlmqSkip

            raise LlmqSkip(f"{self.label} cannot be loaded by a fresh probe process")
        return self._probe(workdir)


class ChildTimer:
    """The :class:`~.base.DecodeTimer` of a :class:`ChildSide`."""

    def __init__(self, side: ChildSide) -> None:
        self.side = side

    def step(self, prompt: int, step: int) -> float:
        return float(str(self.side._call("decode_step", "measuring", prompt=prompt, step=step)))


def _load_array(path: Path) -> np.ndarray:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    finally:
        path.unlink(missing_ok=True)
