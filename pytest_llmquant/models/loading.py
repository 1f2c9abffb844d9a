"""Load the FP32 (reference) model and its tokenizer.

All torch/transformers imports happen inside these functions: they run only when a
test asks for a model fixture. Every failure a user can cause is turned into one
:class:`LlmqUsageError` line that names the fix; only safetensors are ever read
(``use_safetensors=True``), and model code from a repo runs only with
``--llmq-trust-remote-code``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import LlmqUsageError
from ..versions import library_versions
from .cache import ModelCache
from .sources import ModelSource, resolve

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..progress import Progress
    from ..types import CausalLM, Tokenizer

#: what loading gives: the model and its tokenizer, as transformers made them
Loaded = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_local_dir(path: Path, spec: str, trust_remote_code: bool) -> None:
    names = [p.name for p in path.iterdir()]
    if "model.onnx" in names and "config.json" not in names:
        raise LlmqUsageError(
            f"--llmq-model={spec} is an ONNX model, which torch does not run; pass "
            "--llmq-reference-runtime=onnxruntime, or the directory of its torch weights"
        )
    if not any(n.endswith(".safetensors") for n in names):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise LlmqUsageError(
                f"--llmq-model={spec} holds only pickle weights ({pickles[0]}), which "
                "pytest-llmquant never loads; convert them to safetensors with "
                "model.save_pretrained(dir, safe_serialization=True) where you trust the file"
            )
        raise LlmqUsageError(
            f"--llmq-model={spec} has no *.safetensors weights; save the model with "
            "save_pretrained(dir, safe_serialization=True)"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LlmqUsageError(
            f"--llmq-model={spec}: config.json is unreadable ({exc}); fix or re-save it"
        ) from None
    if config.get("auto_map") and not trust_remote_code:
        raise LlmqUsageError(
            f"--llmq-model={spec} needs code from the model directory (config.json has auto_map); "
            "pass --llmq-trust-remote-code only if you trust that code"
        )


def _explain(exc: BaseException, source: ModelSource) -> LlmqUsageError:
    """One line for the failures of from_pretrained that users cause and can fix."""
    text = " ".join(str(exc).split())
    spec = source.spec
    if "Unrecognized configuration class" in text or "is not a causal" in text.lower():
        model_type = text.split("class ", 1)[-1].split(" ", 1)[0].strip("<>'.")
        return LlmqUsageError(
            f"--llmq-model={spec} is not a causal language model ({model_type} is not supported "
            "by AutoModelForCausalLM); pass a decoder-only model such as gpt2"
        )
    if "trust_remote_code" in text:
        return LlmqUsageError(
            f"--llmq-model={spec} needs code from its repo; pass --llmq-trust-remote-code "
            "only if you trust that code"
        )
    if isinstance(exc, ImportError):
        return LlmqUsageError(
            f"loading --llmq-model={spec} needs a missing package ({text}); install it"
        )
    if source.kind == "gguf" and _is_architecture_not_read(exc):
        return LlmqUsageError(f"--llmq-model={spec} {text}")
    if source.kind == "gguf":
        return LlmqUsageError(
            f"--llmq-model={spec} is not a readable GGUF model (truncated or corrupt: {text[:120]}); "
            "download the file again"
        )
    if source.kind == "hub":
        reason = _hub_failure(exc) or (
            f"the hub could not be reached or the id is wrong ({text[:120]})"
        )
        return LlmqUsageError(
            f"could not load {spec!r} from the Hugging Face hub: {reason}; check the id, set "
            "HF_HUB_OFFLINE=1 to use a copy already in your HF cache, or pass a local path"
        )
    return LlmqUsageError(
        f"could not load --llmq-model={spec}: {text[:200]}; check the model files"
    )


def _unparsable_json(source: ModelSource) -> str | None:
    """The name of the model directory's JSON file (config, tokenizer, generation config)
    that does not parse: transformers' error says where in the text, not which file."""
    if source.kind != "dir":
        return None
    for path in sorted(Path(source.location).glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return path.name
    return None


def _is_architecture_not_read(exc: BaseException) -> bool:
    from ..formats.gguf.fp32 import ArchitectureNotRead

    return isinstance(exc, ArchitectureNotRead)


def _is_safetensors_error(exc: BaseException) -> bool:
    """A file safetensors could not read (a download cut short, a disk that filled up)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # a safetensors older than its exported error type
        return type(exc).__name__ == "SafetensorError"
    return isinstance(exc, SafetensorError)


def _hub_failure(exc: BaseException) -> str | None:
    """What went wrong on the hub, told by the huggingface_hub error types in the chain
    (transformers re-raises them as an OSError of its own wording, ``from`` the original)."""
    try:
        import huggingface_hub.errors as hub
    except ImportError:  # a huggingface_hub older than its errors module
        return None
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, hub.GatedRepoError):
            return None  # it exists, and access is what is missing: the text says how
        if isinstance(cause, (hub.RepositoryNotFoundError, hub.RevisionNotFoundError)):
            return "no such model on the hub"
        if isinstance(cause, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)):
            return "the hub could not be reached"
        cause = cause.__cause__ or cause.__context__
    return None


def _check_causal(location: str, source: ModelSource, kwargs: dict[str, Any]) -> None:
    """AutoModelForCausalLM happily wraps an encoder (BERT becomes BertLMHeadModel with a
    random head); refuse a checkpoint whose saved architecture is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
    config = AutoConfig.from_pretrained(location, **config_kwargs)
    archs = list(getattr(config, "architectures", None) or [])
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if getattr(config, "is_encoder_decoder", False) or (
        archs and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    ):
        raise LlmqUsageError(
            f"--llmq-model={source.spec} is not a causal language model ({archs[0] if archs else config.model_type} "
            "is not supported by AutoModelForCausalLM); pass a decoder-only model such as gpt2"
        )


@contextmanager
def _quiet_and_explained(source: ModelSource) -> Iterator[None]:
    """transformers' warnings and info lines are noise in a test run; the failures users
    cause become one :class:`LlmqUsageError` line (see :func:`_explain`)."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except (OSError, ValueError, ImportError, KeyError, RuntimeError) as exc:
        raise _explain(exc, source) from None
    except Exception as exc:  # safetensors' own error type: no subclass of the above
        if not _is_safetensors_error(exc):
            raise
        raise LlmqUsageError(
            f"--llmq-model={source.spec}: a .safetensors file in it is truncated or corrupt "
            f"({str(exc)[:120]}); download or save the model again"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_pretrained(
    location: str,
    source: ModelSource,
    *,
    trust_remote_code: bool,
    dtype: str = "float32",
    check_causal: bool = True,
) -> Loaded:
    """Model and tokenizer from safetensors. ``check_causal=False`` only for a directory this
    plugin wrote itself (a cache entry), whose architecture was checked when it was made."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    broken = _unparsable_json(source)
    if broken is not None:  # some (generation_config.json) transformers skips with a warning
        raise LlmqUsageError(
            f"--llmq-model={source.spec}: {broken} is not valid JSON; it is truncated or was "
            "edited by hand: save or download the model again"
        )
    with _quiet_and_explained(source):
        if check_causal:
            _check_causal(location, source, kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
        kwargs.pop("use_safetensors", None)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    return model, tokenizer


def _gguf_fingerprint(path: str) -> dict[str, object]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **library_versions()}


def _load_gguf_cached(
    source: ModelSource,
    cache: ModelCache,
    trust_remote_code: bool,
    progress: Progress | None,
    dtype: str,
) -> Loaded:
    """Converting a GGUF costs seconds (see :mod:`.formats.gguf.fp32`); do it once and keep
    FP32 safetensors, which later sessions memory-map."""

    def build(directory: Path) -> None:
        from ..formats.gguf.fp32 import convert_gguf_to_fp32

        if progress is not None:
            progress.note(
                f"converting {source.gguf_name} to FP32 safetensors, once (cached in {cache.root})"
            )
        with _quiet_and_explained(source):
            convert_gguf_to_fp32(source.location, directory, progress=progress)

    entry = cache.get_or_build("fp32", source.location, _gguf_fingerprint(source.location), build)
    return load_pretrained(
        str(entry), source, trust_remote_code=False, dtype=dtype, check_causal=False
    )


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batched prompts need a pad token: the EOS token (or UNK) where there is none."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Tokenizer:
    """Only the tokenizer of a ``--llmq-model``: all a reference run by another runtime
    needs here, since its weights load in that runtime. So a directory without torch weights
    (an ONNX build with its tokenizer files) or a GGUF that transformers cannot read as a
    model (llama.cpp's Mixtral files) can be such a reference, and no FP32 copy is made."""
    from transformers import AutoTokenizer

    source = resolve(spec)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    location = source.location
    if source.kind == "gguf":
        location, kwargs["gguf_file"] = str(Path(location).parent), Path(location).name
    broken = _unparsable_json(source) if source.kind == "dir" else None
    if broken is not None:
        raise LlmqUsageError(
            f"--llmq-model={source.spec}: {broken} is not valid JSON; it is truncated or was "
            "edited by hand: save or download the model again"
        )
    try:
        with _quiet_and_explained(source):
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except LlmqUsageError as exc:
        raise LlmqUsageError(
            f"reading the tokenizer only (the reference runs in another runtime): {exc}"
        ) from None
    return cast("Tokenizer", _with_pad_token(tokenizer))


def _finish(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str
) -> tuple[CausalLM, Tokenizer]:
    """Normalise what tests rely on: eval mode, a pad token, a generation config."""
    from transformers import GenerationConfig

    _with_pad_token(tokenizer)
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        # transformers' own .to (it refuses some quantized models); its stub is a wrapper's
        moved: CausalLM = model.to(device)  # type: ignore[arg-type]
    except (RuntimeError, AssertionError) as exc:
        raise LlmqUsageError(
            f"--llmq-device={device} is not usable here ({exc}); pass --llmq-device=cpu"
        ) from None
    # a transformers tokenizer is a Tokenizer (its token ids are read-only properties there)
    return moved.eval(), cast("Tokenizer", tokenizer)


def load_fp32(
    spec: str,
    *,
    cache_dir: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    cache: ModelCache | None = None,
    progress: Progress | None = None,
    dtype: str = "float32",
) -> tuple[CausalLM, Tokenizer]:
    """The reference model (eval mode, ``dtype``: float32 unless asked) and its tokenizer
    for one ``--llmq-model`` value. A GGUF is converted to FP32 once and cached; another
    precision is cast from that on load."""
    source = resolve(spec)
    if source.kind == "gguf":
        model, tokenizer = _load_gguf_cached(
            source, cache or ModelCache(cache_dir), trust_remote_code, progress, dtype
        )
    else:
        if source.kind == "dir":
            _check_local_dir(Path(source.location), spec, trust_remote_code)
        model, tokenizer = load_pretrained(
            source.location, source, trust_remote_code=trust_remote_code, dtype=dtype
        )
    return _finish(model, tokenizer, device)
