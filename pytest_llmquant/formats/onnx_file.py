"""What an ONNX causal LM holds, from its graph alone (no weights read, no runtime).

Read with the ``onnx`` package (``load_external_data=False``: the graph and the sizes of
its initializers, not their bytes), so that a test id can say
``onnxruntime MatMulNBits int8`` at collection, the ``weights`` memory kind counts what the
file stores by role, and a model without a ``logits`` output is refused in one line
before a runtime starts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LlmqUsageError
from .facts import FileFacts

if TYPE_CHECKING:
    from onnx import TensorProto

QUANTIZED = "quantized tensors (blocks with scales)"
FLOAT_EMBED = "float: embeddings"
FLOAT_NORM = "float: norms"
FLOAT_LINEAR = "float: linear layers (not quantized)"
FLOAT_OTHER = "float: other tensors (rotary tables, ...)"
#: element sizes of ONNX tensor types, by TensorProto data type number
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2, 21: 1, 22: 1}


def model_file(path: str, option: str) -> Path:
    p = Path(path).expanduser()
    found = p / "model.onnx" if p.is_dir() else p
    if not found.is_file() or found.suffix != ".onnx":
        raise LlmqUsageError(
            f"{option}={path}: the onnxruntime runtime runs a directory with model.onnx (or an "
            ".onnx file); pass one, e.g. what onnxruntime-genai's builder writes"
        )
    return found


def _bytes(init: TensorProto) -> int:
    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    count = 1
    for dim in init.dims:
        count *= int(dim)
    return count * _ITEM_BYTES.get(int(init.data_type), 4)


def _role(name: str, init: TensorProto, quantized_inputs: set[str]) -> str:
    lower = name.lower()
    if name in quantized_inputs or int(init.data_type) in (2, 3, 21, 22):
        return QUANTIZED
    if "embed" in lower:
        return FLOAT_EMBED
    if "norm" in lower:
        return FLOAT_NORM
    if len(init.dims) >= 2 and "cache" not in lower:
        return FLOAT_LINEAR
    return FLOAT_OTHER


def _label(ops: Counter[str], bits: set[int]) -> tuple[str, int | None]:
    if ops["MatMulNBits"]:
        b = max(bits) if bits else 4
        return f"onnxruntime MatMulNBits int{b}", b
    if ops["MatMulInteger"] or ops["DynamicQuantizeMatMul"]:
        return "onnxruntime MatMulInteger int8", 8
    return "onnxruntime float", None


def describe_onnx(path: str, option: str) -> FileFacts:
    """The label, bits, bytes by role and shipped files of the ONNX model at ``path``."""
    import onnx

    file = model_file(path, option)
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file: protobuf's own error type
        raise LlmqUsageError(
            f"{option}={path}: {file.name} is not a readable ONNX model ({type(exc).__name__}); export it again"
        ) from None
    graph = model.graph
    if "logits" not in {o.name for o in graph.output}:
        raise LlmqUsageError(
            f"{option}={path}: {file.name} has no 'logits' output; export the causal LM with "
            "its logits (onnxruntime-genai's builder does)"
        )
    ops: Counter[str] = Counter(n.op_type for n in graph.node)
    quantized_nodes = [n for n in graph.node if n.op_type in ("MatMulNBits", "MatMulInteger")]
    inputs = {i for n in quantized_nodes for i in list(n.input)[1:]}
    bits = {a.i for n in quantized_nodes for a in n.attribute if a.name == "bits"}
    kinds: dict[str, int] = {}
    kept: list[str] = []
    data_files = {file}
    for init in graph.initializer:
        role = _role(init.name, init, inputs)
        kinds[role] = kinds.get(role, 0) + _bytes(init)
        if role == FLOAT_LINEAR:
            kept.append(init.name)
        for entry in init.external_data:
            if entry.key == "location":
                data_files.add(file.parent / entry.value)
    label, nbits = _label(ops, bits)
    return FileFacts(
        file,
        label,
        nbits,
        f"{nbits}-bit weights" if nbits else "float weights",
        kinds,
        tuple(n.name for n in quantized_nodes),
        tuple(kept),
        tuple(sorted(data_files)),
        f"onnx {label.split(' ', 1)[1]}",
    )
