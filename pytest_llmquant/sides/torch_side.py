"""The torch model side: any transformers causal LM in this process.

This is what every gate measured before model sides existed; it only gathers, behind the
:class:`~.base.ModelSide` protocol, the torch calls the gates used to make themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.causal_lm import context_length, model_device, model_dtype, vocab_size
from .base import ProbeSpec, ShippedFile

if TYPE_CHECKING:
    import torch

    from ..origin import Int8Origin
    from ..types import CausalLM, Tokenizer
    from .torch_decode import DecodeStream


def _forward_kwargs(model: CausalLM, n_keep: int) -> dict[str, Any]:
    """``use_cache=False`` and, where supported, ``logits_to_keep`` so the lm_head runs
    only on the scored positions (it is the biggest matmul of a small model)."""
    import inspect

    kwargs: dict[str, Any] = {"use_cache": False}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return kwargs
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = n_keep
    return kwargs


def scored_logits(model: CausalLM, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
    """The (n_scored, V) logits of the last ``n_scored`` positions of one sequence."""
    out = model(input_ids=input_ids.to(model_device(model)), **_forward_kwargs(model, n_scored))
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[0, -n_scored:]


@dataclass
class TorchSide:
    """A :class:`~.base.ModelSide` over an ``nn.Module``.

    ``tokenizer`` gives the pad id of greedy generation. ``ship`` saves the model the way
    it ships (an INT8 side's route; None: ``save_pretrained``, as a reference ships), and
    ``probe`` says how a fresh process loads it (None: none can). Both come from whoever
    made the model (:mod:`pytest_llmquant.int8`, the model store), so this class knows
    nothing of routes.
    """

    model: CausalLM
    label: str
    origin: Int8Origin | None = None
    tokenizer: Tokenizer | None = None
    ship: Callable[[Path], ShippedFile] | None = None
    probe: Callable[[Path], ProbeSpec] | None = None
    runtime: str = field(default="torch", init=False)

    @property
    def device(self) -> str:
        return str(model_device(self.model))

    @property
    def dtype(self) -> str:
        return model_dtype(self.model)

    def context_length(self) -> int | None:
        return context_length(self.model)

    def vocab_size(self) -> int:
        return vocab_size(self.model)

    @contextmanager
    def measuring(self, threads: int) -> Iterator[None]:
        import torch

        saved_threads, was_training = torch.get_num_threads(), self.model.training
        torch.set_num_threads(threads)
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)
            torch.set_num_threads(saved_threads)

    def scored_logits(self, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
        return scored_logits(self.model, input_ids, n_scored)

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """One forward pass: prompts padded on the right, so each is read as if alone (a
        causal model never attends to the padding after a token) and scored at its own
        last token; only the float summation order of the batched products differs."""
        import torch

        lengths = torch.tensor([len(p) for p in prompts])
        pad = self._pad_id()
        ids = torch.full((len(prompts), int(lengths.max())), 0 if pad is None else pad)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(prompts):
            ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, : len(row)] = 1
        device = model_device(self.model)
        out = self.model(ids.to(device), attention_mask=mask.to(device))
        return out.logits[torch.arange(len(prompts)), lengths - 1]

    def _pad_id(self) -> int | None:
        tok = self.tokenizer
        if tok is not None:
            return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return getattr(getattr(self.model, "config", None), "eos_token_id", None)

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        import torch

        device = model_device(self.model)
        out = []
        for ids in prompts:
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
            generated = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                num_beams=1,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=self._pad_id(),
            )
            out.append([int(t) for t in generated[0, input_ids.shape[1] :].cpu()])
        return out

    def decode_timer(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        steps_per_prompt: int,
        clock: Callable[[], float],
    ) -> DecodeStream:
        import torch

        from .torch_decode import DecodeStream

        device = model_device(self.model)
        encoded = []
        for ids in prompts:
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
            encoded.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
        return DecodeStream(self.model, encoded, steps_per_prompt=steps_per_prompt, clock=clock)

    def weight_bytes(self) -> dict[str, int]:
        from .torch_weights import weights_breakdown

        return weights_breakdown(self.model)

    def shipped_file(self, directory: Path) -> ShippedFile:
        if self.ship is not None:  # an INT8 side: saved the way its route saves it
            return self.ship(directory)
        from ..formats.sizes import file_bytes

        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)  # type: ignore[operator]
        return ShippedFile(
            directory,
            file_bytes(directory),
            "save_pretrained (safetensors)",
            tuple(sorted(p.name for p in directory.iterdir())),
        )

    def probe_spec(self, workdir: Path) -> ProbeSpec:
        if self.probe is None:
            from ..errors import LlmqUsageError

            raise LlmqUsageError(
                f"{self.label}: no fresh process can load this model (it is neither a "
                "--llmq-model of the session nor an INT8 model made from one); measure "
                "peak_rss with --llmq-model"
            )
        return self.probe(workdir)
