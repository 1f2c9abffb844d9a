"""The sides of ``--llmq-int8-runtime`` and ``--llmq-reference-runtime``: llama.cpp, ONNX Runtime.

At start-up, :func:`check_runtimes` reads what each runtime will run from metadata alone
(the file's type and bits, for test ids), checks the runtime is installed and refuses a
combination that cannot work, each in one line. At test time the model store asks
:func:`int8_built` and :func:`reference_side` for a :class:`~..sides.child.ChildSide`: the
model loads in a child process, once per file, on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError

if TYPE_CHECKING:
    from ..formats.facts import FileFacts
    from ..int8.routes.base import Int8Built
    from ..models.sources import ModelSource
    from ..settings import Settings
    from ..sides.base import ProbeSpec
    from ..sides.child import ChildSide
    from ..types import Tokenizer

INT8_OPTION = "--llmq-int8-runtime"
REFERENCE_OPTION = "--llmq-reference-runtime"


def _int8_path(settings: Settings) -> str:
    if not settings.int8_model:
        what = "FILE.gguf" if settings.int8_runtime == "llama.cpp" else "DIR (with model.onnx)"
        raise LlmqUsageError(
            f"{INT8_OPTION}={settings.int8_runtime} runs the file you ship: pass it with "
            f"--llmq-int8-model={what}"
        )
    return settings.int8_model


def int8_facts(settings: Settings) -> FileFacts:
    from ..sides.runtimes import runtime

    found = runtime(settings.int8_runtime, INT8_OPTION)
    return found.describe(_int8_path(settings), "--llmq-int8-model")


def reference_facts(settings: Settings, source: ModelSource) -> FileFacts:
    """The reference's file as its runtime runs it (a quantized GGUF: described as is; the
    F32 file written from it is what runs)."""
    from ..sides.runtimes import runtime

    found = runtime(settings.reference_runtime, REFERENCE_OPTION)
    if found.name == "llama.cpp" and source.kind != "gguf":
        raise LlmqUsageError(
            f"{REFERENCE_OPTION}=llama.cpp runs a .gguf reference, and --llmq-model="
            f"{source.spec} is not one; pass --llmq-model=FILE.gguf (F16 or F32) or drop the option"
        )
    return found.describe(source.location, "--llmq-model")


def check_runtimes(settings: Settings, sources: list[ModelSource]) -> str | None:
    """Refuse what cannot run, in one line each; the INT8 label when a runtime runs it."""
    for source in sources if settings.reference_runtime != "torch" else ():
        reference_facts(settings, source)
    if settings.int8_runtime == "torch":
        return None
    return int8_facts(settings).label


def _eos(tokenizer: Tokenizer | None) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if isinstance(eos, int) else []


def _probe(facts: FileFacts, name: str) -> ProbeSpec:
    from ..sides.base import ProbeSpec
    from ..sides.runtimes import RUNTIMES_BY_NAME

    return ProbeSpec(
        {
            "route": "runtime",
            "runtime": name,
            "runtime_file": str(facts.path),
            "preload": RUNTIMES_BY_NAME[name].package,
        },
        made=f"loaded by {name} as shipped",
    )


def runtime_side(
    facts: FileFacts,
    name: str,
    settings: Settings,
    tokenizer: Tokenizer | None,
    run: Path | None = None,
) -> ChildSide:
    """A side running ``facts``' file (or ``run``, the file that runs in its place) in ``name``."""
    from ..sides.child import ChildSide
    from ..sides.runtimes import RUNTIMES_BY_NAME, file_origin, shipped

    path = run or facts.path
    ran = facts if run is None else _facts_of(run, name)  # what runs, and what it holds
    args: dict[str, object] = {
        "path": str(path),
        "threads": settings.threads,
        "facts": {"dtype": ran.dtype, "weight_bytes": ran.weight_bytes},
    }
    return ChildSide(
        RUNTIMES_BY_NAME[name].factory,
        args,
        label=facts.label if run is None else ran.label,
        runtime=name,
        what=str(path),
        origin=file_origin(facts, name),
        eos=_eos(tokenizer),
        ship=lambda directory: shipped(ran),
        probe=lambda workdir: _probe(ran, name),
        timeout=settings.runtime_timeout,
    )


def _facts_of(path: Path, name: str) -> FileFacts:
    from ..sides.runtimes import RUNTIMES_BY_NAME

    return RUNTIMES_BY_NAME[name].describe(str(path), "--llmq-model")


def int8_built(settings: Settings, tokenizer: Tokenizer | None) -> Int8Built:
    """The INT8 side of ``--llmq-int8-runtime``: the user's file, in that runtime."""
    from ..int8.routes.base import Int8Built
    from ..sides.runtimes import file_origin

    facts = int8_facts(settings)
    side = runtime_side(facts, settings.int8_runtime, settings, tokenizer)
    return Int8Built(side, facts.coverage(), file_origin(facts, settings.int8_runtime))


def reference_side(
    settings: Settings, source: ModelSource, tokenizer: Tokenizer | None, cache_dir: Path
) -> ChildSide:
    """The reference in ``--llmq-reference-runtime``. A quantized GGUF runs as the F32 file of
    its dequantized tensors (written once into the cache), so the reference is the float
    model those weights describe."""
    facts = reference_facts(settings, source)
    run = None
    if settings.reference_runtime == "llama.cpp" and facts.quantized:
        from ..formats.gguf.write import f32_copy

        run = f32_copy(facts.path, cache_dir)
    side = runtime_side(facts, settings.reference_runtime, settings, tokenizer, run)
    side.origin = None  # a reference has no INT8 origin
    return side


#: of the sampled token texts, how many may differ before the tokenizers are called different
#: (a converter may spell a byte or a special token its own way)
MAX_TOKEN_MISMATCH = 0.25


def check_same_vocabulary(reference: object, int8: object, tokenizer: Tokenizer) -> None:
    """Refuse, before anything is measured, a pair whose sides read token ids differently:
    the same ids are fed to both, so a different vocabulary would compare other words."""
    from ..models.causal_lm import vocab_size
    from ..sides.base import sample_ids
    from ..sides.child import ChildSide
    from .pair import is_side

    def size(model: object) -> int:
        return model.vocab_size() if is_side(model) else vocab_size(model)  # type: ignore[attr-defined,arg-type]

    sizes = size(reference), size(int8)
    what = {m: m.what for m in (reference, int8) if isinstance(m, ChildSide)}
    if sizes[0] != sizes[1]:
        named = ", ".join(what.values()) or "the INT8 model"
        raise LlmqUsageError(
            f"{named}: vocabulary of {sizes[1]} tokens against the reference's {sizes[0]}; "
            "both sides get the same token ids, so test a file converted from the same model"
        )
    for side, name in what.items():
        sample = side.facts().get("token_sample")
        if not isinstance(sample, list):
            continue
        ours = tokenizer.convert_ids_to_tokens(sample_ids(sizes[0]))
        differ = sum(a != b for a, b in zip(ours, sample, strict=False))
        if differ > MAX_TOKEN_MISMATCH * len(sample):
            raise LlmqUsageError(
                f"{name}: {differ} of {len(sample)} sampled token ids spell other tokens than "
                "the reference's tokenizer; test a file converted from the same model"
            )
