"""``smoothquant-w8a8``: int8 weights *and* int8 activations, with SmoothQuant smoothing.

Why each piece (see shared/notes/int8-on-cpu.md):

- Per-token activation scales (not per tensor, as the seed's ``quantize_dynamic``): one
  token with a large activation must not flatten every other token's range.
- LLM activations have a few outlier *channels* (the same input columns for every
  token) that per-token scales cannot fix: one channel of magnitude 100 leaves 1 int8
  step for the rest of the row. SmoothQuant moves that range into the weights: per
  input channel ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, ``W[:, j] *= s_j`` and
  ``x_j /= s_j``. The weights absorb outliers far better than the activations, because
  they are quantized per output channel.
- The division by ``s`` is done inside the C kernel while it quantizes the activations
  (one multiply per element), not folded into the preceding RMSNorm/LayerNorm. That
  is exactly the same math, but it needs no knowledge of the architecture: every
  linear layer (Conv1D, ``o_proj``, ``down_proj``, ``lm_head``) is smoothed alike.
- ``max|X_j|`` comes from calibration: ``prepare(model, calibration)`` runs token-id
  tensors through the FP32 model with hooks. Without ``prepare``, ``quantize`` calibrates
  on the built-in corpus (``evaltext.default_corpus``) if the model's tokenizer can be
  found from ``name_or_path``, else on fixed pseudo-random token ids (with a warning).
- Dot products are exact int32 (AVX2 ``maddubs``), shared with ``weight-only-int8``'s
  kernel library; the pure-torch fallback (no compiler) computes the same integers.

Options: ``alpha`` (default 0.5; ``None`` turns smoothing off), ``group_size`` (default ``None``: per-token activation
and per-output-channel weight scales; an int gives llama.cpp-style Q8_0 x Q8_0 blocks
on both sides), ``skip`` (layer-name suffixes kept in float32), ``calibration_tokens``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..layers import convert_conv1d, linear_like_layers, set_submodule
from . import kernels
from .base import QuantScheme, Recipe
from .int8_math import (
    linear_w8a8_reference,
    n_groups,
    pack_rows,
    packable,
    quantize_per_channel,
    unpack_rows,
)
from .scheme_options import group_size_option, is_skipped

_MIN_SMOOTH = 1e-5


class W8A8Linear(nn.Module):
    """int8 weights (pre-multiplied by the smoothing factors) and dynamic int8 activations.

    Stored like :class:`WeightOnlyInt8Linear`: packed for the kernel when the shape
    allows, row-major otherwise, never as a float ``weight``."""

    packed: torch.Tensor | None
    weight_int8: torch.Tensor | None
    scales: torch.Tensor | None
    inv_smooth: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        inv_smooth: torch.Tensor | None,
        bias: torch.Tensor | None,
        group_size: int | None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = group_size
        if scales.shape != (self.out_features, n_groups(self.in_features, group_size)):
            raise ValueError(
                f"scales of shape {tuple(scales.shape)} do not fit {tuple(q.shape)} "
                f"with group_size={group_size}"
            )
        self.is_packed = packable(self.out_features, self.in_features, group_size)
        if self.is_packed:
            self.register_buffer("packed", pack_rows(q, scales, group_size))
            self.register_buffer("weight_int8", None)
            self.register_buffer("scales", None)
        else:
            self.register_buffer("packed", None)
            self.register_buffer("weight_int8", q.to(torch.int8).contiguous())
            self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.register_buffer(
            "inv_smooth", None if inv_smooth is None else inv_smooth.to(torch.float32).contiguous()
        )
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )
        self.block = group_size or max(self.in_features, 1)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        act_absmax: torch.Tensor | None,
        alpha: float | None,
        group_size: int | None,
    ) -> W8A8Linear:
        weight = linear.weight.detach().to(torch.float32)
        inv_smooth = None
        if act_absmax is not None and alpha is not None:
            smooth = smoothing_factors(act_absmax, weight, alpha)
            weight = weight * smooth
            inv_smooth = 1.0 / smooth
        q, scales = quantize_per_channel(weight, group_size)
        return cls(q, scales, inv_smooth, linear.bias, group_size)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        """Keep scales and bias float32 through ``.to(dtype)``/``.half()`` (moving them
        between devices is fine): the kernels read them as float32 whatever the
        activations are, and a round trip through bfloat16 would lose precision."""
        kept = {
            n: t
            for n in ("bias", "scales", "inv_smooth")
            if (t := self._buffers.get(n)) is not None
        }
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != torch.float32:
                self._buffers[name] = old.to(new.device)
        return self

    def int8_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.packed is not None:
            return unpack_rows(self.packed, self.out_features, self.in_features, self.group_size)
        assert self.weight_int8 is not None and self.scales is not None
        return self.weight_int8, self.scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        lead = x.shape[:-1]
        m = lead.numel()
        if m == 0 or x.device.type != "cpu" or not kernels.available():
            q, scales = self.int8_state()
            return linear_w8a8_reference(
                x.cpu(), q, scales, self.bias, self.group_size, self.inv_smooth
            ).to(x.device, x.dtype)
        x2 = x.reshape(m, k).to(torch.float32).contiguous()
        y = torch.empty(m, n, dtype=torch.float32)
        if self.packed is not None:
            kernels.w8a8_packed(self.packed, x2, self.inv_smooth, self.bias, y, n, k, self.block)
        else:
            assert self.weight_int8 is not None and self.scales is not None
            kernels.w8a8_gemm(
                self.weight_int8, self.scales, x2, self.inv_smooth, self.bias, y, n, k, self.block
            )
        return y.reshape(*lead, n).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, smoothed={self.inv_smooth is not None}, "
            f"packed={self.is_packed}"
        )


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _is_conv1d(module: nn.Module) -> bool:
    return type(module) is not nn.Linear  # linear-like and not Linear: transformers' Conv1D


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, kept in a sane range.

    A channel never seen active (``max|X_j| = 0``) or with an all-zero weight column gets
    ``s_j = 1``: there is nothing to balance, and a zero would divide the activation by 0.
    """
    a = act_absmax.to(torch.float32).clamp_min(0)
    w = weight.abs().amax(dim=0).to(torch.float32)
    s = a.pow(alpha) / w.clamp_min(_MIN_SMOOTH).pow(1 - alpha)
    ok = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(ok, s.clamp_min(_MIN_SMOOTH), torch.ones_like(s))


