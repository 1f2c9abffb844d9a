"""``weight-only-int8-bf16``: int8 weights through torch's own int8 kernel, no compiler.

Why it exists: ``weight-only-int8`` is fast only through its C kernel. Where that cannot
be built (macOS, arm64, containers without gcc) its fallback dequantizes every weight
on every call and runs at 0.38x of FP32 on SmolLM2-135M. This scheme needs nothing
but torch, and every choice below was measured on SmolLM2-135M (docs/schemes.md):

- The only fast int8-weight CPU op in torch is ``torch._weight_int8pack_mm``: int8
  weights (N, K), one scale per output row, and *bfloat16* activations (fp32 input runs
  its scalar loop, 10x slower on x86). So each layer casts its input to bfloat16 and its
  output back. Everything between the linear layers stays float32.
- One scale per row costs accuracy that Q8_0's blocks of 32 do not. GPTQ rounding
  (:mod:`.gptq`) wins it back without changing the format: mean KLD 0.0047 -> 0.0015,
  same-top 95.8% -> 98.6%. It needs ``calibration_tokens`` of text: the *end* of the
  built-in corpus, which the similarity gate (scoring from its start) never sees.
- Scales are chosen in bfloat16 (the op's scale dtype) and the weights rounded to them,
  so no float32 scale is rounded afterwards.
- The op writes bfloat16, and bfloat16 logits (8 bits of mantissa: steps of 0.125 at
  16..32) cost 2% of top-1 agreement on their own. So the output layer (``lm_head``)
  recomputes its ``exact_top`` largest logits per token in float32 from the same int8
  weights and the float32 input. That is one small gather and dot product per token.
- The op is a matrix-vector loop: at more than ``_OP_MAX_TOKENS`` tokens per call
  (prompts) the float32 GEMM on the dequantized weight is faster. It computes the same
  numbers up to float32 summation order: bfloat16 input, float32 sums, bfloat16 output.
- The op reads past the end of a row when ``K`` is not a multiple of 16 (it crashed the
  process here at K = 13), and uses aligned loads; such shapes always take the GEMM path.

Options: ``rounding`` (``"gptq"``, default, or ``"nearest"``: quantizes in a second, less
accurate), ``calibration_tokens`` (default 1024), ``exact_top`` (default 32; 0 turns it
off), ``stats_mib`` (memory for calibration statistics per pass, default 512: bigger
models take more passes over the calibration text), ``skip`` (layer-name suffixes kept
in float32).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import LlmqUsageError
from ..layers import convert_conv1d, linear_like_layers, set_submodule
from .base import QuantScheme, Recipe
from .gptq import bf16_row_scales, collect_input_stats, gptq_round_layers, round_nearest

#: Up to this many tokens per call the int8 op runs; above it the float32 GEMM on the
#: dequantized weight (measured crossover on SmolLM2's shapes: 24 to 48 tokens).
_OP_MAX_TOKENS = 24
#: Tokens per chunk when recomputing the top logits of a long prompt (bounds the memory
#: of the gathered rows to chunk * exact_top * K floats).
_EXACT_CHUNK = 256
_ALIGN = 64


def _op_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


class Int8PackLinear(nn.Module):
    """int8 weights (N, K) with one bfloat16 scale per row; never a float ``weight``.

    There is deliberately no ``weight`` attribute, so nothing can fall back to a float
    weight unnoticed and :func:`pytest_llmquant.layers.coverage` counts the layer as
    quantized.
    """

    weight_int8: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None = None,
        exact_top: int = 0,
    ) -> None:
        super().__init__()
        if q.dim() != 2 or scales.shape != (q.shape[0],):
            raise ValueError(
                f"Int8PackLinear needs q (N, K) and scales (N,); got {tuple(q.shape)} and "
                f"{tuple(scales.shape)}"
            )
        self.out_features, self.in_features = q.shape
        q = q.to(torch.int8).contiguous()
        if q.data_ptr() % _ALIGN:  # e.g. a view into a loaded file: the op needs alignment
            q = q.clone()
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scales.to(torch.bfloat16).contiguous())
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )
        self.exact_top = int(exact_top)

    @classmethod
    def from_linear(cls, linear: nn.Linear, exact_top: int = 0) -> Int8PackLinear:
        w = linear.weight.detach().to(torch.float32)
        scales = bf16_row_scales(w)
        return cls(round_nearest(w, scales), scales, linear.bias, exact_top)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        """Keep scales bfloat16 and bias float32 through ``.to(dtype)``/``.half()`` (moving
        devices is fine): the op takes bfloat16 scales, and the bias is added in float32."""
        kept = {n: t for n in ("bias", "scales") if (t := self._buffers.get(n)) is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer stands for: ``q * scale`` per row."""
        return self.weight_int8.to(torch.float32) * self.scales.to(torch.float32).unsqueeze(1)

    def _use_op(self, xb: torch.Tensor) -> bool:
        return (
            _op_available()
            and xb.device.type == "cpu"
            and 0 < xb.shape[0] <= _OP_MAX_TOKENS
            and self.in_features % 16 == 0
            and xb.is_contiguous()
            and xb.data_ptr() % _ALIGN == 0
            and self.weight_int8.data_ptr() % _ALIGN == 0
        )

    def matmul_bf16(self, xb: torch.Tensor) -> torch.Tensor:
        """bfloat16 ``xb (M, K) @ (q * s)^T`` with float32 sums, rounded to bfloat16: the op
        for few tokens, the float32 GEMM for many (same numbers up to summation order)."""
        if self._use_op(xb):
            return torch._weight_int8pack_mm(xb, self.weight_int8, self.scales)
        w = self.weight_int8.to(torch.float32)
        out = xb.to(torch.float32) @ w.t()
        return (out * self.scales.to(torch.float32)).to(torch.bfloat16)

    def _exact_logits(self, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Replace the ``exact_top`` largest outputs of each row of ``y`` by their float32
        value ``s_n * (x . q_n) (+ b_n)``, from the same int8 weights."""
        k = min(self.exact_top, self.out_features)
        scales = self.scales.to(torch.float32)
        for start in range(0, x2.shape[0], _EXACT_CHUNK):
            xs, ys = x2[start : start + _EXACT_CHUNK], y[start : start + _EXACT_CHUNK]
            idx = ys.topk(k, dim=-1).indices
            rows = self.weight_int8[idx].to(torch.float32)  # (m, k, K)
            exact = torch.bmm(rows, xs.to(torch.float32).unsqueeze(-1)).squeeze(-1) * scales[idx]
            if self.bias is not None:
                exact = exact + self.bias[idx]
            ys.scatter_(-1, idx, exact.to(ys.dtype))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        xb = x2.to(torch.bfloat16).contiguous()
        if xb.data_ptr() % _ALIGN:
            xb = xb.clone()
        y = self.matmul_bf16(xb).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        if self.exact_top and x.dtype == torch.float32 and y.shape[0]:
            y = self._exact_logits(x2, y)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, exact_top={self.exact_top}"
        )


def calibration_ids(model: nn.Module, n_tokens: int) -> list[torch.Tensor]:
    """The last ``n_tokens`` tokens of the built-in corpus, through the model's own
    tokenizer (found from ``name_or_path``), in chunks the model's context can take.

    The end of the corpus, because the similarity gate scores it from the start:
    statistics taken from the scored text would flatter the scheme. Without a tokenizer
    next to the model, fixed pseudo-random ids, with a warning.
    """
    config = getattr(model, "config", None)
    path = getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "")
    context = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    chunk = min(512, int(context)) if context else 512
    try:
        from transformers import AutoTokenizer

        from ..evaltext import default_corpus

        tok = AutoTokenizer.from_pretrained(path)
        ids = torch.tensor(tok(default_corpus()).input_ids[-n_tokens:], dtype=torch.long)
        if ids.numel() >= 16:
            return list(ids.split(chunk))
    except Exception:  # no tokenizer next to the model: pseudo-random ids below
        pass
    warnings.warn(
        "pytest-llmquant: weight-only-int8-bf16 found no tokenizer for calibration; "
        "calibrating on pseudo-random token ids (pass calibration to prepare())",
        RuntimeWarning,
        stacklevel=3,
    )
    vocab = int(getattr(config, "vocab_size", 256))
    gen = torch.Generator().manual_seed(0)
    return list(torch.randint(0, vocab, (n_tokens,), generator=gen).split(chunk))


def _output_layer_name(model: nn.Module) -> str | None:
    """The name of the layer that produces the logits (``lm_head`` in most models)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    for name, module in model.named_modules():
        if head is not None and module is head:
            return name
    return "lm_head" if hasattr(model, "lm_head") else None


def _passes(widths: dict[str, int], budget_bytes: int) -> list[list[str]]:
    """Split layers (in model order) into calibration passes whose statistics, at most
    ``K * K`` float32 per layer, fit ``budget_bytes`` (at least one layer per pass)."""
    passes: list[list[str]] = [[]]
    used = 0
    for name, k in widths.items():
        size = 4 * k * k
        if passes[-1] and used + size > budget_bytes:
            passes.append([])
            used = 0
        passes[-1].append(name)
        used += size
    return [p for p in passes if p]


def _skipped(name: str, skip: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


class WeightOnlyInt8Bf16(QuantScheme):
    name = "weight-only-int8-bf16"
    summary = (
        "int8 weights, one bfloat16 scale per row, GPTQ-rounded on calibration text; "
        "bfloat16 activations through torch._weight_int8pack_mm (no compiler), "
        "lm_head's top logits recomputed in float32"
    )
    #: measured 0.0015 on SmolLM2-135M over the default corpus (benchmarks/schemes.py),
    #: rounded up with room for the corpus and library versions changing
    kld_bound = 0.003
    quantizes = ("linear", "lm_head")
    float_by_design = {
        "experts": "weight-only-int8-bf16 quantizes linear layers only; weight-only-int8 does experts"
    }

    def __init__(self, **config: Any) -> None:  # the user's keywords, parsed here
        config.setdefault("rounding", "gptq")
        config.setdefault("calibration_tokens", 1024)
        config.setdefault("exact_top", 32)
        config.setdefault("stats_mib", 512)
        config.setdefault("skip", [])
        super().__init__(**config)
        if config["rounding"] not in ("gptq", "nearest"):
            raise ValueError(f"rounding must be 'gptq' or 'nearest', not {config['rounding']!r}")
        self.rounding = str(config["rounding"])
        self.calibration_tokens = int(config["calibration_tokens"])
        self.exact_top = int(config["exact_top"])
        self.stats_bytes = int(float(config["stats_mib"]) * 2**20)
        if self.calibration_tokens < 16 or self.exact_top < 0 or self.stats_bytes <= 0:
            raise ValueError(
                "calibration_tokens must be >= 16, exact_top >= 0 and stats_mib > 0; got "
                f"{config['calibration_tokens']!r}, {config['exact_top']!r}, {config['stats_mib']!r}"
            )
        self.skip = [str(s) for s in config["skip"]]
        self._calibration: list[torch.Tensor] | None = None

    def prepare(self, model: nn.Module, calibration: list[torch.Tensor] | None = None) -> None:
        """Keep caller-given calibration token ids for ``quantize``. The statistics themselves
        are gathered inside ``quantize``, pass by pass, so they never outlive it (they are
        ``K * K`` floats per layer: gigabytes for a 1B model)."""
        self._calibration = (
            None if calibration is None else [torch.as_tensor(c) for c in calibration]
        )

    def _calibration_for(self, model: nn.Module) -> list[torch.Tensor]:
        if self._calibration is None:
            return calibration_ids(model, self.calibration_tokens)
        embeddings: Any = getattr(model, "get_input_embeddings")()  # noqa: B009 (mypy)
        vocab = int(embeddings.weight.shape[0])
        top = max((int(c.max()) for c in self._calibration if c.numel()), default=-1)
        if top >= vocab or not any(c.numel() for c in self._calibration):
            raise LlmqUsageError(
                f"the calibration given to {self.name!r} has token id {top}, outside this "
                f"model's vocabulary of {vocab} (or no tokens at all); pass ids from the "
                "model's own tokenizer"
            )
        return self._calibration

    def _int8_weights(
        self, model: nn.Module, layers: dict[str, nn.Linear]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        weights = {n: m.weight.detach().to(torch.float32) for n, m in layers.items()}
        scales = {n: bf16_row_scales(w) for n, w in weights.items()}
        if self.rounding == "nearest":
            return {n: round_nearest(w, scales[n]) for n, w in weights.items()}, scales
        calibration = self._calibration_for(model)
        q: dict[str, torch.Tensor] = {}
        widths = {n: w.shape[1] for n, w in weights.items()}
        for names in _passes(widths, self.stats_bytes):
            stats = collect_input_stats(model, calibration, names=names)
            q.update(
                gptq_round_layers(
                    {n: weights[n] for n in names}, {n: scales[n] for n in names}, stats
                )
            )
            del stats
        return q, scales

    def quantize(self, model: nn.Module) -> nn.Module:
        if not _op_available():
            warnings.warn(
                "pytest-llmquant: this torch has no torch._weight_int8pack_mm; "
                "weight-only-int8-bf16 dequantizes each weight per call (slow)",
                RuntimeWarning,
                stacklevel=2,
            )
        convert_conv1d(model)  # first: statistics and weights are then those of nn.Linear
        head = _output_layer_name(model)
        layers: dict[str, nn.Linear] = {}
        for name, module in linear_like_layers(model).items():
            if not _skipped(name, self.skip):
                assert isinstance(module, nn.Linear)  # convert_conv1d made every layer one
                layers[name] = module
        q, scales = self._int8_weights(model, layers)
        for name, module in layers.items():
            exact_top = self.exact_top if name == head else 0
            set_submodule(
                model, name, Int8PackLinear(q[name], scales[name], module.bias, exact_top)
            )
        return model

    def is_quantized_module(self, module: nn.Module) -> bool:
        return type(module) is Int8PackLinear

    def state_tensors(self, name: str, module: nn.Module) -> tuple[dict[str, torch.Tensor], Recipe]:
        assert isinstance(module, Int8PackLinear)
        parts = {"weight_int8": module.weight_int8, "scales": module.scales}
        if module.bias is not None:
            parts["bias"] = module.bias
        meta = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
            "exact_top": module.exact_top,
        }
        return parts, meta

    def module_from_tensors(self, tensors: dict[str, torch.Tensor], meta: Recipe) -> nn.Module:
        return Int8PackLinear(
            tensors["weight_int8"],
            tensors["scales"],
            tensors.get("bias") if meta["bias"] else None,
            int(meta["exact_top"]),
        )
