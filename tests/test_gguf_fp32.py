"""The GGUF -> FP32 conversion of the cache is the model transformers' own GGUF loader makes.

The cache used to hold ``from_pretrained(gguf_file=...)`` saved as safetensors (30-48 s);
:func:`convert_gguf_to_fp32` writes it in seconds. These tests hold it to the old result on
the packaged SmolLM2 GGUF: the same tensors bit for bit, the same logits, the same config
and the same tokenizer files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fib(n):\n    return", "Ünïcode ✓ and  spaces"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, smollm2_available: None) -> Any:
    """(directory written by the fast converter, the progress lines it gave, how many times
    it parsed the GGUF metadata with transformers' GGUFReader-based parser)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from pytest_llmquant.formats.gguf.fp32 import convert_gguf_to_fp32
    from pytest_llmquant.models.sources import resolve

    said: list[str] = []
    parses: list[str] = []
    original = gguf_utils.load_gguf_checkpoint

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        parses.append(str(path))
        return original(path, *args, **kwargs)

    directory = tmp_path_factory.mktemp("fast-fp32")
    gguf_utils.load_gguf_checkpoint = counted
    try:
        convert_gguf_to_fp32(resolve("smollm2-135m").location, directory, progress=said.append)
    finally:
        gguf_utils.load_gguf_checkpoint = original
    return directory, said, parses


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, smollm2_available: None) -> Any:
    """transformers' route: from_pretrained(gguf_file=...) for the model and the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_llmquant.models.sources import resolve

    source = resolve("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(
        source.gguf_dir, gguf_file=source.gguf_name, dtype="float32"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.gguf_dir, gguf_file=source.gguf_name)
    tokenizer_dir = tmp_path_factory.mktemp("reference-tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)
    return model, tokenizer, tokenizer_dir


@pytest.fixture(scope="module")
def loaded(converted: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = converted[0]
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="float32", use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(directory)


def test_every_tensor_is_bit_identical(reference: Any, loaded: Any) -> None:
    import torch

    want = reference[0].state_dict()
    got = loaded[0].state_dict()
    assert set(got) == set(want)
    differ = [n for n in want if not torch.equal(want[n], got[n])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def test_logits_are_identical(reference: Any, loaded: Any) -> None:
    import torch

    tokenizer = reference[1]
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert ids.tolist() == loaded[1](prompt, return_tensors="pt")["input_ids"].tolist()
        with torch.inference_mode():
            assert torch.equal(reference[0](ids).logits, loaded[0](ids).logits), prompt


def test_config_is_the_one_transformers_builds(reference: Any, loaded: Any) -> None:
    # where each model came from and the GGUF quantizer marker are not part of the model;
    # ``architectures`` is filled in by save_pretrained (the old route saved it too)
    ignored = {"_name_or_path", "quantization_config", "architectures"}
    want = {k: v for k, v in reference[0].config.to_dict().items() if k not in ignored}
    got = {k: v for k, v in loaded[0].config.to_dict().items() if k not in ignored}
    assert got == want
    assert loaded[0].config.architectures == [type(reference[0]).__name__]
    assert loaded[0].generation_config.to_dict() == reference[0].generation_config.to_dict()


def test_tokenizer_files_are_identical(reference: Any, converted: Any) -> None:
    directory = converted[0]
    reference_dir: Path = reference[2]
    names = sorted(p.name for p in reference_dir.iterdir())
    assert "tokenizer.json" in names
    for name in names:
        assert (directory / name).read_bytes() == (reference_dir / name).read_bytes(), name


def test_the_slow_metadata_parse_runs_once_for_config_and_tokenizer(converted: Any) -> None:
    assert len(converted[2]) == 1


def test_progress_names_each_step(converted: Any) -> None:
    said = converted[1]
    assert said[0] == "reading the GGUF config"
    assert "dequantizing GGUF tensors to FP32: 1 of 272" in said
    assert said[-2:] == ["writing FP32 safetensors", "converting the GGUF tokenizer"]


def test_a_truncated_file_fails_before_any_slow_parse(
    tmp_path: Path, smollm2_available: None
) -> None:
    from pytest_llmquant.formats.gguf.fp32 import convert_gguf_to_fp32
    from pytest_llmquant.formats.gguf.header import GGUFFormatError
    from pytest_llmquant.models.sources import resolve

    cut = tmp_path / "cut.gguf"
    with open(resolve("smollm2-135m").location, "rb") as src:
        cut.write_bytes(src.read(4_000_000))
    said: list[str] = []
    with pytest.raises(GGUFFormatError, match="truncated"):
        convert_gguf_to_fp32(cut, tmp_path / "out", progress=said.append)
    assert said == []
