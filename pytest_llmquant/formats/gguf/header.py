"""Read a GGUF file's header and tensor table, skipping the tokenizer.

Why not ``gguf.GGUFReader``: it turns every metadata string into numpy views, ~100k of
them for SmolLM2's tokenizer, which costs ~2.5 s of CPU before the first tensor (measured
on this project's CI machine), and it would be paid twice (labelling tests at start-up,
then loading). The INT8 side needs only the architecture, a few hyper-parameters and
where each tensor's bytes are, so this walks the header with :mod:`struct` over a
memory map, steps over long arrays, and hands out the tensor bytes as zero-copy numpy
views in the layout ``GGUFReader`` uses (so ``gguf.quants.dequantize`` takes them).
tests/test_gguf_int8.py checks it against ``GGUFReader`` tensor by tensor.

Format (GGUF v2/v3, little-endian): magic, version u32, tensor count u64, kv count u64;
each kv: key string, value type u32, value; each tensor: name, n_dims u32, dims u64
(fastest first), type u32, offset u64 from the data start, which is aligned to
``general.alignment`` (default 32). A string is a u64 length and UTF-8 bytes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import numpy
    from gguf import GGMLQuantizationType

#: a metadata value: a number, a string, or an array of them (None: an array too long to keep)
GGUFValue: TypeAlias = "int | float | str | list[GGUFValue] | None"

#: value types with a fixed size: struct format by GGUF type id
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
#: arrays longer than this (tokenizer vocabularies, merges) are stepped over, not kept
MAX_KEPT_ARRAY = 4096
DEFAULT_ALIGNMENT = 32


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF file this reader understands (the message says why)."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_name: str  # GGMLQuantizationType name ("Q8_0", "F32", ...), or "type<N>" if unknown
    shape: tuple[int, ...]  # torch order: rows first (GGML lists the fastest dimension first)
    data: (
        numpy.ndarray | None
    )  # numpy uint8 view (..., bytes per row), as GGUFReader gives it; None if unknown type

    @property
    def qtype(self) -> GGMLQuantizationType:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType[self.type_name]


@dataclass
class GGUFHeader:
    version: int
    #: metadata: scalars, strings, and arrays up to MAX_KEPT_ARRAY items (longer: None)
    fields: dict[str, GGUFValue] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)


class _Cursor:
    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> int:
        """One integer field (the lengths and ids of the header); floats go through _scalar."""
        value = self._scalar(fmt)
        if not isinstance(value, int):  # a caller's mistake (a float format), never the file's
            raise TypeError(f"unpack({fmt!r}) is for integer fields")
        return value

    def magic(self) -> bytes:
        """The file's first four bytes."""
        raw = bytes(self.buf[self.pos : self.pos + 4])
        self.pos += len(raw)
        return raw

    def _scalar(self, fmt: str) -> int | float:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise GGUFFormatError(f"the header ends early (at byte {self.pos})")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"a string runs past the end of the file (at byte {self.pos})")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"a string is not UTF-8 (at byte {self.pos - n})") from None

    def value(self, vtype: int) -> GGUFValue:
        if vtype in _SCALARS:
            return self._scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise GGUFFormatError(f"unknown metadata value type {vtype}")
        itype, count = self.unpack("I"), self.unpack("Q")
        if count <= MAX_KEPT_ARRAY:
            return [self.value(itype) for _ in range(count)]
        if itype in _SCALARS:  # step over without reading
            self.pos += count * struct.calcsize("<" + _SCALARS[itype])
        elif itype == _STRING:  # only the lengths: no decoding of 50k tokens
            for _ in range(count):
                length = self.unpack("Q")  # read first: it moves pos past the length
                self.pos += length
        else:
            for _ in range(count):
                self.value(itype)
        return None


def read_header(path: str | Path) -> GGUFHeader:
    """The metadata and tensor table of the GGUF file ``path`` (memory-mapped, read-only).

    Raises :class:`GGUFFormatError` for anything that is not a complete little-endian
    GGUF v2/v3 file, and ``OSError`` when the file cannot be opened.
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GGUFFormatError("the file is empty") from None
    cur = _Cursor(buf)
    if cur.magic() != b"GGUF":
        raise GGUFFormatError("it does not start with 'GGUF'")
    version = cur.unpack("I")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        kind = "a big-endian GGUF" if swapped in (2, 3) else f"GGUF version {version}"
        raise GGUFFormatError(f"it is {kind} file (only little-endian GGUF v2/v3 is read)")
    n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
    header = GGUFHeader(version)
    for _ in range(n_kv):
        key = cur.string()
        header.fields[key] = cur.value(cur.unpack("I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.unpack("Q") for _ in range(cur.unpack("I"))]
        infos.append((name, dims, cur.unpack("I"), cur.unpack("Q")))
    align = header.fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise GGUFFormatError(f"invalid general.alignment {align!r}")
    start = -(-cur.pos // align) * align
    for name, dims, type_id, offset in infos:
        shape = tuple(reversed(dims)) or (1,)
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            header.tensors.append(GGUFTensor(name, f"type{type_id}", shape, None))
            continue
        block, size = GGML_QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise GGUFFormatError(
                f"tensor {name} has rows of {shape[-1]}, not whole {qtype.name} blocks"
            )
        byte_shape = (*shape[:-1], shape[-1] // block * size)
        nbytes = int(np.prod(byte_shape))
        if start + offset + nbytes > len(buf):
            raise GGUFFormatError(f"truncated: tensor {name} runs past the end of the file")
        data = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=start + offset)
        header.tensors.append(GGUFTensor(name, qtype.name, shape, data.reshape(byte_shape)))
    return header
