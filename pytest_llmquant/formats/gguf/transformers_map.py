"""What transformers' GGUF loader knows, for loading GGUF tensors without it dequantizing.

Why a module of its own: :mod:`.gguf_q8` reuses transformers' own knowledge (which
architectures it loads, its config key names, its GGUF -> module name map, its per-
architecture tensor processors) instead of copying it, and each reuse needs a small
adapter: the architecture check must run at start-up without torch, the name map must
not take 12 s, and a processor written for float arrays must be proven to move whole
rows before it may touch Q8_0 blocks. Those adapters live here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import numpy
    import torch
    from torch import nn
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor

    from .header import GGUFHeader, GGUFTensor, GGUFValue

#: what the tensor processors build: ``{"tensors": {transformers name: float32 tensor}}``
Made = dict[str, dict[str, "torch.Tensor"]]

#: the narrow probe of :func:`row_order` (one Q8_0 block wide)
_PROBE_WIDTH = 32


def transformers_architecture(arch: str) -> str | None:
    """The name transformers' GGUF loader knows ``arch`` by, or None where it has none.

    Mirrors the renames in ``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint``
    (which parses the whole header with ``GGUFReader``, ~2.5 s of CPU for SmolLM2, and
    imports torch) against transformers' own table of GGUF config keys, which imports
    without torch, so the check can run at start-up."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    known = set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}
    renamed = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss"}
    for name in (arch, renamed.get(arch), arch.replace("-", "_"), "t5" if "t5" in arch else None):
        if name in known:
            return name
    return None


def row_order(
    processor: TensorProcessor, name: str, shape: tuple[int, int], mapping: dict[str, str]
) -> tuple[str, numpy.ndarray | None] | None:
    """How transformers' processor moves the rows of tensor ``name``: ``(new name, order)``
    with ``order`` None when it leaves them in place, or None when it does anything other
    than permute whole rows (then Q8_0 blocks cannot follow losslessly).

    The probe holds each element's own index, so the result shows exactly where every
    element went; a narrow probe is tried first because it is cheap, the full width where
    the processor needs the real shape.
    """
    import numpy as np

    rows, cols = shape
    for width in dict.fromkeys((min(cols, _PROBE_WIDTH), cols)):
        probe = np.arange(rows * width, dtype=np.float64).reshape(rows, width)
        try:
            result = processor.process(
                weights=probe,
                name=name,
                tensor_key_mapping=mapping,
                parsed_parameters={"tensors": {}},
            )
        except Exception:  # the processor needs the real width: try it
            continue
        out = np.asarray(result.weights)
        if result.name is None or out.shape != (rows, width):
            continue
        order = (out[:, 0] // width).astype(np.int64)
        expected = order[:, None] * width + np.arange(width)
        if not np.array_equal(out, expected) or not np.array_equal(np.sort(order), np.arange(rows)):
            return None
        return result.name, None if np.array_equal(order, np.arange(rows)) else order
    return None


def hparams_from_header(header: GGUFHeader, arch: str) -> dict[str, GGUFValue]:
    """The model hyper-parameters in the GGUF header under transformers' config names
    (``llama.attention.head_count`` -> ``num_attention_heads``, ...), read with transformers'
    own key table: its tensor processors take them as their config (llama's Q/K permutation
    needs the head counts), and they tell whether the file is the FP32 model's."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    table = cast(dict[str, dict[str, Any]], GGUF_CONFIG_MAPPING)
    renames = table.get(transformers_architecture(arch) or arch, {})
    hparams: dict[str, GGUFValue] = {}
    for key, value in header.fields.items():
        prefix, _, rest = key.partition(".")
        if prefix == arch and isinstance(renames.get(rest), str):
            hparams[renames[rest]] = value
    return hparams


def weights_map(
    model: nn.Module, processor: TensorProcessor, file_architecture: str | None = None
) -> dict[str, str]:
    """GGUF tensor name -> parameter name, by transformers' ``get_gguf_hf_weights_map``.

    The model's own ``model_type`` picks gguf's name table; where gguf has none for it
    (llama.cpp writes a Mixtral as a ``llama`` with experts), the file's
    ``file_architecture`` does.

    That function walks every submodule and builds gguf's name table anew at each of them
    (~400 tables, ~12 s for SmolLM2 on this CPU); it only needs the top level and its
    direct children (models converted from a base model, like Bloom, have names without
    the top-level prefix), so it is handed stand-ins that stop the walk there.
    """
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    class _Level:
        def __init__(self, module: nn.Module, children: list[tuple[str, _Level]]) -> None:
            self.config = getattr(module, "config", None)
            self._keys = dict.fromkeys(module.state_dict(keep_vars=True))
            self._children = children

        def state_dict(self) -> dict[str, None]:
            return self._keys

        def named_children(self) -> list[tuple[str, _Level]]:
            return self._children

    top = _Level(model, [(n, _Level(c, [])) for n, c in model.named_children()])
    try:
        return dict(get_gguf_hf_weights_map(top, processor))
    except NotImplementedError:  # gguf has no table under the model's own name
        if file_architecture is None:
            raise
        return dict(get_gguf_hf_weights_map(top, processor, model_type=file_architecture))


def dequantize_into(
    processor: TensorProcessor, tensor: GGUFTensor, mapping: dict[str, str], made: Made
) -> str:
    """Dequantize one GGUF tensor and store it, float32, under its transformers name in
    ``made["tensors"]``, exactly as transformers' GGUF loader processes it (renames,
    Q/K row permutation); returns the tensor's processed GGUF name."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    if tensor.data is None:
        raise ValueError(
            f"GGUF tensor {tensor.name} has type {tensor.type_name}, which gguf cannot read"
        )
    result = processor.process(
        weights=dequantize(tensor.data, tensor.qtype),
        name=tensor.name,
        tensor_key_mapping=mapping,
        parsed_parameters=made,
    )
    if result.name in mapping:
        made["tensors"][mapping[result.name]] = torch.from_numpy(
            np.array(result.weights, dtype=np.float32)
        )
    return str(result.name or tensor.name)
