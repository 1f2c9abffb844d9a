"""Load the FP32 model and tokenizer, and build the INT8 copy.

All torch/transformers imports happen inside these functions: they run only when a
test asks for a model fixture. Every failure a user can cause is turned into one
:class:`LlmqUsageError` line that names the fix; only safetensors are ever read
(``use_safetensors=True``), and model code from a repo runs only with
``--llmq-trust-remote-code``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import ModelCache
from .errors import LlmqModelError, LlmqUsageError
from .layers import Coverage, coverage, linear_like_layers
from .sources import ModelSource, resolve

if TYPE_CHECKING:
    from torch import nn

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def library_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _check_local_dir(path: Path, spec: str, trust_remote_code: bool) -> None:
    names = [p.name for p in path.iterdir()]
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
    if source.kind == "gguf":
        return LlmqUsageError(
            f"--llmq-model={spec} is not a readable GGUF model (truncated or corrupt: {text[:120]}); "
            "download the file again"
        )
    if source.kind == "hub":
        if "couldn't connect" in text or "offline" in text.lower() or "connect" in text.lower():
            reason = "the hub could not be reached"
        elif (
            "not a valid model identifier" in text
            or "404" in text
            or "Repository Not Found" in text
        ):
            reason = "no such model on the hub"
        else:
            reason = f"the hub could not be reached or the id is wrong ({text[:120]})"
        return LlmqUsageError(
            f"could not load {spec!r} from the Hugging Face hub: {reason}; check the id, set "
            "HF_HUB_OFFLINE=1 to use a copy already in your HF cache, or pass a local path"
        )
    return LlmqUsageError(
        f"could not load --llmq-model={spec}: {text[:200]}; check the model files"
    )


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


def _from_pretrained(
    location: str, source: ModelSource, *, trust_remote_code: bool, gguf_file: str | None = None
) -> tuple[Any, Any]:
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["use_safetensors"] = True
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_causal(location, source, kwargs)
            model = AutoModelForCausalLM.from_pretrained(location, dtype="float32", **kwargs)
            kwargs.pop("use_safetensors", None)
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError, ImportError, KeyError, RuntimeError) as exc:
        raise _explain(exc, source) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


def _gguf_fingerprint(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **library_versions()}


def _forget_gguf_quantizer(model: Any) -> None:
    """transformers dequantizes GGUF to float32 on load but keeps a 'gguf' quantizer that makes
    save_pretrained refuse; the weights are plain float32, so drop that marker."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)


def _load_gguf_cached(
    source: ModelSource, cache: ModelCache, trust_remote_code: bool
) -> tuple[Any, Any]:
    """GGUF dequantization costs ~15-30 s; do it once and keep FP32 safetensors."""

    def build(directory: Path) -> None:
        model, tokenizer = _from_pretrained(
            source.gguf_dir, source, gguf_file=source.gguf_name, trust_remote_code=trust_remote_code
        )
        _forget_gguf_quantizer(model)
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)

    entry = cache.get_or_build("fp32", source.location, _gguf_fingerprint(source.location), build)
    return _from_pretrained(str(entry), source, trust_remote_code=False)


def _finish(model: Any, tokenizer: Any, device: str) -> tuple[Any, Any]:
    """Normalise what tests rely on: eval mode, a pad token, a generation config."""
    from transformers import GenerationConfig

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise LlmqUsageError(
            f"--llmq-device={device} is not usable here ({exc}); pass --llmq-device=cpu"
        ) from None
    return model.eval(), tokenizer


def load_fp32(
    spec: str,
    *,
    cache_dir: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    cache: ModelCache | None = None,
) -> tuple[Any, Any]:
    """The FP32 model (eval mode) and its tokenizer for one ``--llmq-model`` value."""
    source = resolve(spec)
    if source.kind == "gguf":
        model, tokenizer = _load_gguf_cached(
            source, cache or ModelCache(cache_dir), trust_remote_code
        )
    elif source.kind == "dir":
        _check_local_dir(Path(source.location), spec, trust_remote_code)
        model, tokenizer = _from_pretrained(
            source.location, source, trust_remote_code=trust_remote_code
        )
    else:
        model, tokenizer = _from_pretrained(
            source.location, source, trust_remote_code=trust_remote_code
        )
    return _finish(model, tokenizer, device)


