"""transformers' GGUF config and tokenizer parser reads the same metadata through our
:class:`MetadataReader` as through ``gguf.GGUFReader``, at a fraction of the cost.

The GGUF -> FP32 conversion hands transformers' ``load_gguf_checkpoint`` this reader in
place of ``GGUFReader``; these tests hold the parsed result identical (pickled, so that
types count too: an int stays an int, a bool a bool) on every kind of metadata value, on
a tiny Llama with a real BPE tokenizer and on the packaged SmolLM2, and show the fallback
to GGUFReader for what the reader does not parse.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from pytest_llmquant.formats.gguf import fp32  # noqa: E402
from pytest_llmquant.formats.gguf.header import GGUFFormatError  # noqa: E402
from pytest_llmquant.formats.gguf.metadata import MetadataReader, NotReadHere  # noqa: E402


def _parse(path: Path, reader: type) -> Any:
    """``load_gguf_checkpoint(path, return_tensors=False)`` with ``reader`` as GGUFReader."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real = gguf.GGUFReader
    gguf.GGUFReader = reader
    try:
        return gguf_utils.load_gguf_checkpoint(str(path), return_tensors=False)
    finally:
        gguf.GGUFReader = real


def _same_parse(path: Path) -> None:
    ours, theirs = _parse(path, MetadataReader), _parse(path, gguf.GGUFReader)
    assert ours == theirs
    assert pickle.dumps(ours) == pickle.dumps(theirs)


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gguf_llama import tiny_llama_files

    return tiny_llama_files(tmp_path_factory.mktemp("meta"))["Q8_0"]


def test_a_tiny_llama_with_its_tokenizer_parses_the_same(tiny_llama_gguf: Path) -> None:
    _same_parse(tiny_llama_gguf)


def test_every_scalar_type_and_array_parses_the_same(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "kinds.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint8("llama.u8", 200)
    writer.add_int8("llama.i8", -5)
    writer.add_uint16("llama.u16", 60000)
    writer.add_int16("llama.i16", -30000)
    writer.add_uint32("llama.block_count", 2)
    writer.add_int32("llama.i32", -7)
    writer.add_uint64("llama.u64", 2**40)
    writer.add_int64("llama.i64", -(2**40))
    writer.add_float32("llama.rope.freq_base", 10000.5)
    writer.add_float64("llama.f64", 1 / 3)
    writer.add_bool("llama.use_parallel_residual", True)
    writer.add_string("general.name", "Ünïcode ✓ model")
    writer.add_array("llama.ints", [1, 2, 3])
    writer.add_array("llama.floats", [0.5, -1.25])
    writer.add_array("llama.strings", ["a", "", "ß"])
    writer.add_array("llama.one", [9])  # one item: parsed as a scalar by both
    writer.add_array("llama.empty", [])
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _same_parse(path)


@pytest.mark.slow
def test_the_packaged_smollm2_parses_the_same(smollm2_available: None) -> None:
    from pytest_llmquant.models.sources import resolve

    _same_parse(Path(resolve("smollm2-135m").location))


def test_an_array_of_arrays_is_left_to_gguf_reader(tmp_path: Path) -> None:
    """The reader refuses what it does not parse, and the conversion's parse then runs
    with GGUFReader itself (the parse function sees which reader it was given)."""
    import numpy as np

    path = tmp_path / "nested.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_array("llama.nested", [[1, 2], [3]])
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(NotReadHere, match="llama.nested"):
        MetadataReader(path)

    readers: list[str] = []

    def parse(where: Any, return_tensors: bool = False) -> str:
        readers.append(gguf.GGUFReader.__name__)
        gguf.GGUFReader(where)
        return "parsed"

    assert fp32._parsed_without_gguf_reader(parse, str(path)) == "parsed"
    assert readers == ["MetadataReader", "GGUFReader"]
    assert gguf.GGUFReader.__name__ == "GGUFReader"  # put back


def test_a_truncated_file_is_a_format_error(tiny_llama_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_llama_gguf.read_bytes()[:2000])
    with pytest.raises(GGUFFormatError):
        MetadataReader(cut)
