"""What an INT8 model is, in words a report can print: the record every detector returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: the libraries (or formats) a model can be quantized by; ``library`` holds one of them
LIBRARIES: tuple[str, ...] = (
    "llmq",  # one of our schemes (pytest_llmquant.schemes)
    "torchao",
    "bitsandbytes",
    "quanto",
    "gptq",
    "awq",
    "compressed-tensors",
    "transformers",  # another transformers quant_method we have no finer reading of
    "custom",  # layers we do not know, at the places of the FP32 model's linear layers
    "none",  # every linear layer still holds a float weight
)


@dataclass(frozen=True)
class Int8Description:
    """A truthful label for a quantized model, for test ids, reports and errors.

    ``bits`` is the *weight* bit width (8 for LLM.int8, 4 for most GPTQ/AWQ checkpoints,
    ``None`` when the model does not say): an "INT8" gate run on a 4-bit model must say so.
    """

    label: str  # e.g. "torchao Int8WeightOnly", "bitsandbytes LLM.int8", "gptq 4-bit"
    bits: int | None
    method: str  # one line: what is stored in int, what runs in float
    library: str  # one of LIBRARIES: whose save/load applies
    scheme: str | None = None  # our scheme name when library == "llmq"
    quant_method: str | None = None  # transformers' quantization_config.quant_method, if any
    layers: int | None = None  # quantized linear layers counted in a model; None for a checkpoint

    @property
    def is_quantized(self) -> bool:
        return self.library != "none"

    def __str__(self) -> str:
        if self.bits is None or f"{self.bits}-bit" in self.label:
            return self.label
        return f"{self.label}, {self.bits}-bit weights"

    def as_dict(self) -> dict[str, str | int | None]:
        return asdict(self)


NOT_QUANTIZED = Int8Description(
    label="not quantized",
    bits=None,
    method="every linear layer holds a float weight",
    library="none",
)
