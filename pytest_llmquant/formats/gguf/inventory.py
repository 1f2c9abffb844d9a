"""What a GGUF file holds, from its header alone: its type, bits per weight, bytes by kind.

A llama.cpp side's label (``llama.cpp Q4_1 (5.0 bits/weight)``), its coverage and its
``weights`` memory are read here, torch-free and before the runtime loads anything, so
that test ids exist at collection and the numbers are the file's own: llama.cpp maps the
tensors as they are stored, so the bytes it holds are the bytes of the tensor table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .header import GGUFHeader, GGUFTensor
from .q8_0 import FLOAT_TYPES

#: ``general.file_type`` (llama.cpp's ``llama_ftype``) by number, as llama-quantize names it
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4",
}  # fmt: skip

#: the weight-bytes roles of a GGUF side (the memory gate's keys; "float..." stays float)
QUANTIZED = "quantized tensors (blocks with scales)"
FLOAT_EMBED = "float: embeddings"
FLOAT_NORM = "float: norms"
FLOAT_LINEAR = "float: linear layers (not quantized)"
FLOAT_OTHER = "float: other tensors"


@dataclass(frozen=True)
class GGUFInventory:
    """A GGUF file's weights as a gate reports them."""

    file_type: str  # "Q4_1", "Q8_0", "F32": the file's own type, else its commonest type
    bits_per_weight: float  # all tensor bytes x 8 / all weights
    weight_bytes: dict[str, int]  # by role
    quantized: tuple[str, ...]  # tensor names stored in a quantized type
    kept_float: tuple[str, ...]  # 2-D tensors stored in float (embeddings included)

    @property
    def is_float(self) -> bool:
        return not self.quantized

    @property
    def label_bits(self) -> str:
        return f"{self.bits_per_weight:.1f} bits/weight"


def _nbytes(tensor: GGUFTensor) -> int:
    if tensor.data is not None:
        return int(tensor.data.nbytes)
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # an unknown type

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[tensor.type_name]]
    count = 1
    for dim in tensor.shape:
        count *= dim
    return count // block * size


def _role(tensor: GGUFTensor) -> str:
    if tensor.type_name not in FLOAT_TYPES:
        return QUANTIZED
    name = tensor.name
    if name.startswith(("token_embd", "position_embd", "token_types")):
        return FLOAT_EMBED
    if "norm" in name:
        return FLOAT_NORM
    if len(tensor.shape) >= 2:
        return FLOAT_LINEAR
    return FLOAT_OTHER


def inventory(header: GGUFHeader) -> GGUFInventory:
    """The file's type, bits per weight and bytes by role (its header only)."""
    kinds: dict[str, int] = {}
    weights = stored = 0
    quantized: list[str] = []
    kept: list[str] = []
    counts: dict[str, int] = {}
    for tensor in header.tensors:
        size = _nbytes(tensor)
        role = _role(tensor)
        kinds[role] = kinds.get(role, 0) + size
        n = 1
        for dim in tensor.shape:
            n *= dim
        weights, stored = weights + n, stored + size
        if role == QUANTIZED:
            quantized.append(tensor.name)
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
        elif len(tensor.shape) >= 2:
            kept.append(tensor.name)
    file_type = header.fields.get("general.file_type")
    name = FILE_TYPES.get(file_type) if isinstance(file_type, int) else None
    if name is None:
        name = max(counts, key=counts.__getitem__) if counts else "F32"
    bits = stored * 8 / weights if weights else 0.0
    return GGUFInventory(name, bits, kinds, tuple(quantized), tuple(kept))
