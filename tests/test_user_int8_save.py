"""``save_int8`` saves the user's INT8 model the way its maker saves it (or says in one
line why it cannot), and a fresh process loads *that* model back through the probe spec:
the same logits, not the FP32 model's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from user_int8_models import load, logits, make_tiny_llama, reload_logits

from pytest_llmquant.int8.third_party import (
    SaveOutcome,
    describe_checkpoint,
    describe_int8,
    save_int8,
)
from pytest_llmquant.int8.third_party.save import model_files

#: far below the effect of quantizing (~1e-2 on these logits), far above float noise
SAME = {"atol": 1e-5, "rtol": 0.0}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def size_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in model_files(directory))


def assert_saved_and_reloaded(model: Any, outcome: SaveOutcome | str, fp32_dir: Path) -> None:
    """The files are real, smaller than the FP32 model's, and reload to the same logits."""
    assert isinstance(outcome, SaveOutcome), outcome
    saved = Path(outcome.directory)
    assert "model.safetensors" in outcome.files
    assert outcome.bytes == size_on_disk(saved) > 0
    assert outcome.bytes < size_on_disk(fp32_dir)
    assert not [p for p in saved.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert describe_checkpoint(saved).label == describe_int8(model).label
    expected, fp32 = logits(model), logits(load(fp32_dir))
    reloaded = reload_logits(outcome.probe).reshape(expected.shape)
    torch.testing.assert_close(reloaded, expected, **SAME)
    assert not torch.allclose(reloaded, fp32, **SAME)  # the INT8 model, not the FP32 one


@pytest.mark.parametrize(
    "config", ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]
)
def test_torchao_quantize_in_memory_has_no_safe_save(
    llama_dir: Path, tmp_path: Path, config: str
) -> None:
    quantization = pytest.importorskip("torchao.quantization")
    model = load(llama_dir)
    quantization.quantize_(model, getattr(quantization, config)())
    reason = save_int8(model, tmp_path / "int8")
    assert isinstance(reason, str) and "\n" not in reason
    assert "TorchAoConfig" in reason and reason.endswith("--llmq-int8-model=DIR")
    assert not list((tmp_path / "int8").iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "config", ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]
)
def test_transformers_torchao_checkpoint(llama_dir: Path, tmp_path: Path, config: str) -> None:
    quantization = pytest.importorskip("torchao.quantization")
    from transformers import TorchAoConfig

    quantized = TorchAoConfig(getattr(quantization, config)())
    model = load(llama_dir, quantization_config=quantized, device_map="cpu")
    outcome = save_int8(model, tmp_path / "int8")
    assert isinstance(outcome, SaveOutcome), outcome
    assert (outcome.loader, outcome.reused) == ("transformers", False)
    assert_saved_and_reloaded(model, outcome, llama_dir)


