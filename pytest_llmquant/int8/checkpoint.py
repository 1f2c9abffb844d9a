"""A quantized model the user ships (``--llmq-int8-model``): a directory (our save format,
a transformers checkpoint with a ``quantization_config``, optimum-quanto's own save) or a
llama.cpp ``Q8_0`` GGUF file. Nothing is quantized here: the files are what the gates
measure, and what the file and peak-RSS memory gates load again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LlmqUsageError
from ..layers import coverage
from ..origin import Int8Origin
from .build import Int8Built

TORCH_AO_SAVE_HINT = (
    "save_pretrained cannot serialize torch.ao quantized layers (they hold packed params, not "
    "tensors), and a plain reload of such a save gives FP32 weights back; save the INT8 model with "
    "pytest_llmquant.get_scheme('dynamic-int8').save(model, dir) instead"
)
PICKLES = {"pytorch_model.bin", "model.pt", "quantized_model.pt"}


def checkpoint_origin(path: str) -> Int8Origin:
    """What the checkpoint at ``path`` is, read from its metadata alone (no torch, no
    weights): checked at start-up, so a wrong path or a float save exits 4 at once."""
    p = Path(path).expanduser()
    if p.is_file():
        from ..formats.gguf.q8_0 import describe_gguf

        label, bits, _ = describe_gguf(str(p))
        return Int8Origin("checkpoint", label, bits, checkpoint=str(p), scheme="weight-only-int8")
    if not p.is_dir():
        raise LlmqUsageError(
            f"--llmq-int8-model={path}: no such file or directory; pass a directory saved by a "
            "pytest-llmquant scheme or a transformers quantized checkpoint, or a Q8_0 .gguf file"
        )
    from ..user_int8.detect import describe_checkpoint

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
    return Int8Origin("checkpoint", desc.label, desc.bits, checkpoint=str(p), scheme=desc.scheme)


def load_int8_checkpoint(path: str, fp32_model: Any, *, device: str = "cpu") -> Int8Built:
    """Load the checkpoint as its maker loads it; a GGUF's Q8_0 blocks go losslessly into
    the ``weight-only-int8`` layer (same layout), so no requantizing happens."""
    origin = checkpoint_origin(path)
    if Path(path).expanduser().is_file():
        from ..formats.gguf.q8_0 import load_gguf_int8

        model = load_gguf_int8(path, fp32_model, device=device)
    else:
        from ..user_int8.probe import load_saved_int8

        model = load_saved_int8(path, device=device)
    cov = coverage(fp32_model, model)
    if not cov.quantized:
        raise LlmqUsageError(
            f"--llmq-int8-model={path} ({origin.label}) has none of the FP32 model's "
            f"{cov.total} linear layers quantized; is it the INT8 copy of --llmq-model?"
        )
    return Int8Built(model, cov, origin)