def _fallback_calibration(model: nn.Module, n_tokens: int) -> list[torch.Tensor]:
    """Token ids to calibrate on when the caller gave none: the built-in corpus through the
    model's own tokenizer if it can be found, else fixed pseudo-random ids."""
    config = getattr(model, "config", None)
    path = getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "")
    context = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    chunk = min(256, int(context)) if context else 256
    try:
        from transformers import AutoTokenizer

        from ..evaltext import default_corpus

        tok = AutoTokenizer.from_pretrained(path)
        ids = tok(default_corpus(), return_tensors="pt").input_ids[0][:n_tokens]
        if ids.numel() >= 16:
            return list(ids.split(chunk))
    except Exception:  # no tokenizer next to the model: use ids below
        pass
    warnings.warn(
        "pytest-llmquant: smoothquant-w8a8 found no tokenizer for calibration; "
        "calibrating on pseudo-random token ids (pass calibration to prepare())",
        RuntimeWarning,
        stacklevel=3,
    )
    vocab = int(getattr(model.config, "vocab_size", 256))
    gen = torch.Generator().manual_seed(0)
    return list(torch.randint(0, vocab, (n_tokens,), generator=gen).split(chunk))


class SmoothQuantW8A8(QuantScheme):
    name = "smoothquant-w8a8"
    summary = (
        "W8A8: per-token dynamic int8 activations, per-channel int8 weights, SmoothQuant "
        "smoothing (alpha 0.5) calibrated on text, exact int32 dot products (AVX2 kernel)"
    )
    #: measured on SmolLM2-135M over the default corpus (benchmarks/schemes.py); W8A8
    #: per token is markedly worse than weight-only, see the frontier table in docs/schemes.md
    kld_bound = 0.1
    quantizes = ("linear", "lm_head")
    float_by_design = {
        "experts": "smoothquant-w8a8 quantizes linear layers only; weight-only-int8 does experts"
    }

    def __init__(self, **config: Any) -> None:  # the user's keywords, parsed here
        config.setdefault("alpha", 0.5)
        config.setdefault("group_size", None)
        config.setdefault("skip", [])
        config.setdefault("calibration_tokens", 1024)
        super().__init__(**config)
        alpha = config["alpha"]
        self.alpha: float | None = None if alpha in (None, "none") else float(alpha)
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (or None: no smoothing), not {alpha!r}")
        self.group_size = group_size_option(config["group_size"])
        self.skip = [str(s) for s in config["skip"]]
        self._absmax: dict[str, torch.Tensor] | None = None

    def describe(self) -> Recipe:
        """The base description plus ``kernel``: which path the layers run here."""
        return {**super().describe(), "kernel": kernels.path_description("torch int8 fallback")}

    def prepare(self, model: nn.Module, calibration: list[torch.Tensor] | None = None) -> None:
        """Record ``max|X_j|`` per input channel of every linear layer on calibration text.

        Hooks are removed before returning and the model is only run, never changed,
        so the FP32 model the gates compare against is left exactly as it was."""
        if calibration is None:
            calibration = _fallback_calibration(model, int(self.config["calibration_tokens"]))
        layers = linear_like_layers(model)
        absmax: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def record(module: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0].detach()
                cur = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).to(torch.float32)
                absmax[name] = torch.maximum(absmax[name], cur) if name in absmax else cur

            return record

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
        try:
            device = next(model.parameters()).device
            with torch.inference_mode():
                for ids in calibration:
                    ids = (
                        torch.as_tensor(ids).reshape(1, -1)
                        if torch.as_tensor(ids).dim() < 2
                        else ids
                    )
                    model(input_ids=ids.to(device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self._absmax = {k: v.clone() for k, v in absmax.items()}

    def _calibrated_for(self, model: nn.Module) -> bool:
        """Whether ``prepare`` saw this architecture: the same layer names and input widths.

        A scheme object reused for another model must not smooth it with the first
        model's statistics."""
        if self._absmax is None:
            return False
        widths = {
            n: int(_weight(m).shape[0] if _is_conv1d(m) else _weight(m).shape[1])
            for n, m in linear_like_layers(model).items()
        }
        return bool(self._absmax) and all(
            widths.get(n) == v.numel() for n, v in self._absmax.items()
        )

    def quantize(self, model: nn.Module) -> nn.Module:
        if self.alpha is not None and not self._calibrated_for(model):
            self.prepare(model)  # not prepared, or prepared on another model
        absmax = self._absmax or {}
        kernels.available()  # build (or find) the kernel now, not in the first timed forward
        convert_conv1d(model)  # after calibration: Conv1D and Linear see the same input
        for name, module in linear_like_layers(model).items():
            if not is_skipped(name, self.skip):
                assert isinstance(module, nn.Linear)  # convert_conv1d made every layer one
                set_submodule(
                    model,
                    name,
                    W8A8Linear.from_linear(module, absmax.get(name), self.alpha, self.group_size),
                )
        return model

    def is_quantized_module(self, module: nn.Module) -> bool:
        return type(module) is W8A8Linear

    def state_tensors(self, name: str, module: nn.Module) -> tuple[dict[str, torch.Tensor], Recipe]:
        assert isinstance(module, W8A8Linear)
        q, scales = module.int8_state()
        parts = {"weight_int8": q, "scales": scales}
        if module.inv_smooth is not None:
            parts["inv_smooth"] = module.inv_smooth
        if module.bias is not None:
            parts["bias"] = module.bias
        meta = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "group_size": module.group_size,
            "bias": module.bias is not None,
            "smoothed": module.inv_smooth is not None,
        }
        return parts, meta

    def module_from_tensors(self, tensors: dict[str, torch.Tensor], meta: Recipe) -> nn.Module:
        kernels.available()  # as in quantize: a loaded model is ready to time
        return W8A8Linear(
            tensors["weight_int8"],
            tensors["scales"],
            tensors.get("inv_smooth") if meta["smoothed"] else None,
            tensors.get("bias") if meta["bias"] else None,
            meta["group_size"],
        )
