"""Convert a GGUF file to FP32 safetensors in seconds, with transformers' own GGUF knowledge.

Why not ``AutoModelForCausalLM.from_pretrained(gguf_file=...)``: for architectures its new
GGUF path does not cover (llama among them) it falls back to the legacy loader, which walks
every submodule to build gguf's tensor-name table (~400 tables, ~12 s for SmolLM2 on this
project's CI machine), parses the header with ``GGUFReader`` a second time, and then
initialises a model it overwrites. The FP32 cache entry needs none of that: the
dequantized tensors, the config and the tokenizer.

So this does what the legacy loader does, step for step, with the adapters of
:mod:`.gguf_transformers`: the config from transformers' ``load_gguf_checkpoint`` (the same
dict ``AutoConfig`` builds from a GGUF), the model skeleton on the meta device (no
weights allocated or initialised), the GGUF -> parameter name map through
:func:`~.gguf_transformers.weights_map` (top level only), each tensor dequantized with
``gguf.quants.dequantize`` (what the legacy loader calls) and passed through the
architecture's tensor processor (llama's Q/K reverse permutation) into the same
``parsed_parameters`` dict. The tokenizer is transformers' GGUF tokenizer conversion,
unchanged. tests/test_gguf_fp32.py checks the result gives identical logits, state dict
and tokenizer files to the ``from_pretrained(gguf_file=...)`` route.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .header import GGUFHeader, read_header
from .transformers_map import Made, dequantize_into, weights_map


def _quiet(text: str) -> None:
    """The progress callback when nobody watches."""


@contextmanager
def _metadata_parsed_once() -> Iterator[None]:
    """Let the config and the tokenizer share one parse of the GGUF metadata.

    ``load_gguf_checkpoint(return_tensors=False)`` reads the header with ``GGUFReader``,
    which makes numpy views of every tokenizer string (~3.5 s of CPU for SmolLM2 on this
    project's CI machine), and ``AutoTokenizer.from_pretrained(gguf_file=...)`` calls it
    again only to learn the model type. For the length of the conversion, the module
    attribute both look up is a memo of the metadata-only call (each caller gets its own
    copy); tensor loads go to the original. Should transformers stop looking it up there,
    the memo is simply not used: the conversion is slower, not different.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.load_gguf_checkpoint
    parsed: dict[str, Any] = {}

    def once(path: Any, return_tensors: bool = False, *args: Any, **kwargs: Any) -> Any:
        if return_tensors or args or kwargs:
            return original(path, return_tensors, *args, **kwargs)
        key = os.path.realpath(path)
        if key not in parsed:
            parsed[key] = _parsed_without_gguf_reader(original, path)
        return copy.deepcopy(parsed[key])

    gguf_utils.load_gguf_checkpoint = once  # type: ignore[assignment]  # same call, fewer forms
    try:
        yield
    finally:
        gguf_utils.load_gguf_checkpoint = original


def _parsed_without_gguf_reader(parse: Callable[..., object], path: str) -> object:
    """``parse(path, return_tensors=False)`` (transformers' ``load_gguf_checkpoint``) with
    :class:`.metadata.MetadataReader` as the ``gguf.GGUFReader`` it imports when called: the
    same result without ~150k numpy views (see :mod:`.metadata`). Metadata that reader does
    not cover is parsed with GGUFReader, as before."""
    import gguf

    from .metadata import MetadataReader, NotReadHere

    real = gguf.GGUFReader
    gguf.GGUFReader = MetadataReader  # type: ignore[misc,assignment]  # the parts it reads
    try:
        return parse(path, return_tensors=False)
    except NotReadHere:
        pass
    finally:
        gguf.GGUFReader = real  # type: ignore[misc]
    return parse(path, return_tensors=False)


def convert_gguf_to_fp32(
    path: str | Path,
    directory: str | Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write the model in the GGUF file ``path`` into ``directory`` as transformers writes a
    float32 model (``model.safetensors``, ``config.json``, ``generation_config.json``) plus
    its tokenizer files.

    ``progress`` is called with what is being done (a throttled
    :class:`~pytest_llmquant.progress.Progress` fits). Raises what the GGUF readers raise:
    ``ValueError`` for a truncated or corrupt file (``GGUFFormatError``) or an architecture
    transformers cannot load, ``OSError`` when the file cannot be read.
    """
    say = progress or _quiet
    path = Path(path)
    header = read_header(path)  # fast, and a truncated file fails here, before the slow parse
    with _metadata_parsed_once():
        _convert(header, path, Path(directory), say)


class ArchitectureNotRead(ValueError):
    """transformers' GGUF loader would read this file as another model than it is."""


def _check_experts_read(header: GGUFHeader, arch: str, parsed: dict[str, Any]) -> None:
    """llama.cpp writes a Mixtral as a ``llama`` with ``llama.expert_count``; transformers'
    GGUF config table has no expert keys for ``llama``, so it would build a dense model and
    the experts would be found missing, reported as a corrupt file. Say what it is instead."""
    experts = header.fields.get(f"{arch}.expert_count")
    known = {"num_local_experts", "num_experts"} & set(parsed)
    if isinstance(experts, int) and experts > 1 and not known:
        raise ArchitectureNotRead(
            f"is a mixture-of-experts {arch!r} GGUF ({experts} experts, as llama.cpp writes a "
            "Mixtral), which transformers' GGUF loader reads as a dense model; pass the "
            "transformers checkpoint directory as --llmq-model (this file, or its Q8_0, can "
            "be --llmq-int8-model)"
        )


def _convert(header: GGUFHeader, path: Path, directory: Path, say: Callable[[str], None]) -> None:
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    arch = str(header.fields.get("general.architecture") or "")
    say("reading the GGUF config")
    parsed = gguf_utils.load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    _check_experts_read(header, arch, parsed)
    config = AutoConfig.for_model(**parsed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    processor = gguf_utils.TENSOR_PROCESSORS.get(arch, gguf_utils.TensorProcessor)(config=parsed)
    mapping = weights_map(model, processor)
    made: Made = {"tensors": {}}
    total = len(header.tensors)
    for i, tensor in enumerate(header.tensors, 1):
        say(f"dequantizing GGUF tensors to FP32: {i} of {total}")
        dequantize_into(processor, tensor, mapping, made)
    tensors = {name: t.to(torch.float32) for name, t in made["tensors"].items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    del tensors, made
    model.tie_weights()
    left = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left:
        raise ValueError(
            f"the GGUF file has no tensor for {len(left)} of the model's weights (e.g. {left[0]})"
        )
    say("writing FP32 safetensors")
    model.save_pretrained(directory, safe_serialization=True)
    say("converting the GGUF tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(directory)
