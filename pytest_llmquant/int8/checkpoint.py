"""A pre-quantized INT8 model the user ships (``--llmq-int8-model``): our own save format
(``llmq-recipe.json`` + safetensors) or a transformers checkpoint with a
``quantization_config``. Nothing is quantized here; the checkpoint is what the gates measure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LlmqUsageError
from ..layers import Coverage, coverage
from ..loading import load_pretrained
from ..sources import ModelSource

TORCH_AO_SAVE_HINT = (
    "save_pretrained cannot serialize torch.ao quantized layers (they hold packed params, not "
    "tensors), and a plain reload of such a save gives FP32 weights back; save the INT8 model with "
    "pytest_llmquant.get_scheme('dynamic-int8').save(model, dir) instead"
)


def int8_checkpoint_label(path: str) -> str:
    """The scheme name a ``--llmq-int8-model`` checkpoint was made with (for test ids)."""
    from ..schemes.base import RECIPE_FILE, QuantScheme

    p = Path(path).expanduser()
    if not p.is_dir():
        raise LlmqUsageError(
            f"--llmq-int8-model={path}: no such directory; pass a directory saved by a "
            "pytest-llmquant scheme or a transformers quantized checkpoint"
        )
    if (p / RECIPE_FILE).exists():
        return str(QuantScheme.read_recipe(p)["scheme"])
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    quant = config.get("quantization_config") or {}
    if quant:
        return str(quant.get("quant_method", "pretrained-int8"))
    names = {f.name for f in p.iterdir()}
    if names & {"pytorch_model.bin", "model.pt", "quantized_model.pt"}:
        raise LlmqUsageError(
            f"--llmq-int8-model={path} holds a pickle, not an INT8 checkpoint: {TORCH_AO_SAVE_HINT}"
        )
    raise LlmqUsageError(
        f"--llmq-int8-model={path} is not quantized (no llmq-recipe.json, no quantization_config "
        f"in config.json): {TORCH_AO_SAVE_HINT}"
    )


def load_int8_checkpoint(
    path: str, fp32_model: Any, *, device: str = "cpu"
) -> tuple[Any, Coverage]:
    """Load a pre-quantized INT8 model: ours (recipe + safetensors) or a transformers-format
    quantized checkpoint (torchao / quanto) that ``from_pretrained`` can load."""
    from ..schemes import get_scheme
    from ..schemes.base import RECIPE_FILE, QuantScheme

    p = Path(path).expanduser()
    label = int8_checkpoint_label(path)
    if (p / RECIPE_FILE).exists():
        model = get_scheme(QuantScheme.read_recipe(p)["scheme"]).load(p, device=device)
    else:
        source = ModelSource(path, "dir", p.name, str(p))
        model, _ = load_pretrained(str(p), source, trust_remote_code=False)
        model = model.to(device).eval()
    cov = coverage(fp32_model, model)
    if not cov.quantized:
        raise LlmqUsageError(
            f"--llmq-int8-model={path} ({label}) has none of the FP32 model's {cov.total} linear "
            "layers quantized; is it the INT8 copy of --llmq-model?"
        )
    return model, cov
