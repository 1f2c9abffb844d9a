"""A GGUF file's metadata in the shape transformers' GGUF config parser reads, without
``gguf.GGUFReader``.

Why: ``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint`` opens the file with
``GGUFReader``, which makes numpy memory-map views of every part of every metadata value,
~150k of them for SmolLM2's tokenizer strings and merges: 2.1 s of the 5.8-7.3 s that
converting the packaged GGUF to FP32 took on the project's 2-core machine (3.1 s with this). The parser reads each
field only as ``[_gguf_parse_value(field.parts[i], field.types) for i in field.data]``, and
the tensors only by ``name``. :class:`MetadataReader` gives it exactly that, from one
:mod:`struct` walk of the header: each value part as a 1-tuple (a number) or ``bytes`` (a
string), which that function turns into the same Python values as it does numpy views.
``tests/test_gguf_metadata.py`` holds ``load_gguf_checkpoint``'s result with this reader
equal to its result with ``GGUFReader``.

A file this reader does not cover (an array of arrays) raises :class:`NotReadHere`, and the
caller runs the parser with ``GGUFReader`` instead: slower, never different.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from .header import _ARRAY, _SCALARS, _STRING, GGUFFormatError, GGUFTensor, _Cursor, read_header

#: a value part as ``_gguf_parse_value`` indexes it: ``(number,)`` or a string's bytes
Part = tuple[int | float | bool] | bytes
#: GGUF value types of the pseudo-fields GGUFReader puts first (UINT32, UINT64)
_U32, _U64 = 4, 10


class NotReadHere(ValueError):
    """Metadata this reader does not parse (an array of arrays): use GGUFReader."""


class MetadataField:
    """One metadata key as GGUFReader's ``ReaderField`` is read: ``types`` (the value type,
    or ``[ARRAY, item type]``), ``parts`` and ``data`` (the indices of the value parts)."""

    __slots__ = ("data", "name", "parts", "types")

    def __init__(self, name: str, types: list[int], parts: list[Part]) -> None:
        self.name, self.types, self.parts = name, types, parts
        self.data = list(range(len(parts)))


class MetadataReader:
    """``GGUFReader(path)`` as ``load_gguf_checkpoint(..., return_tensors=False)`` uses it:
    ``fields`` (name -> :class:`MetadataField`, GGUFReader's three ``GGUF.*`` entries first,
    then the file's order) and ``tensors`` (each with its ``name``)."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        # ``mode`` only keeps GGUFReader's signature: the file is read, never written
        header = read_header(path)  # checks the whole file first, tensors included
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            self.fields = _fields(_Cursor(buf))
        self.tensors: list[GGUFTensor] = header.tensors


def _fields(cur: _Cursor) -> dict[str, MetadataField]:
    """Every metadata key from the start of a file :func:`read_header` accepted; the
    parts are copies (numbers, ``bytes``), so the map may be closed afterwards."""
    cur.pos = 4
    version, n_tensors, n_kv = cur.unpack("I"), cur.unpack("Q"), cur.unpack("Q")
    fields = {
        "GGUF.version": MetadataField("GGUF.version", [_U32], [(version,)]),
        "GGUF.tensor_count": MetadataField("GGUF.tensor_count", [_U64], [(n_tensors,)]),
        "GGUF.kv_count": MetadataField("GGUF.kv_count", [_U64], [(n_kv,)]),
    }
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("I")
        if vtype == _ARRAY:
            itype, count = cur.unpack("I"), cur.unpack("Q")
            types, parts = [_ARRAY, itype], _items(cur, itype, count, key)
        else:
            types, parts = [vtype], _items(cur, vtype, 1, key)
        fields[key] = MetadataField(key, types, parts)
    return fields


def _items(cur: _Cursor, vtype: int, count: int, key: str) -> list[Part]:
    """``count`` values of type ``vtype`` at the cursor, as parts."""
    if vtype in _SCALARS:
        fmt = f"<{count}{_SCALARS[vtype]}"
        size = struct.calcsize(fmt)
        if cur.pos + size > len(cur.buf):
            raise GGUFFormatError(f"{key} runs past the end of the file")
        values = struct.unpack_from(fmt, cur.buf, cur.pos)
        cur.pos += size
        return [(v,) for v in values]
    if vtype == _STRING:
        out: list[Part] = []
        for _ in range(count):
            n = cur.unpack("Q")
            if cur.pos + n > len(cur.buf):
                raise GGUFFormatError(f"a string of {key} runs past the end of the file")
            out.append(bytes(cur.buf[cur.pos : cur.pos + n]))
            cur.pos += n
        return out
    raise NotReadHere(f"{key} holds values of GGUF type {vtype}")