def probe_logits(model: Any) -> Any:
    """Logits on a fixed input: used to prove quantizing left the FP32 model untouched."""
    import torch

    vocab = int(model.get_input_embeddings().weight.shape[0])
    device = next(model.parameters()).device
    ids = (torch.arange(8, device=device) * 7919 % vocab).unsqueeze(0)
    with torch.inference_mode():
        return model(ids).logits.clone()


def build_int8(
    fp32_model: nn.Module,
    scheme: str,
    *,
    device: str = "cpu",
    calibration: list[Any] | None = None,
    label: str = "the model",
    quantize_hook: Any = None,
) -> tuple[nn.Module, Coverage]:
    """Quantize a private deep copy and check coverage; the FP32 model is never touched."""
    import torch

    from .schemes import get_scheme

    quant = get_scheme(scheme)
    quant.check_device(device)
    if not linear_like_layers(fp32_model):
        raise LlmqUsageError(
            f"{label} has no quantizable linear layers (no nn.Linear or Conv1D), so {scheme!r} "
            "would return it unchanged; test a model with linear layers"
        )
    before = probe_logits(fp32_model)
    int8_model = None
    if quantize_hook is not None:
        int8_model = quantize_hook(model=fp32_model, scheme=scheme, config={"device": device})
    if int8_model is None:
        work = copy.deepcopy(fp32_model)
        quant.prepare(work, calibration)
        int8_model = quant.quantize(work)
    int8_model.eval()
    if not torch.equal(before, probe_logits(fp32_model)):
        raise LlmqModelError(
            f"quantizing {label} with {scheme!r} changed the FP32 model; a quantizer must work "
            "on a copy (copy.deepcopy) so the gates compare against the real FP32 model"
        )
    cov = coverage(fp32_model, int8_model)
    if not cov.quantized:
        raise LlmqUsageError(
            f"{scheme!r} quantized none of the {cov.total} linear layers of {label}; the INT8 "
            "model would be FP32 in disguise — check the scheme"
        )
    return int8_model, cov


SEED_SAVE_HINT = (
    "save_pretrained cannot serialize torch.ao quantized layers (they hold packed params, not "
    "tensors), and a plain reload of such a save gives FP32 weights back; save the INT8 model with "
    "pytest_llmquant.get_scheme('dynamic-int8').save(model, dir) instead"
)


def int8_checkpoint_label(path: str) -> str:
    """The scheme name a ``--llmq-int8-model`` checkpoint was made with (for test ids)."""
    from .schemes.base import RECIPE_FILE, QuantScheme

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
            f"--llmq-int8-model={path} holds a pickle, not an INT8 checkpoint: {SEED_SAVE_HINT}"
        )
    raise LlmqUsageError(
        f"--llmq-int8-model={path} is not quantized (no llmq-recipe.json, no quantization_config "
        f"in config.json): {SEED_SAVE_HINT}"
    )


def load_int8_checkpoint(
    path: str, fp32_model: Any, *, device: str = "cpu"
) -> tuple[Any, Coverage]:
    """Load a pre-quantized INT8 model: ours (recipe + safetensors) or a transformers-format
    quantized checkpoint (torchao / quanto) that ``from_pretrained`` can load."""
    from .schemes import get_scheme
    from .schemes.base import RECIPE_FILE, QuantScheme

    p = Path(path).expanduser()
    label = int8_checkpoint_label(path)
    if (p / RECIPE_FILE).exists():
        model = get_scheme(QuantScheme.read_recipe(p)["scheme"]).load(p, device=device)
    else:
        source = ModelSource(path, "dir", p.name, str(p))
        model, _ = _from_pretrained(str(p), source, trust_remote_code=False)
        model = model.to(device).eval()
    cov = coverage(fp32_model, model)
    if not cov.quantized:
        raise LlmqUsageError(
            f"--llmq-int8-model={path} ({label}) has none of the FP32 model's {cov.total} linear "
            "layers quantized; is it the INT8 copy of --llmq-model?"
        )
    return model, cov
