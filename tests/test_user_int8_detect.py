"""``describe_int8`` names the INT8 model a user brings, from what its layers hold, and
``describe_checkpoint`` names a saved one from its JSON files alone."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from user_int8_models import load, make_tiny_llama

from pytest_llmquant.errors import LlmqUsageError
from pytest_llmquant.int8.third_party import describe_checkpoint, describe_int8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def llama(llama_dir: Path) -> Any:
    return load(llama_dir)


def linear_count(model: Any) -> int:
    import torch

    return sum(1 for m in model.modules() if type(m) is torch.nn.Linear)


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, pytest_llmquant.int8.third_party as u\n"
        "from pytest_llmquant.int8.third_party import configs, description, detect, explain, probe, save\n"
        "u.describe_checkpoint\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_fp32_model_is_not_quantized(llama: Any) -> None:
    desc = describe_int8(llama)
    assert (desc.library, desc.bits, desc.is_quantized) == ("none", None, False)


@pytest.mark.parametrize(
    ("config", "label"),
    [
        ("Int8WeightOnlyConfig", "torchao Int8WeightOnly"),
        ("Int8DynamicActivationInt8WeightConfig", "torchao Int8DynamicActivationInt8Weight"),
    ],
)
def test_torchao_quantize_is_read_from_the_weight_tensors(
    llama: Any, config: str, label: str
) -> None:
    quantization = pytest.importorskip("torchao.quantization")
    linears = linear_count(llama)
    quantization.quantize_(llama, getattr(quantization, config)())
    desc = describe_int8(llama)
    assert (desc.label, desc.bits, desc.library) == (label, 8, "torchao")
    assert desc.layers == linears  # quantize_ converts every nn.Linear, lm_head included
    assert desc.quant_method is None  # no transformers config: made in memory


@pytest.mark.parametrize(("qtype", "bits"), [("qint8", 8), ("qint4", 4)])
def test_quanto_layers_give_their_weight_type(llama: Any, qtype: str, bits: int) -> None:
    quanto = pytest.importorskip("optimum.quanto")
    quanto.quantize(llama, weights=getattr(quanto, qtype))
    before_freeze = describe_int8(llama)
    quanto.freeze(llama)
    desc = describe_int8(llama)
    assert (desc.label, desc.bits, desc.library) == (f"quanto {qtype}", bits, "quanto")
    assert "NOT frozen" in before_freeze.method and "NOT frozen" not in desc.method


@pytest.mark.parametrize(
    ("flags", "label", "bits"),
    [({"load_in_8bit": True}, "bitsandbytes LLM.int8", 8), ({"load_in_4bit": True}, None, 4)],
)
def test_bitsandbytes_layers_through_transformers(
    tiny_gpt2_dir: Path, flags: dict[str, bool], label: str | None, bits: int
) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    model = load(tiny_gpt2_dir, quantization_config=BitsAndBytesConfig(**flags), device_map="cpu")
    desc = describe_int8(model)
    assert (desc.bits, desc.library, desc.quant_method) == (bits, "bitsandbytes", "bitsandbytes")
    assert label is None or desc.label == label
    assert desc.layers == 8  # GPT-2's Conv1D layers; the tied lm_head stays float


@pytest.mark.parametrize("scheme", ["weight-only-int8", "dynamic-int8", "smoothquant-w8a8"])
def test_our_schemes_are_named_by_scheme(tiny_gpt2_dir: Path, scheme: str) -> None:
    from pytest_llmquant import build_int8, load_fp32

    fp32, _ = load_fp32(str(tiny_gpt2_dir))
    int8, cov = build_int8(fp32, scheme)
    desc = describe_int8(int8)
    assert (desc.label, desc.bits, desc.library, desc.scheme) == (scheme, 8, "llmq", scheme)
    assert desc.layers == len(cov.quantized) == 9


def test_a_users_own_int8_layers_are_custom(llama: Any) -> None:
    import torch

    class MyInt8Linear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach()
            self.scale = w.abs().amax(1, keepdim=True) / 127
            self.q = torch.round(w / self.scale).to(torch.int8)  # a plain attribute

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ (self.q.float() * self.scale).t()

    llama.lm_head = MyInt8Linear(llama.lm_head)
    desc = describe_int8(llama)
    assert (desc.label, desc.bits, desc.library, desc.layers) == (
        "custom MyInt8Linear",
        8,
        "custom",
        1,
    )
    assert "14 linear layers still float" in desc.method


def test_mixed_models_are_named_by_their_majority(llama: Any) -> None:
    from pytest_llmquant import get_scheme

    quantization = pytest.importorskip("torchao.quantization")
    ours = get_scheme("weight-only-int8").quantize(copy.deepcopy(llama.model.layers[0]))
    quantization.quantize_(llama, quantization.Int8WeightOnlyConfig())
    llama.model.layers[0] = ours
    desc = describe_int8(llama)
    assert desc.label == "torchao Int8WeightOnly"
    assert "also weight-only-int8 (7 layers)" in desc.method


# -- checkpoints, from config.json alone ----------------------------------------------------

TORCHAO_NEW = {
    "quant_method": "torchao",
    "quant_type": {"default": {"_type": "Int8DynamicActivationInt8WeightConfig", "_data": {}}},
}
CT_W8A8 = {
    "quant_method": "compressed-tensors",
    "format": "int-quantized",
    "config_groups": {
        "group_0": {
            "weights": {"num_bits": 8, "type": "int"},
            "input_activations": {"num_bits": 8, "type": "int"},
        }
    },
}
CT_W4A16 = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}}},
}


@pytest.mark.parametrize(
    ("quantization_config", "label", "bits", "library"),
    [
        (TORCHAO_NEW, "torchao Int8DynamicActivationInt8Weight", 8, "torchao"),
        ({"quant_method": "torchao", "quant_type": "int8_weight_only"}, "torchao Int8WeightOnly", 8, "torchao"),
        ({"quant_method": "torchao", "quant_type": "int4_weight_only"}, "torchao Int4WeightOnly", 4, "torchao"),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes LLM.int8", 8, "bitsandbytes"),
        ({"quant_method": "bitsandbytes", "_load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bitsandbytes 4-bit nf4", 4, "bitsandbytes"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq 4-bit", 4, "gptq"),
        ({"quant_method": "gptq", "bits": 8}, "gptq 8-bit", 8, "gptq"),
        ({"quant_method": "awq", "bits": 4}, "awq 4-bit", 4, "awq"),
        (CT_W8A8, "compressed-tensors W8A8", 8, "compressed-tensors"),
        (CT_W4A16, "compressed-tensors W4A16", 4, "compressed-tensors"),
        ({"quant_method": "quanto", "weights": "int8"}, "quanto qint8", 8, "quanto"),
        ({"quant_method": "fp8"}, "fp8", None, "transformers"),
    ],
)  # fmt: skip
def test_checkpoint_label_and_bits_come_from_its_quantization_config(
    tmp_path: Path, quantization_config: dict[str, Any], label: str, bits: int | None, library: str
) -> None:
    config = {"model_type": "llama", "quantization_config": quantization_config}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    desc = describe_checkpoint(tmp_path)
    assert (desc.label, desc.bits, desc.library) == (label, bits, library)


def test_a_float_checkpoint_is_not_quantized(llama_dir: Path) -> None:
    assert describe_checkpoint(llama_dir).library == "none"


def test_our_checkpoint_is_read_from_its_recipe(llama: Any, tmp_path: Path) -> None:
    from pytest_llmquant import get_scheme

    scheme = get_scheme("weight-only-int8")
    scheme.save(scheme.quantize(llama), tmp_path)
    desc = describe_checkpoint(tmp_path)
    assert (desc.label, desc.bits, desc.library, desc.scheme) == (
        "weight-only-int8", 8, "llmq", "weight-only-int8"
    )  # fmt: skip


def test_a_missing_or_broken_checkpoint_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LlmqUsageError, match="no such directory"):
        describe_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LlmqUsageError, match="config.json is unreadable") as err:
        describe_checkpoint(tmp_path)
    assert "\n" not in str(err.value)
