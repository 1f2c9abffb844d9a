"""The GGUF route's model: a llama.cpp ``Q8_0`` file loaded losslessly into ``weight-only-int8``
layers (the blocks themselves are read by :mod:`pytest_llmquant.formats.gguf.q8_0`).

Why this is lossless: a Q8_0 tensor is, per row, blocks of 32 int8 values along the input
dimension with one float16 scale each (``max|w| / 127``). ``weight-only-int8`` with
``group_size=32`` holds exactly that, with float32 scales, and float16 -> float32 is exact.
So every Q8_0 weight of a linear layer becomes a :class:`WeightOnlyInt8Linear` holding the
file's own int8 values and scales: the INT8 model computes ``q * scale`` with the numbers
llama.cpp computes with, nothing is re-quantized. Everything else (norms, embeddings, a
float ``output.weight``) is loaded as float32, as transformers' GGUF loader does.

The architecture comes from the FP32 model's class and config, built on the meta device
(no second float copy); GGUF tensor names are mapped to module names with transformers'
own :func:`get_gguf_hf_weights_map`, and each tensor goes through transformers' tensor
processor for its architecture (llama's Q/K reverse permutation). That processor is
applied to the int8 values only when a probe shows it is a pure row permutation (llama's
is), so whole rows move with their block scales; any other reshuffle would split blocks
and is refused. When the GGUF has no ``output.weight``, llama.cpp multiplies by
``token_embd``; if that is Q8_0 the ``lm_head`` here is the same int8 blocks (an int8 layer
tied in content to the embedding), otherwise ``lm_head`` stays the float embedding, tied,
and :func:`pytest_llmquant.layers.coverage` reports it as kept in float.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import LlmqUsageError
from ..formats.gguf.q8_0 import (
    FLOAT_TYPES,
    INT8_TYPE,
    Q8_0_BLOCK,
    q8_0_blocks,
    read_q8_0_header,
    type_counts,
)
from ..formats.gguf.transformers_map import (
    dequantize_into,
    hparams_from_header,
    row_order,
    transformers_architecture,
    weights_map,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor

    from ..formats.gguf.header import GGUFHeader, GGUFTensor
    from ..schemes.base import QuantScheme
    from ..types import CausalLM

REQUANTIZE_FIX = (
    "make a Q8_0 file from the F16/F32 GGUF with llama.cpp "
    "(llama-quantize model.f16.gguf model.Q8_0.gguf Q8_0), or pass this file as "
    "--llmq-model to test it as the FP32 side"
)


def _option(path: str | Path) -> str:
    return f"--llmq-int8-model={path}"


def _architecture(header: GGUFHeader, path: str | Path) -> str:
    arch = str(header.fields.get("general.architecture") or "")
    if not arch or transformers_architecture(arch) is None:
        raise LlmqUsageError(
            f"{_option(path)} is a {arch or 'unnamed'!r} GGUF, an architecture transformers "
            "cannot load from GGUF; test a GGUF of an architecture transformers supports "
            "(llama, qwen2, mistral, phi3, gemma2, ...)"
        )
    return arch


def _describe(header: GGUFHeader, path: str | Path) -> tuple[str, int, dict[str, int]]:
    types = type_counts(header)
    held = ", ".join(f"{name} ({n} tensor{'s' * (n != 1)})" for name, n in types.items())
    other = [t for t in types if t not in FLOAT_TYPES and t != INT8_TYPE]
    if other:
        raise LlmqUsageError(
            f"{_option(path)} holds {held}; torch runs only Q8_0 losslessly as INT8 "
            f"(weight-only-int8), not {', '.join(other)}: run the file as it ships with "
            f"--llmq-int8-runtime=llama.cpp, or {REQUANTIZE_FIX}"
        )
    if INT8_TYPE not in types:
        raise LlmqUsageError(
            f"{_option(path)} holds only float tensors ({held}), so it is not an INT8 model: "
            "pass it as --llmq-model, or make a Q8_0 file with llama.cpp "
            "(llama-quantize model.f16.gguf model.Q8_0.gguf Q8_0)"
        )
    _architecture(header, path)
    return f"gguf {INT8_TYPE}", 8, types


def describe_gguf(path: str | Path) -> tuple[str, int, dict[str, int]]:
    """``("gguf Q8_0", 8, {tensor type: count})`` for a GGUF usable as the INT8 side.

    Reads only the header (torch-free), so it can run at start-up to label tests. Raises a
    one-line :class:`LlmqUsageError` for a file that is not GGUF, one holding quantized
    types other than Q8_0 (Q4_K, Q6_K, Q4_1, ...: those would have to be re-quantized, so
    the INT8 model would not be the user's file), one with no Q8_0 tensor at all, and one
    of an architecture transformers cannot load.
    """
    return _describe(read_q8_0_header(path), path)


def _check_same_model(
    gguf_config: Mapping[str, object], config: PretrainedConfig | None, path: str | Path
) -> None:
    """Refuse a GGUF of another model before its tensors are read (one clear line, not a
    shape error deep inside the load)."""
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads")
    for key in (*keys, "vocab_size"):
        mine, theirs = gguf_config.get(key), getattr(config, key, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise LlmqUsageError(
                f"{_option(path)} is not the model --llmq-model loads ({key} {mine} in the GGUF, "
                f"{theirs} in the FP32 model); pass the Q8_0 GGUF of the same model"
            )


def _skeleton(reference: CausalLM, path: str | Path) -> PreTrainedModel:
    """The FP32 model's class built from a copy of its config on the meta device: the
    architecture without allocating a second float copy of the weights."""
    import torch

    config = getattr(reference, "config", None)
    if config is None:
        raise LlmqUsageError(
            f"{_option(path)} needs a transformers FP32 model (one with a config) to take the "
            "architecture from; load --llmq-model with pytest_llmquant.load_fp32"
        )
    with torch.device("meta"):
        return cast("PreTrainedModel", type(reference)(copy.deepcopy(config)))


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None) if module else None


class _Loaded:
    """What the tensors of one GGUF became, before they are put into the model."""

    def __init__(self) -> None:
        self.int8: dict[str, nn.Module] = {}  # linear module name -> WeightOnlyInt8Linear
        self.experts: dict[str, nn.Module] = {}  # expert module name -> Int8Experts
        self.floats: dict[str, torch.Tensor] = {}  # parameter name -> float32 tensor
        self.q8_embedding: GGUFTensor | None = None  # token_embd, when it is Q8_0


def _read_tensors(
    header: GGUFHeader, path: str | Path, model: PreTrainedModel, processor: TensorProcessor
) -> _Loaded:
    """Turn each GGUF tensor into an int8 layer (Q8_0 weights of linear layers) or a float32
    tensor (everything else, processed exactly as transformers' GGUF loader does); stacked
    expert tensors go to :mod:`.gguf_experts`."""
    import torch
    from torch import nn

    from ..schemes import get_scheme
    from .gguf_experts import ExpertTensors, load_experts

    scheme = get_scheme("weight-only-int8", group_size=Q8_0_BLOCK)
    mapping = weights_map(model, processor, str(header.fields.get("general.architecture")))
    linears = {f"{n}.weight": n for n, m in model.named_modules() if type(m) is nn.Linear}
    expected = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    embedding = _module_name(model, model.get_input_embeddings())
    out = _Loaded()
    experts = ExpertTensors()

    def check_shape(gguf_name: str, hf_name: str, shape: tuple[int, ...]) -> None:
        if expected.get(hf_name, shape) != shape:
            raise LlmqUsageError(
                f"{_option(path)}: tensor {gguf_name} has shape {shape} but the FP32 model's "
                f"{hf_name} is {expected[hf_name]}; pass the Q8_0 GGUF of --llmq-model"
            )

    for tensor in header.tensors:
        if experts.take(tensor):
            continue
        if tensor.type_name == INT8_TYPE and len(tensor.shape) == 2:
            rows, cols = tensor.shape
            moved = row_order(processor, tensor.name, (rows, cols), mapping)
            target = mapping.get(moved[0] if moved else tensor.name)
            if target in linears:
                if moved is None:
                    raise LlmqUsageError(
                        f"{_option(path)}: transformers reshapes {tensor.name} in a way that "
                        "splits Q8_0 blocks, so it cannot load losslessly as INT8; pass the file "
                        "as --llmq-model with --llmq-scheme=weight-only-int8 (same blocks of 32)"
                    )
                check_shape(tensor.name, target, tensor.shape)
                out.int8[linears[target]] = _int8_layer(scheme, tensor, moved[1], path)
                continue
            if (
                embedding is not None
                and target == f"{embedding}.weight"
                and moved == (tensor.name, None)
            ):
                out.q8_embedding = tensor
        made: dict[str, dict[str, torch.Tensor]] = {"tensors": {}}
        processed = dequantize_into(processor, tensor, mapping, made)
        for hf_name, value in made["tensors"].items():
            check_shape(processed, hf_name, tuple(value.shape))
            out.floats[hf_name] = value.to(torch.float32)
    out.experts, float_banks = load_experts(experts, model, path)
    out.floats.update(float_banks)
    return out


def _int8_layer(
    scheme: QuantScheme, tensor: GGUFTensor, order: np.ndarray | None, path: str | Path
) -> nn.Module:
    """A WeightOnlyInt8Linear holding ``tensor``'s Q8_0 values and scales, rows in ``order``."""
    import torch

    q, scales = q8_0_blocks(tensor, path)
    if order is not None:  # whole rows move, each with its own block scales
        index = torch.from_numpy(order)
        q, scales = q[index], scales[index]
    return scheme.module_from_tensors(
        {"weight_int8": q, "scales": scales}, {"group_size": Q8_0_BLOCK, "bias": False}
    )


def _assemble(
    model: PreTrainedModel, loaded: _Loaded, reference: CausalLM, path: str | Path
) -> None:
    """Put the loaded tensors into the meta skeleton; refuse if any weight is left without one."""
    from torch import nn

    from ..layers import set_submodule

    had_bias = {n: model.get_submodule(n).bias is not None for n in loaded.int8}
    for name, layer in loaded.int8.items():
        set_submodule(model, name, layer)
        bias = loaded.floats.pop(f"{name}.bias", None)
        if bias is not None:
            layer.bias = bias
    for name, layer in loaded.experts.items():
        set_submodule(model, name, layer)
    model.load_state_dict(loaded.floats, strict=False, assign=True)
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if isinstance(output, nn.Linear) and output.weight.is_meta and embedding is not None:
        output.weight = embedding.weight  # type: ignore[assignment]  # tied, as the GGUF says
    computed = dict(reference.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta and name in computed:  # rotary frequencies etc.: in no file
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(
                leaf, computed[name].detach().clone(), persistent=False
            )
    missing = [
        n for n, t in model.state_dict(keep_vars=True).items() if t is not None and t.is_meta
    ]
    missing += [f"{n}.bias" for n, b in had_bias.items() if b and loaded.int8[n].bias is None]
    if missing:
        raise LlmqUsageError(
            f"{_option(path)} has no tensor for {len(missing)} of the FP32 model's weights "
            f"(e.g. {missing[0]}); pass the Q8_0 GGUF of --llmq-model"
        )


def load_gguf_int8(path: str | Path, reference: CausalLM, *, device: str = "cpu") -> CausalLM:
    """The INT8 model of a llama.cpp Q8_0 GGUF: ``reference``'s architecture, every Q8_0
    linear weight as a :class:`WeightOnlyInt8Linear` holding the file's int8 values and
    block scales unchanged, every other tensor as float32 (see the module docstring).

    ``reference`` is only read (its class, config, generation config and computed buffers
    such as rotary frequencies). Bad input is a one-line :class:`LlmqUsageError`.
    """
    from torch import nn
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    from ..schemes import get_scheme

    get_scheme("weight-only-int8").check_device(device)
    header = read_q8_0_header(path)
    _describe(header, path)
    arch = _architecture(header, path)
    hparams = hparams_from_header(header, arch)
    _check_same_model(hparams, getattr(reference, "config", None), path)
    model = _skeleton(reference, path)
    loaded = _read_tensors(
        header, path, model, TENSOR_PROCESSORS.get(arch, TensorProcessor)(hparams)
    )
    # No output.weight: llama.cpp multiplies by token_embd, so lm_head gets its int8 blocks.
    lm_head = _module_name(model, model.get_output_embeddings())
    from_embedding = (
        lm_head is not None
        and lm_head not in loaded.int8
        and f"{lm_head}.weight" not in loaded.floats
        and loaded.q8_embedding is not None
        and type(model.get_submodule(lm_head)) is nn.Linear
    )
    if from_embedding:
        assert lm_head is not None and loaded.q8_embedding is not None
        scheme = get_scheme("weight-only-int8", group_size=Q8_0_BLOCK)
        loaded.int8[lm_head] = _int8_layer(scheme, loaded.q8_embedding, None, path)
    _assemble(model, loaded, reference, path)
    if lm_head in loaded.int8 and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False  # its own int8 module now, not a shared weight
    generation = getattr(reference, "generation_config", None)
    if generation is not None:
        model.generation_config = copy.deepcopy(generation)
    return model.to(device).eval()  # type: ignore[arg-type]
