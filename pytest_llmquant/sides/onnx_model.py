"""ONNX Runtime, inside a side's child process (:mod:`.host`): a causal LM's ``model.onnx``.

Never imported by the pytest process. Accepts the inputs onnxruntime-genai's builder
writes (``input_ids``, ``attention_mask``, ``past_key_values.{i}.key/.value``; rotary
positions computed inside the graph) and the usual exporters' ``position_ids``. An empty
past gives every position's logits (scoring); the prefill's ``present.*`` fed back as the
past gives a one-token decode step at a fixed position, as serving runs it.

The past's head count and size come from the graph, or from ``genai_config.json`` next to
it when the graph leaves them symbolic (the builder does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort

#: a KV cache: the past inputs by name
Past = dict[str, "np.ndarray"]


class OnnxModel:
    """The :class:`~.host.RuntimeModel` of one ``model.onnx`` in ONNX Runtime (CPU)."""

    def __init__(self, path: str, threads: int = 1, facts: dict[str, object] | None = None) -> None:
        self.path, self.threads = path, int(threads)
        self.facts = dict(facts or {})
        self.session = self._session()
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted(n for n in self.inputs if n.startswith("past_key_values."))
        self.past_shape = self._past_shape()
        self._prompts: list[list[int]] = []
        self._past: Past = {}
        self._token = 0
        self._positions = 0

    def _session(self) -> ort.InferenceSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Its pool's threads otherwise spin on after each run, on the cores the other side
        # is timing its step with (as libgomp's do: sides/child.py, CHILD_SPINCOUNT); alone
        # it measured the same speed with and without this.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def _past_shape(self) -> tuple[int, int]:
        """(kv heads, head size) of a past input."""
        if not self.past_names:
            return (0, 0)
        dims = self.inputs[self.past_names[0]].shape
        heads, size = dims[1], dims[3]
        if isinstance(heads, int) and isinstance(size, int):
            return heads, size
        config = Path(self.path).with_name("genai_config.json")
        if config.is_file():
            decoder = json.loads(config.read_text())["model"]["decoder"]
            return int(decoder["num_key_value_heads"]), int(decoder["head_size"])
        raise LlmqUsageError(
            f"{self.path}: its past_key_values inputs do not say their head count and size, "
            "and no genai_config.json is next to it; export with static head dimensions"
        )

    def _vocab(self) -> int:
        out = next(o for o in self.session.get_outputs() if o.name == "logits")
        if isinstance(out.shape[-1], int):
            return int(out.shape[-1])
        return int(self._run([0], {}, 0)[0].shape[-1])

    def describe(self) -> dict[str, object]:
        config = Path(self.path).with_name("genai_config.json")
        context = None
        if config.is_file():
            context = json.loads(config.read_text())["model"].get("context_length")
        return {**self.facts, "vocab_size": self._vocab(), "context_length": context}

    def set_threads(self, threads: int) -> None:
        if int(threads) != self.threads:
            self.threads = int(threads)
            self.session = self._session()

    def _empty_past(self) -> Past:
        import numpy as np

        heads, size = self.past_shape
        kind = self.inputs[self.past_names[0]].type if self.past_names else "tensor(float)"
        dtype = np.float16 if "float16" in kind else np.float32
        return {n: np.zeros((1, heads, 0, size), dtype=dtype) for n in self.past_names}

    def _run(self, ids: Sequence[int], past: Past, positions: int) -> tuple[np.ndarray, Past]:
        """Logits ``(len(ids), vocab)`` of ``ids`` after ``positions`` cached ones, and the
        new cache."""
        import numpy as np

        feed: dict[str, np.ndarray] = {"input_ids": np.array([list(ids)], dtype=np.int64)}
        total = positions + len(ids)
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(positions, total, dtype=np.int64)[None]
        feed.update(past or self._empty_past())
        names = ["logits", *(n.replace("past_key_values.", "present.") for n in self.past_names)]
        out = self.session.run(names, feed)
        present = dict(zip(self.past_names, out[1:], strict=True))
        return np.asarray(out[0][0], dtype=np.float32), present

    def scored_logits(self, ids: Sequence[int], n_scored: int) -> np.ndarray:
        return self._run(ids, {}, 0)[0][-n_scored:]

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        import numpy as np

        return np.stack([self._run(p, {}, 0)[0][-1] for p in prompts])

    def greedy(
        self, prompts: Sequence[Sequence[int]], new_tokens: int, suppress: Sequence[int]
    ) -> list[list[int]]:
        out = []
        for prompt in prompts:
            logits, past = self._run(prompt, {}, 0)
            last, positions, row = logits[-1], len(prompt), []
            for _ in range(new_tokens):
                last[list(suppress)] = -float("inf")
                row.append(int(last.argmax()))
                if len(row) < new_tokens:
                    logits, past = self._run([row[-1]], past, positions)
                    last, positions = logits[-1], positions + 1
            out.append(row)
        return out

    def decode_prepare(self, prompts: Sequence[Sequence[int]], steps_per_prompt: int) -> None:
        self._prompts = [list(p) for p in prompts]

    def decode_step(self, prompt: int, step: int) -> float:
        """One token against the cache and its greedy pick; step 0 first prefills, untimed."""
        if step == 0:
            ids = self._prompts[prompt % len(self._prompts)]
            logits, self._past = self._run(ids, {}, 0)
            self._token, self._positions = int(logits[-1].argmax()), len(ids)
        start = time.perf_counter()
        logits, self._past = self._run([self._token], self._past, self._positions)
        self._token = int(logits[-1].argmax())
        self._positions += 1
        return time.perf_counter() - start
