"""Load a saved INT8 checkpoint in a fresh process, as its maker loads it.

Why: the ``peak_rss`` gate measures a fresh process that holds the INT8 model. Today's
probe (``memory_probe``) rebuilds the INT8 model from FP32 with *our* scheme, which
measures our scheme, not the user's model. With the model saved (:func:`.save.save_int8`)
the probe can load exactly that model instead: :func:`probe_spec` gives JSON-able
arguments, :func:`load_saved_int8` (run in the child) loads them:

- ``llmq-recipe``: our scheme's ``load`` (safetensors + ``llmq-recipe.json``);
- ``transformers``: ``from_pretrained(dir, device_map=device, use_safetensors=True)``,
  with the quantizer its ``quantization_config`` names; never remote code;
- ``quanto``: the model built from ``config.json``, then ``optimum.quanto.requantize``
  with the saved state dict and quantization map.

Errors are one line (:mod:`.explain`), and a checkpoint transformers dequantizes on load
is refused rather than measured as if it were INT8.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqUsageError
from .detect import QUANTO_MAP_FILE, describe_checkpoint, describe_int8
from .explain import check_not_dequantized, explain_load_error

if TYPE_CHECKING:
    from torch import nn

    from ...types import CausalLM

LOADERS: tuple[str, ...] = ("llmq-recipe", "transformers", "quanto")


def loader_for(directory: str | Path) -> str:
    """Which of :data:`LOADERS` reads ``directory`` (from its JSON files alone)."""
    from ...schemes.base import RECIPE_FILE

    path = Path(directory)
    if (path / RECIPE_FILE).exists():
        return "llmq-recipe"
    if (path / QUANTO_MAP_FILE).exists():
        return "quanto"
    if describe_checkpoint(path).is_quantized:
        return "transformers"
    raise LlmqUsageError(
        f"{directory} is not a quantized checkpoint (no llmq-recipe.json, no {QUANTO_MAP_FILE}, "
        "no quantization_config in config.json); save it with pytest_llmquant.int8.third_party.save_int8"
    )


def probe_spec(directory: str | Path) -> dict[str, str]:
    """Arguments for :func:`load_saved_int8`, to pass to a fresh process as JSON."""
    path = Path(directory).expanduser().resolve()
    return {"int8_dir": str(path), "int8_loader": loader_for(path)}


def _load_transformers(path: Path, device: str) -> CausalLM:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(
                str(path), device_map=device, use_safetensors=True, trust_remote_code=False
            )
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_quanto(path: Path, device: str) -> CausalLM:
    import torch
    from optimum.quanto import requantize
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    qmap = json.loads((path / QUANTO_MAP_FILE).read_text(encoding="utf-8"))
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as fh:
        tied = json.loads((fh.metadata() or {}).get("tied", "{}"))
    config = AutoConfig.from_pretrained(str(path))
    # Built on CPU, not on the meta device: requantize would leave non-persistent buffers
    # (rotary inv_freq) uninitialised on meta, and the logits would differ.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _untie(model)  # the saved "tied" list, not the config, says what shares a tensor
    requantize(model, state, qmap, device=torch.device(device))
    for alias, source in tied.items():
        owner, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
    # requantize loads with strict=False: a key it did not fill would stay randomly initialised
    missing = sorted(set(model.state_dict()) - set(state) - set(tied))
    if missing:
        raise LlmqUsageError(
            f"{path} does not hold every weight of its model ({missing[0]} is missing); save it "
            "again with pytest_llmquant.int8.third_party.save_int8"
        )
    return model


def _untie(model: CausalLM) -> None:
    """Give every parameter shared by two modules its own storage.

    A config may say ``tie_word_embeddings`` while the saved model holds two different
    tensors (quanto quantized ``lm_head`` and not the embedding, or the checkpoint was
    never tied). requantize re-wraps each parameter without copying, so a shared storage
    would receive both tensors, the second overwriting the first.
    """
    import torch

    seen: set[int] = set()
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in seen:
                module._parameters[name] = torch.nn.Parameter(
                    param.detach().clone(), requires_grad=param.requires_grad
                )
            seen.add(id(param))


def load_saved_int8(
    int8_dir: str, int8_loader: str | None = None, *, device: str = "cpu"
) -> nn.Module:
    """The INT8 model saved in ``int8_dir``, in eval mode, loaded as its maker loads it.

    ``int8_loader`` is one of :data:`LOADERS` (``None``: read it from the directory).
    """
    path = Path(int8_dir).expanduser()
    checkpoint = describe_checkpoint(path)
    loader = int8_loader or loader_for(path)
    if loader not in LOADERS:
        raise LlmqUsageError(f"unknown INT8 loader {loader!r}; valid: {', '.join(LOADERS)}")
    try:
        if loader == "llmq-recipe":
            from ...schemes import get_scheme

            model = get_scheme(str(checkpoint.scheme)).load(path, device=device)
        elif loader == "quanto":
            model = _load_quanto(path, device)
        else:
            model = _load_transformers(path, device)
    except Exception as exc:
        raise explain_load_error(exc, str(int8_dir), checkpoint) from None
    check_not_dequantized(str(int8_dir), checkpoint, describe_int8(model))
    return model.eval()
