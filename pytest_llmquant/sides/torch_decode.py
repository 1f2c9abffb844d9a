"""One greedy decode step at a time, from a model's own KV cache, timed.

Why single steps: a whole 32-token generation takes seconds on a small CPU model, so
a gate that times whole generations gets a handful of pairs in its budget. A decode
step is the unit of work that generation repeats, and timing steps gives dozens of
pairs per second of the same work. What a step includes is what ``generate`` does for
each new token: one forward pass of one token against the cache, and the greedy pick
(``argmax``) of the next token, which is fed back in.

Both models of a pair do identical work: the same prompt, prefilled (untimed) into
each model's own cache, then the same number of steps at the same cache length, so
step ``s`` of FP32 and step ``s`` of INT8 attend over the same number of positions.
Each model feeds itself its own greedy token (the tokens may differ, the shapes do
not). After ``steps_per_prompt`` steps the next prompt is prefilled into a fresh cache,
so the cache never grows past ``prompt + steps_per_prompt`` positions, and the prompts
are cut to fit the model's context (:func:`pytest_llmquant.models.causal_lm.fit_to_context`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..types import CausalLM

#: a KV cache as the model returns it (a transformers ``Cache``, or legacy tuples): only
#: handed back to the model, never read here
KVCache = object


def _sync(device: torch.device | None) -> None:
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _cache_of(model: object, out: Mapping[str, KVCache]) -> tuple[str, KVCache]:
    """``(keyword, cache)`` from a forward's output: transformers >= 5.2x names the KV cache
    ``cache``, older releases ``past_key_values``; the output field is named like the
    input keyword that takes the cache back."""
    from ..errors import LlmqModelError

    keys = out.keys() if hasattr(out, "keys") else ()  # a ModelOutput is a Mapping
    for name in ("cache", "past_key_values"):
        if name in keys and out[name] is not None:
            return name, out[name]
    raise LlmqModelError(
        f"{type(model).__name__} returned no KV cache (`cache` / `past_key_values`) with "
        "use_cache=True: the speed gate times single decode steps from a cache and needs a "
        "causal LM that keeps one (a transformers *ForCausalLM model)"
    )


class DecodeStream:
    """A model decoding greedily, one timed step at a time, prompt after prompt."""

    def __init__(
        self,
        model: CausalLM,
        prompts: Sequence[Mapping[str, torch.Tensor]],
        *,
        steps_per_prompt: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not prompts:
            raise ValueError("DecodeStream needs at least one encoded prompt")
        self.model = model
        self.prompts = list(prompts)
        self.steps_per_prompt = steps_per_prompt
        self.clock = clock
        self.device = getattr(model, "device", None)
        self.keyword = "cache"  # set from the first prefill's output
        self.cache: KVCache = None
        self.token: torch.Tensor | None = None
        self.prompt: int | None = None
        self.steps = 0  # decode steps since the last prefill
        self.positions = 0  # tokens in the cache

    def _forward(self, **kwargs: object) -> tuple[torch.Tensor, KVCache]:
        out = self.model(**kwargs, use_cache=True)
        self.keyword, cache = _cache_of(self.model, out)
        return out.logits[:, -1:].argmax(-1), cache

    def prefill(self, prompt: int) -> None:
        """Start prompt ``prompt`` in a fresh cache (not timed: a prompt is paid once)."""
        inputs = self.prompts[prompt % len(self.prompts)]
        self.token, self.cache = self._forward(**inputs)
        self.prompt = prompt
        self.steps = 0
        self.positions = int(inputs["input_ids"].shape[-1])

    def step(self, prompt: int, step: int) -> float:
        """Seconds of decode step ``step`` (from 0) of prompt ``prompt``; step 0 prefills.

        Must be called in order; the order is what keeps the cache length, and so the
        work of a step, equal across the two models of a pair.
        """
        if step == 0:
            self.prefill(prompt)
        elif prompt != self.prompt or step != self.steps:
            raise ValueError(
                f"decode step {step} of prompt {prompt} asked after step {self.steps - 1} "
                f"of prompt {self.prompt}: steps must come in order"
            )
        if step >= self.steps_per_prompt:
            raise ValueError(f"step {step} is past steps_per_prompt={self.steps_per_prompt}")
        _sync(self.device)
        start = self.clock()
        token, cache = self._forward(input_ids=self.token, **{self.keyword: self.cache})
        _sync(self.device)
        elapsed = self.clock() - start
        self.token, self.cache = token, cache
        self.steps += 1
        self.positions += 1
        return elapsed
