"""INT8 models the gates cannot measure as they are get one line that says why and what
to do: missing kernels, a checkpoint dequantized on load, a padded vocabulary, a library
error while loading. None lets a traceback through."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from user_int8_models import load, make_tiny_llama

from pytest_llmquant.errors import LlmqModelError, LlmqUsageError
from pytest_llmquant.int8.third_party import describe_checkpoint, describe_int8, load_saved_int8
from pytest_llmquant.int8.third_party.explain import (
    check_not_dequantized,
    compare_over_shared_vocab,
    shared_vocab,
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def with_quantization_config(src: Path, dst: Path, quantization_config: dict[str, Any]) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = quantization_config
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(
    ("config", "install"),
    [
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}, "gptqmodel optimum"),
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}, "gptqmodel"),
    ],
)  # fmt: skip
def test_a_gptq_or_awq_checkpoint_without_its_kernels(
    llama_dir: Path, tmp_path: Path, config: dict[str, Any], install: str
) -> None:
    if importlib.util.find_spec("gptqmodel") is not None:
        pytest.skip("gptqmodel is installed: the kernels are not missing here")
    ckpt = with_quantization_config(llama_dir, tmp_path / "ckpt", config)
    with pytest.raises(LlmqUsageError) as err:
        load_saved_int8(str(ckpt))  # transformers raises ImportError for the missing kernels
    text = one_line(err)
    assert f"({config['quant_method']} 4-bit)" in text and f"pip install {install}" in text


def make_compressed_tensors_w8a8(fp32_dir: Path, directory: Path) -> Path:
    """An int-quantized (W8A8) compressed-tensors checkpoint, written by hand: per-channel
    int8 weights and float scales for every projection, lm_head kept in float."""
    from safetensors.torch import load_file, save_file

    directory.mkdir()
    tensors = {}
    for key, value in load_file(str(fp32_dir / "model.safetensors")).items():
        if key.endswith("proj.weight"):
            scale = value.abs().amax(1, keepdim=True) / 127
            tensors[key] = torch.round(value / scale).clamp(-128, 127).to(torch.int8)
            tensors[key.removesuffix("weight") + "weight_scale"] = scale
        else:
            tensors[key] = value
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    int8 = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False}
    config = json.loads((fp32_dir / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {**int8, "strategy": "channel"},
                "input_activations": {**int8, "strategy": "token", "dynamic": True},
            }
        },
    }
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_a_checkpoint_dequantized_on_load_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("compressed_tensors")
    from transformers import CompressedTensorsConfig

    ckpt = make_compressed_tensors_w8a8(llama_dir, tmp_path / "w8a8")
    declared = describe_checkpoint(ckpt)
    assert (declared.label, declared.bits) == ("compressed-tensors W8A8", 8)
    kept = load_saved_int8(str(ckpt))  # transformers 5.24 keeps int8 weights on CPU
    assert describe_int8(kept).label == "compressed-tensors W8A8"
    check_not_dequantized(str(ckpt), declared, describe_int8(kept))  # nothing to refuse

    dense = load(ckpt, quantization_config=CompressedTensorsConfig(dequantize=True))
    loaded = describe_int8(dense)
    assert loaded.library == "none"  # float weights, and transformers dropped the config too
    with pytest.raises(LlmqUsageError) as err:
        check_not_dequantized(str(ckpt), declared, loaded)
    assert "compressed-tensors W8A8, but transformers dequantized it" in one_line(err)


def test_a_library_error_while_loading_names_the_installed_versions(
    llama_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    model = load(llama_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()), device_map="cpu")  # fmt: skip
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a cut download
    with pytest.raises(LlmqModelError) as err:
        load_saved_int8(str(tmp_path / "ckpt"))
    text = one_line(err)
    assert "(torchao Int8WeightOnly) failed" in text and "installed: torchao " in text


def test_a_directory_that_is_not_quantized_is_refused(llama_dir: Path) -> None:
    with pytest.raises(LlmqUsageError) as err:
        load_saved_int8(str(llama_dir))
    assert "is not a quantized checkpoint" in one_line(err)


# -- a padded vocabulary -------------------------------------------------------------------


def test_padded_lm_head_is_compared_over_the_shared_vocabulary(llama_dir: Path) -> None:
    fp32, padded = load(llama_dir), load(llama_dir)
    vocab = fp32.config.vocab_size
    padded.resize_token_embeddings(vocab + 48)  # what GPTQ/AWQ exporters do for kernels
    assert shared_vocab(fp32, padded) == vocab
    with pytest.raises(LlmqUsageError) as err:
        shared_vocab(padded, fp32)
    assert "smaller vocabulary" in one_line(err)


def test_the_cut_measures_the_mass_on_padded_ids_and_refuses_when_they_win() -> None:
    torch.manual_seed(0)
    fp32 = torch.randn(1, 8, 400)
    int8 = torch.cat([fp32 + 0.01, torch.full((1, 8, 48), -30.0)], dim=-1)
    cut = compare_over_shared_vocab(fp32, int8)
    assert cut.logits.shape == fp32.shape and torch.equal(cut.logits, int8[..., :400])
    assert cut.extra_ids == 48 and 0 < cut.max_extra_mass < 1e-9
    assert "compared over the 400 shared token ids" in cut.note
    int8[0, 3, 420] = 50.0  # one position where the padding wins the argmax
    with pytest.raises(LlmqModelError) as err:
        compare_over_shared_vocab(fp32, int8)
    assert "at 1 of 8 positions" in one_line(err)
    same = compare_over_shared_vocab(fp32, fp32)
    assert (same.extra_ids, same.note) == (0, "")
