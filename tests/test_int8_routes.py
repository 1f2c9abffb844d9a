"""The user's own INT8 model, by every route users make one, is what the gates measure
and what the reports name: the test id says the route, the summary gives the label read
from the model, and each memory kind measures that model or skips saying why and how to
fix it. Runs on a tiny Llama (nn.Linear layers, which torchao and quanto quantize)."""

from __future__ import annotations

from pathlib import Path

import pytest

GATES = """
import pytest

@pytest.mark.quant_memory(0.01, kind="weights")
def test_weights(llmq_pair):
    print("ORIGIN", llmq_pair.origin)

@pytest.mark.quant_memory(0.01, kind="file")
def test_file(llmq_pair):
    pass

@pytest.mark.quant_memory(0.01, kind="peak_rss")
def test_peak_rss(llmq_pair):
    pass
"""

HOOK = """
import copy

def pytest_llmq_quantize(model, scheme, config):
    model = copy.deepcopy(model)
{body}
    return model
"""

TORCHAO_WEIGHT_ONLY = """
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    quantize_(model, Int8WeightOnlyConfig())
"""
TORCHAO_W8A8 = """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
"""
QUANTO = """
    from optimum.quanto import freeze, qint8, quantize
    quantize(model, weights=qint8)
    freeze(model)
"""

NO_SAFE_SAVE = "*safely*--llmq-int8-model=DIR*"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from user_int8_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def run(pytester: pytest.Pytester, model: Path, *args: str) -> pytest.RunResult:
    pytester.makepyfile(GATES)
    return pytester.runpytest_inprocess(
        f"--llmq-model={model}", "-p", "no:cacheprovider", "-v", "-rs", "-s", *args
    )


@pytest.mark.parametrize(
    ("body", "label", "file_skips"),
    [
        pytest.param(TORCHAO_WEIGHT_ONLY, "torchao Int8WeightOnly", True, id="torchao-weight-only"),
        pytest.param(
            TORCHAO_W8A8, "torchao Int8DynamicActivationInt8Weight", True, id="torchao-w8a8"
        ),
        pytest.param(QUANTO, "quanto qint8", False, id="quanto-qint8"),
    ],
)
def test_a_hook_model_is_labelled_and_measured_as_itself(
    pytester: pytest.Pytester, tiny_llama: Path, body: str, label: str, file_skips: bool
) -> None:
    pytest.importorskip("optimum.quanto" if body is QUANTO else "torchao")
    pytester.makeconftest(HOOK.format(body=body))
    result = run(pytester, tiny_llama)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    result.stdout.fnmatch_lines(
        [
            f"*::test_weights[[]tiny-llama*-hook] ORIGIN {label} (8-bit weights, made by the "
            "pytest_llmq_quantize hook)",
            f"*tiny-llama* [[]{label}]: quantized *% of weight bytes: 15 of 15 linear layers*",
        ]
    )
    if file_skips:  # torchao quantize_ in memory: no safe format without transformers
        result.assert_outcomes(passed=1, skipped=2)
        skipped = f"SKIPPED [[]1] test_*.py:*: quant_memory for *{label}]: {NO_SAFE_SAVE}"
        result.stdout.fnmatch_lines([skipped, skipped])
        return
    result.assert_outcomes(passed=3)  # quanto's own safetensors + map, reloaded in the probe


def _torchao_checkpoint(source: Path, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, TorchAoConfig

    torchao = pytest.importorskip("torchao.quantization")
    config = TorchAoConfig(torchao.Int8WeightOnlyConfig())
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config)
    model.save_pretrained(target, safe_serialization=True)
    return target


def _bitsandbytes_checkpoint(source: Path, target: Path) -> Path:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    )
    model.save_pretrained(target, safe_serialization=True)
    return target


@pytest.mark.parametrize(
    ("make", "label", "test_id"),
    [
        pytest.param(
            _torchao_checkpoint,
            "torchao Int8WeightOnly",
            "torchao-Int8WeightOnly",
            id="TorchAoConfig",
        ),
        pytest.param(
            _bitsandbytes_checkpoint,
            "bitsandbytes LLM.int8",
            "bitsandbytes-LLM.int8",
            id="bitsandbytes-8bit",
        ),
    ],
)
def test_a_checkpoint_is_labelled_from_its_config_and_every_memory_kind_reads_its_files(
    pytester: pytest.Pytester,
    tiny_llama: Path,
    tmp_path: Path,
    make: object,
    label: str,
    test_id: str,
) -> None:
    checkpoint = make(tiny_llama, tmp_path / "int8")  # type: ignore[operator]
    result = run(pytester, tiny_llama, f"--llmq-int8-model={checkpoint}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            f"*::test_weights[[]tiny-llama*-{test_id}] ORIGIN {label} (8-bit weights, made by "
            "the --llmq-int8-model)",
        ]
    )


SIMILAR = """
import pytest

@pytest.mark.quant_similarity({bounds})
def test_similar(llmq_pair):
    print("ORIGIN", llmq_pair.origin)
"""

#: Each route's similarity bound on SmolLM2-135M: the defaults (mean KLD 0.01, same-top
#: 0.95, PPL ratio 1.02) where the route meets them, else the bound its measurement in the
#: "Which INT8 should I ship on CPU?" table (docs/schemes.md) supports, with room for 512 tokens.
ROUTE_BOUNDS = {
    "torchao-weight-only": "",
    "torchao-w8a8": "max_kl=0.06, min_same_top=0.85, max_ppl_ratio=1.06",
    "quanto-qint8": "",
    "TorchAoConfig": "",
    "bitsandbytes-8bit": "max_kl=0.025, min_same_top=0.92, max_ppl_ratio=1.04",
}


@pytest.fixture(scope="module")
def smollm2_dir(
    smollm2_available: None, shared_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The packaged SmolLM2 as a plain FP32 directory, for the checkpoint routes."""
    from pytest_llmquant import load_fp32

    model, tokenizer = load_fp32("smollm2-135m", cache_dir=str(shared_cache_dir))
    target = tmp_path_factory.mktemp("smollm2-fp32")
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


@pytest.mark.slow
@pytest.mark.parametrize("route", sorted(ROUTE_BOUNDS))
def test_the_similarity_gate_passes_each_route_on_smollm2(
    pytester: pytest.Pytester, smollm2_dir: Path, tmp_path: Path, route: str
) -> None:
    hooks = {
        "torchao-weight-only": TORCHAO_WEIGHT_ONLY,
        "torchao-w8a8": TORCHAO_W8A8,
        "quanto-qint8": QUANTO,
    }
    args = [f"--llmq-model={smollm2_dir}", "--llmq-eval-tokens=512", "-p", "no:cacheprovider"]
    if route in hooks:
        pytest.importorskip("optimum.quanto" if route == "quanto-qint8" else "torchao")
        pytester.makeconftest(HOOK.format(body=hooks[route]))
    else:
        make = _torchao_checkpoint if route == "TorchAoConfig" else _bitsandbytes_checkpoint
        args.append(f"--llmq-int8-model={make(smollm2_dir, tmp_path / 'int8')}")
    pytester.makepyfile(SIMILAR.format(bounds=ROUTE_BOUNDS[route]))
    result = pytester.runpytest_inprocess(*args, "-s", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["* ORIGIN * (8-bit weights, made by the *", "quant_similarity passed for *"]
    )
