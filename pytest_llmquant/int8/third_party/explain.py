"""One-line errors for INT8 models the gates cannot measure as they are.

Each function turns a situation a user can fix (or at least understand) into a
:class:`LlmqUsageError` or :class:`LlmqModelError` whose one line names the checkpoint,
what it is (:class:`Int8Description`), what went wrong and what to do. None of them
lets a torch or library traceback through.

The vocabulary decision (:func:`shared_vocab`, :func:`compare_over_shared_vocab`):
GPTQ/AWQ exporters and vLLM pad ``lm_head`` to a multiple of 64 or 128 rows for their
kernels; the tokenizer never emits those ids. Refusing such a model would refuse most
4-bit checkpoints, so the gates compare over the ids both models share. That is honest
only if the padding carries no weight in the INT8 model's predictions, so the extra
probability mass is *measured* on the logits compared and reported, and a position
whose INT8 argmax is a padded id (greedy decoding would emit a token that does not
exist) is refused. A smaller INT8 vocabulary means another model: refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from ...errors import LlmqModelError, LlmqUsageError
from ...models.causal_lm import vocab_size
from .description import Int8Description

if TYPE_CHECKING:
    import torch

    from ...types import CausalLM

#: what to pip install for each library's loading code (the kernels transformers asks for)
INSTALL = {
    "gptq": "gptqmodel optimum",
    "awq": "gptqmodel",
    "compressed-tensors": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
    "quanto": "optimum-quanto",
}
#: the distribution whose version a load error should be read against
LIBRARY = {
    "gptq": "gptqmodel",
    "awq": "gptqmodel",
    "compressed-tensors": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
    "quanto": "optimum-quanto",
    "llmq": "torch",
}


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def explain_load_error(exc: BaseException, path: str, checkpoint: Int8Description) -> Exception:
    """The one-line error for ``from_pretrained`` (or a scheme's load) failing on ``path``.

    A missing package (``ImportError``: GPTQ/AWQ kernels, compressed-tensors, ...) is the
    user's to install; anything else is a torch or library error, reported with the
    installed version of the library that saved the checkpoint, since a version
    mismatch is the usual cause.
    """
    what = f"the INT8 checkpoint {path} ({checkpoint.label})"
    if isinstance(exc, (LlmqUsageError, LlmqModelError)):
        return exc
    if isinstance(exc, ImportError):
        package = INSTALL.get(checkpoint.library)
        fix = f"pip install {package}" if package else "install the package it names"
        return LlmqUsageError(
            f"{what} needs kernels that are not installed ({_first_line(exc)}); {fix}, or "
            "pass an INT8 checkpoint this machine can run (a pytest-llmquant scheme, torchao, "
            "bitsandbytes)"
        )
    library = LIBRARY.get(checkpoint.library, "transformers")
    versions = f"{library} {_version(library)}, transformers {_version('transformers')}"
    return LlmqModelError(
        f"loading {what} failed ({type(exc).__name__}: {_first_line(exc)}); installed: "
        f"{versions}; re-save the checkpoint with these versions or install the ones that "
        "saved it"
    )


def check_not_dequantized(path: str, checkpoint: Int8Description, loaded: Int8Description) -> None:
    """Refuse a checkpoint that declares quantization but loaded with float weights only.

    transformers dequantizes some formats on load when it has no kernel for them
    (compressed-tensors INT8 on CPU, GGUF, a ``dequantize=True`` config) and may drop the
    ``quantization_config`` on the way, so only the pair (what the directory says, what
    the layers hold) shows it. The gates would otherwise measure an FP32 model.
    """
    if not checkpoint.is_quantized or loaded.is_quantized:
        return
    runtime = (
        "its INT8 runtime is vLLM"
        if checkpoint.library == "compressed-tensors"
        else "this machine has no kernel for it"
    )
    raise LlmqUsageError(
        f"the INT8 checkpoint {path} is {checkpoint.label}, but transformers "
        f"dequantized it to float on load ({runtime}), so the gates would measure an FP32 "
        "model; test it where its kernels run, or pass a checkpoint transformers keeps "
        "quantized on this device (torchao, bitsandbytes, a pytest-llmquant scheme)"
    )


# -- vocabulary --------------------------------------------------------------------------


def shared_vocab(reference: CausalLM, int8_model: CausalLM, label: str = "the INT8 model") -> int:
    """The number of token ids to compare over: the FP32 vocabulary. Refuses an INT8 model
    whose vocabulary is smaller (a different model, not a quantized copy)."""
    fp32, int8 = vocab_size(reference), vocab_size(int8_model)
    if int8 < fp32:
        raise LlmqUsageError(
            f"{label} has a smaller vocabulary ({int8} ids) than the FP32 model ({fp32}): it is "
            "not a quantized copy of --llmq-model; pass the INT8 checkpoint made from it"
        )
    return fp32


@dataclass(frozen=True)
class SharedVocab:
    """INT8 logits cut to the shared ids, and what the cut removed."""

    logits: torch.Tensor  # the INT8 logits over the FP32 vocabulary
    extra_ids: int  # padded ids dropped (0 when the vocabularies match)
    max_extra_mass: float  # largest probability the INT8 model put on them at any position
    note: str  # one line for the report ("" when nothing was cut)


def compare_over_shared_vocab(
    fp32_logits: torch.Tensor, int8_logits: torch.Tensor, label: str = "the INT8 model"
) -> SharedVocab:
    """Cut INT8 logits (``[..., V8]``) to the FP32 vocabulary (``[..., V]``, ``V <= V8``).

    Measures the INT8 probability on the dropped ids, and refuses (one line) where an
    INT8 argmax is a dropped id: there the INT8 model would emit a non-existent token.
    """
    import torch

    vocab, int8_vocab = int(fp32_logits.shape[-1]), int(int8_logits.shape[-1])
    if int8_vocab < vocab:
        raise LlmqUsageError(
            f"{label} has a smaller vocabulary ({int8_vocab} ids) than the FP32 model ({vocab}): "
            "it is not a quantized copy of --llmq-model; pass the INT8 checkpoint made from it"
        )
    if int8_vocab == vocab:
        return SharedVocab(int8_logits, 0, 0.0, "")
    extra = int8_vocab - vocab
    probs = torch.softmax(int8_logits.float(), dim=-1)
    mass = float(probs[..., vocab:].sum(-1).max())
    winners = int8_logits.argmax(-1) >= vocab
    picked, positions = int(winners.sum()), int(winners.numel())
    if picked:
        raise LlmqModelError(
            f"{label} predicts one of its {extra} padded vocabulary ids (beyond the FP32 "
            f"model's {vocab}) at {picked} of {positions} positions, so greedy decoding would emit tokens that "
            "do not exist; its lm_head padding is not inert: fix the export"
        )
    note = (
        f"compared over the {vocab} shared token ids; {label} has {extra} padded ids, "
        f"holding at most {mass:.2e} of its probability at any position"
    )
    return SharedVocab(int8_logits[..., :vocab], extra, mass, note)
