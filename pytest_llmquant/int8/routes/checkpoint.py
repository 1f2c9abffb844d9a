"""The ``checkpoint`` route: a directory the user ships, passed with ``--llmq-int8-model``.

Our save format (``llmq-recipe.json``), a transformers checkpoint with a
``quantization_config`` (torchao, bitsandbytes, GPTQ/AWQ, compressed-tensors), or
optimum-quanto's own save. Nothing is quantized here: the files are what the gates
measure, what the ``file`` kind counts and what a probe process loads again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqUsageError
from .base import Int8Built, Int8Request, ProbeArgs, ProbeLoaded, ReferenceLoader
from .user_model import load_saved_in_probe, probe_saved, ship_saved

if TYPE_CHECKING:
    from ...origin import Int8Origin
    from ...sides.base import ProbeSpec, ShippedFile
    from ...types import CausalLM, Tokenizer

TORCH_AO_SAVE_HINT = (
    "save_pretrained cannot serialize torch.ao quantized layers (they hold packed params, not "
    "tensors), and a plain reload of such a save gives FP32 weights back; save the INT8 model with "
    "pytest_llmquant.get_scheme('dynamic-int8').save(model, dir) instead"
)
PICKLES = {"pytorch_model.bin", "model.pt", "quantized_model.pt"}


def checked_coverage(built: Int8Built, path: str, reference: CausalLM) -> Int8Built:
    """``built``, refused when none of the reference's linear layers is quantized in it."""
    if not (built.coverage.quantized or built.coverage.experts_quantized):
        raise LlmqUsageError(
            f"--llmq-int8-model={path} ({built.origin.label}) has none of the FP32 model's "
            f"{built.coverage.total} linear layers quantized; is it the INT8 copy of --llmq-model?"
        )
    return built


class CheckpointRoute:
    name = "checkpoint"

    def origin_of(self, path: str) -> Int8Origin:
        """What the directory at ``path`` is, read from its JSON files alone (no torch, no
        weights): checked at start-up, so a float save exits 4 at once."""
        from ...origin import Int8Origin
        from ..third_party.detect import describe_checkpoint

        p = Path(path).expanduser()
        desc = describe_checkpoint(p)
        if not desc.is_quantized:
            if {f.name for f in p.iterdir()} & PICKLES:
                raise LlmqUsageError(
                    f"--llmq-int8-model={path} holds a pickle, not an INT8 checkpoint: "
                    f"{TORCH_AO_SAVE_HINT}"
                )
            raise LlmqUsageError(
                f"--llmq-int8-model={path} is not quantized (no llmq-recipe.json, no "
                f"quantization_config in config.json): {TORCH_AO_SAVE_HINT}"
            )
        return Int8Origin(
            "checkpoint", desc.label, desc.bits, checkpoint=str(p), scheme=desc.scheme
        )

    def build_or_load(self, request: Int8Request) -> Int8Built | None:
        """The checkpoint loaded as its maker loads it."""
        from ...layers import coverage
        from ..build import claims
        from ..third_party.probe import load_saved_int8

        path = request.checkpoint
        if path is None:
            return None
        origin = self.origin_of(path)
        model = load_saved_int8(path, device=request.device)
        expected, notes = claims(origin.scheme)
        cov = coverage(request.reference, model, expected=expected, notes=notes)
        built = Int8Built(model, cov, origin)
        return checked_coverage(built, path, request.reference)

    def ship(self, model: CausalLM, origin: Int8Origin, directory: Path) -> ShippedFile:
        """Its own files, as they are (``directory`` is unused)."""
        return ship_saved(model, origin, directory)

    def probe(
        self, model: CausalLM, tokenizer: Tokenizer | None, origin: Int8Origin, workdir: Path
    ) -> ProbeSpec:
        saved = Path(str(origin.checkpoint)).expanduser()
        return probe_saved(self.name, saved, tokenizer, origin, workdir)

    def load_in_probe(self, args: ProbeArgs, reference: ReferenceLoader) -> ProbeLoaded:
        return load_saved_in_probe(args)
