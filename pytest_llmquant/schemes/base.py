"""The contract every INT8 scheme follows (modelled on transformers' ``quantizers/``).

A scheme turns an FP32 causal LM into an INT8 one, and can save that INT8 model to
safetensors plus a JSON recipe and load it back *without* the FP32 weights of the
quantized layers. The plugin hands ``quantize`` a private copy, so no scheme can change
the FP32 model the gates compare against: a structural copy that shares the float tensors
when the scheme declares it only *replaces* modules (``shares_float_weights``), else a
full deep copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from ..errors import LlmqUsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

RECIPE_FILE = "llmq-recipe.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "pytest-llmquant/int8"

#: JSON read from a recipe file or written to it (one layer's metadata, a whole recipe):
#: each scheme reads its own keys, with the types it wrote (hence Any, in this one place)
Recipe: TypeAlias = "dict[str, Any]"


class QuantScheme:
    """Base class. Subclasses set the class attributes and implement ``quantize``,
    ``state_tensors`` and ``empty_modules``; save and load are shared."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    summary: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: documented quality bound on SmolLM2-135M (mean KLD over the default corpus);
    #: the project's tests hold each scheme to it.
    kld_bound: ClassVar[float] = 0.01
    #: True when ``prepare``/``quantize`` only replace modules and never write to a float
    #: tensor in place: the copy it is given may then share the FP32 model's tensors (no
    #: second full-precision copy in memory). A scheme that folds scales into norms in
    #: place (SmoothQuant) must leave this False.
    shares_float_weights: ClassVar[bool] = False
    #: the weight kinds (:data:`pytest_llmquant.weight_kinds.KINDS`) this scheme
    #: quantizes: the suite's ``coverage`` check fails when one of them stays float
    quantizes: ClassVar[tuple[str, ...]] = ("linear", "lm_head", "experts")
    #: kinds it leaves float on purpose, and why, said in its coverage line
    float_by_design: ClassVar[dict[str, str]] = {}

    def __init__(self, **config: object) -> None:
        #: the user's keywords as given (JSON-ready: they go into the recipe)
        self.config: Recipe = dict(config)

    # -- lifecycle -------------------------------------------------------------
    def check_device(self, device: str) -> None:
        kind = device.split(":")[0]
        if kind not in self.devices:
            raise LlmqUsageError(
                f"scheme {self.name!r} runs only on {', '.join(self.devices)}, not on "
                f"{device!r}; pass --llmq-device={self.devices[0]} or choose another --llmq-scheme"
            )

    def prepare(self, model: nn.Module, calibration: list[torch.Tensor] | None = None) -> None:
        """Look at the FP32 model (and calibration token ids) before quantizing. Default: nothing."""

    def quantize(self, model: nn.Module) -> nn.Module:
        """Quantize ``model`` (a private copy) and return it. Conv1D must be covered."""
        raise NotImplementedError

    def describe(self) -> Recipe:
        return {
            "scheme": self.name,
            "version": self.version,
            "summary": self.summary,
            "config": self.config,
        }

    # -- serialization -----------------------------------------------------------
    def state_tensors(self, name: str, module: nn.Module) -> tuple[dict[str, torch.Tensor], Recipe]:
        """Plain tensors (int8 weights, scales, bias) and JSON metadata for one quantized layer."""
        raise NotImplementedError

    def module_from_tensors(self, tensors: dict[str, torch.Tensor], meta: Recipe) -> nn.Module:
        """Rebuild one quantized layer from what ``state_tensors`` returned."""
        raise NotImplementedError

    def rebuild_module(
        self, name: str, tensors: dict[str, torch.Tensor], meta: Recipe, empty: nn.Module
    ) -> nn.Module:
        """Rebuild quantized layer ``name`` on load, where ``empty`` is the float module the
        config builds at its place (unfilled): a layer that keeps something of the
        original besides tensors (an expert layer's activation) takes it from there.
        Default: :meth:`module_from_tensors`."""
        return self.module_from_tensors(tensors, meta)

    def is_quantized_module(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def save(self, model: nn.Module, directory: str | Path) -> None:
        from .serialize import save_int8

        save_int8(self, model, Path(directory))

    @classmethod
    def read_recipe(cls, directory: str | Path) -> Recipe:
        path = Path(directory) / RECIPE_FILE
        try:
            recipe = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LlmqUsageError(
                f"{directory} has no {RECIPE_FILE}: it was not saved by pytest-llmquant; "
                "save it with scheme.save(model, dir) or pass a transformers checkpoint"
            ) from None
        except (OSError, ValueError) as exc:
            raise LlmqUsageError(
                f"{path} is not a readable recipe ({exc}); save the model again"
            ) from None
        if recipe.get("format") != FORMAT:
            raise LlmqUsageError(f"{path} is not a pytest-llmquant recipe; save the model again")
        return recipe

    def load(self, directory: str | Path, *, device: str = "cpu") -> nn.Module:
        from .serialize import load_int8

        return load_int8(self, Path(directory), device=device)