def test_bitsandbytes_int8_checkpoint_saved_on_cpu(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    made = load(tiny_gpt2_dir, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu")  # fmt: skip
    made.save_pretrained(tmp_path / "user-ckpt", safe_serialization=True)  # what the user ships
    model = load(tmp_path / "user-ckpt", device_map="cpu")
    assert describe_int8(model).label == "bitsandbytes LLM.int8"
    reused = save_int8(model, tmp_path / "unused", origin=tmp_path / "user-ckpt")
    assert isinstance(reused, SaveOutcome), reused
    assert (reused.reused, reused.loader, reused.directory) == (True, "transformers", str(tmp_path / "user-ckpt"))  # fmt: skip
    assert not (tmp_path / "unused").exists()  # measured as it is, not saved again
    assert_saved_and_reloaded(model, reused, tiny_gpt2_dir)
    # the pinned transformers (constraints/ci.txt) cannot save a bitsandbytes checkpoint it
    # loaded (its load conversion has no reverse); without origin, save_int8 then says so in
    # one line instead of raising. A transformers that can is a change to take in on purpose.
    resaved = save_int8(model, tmp_path / "resaved")
    assert isinstance(resaved, str), "this transformers saves bitsandbytes models now"
    assert "\n" not in resaved
    assert resaved.startswith("cannot save the bitsandbytes LLM.int8 model safely: ")
    assert resaved.endswith("; pass the saved checkpoint with --llmq-int8-model=DIR")
    assert not list((tmp_path / "resaved").iterdir())


def test_quanto_qint8_is_saved_in_quantos_own_format(llama_dir: Path, tmp_path: Path) -> None:
    quanto = pytest.importorskip("optimum.quanto")
    model = load(llama_dir)
    quanto.quantize(model, weights=quanto.qint8)
    unfrozen = save_int8(model, tmp_path / "unfrozen")
    assert isinstance(unfrozen, str) and "optimum.quanto.freeze" in unfrozen
    quanto.freeze(model)
    outcome = save_int8(model, tmp_path / "int8")
    assert isinstance(outcome, SaveOutcome), outcome
    assert outcome.loader == "quanto" and "quanto_qmap.json" in outcome.files
    assert_saved_and_reloaded(model, outcome, llama_dir)


def test_quanto_keeps_a_tied_lm_head_tied(tmp_path: Path) -> None:
    quanto = pytest.importorskip("optimum.quanto")
    from pytest_llmquant.int8.third_party import load_saved_int8

    tied_dir = make_tiny_llama(tmp_path / "tied", tied=True)
    model = load(tied_dir)
    quanto.quantize(model, weights=quanto.qint8, exclude="lm_head")  # lm_head stays the embedding
    quanto.freeze(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    outcome = save_int8(model, tmp_path / "int8")
    assert_saved_and_reloaded(model, outcome, tied_dir)
    assert isinstance(outcome, SaveOutcome)
    reloaded = load_saved_int8(**outcome.probe)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # stored once


def test_quanto_reloads_an_untied_head_of_a_tied_config(tmp_path: Path) -> None:
    """The config says tie_word_embeddings, but this model's head has its own values (as a
    fine-tuned head would): the reload must not tie them again."""
    quanto = pytest.importorskip("optimum.quanto")
    tied_dir = make_tiny_llama(tmp_path / "tied", tied=True)
    model = load(tied_dir)
    head = model.model.embed_tokens.weight.detach() + 0.05 * torch.randn_like(model.lm_head.weight)
    model.lm_head.weight = torch.nn.Parameter(head)
    quanto.quantize(model, weights=quanto.qint8, exclude="lm_head")
    quanto.freeze(model)
    outcome = save_int8(model, tmp_path / "int8")
    assert isinstance(outcome, SaveOutcome), outcome
    expected = logits(model)
    torch.testing.assert_close(
        reload_logits(outcome.probe).reshape(expected.shape), expected, **SAME
    )


def test_quanto_through_transformers_which_cannot_save_it(llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("optimum.quanto")
    from transformers import QuantoConfig

    model = load(llama_dir, quantization_config=QuantoConfig(weights="int8"), device_map="cpu")
    assert not model.hf_quantizer.is_serializable()
    outcome = save_int8(model, tmp_path / "int8")
    assert isinstance(outcome, SaveOutcome), outcome
    assert outcome.loader == "quanto"
    assert_saved_and_reloaded(model, outcome, llama_dir)


@pytest.mark.parametrize("scheme", ["weight-only-int8", "dynamic-int8"])
def test_our_scheme_is_saved_with_its_recipe(
    tiny_gpt2_dir: Path, tmp_path: Path, scheme: str
) -> None:
    from pytest_llmquant import build_int8

    model, _ = build_int8(load(tiny_gpt2_dir), scheme)
    outcome = save_int8(model, tmp_path / "int8")
    assert isinstance(outcome, SaveOutcome), outcome
    assert outcome.loader == "llmq-recipe" and "llmq-recipe.json" in outcome.files
    assert_saved_and_reloaded(model, outcome, tiny_gpt2_dir)


def test_a_scheme_save_that_fails_is_a_reason_not_an_error(llama_dir: Path, tmp_path: Path) -> None:
    """Our layers everywhere but a torchao lm_head: the scheme's save cannot store the torchao
    tensor; the user gets one line, and no half-written files."""
    quantization = pytest.importorskip("torchao.quantization")
    from pytest_llmquant import get_scheme

    model = load(llama_dir)
    quantization.quantize_(model.lm_head, quantization.Int8WeightOnlyConfig())
    model.model = get_scheme("weight-only-int8").quantize(model.model)
    assert describe_int8(model).library == "llmq"
    reason = save_int8(model, tmp_path / "int8")
    assert isinstance(reason, str) and "\n" not in reason
    assert reason.startswith("cannot save the weight-only-int8 model safely: saving failed (")
    assert not list((tmp_path / "int8").iterdir())


def test_an_fp32_model_is_not_saved_as_int8(llama_dir: Path, tmp_path: Path) -> None:
    reason = save_int8(load(llama_dir), tmp_path / "int8")
    assert isinstance(reason, str) and "not quantized" in reason
    assert not (tmp_path / "int8").exists()


def test_a_users_own_layers_have_no_safe_save(llama_dir: Path, tmp_path: Path) -> None:
    model = load(llama_dir)
    model.lm_head.q = torch.zeros(2, 2, dtype=torch.int8)  # any int8 tensor makes it "custom"
    reason = save_int8(model, tmp_path / "int8")
    assert isinstance(reason, str) and reason.startswith("cannot save the custom Linear model")


def test_an_origin_that_is_not_an_int8_checkpoint_is_a_reason(
    llama_dir: Path, tmp_path: Path
) -> None:
    model = load(llama_dir)
    float_dir = save_int8(model, tmp_path / "x", origin=llama_dir)
    assert isinstance(float_dir, str) and "is not quantized" in float_dir
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    config = (llama_dir / "config.json").read_text(encoding="utf-8")
    (pickled / "config.json").write_text(
        config.replace('"model_type"', '"quantization_config": {"quant_method": "gptq", "bits": 4}, "model_type"'),
        encoding="utf-8",
    )  # fmt: skip
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    reason = save_int8(copy.deepcopy(model), tmp_path / "y", origin=pickled)
    assert isinstance(reason, str) and "only pickle weights (pytorch_model.bin)" in reason
