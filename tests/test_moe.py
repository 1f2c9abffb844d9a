"""Mixture-of-experts models: their 3-D expert banks are quantized, counted and saved.

In transformers 5 a Mixtral layer keeps its experts as two 3-D parameters, not as linear
layers. These tests hold that ``weight-only-int8`` quantizes them (each expert in the
dense layers' blocks, through the same kernel, the router left alone), that coverage
counts them by bytes, that a scheme or a user's model that leaves them float is said to,
and that an expert class of another API is refused in one line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pytest_llmquant.errors import LlmqUnsupportedLayerError
from pytest_llmquant.int8.build import build_int8
from pytest_llmquant.schemes import REGISTRY, get_scheme, kernels
from pytest_llmquant.schemes.int8_math import dequantize
from pytest_llmquant.schemes.weight_only_experts import Int8Experts
from pytest_llmquant.sides.torch_weights import (
    FLOAT_EXPERTS,
    FLOAT_OTHER,
    file_kept_float,
    weights_breakdown,
)

EXPERTS = "model.layers.0.mlp.experts"


@pytest.fixture(scope="module")
def mixtral(tiny_mixtral_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_mixtral_dir, dtype=torch.float32).eval()


def dequantized_experts(layer: Int8Experts) -> tuple[torch.Tensor, torch.Tensor]:
    """The float banks an :class:`Int8Experts` stands for, from its saved int8 state."""
    state = layer.int8_state()
    banks = []
    for part in ("gate_up", "down"):
        q, scales = state[f"{part}_int8"], state[f"{part}_scales"]
        banks.append(torch.stack([dequantize(q[e], scales[e], 32) for e in range(len(q))]))
    return banks[0], banks[1]


@pytest.mark.parametrize("tokens", [1, 3, 40], ids=["decode", "small-batch", "prefill"])
def test_int8_experts_compute_what_the_float_loop_computes_on_their_weights(
    mixtral: torch.nn.Module, tokens: int
) -> None:
    int8, _ = build_int8(mixtral, "weight-only-int8")
    layer = int8.get_submodule(EXPERTS)
    assert isinstance(layer, Int8Experts)
    same = copy.deepcopy(mixtral.get_submodule(EXPERTS))  # the float loop, on int8's weights
    gate_up, down = dequantized_experts(layer)
    with torch.no_grad():
        same.gate_up_proj.copy_(gate_up)
        same.down_proj.copy_(down)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, 64, generator=gen)
    index = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(tokens)])
    weights = torch.rand(tokens, 2, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x, index, weights), same(x, index, weights))


def test_decode_runs_only_the_hit_experts_one_kernel_call_each(mixtral: torch.nn.Module) -> None:
    int8, _ = build_int8(mixtral, "weight-only-int8")
    layer = int8.get_submodule(EXPERTS)
    calls: list[int] = []
    for e, gate_up in enumerate(layer.gate_up):
        gate_up.register_forward_hook(lambda *_, e=e: calls.append(e))
    x = torch.randn(1, 64)
    with torch.inference_mode():
        layer(x, torch.tensor([[3, 1]]), torch.tensor([[0.7, 0.3]]))
    assert sorted(calls) == [1, 3]  # gate and up of an expert in one call, the others idle
    assert kernels.loaded() and layer.gate_up[3]._group is not None  # the C kernel's call


def test_the_router_is_left_float_and_shared(mixtral: torch.nn.Module) -> None:
    int8, _ = build_int8(mixtral, "weight-only-int8")
    router = int8.get_submodule("model.layers.0.mlp.gate")
    assert router.weight is mixtral.get_submodule("model.layers.0.mlp.gate").weight


def test_coverage_counts_expert_banks_by_bytes(mixtral: torch.nn.Module) -> None:
    _, cov = build_int8(mixtral, "weight-only-int8")
    assert cov.complete and len(cov.experts_quantized) == 4 and cov.expert_layers == 2
    assert cov.bytes_float.keys() == {"embeddings", "norms", "other"}  # other: the routers
    # each of the 2 layers: 4 experts x (2 x 128 x 64 + 64 x 128) float32 weights
    assert cov.bytes_quantized["experts"] == 2 * 4 * 3 * 128 * 64 * 4
    assert str(cov).startswith(
        f"quantized {100 * cov.quantized_fraction:.1f}% of weight bytes: 9 of 9 linear "
        "layers, 4 of 4 expert banks (2 layers); float: embeddings 0.1 MB, norms, other"
    )


@pytest.mark.parametrize(
    ("scheme", "why"),
    [
        ("dynamic-int8", "torch.ao quantize_dynamic has no path for 3-D expert weights"),
        (
            "weight-only-int8-bf16",
            "weight-only-int8-bf16 quantizes linear layers only; weight-only-int8 does experts",
        ),
        (
            "smoothquant-w8a8",
            "smoothquant-w8a8 quantizes linear layers only; weight-only-int8 does experts",
        ),
    ],
)
def test_the_other_schemes_say_their_experts_stay_float(
    mixtral: torch.nn.Module, scheme: str, why: str
) -> None:
    _, cov = build_int8(mixtral, scheme)
    assert cov.complete  # they do not claim experts, and say so
    assert "9 of 9 linear layers, 0 of 4 expert banks (2 layers); float: experts 0.8 MB" in str(cov)
    assert str(cov).endswith(f"(experts stay float: {why})")


def test_float_experts_are_named_experts_in_the_memory_breakdown(
    mixtral: torch.nn.Module,
) -> None:
    int8, _ = build_int8(mixtral, "dynamic-int8")
    assert weights_breakdown(int8)[FLOAT_EXPERTS] == 2 * 4 * 3 * 128 * 64 * 4


def test_save_and_reload_give_identical_logits(mixtral: torch.nn.Module, tmp_path: Path) -> None:
    int8, _ = build_int8(mixtral, "weight-only-int8")
    scheme = get_scheme("weight-only-int8")
    scheme.save(int8, tmp_path)
    layers = json.loads((tmp_path / "llmq-recipe.json").read_text())["layers"]
    assert layers[EXPERTS] == {"kind": "experts", "group_size": 32, "num_experts": 4}
    # in the file, only the routers are "other" float: the experts' scales are int8 layers'
    assert file_kept_float(tmp_path, int8)[FLOAT_OTHER] == 2 * 4 * 64 * 4
    reloaded = scheme.load(tmp_path)
    ids = torch.arange(40).unsqueeze(0)
    with torch.inference_mode():
        assert torch.equal(reloaded(ids).logits, int8(ids).logits)
        assert torch.equal(reloaded(ids[:, :2]).logits, int8(ids[:, :2]).logits)


def tiny_gpt_oss() -> torch.nn.Module:
    config = AutoConfig.for_model(
        "gpt_oss",
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=128,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def test_an_expert_class_of_another_api_is_refused_in_one_line() -> None:
    # gpt-oss keeps its banks transposed, with biases and a clamped gate of its own
    with pytest.raises(
        LlmqUnsupportedLayerError,
        match=r"^weight-only-int8 cannot quantize the expert layer model\.layers\.0\.mlp\."
        r"experts \(GptOssExperts\): its forward takes \(hidden_states, router_indices, "
        r"routing_weights\), not \(hidden_states, top_k_index, top_k_weights\); .* use "
        r"--llmq-scheme=dynamic-int8, which leaves experts float and says so$",
    ):
        build_int8(tiny_gpt_oss(), "weight-only-int8")


class SplitExperts(torch.nn.Module):
    """Experts with gate and up as separate 3-D banks, the other layout the scheme knows."""

    def __init__(self, experts: torch.nn.Module) -> None:
        super().__init__()
        gate, up = experts.gate_up_proj.detach().chunk(2, dim=1)
        self.gate_proj = torch.nn.Parameter(gate.clone())
        self.up_proj = torch.nn.Parameter(up.clone())
        self.down_proj = torch.nn.Parameter(experts.down_proj.detach().clone())
        self.act_fn = experts.act_fn
        self.fused = experts

    def forward(self, hidden_states, top_k_index, top_k_weights):  # type: ignore[no-untyped-def]
        return self.fused(hidden_states, top_k_index, top_k_weights)


def test_separate_gate_and_up_banks_quantize_like_the_fused_layout(
    mixtral: torch.nn.Module,
) -> None:
    fused = mixtral.get_submodule(EXPERTS)
    split = SplitExperts(copy.deepcopy(fused))
    del split.fused  # a module inside holding weights would be refused
    from_split = Int8Experts.from_experts("split", split, 32)
    from_fused = Int8Experts.from_experts("fused", fused, 32)
    for a, b in zip(
        from_split.int8_state().values(), from_fused.int8_state().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_a_scheme_that_skips_experts_fails_the_coverage_check(
    pytester: pytest.Pytester, tiny_mixtral_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        linear_only_scheme="""
        from pytest_llmquant.schemes.weight_only_int8 import WeightOnlyInt8

        class LinearOnlyInt8(WeightOnlyInt8):
            name = "linear-only-int8"

            def __init__(self, **config):
                config.setdefault("skip", ["experts"])
                super().__init__(**config)
        """
    )
    pytester.syspathinsert()
    monkeypatch.setitem(REGISTRY, "linear-only-int8", "linear_only_scheme:LinearOnlyInt8")
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_mixtral_dir}",
        "--llmq-suite",
        "--llmq-scheme=linear-only-int8",
        "-k",
        "coverage",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=1, deselected=11)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: tiny-mixtral* [[]linear-only-int8]: 4 of 4 expert banks stayed "
            "float (model.layers.0.mlp.experts.gate_up_proj, model.layers.0.mlp.experts."
            "down_proj, model.layers.1.mlp.experts.gate_up_proj and 1 more), where scheme "
            "'linear-only-int8' should quantize linear, lm_head, experts (quantized *% of "
            "weight bytes: 9 of 9 linear layers, 0 of 4 expert banks (2 layers); float: "
            "experts 0.8 MB, embeddings 0.1 MB, norms, other)"
        ]
    )


def test_a_torchao_model_with_float_experts_is_described_so(mixtral: torch.nn.Module) -> None:
    quantization = pytest.importorskip("torchao.quantization")
    from pytest_llmquant.int8.third_party.detect import describe_int8

    model = copy.deepcopy(mixtral)
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())
    desc = describe_int8(model)
    assert desc.label == "torchao Int8WeightOnly"
    assert desc.method.endswith("; 4 expert banks still float (experts not quantized)")


TORCHAO_HOOK = """
import copy

def pytest_llmq_quantize(model, scheme, config):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = copy.deepcopy(model)
    quantize_(model, Int8WeightOnlyConfig())  # nn.Linear only: the experts stay float
    return model
"""


def test_a_hook_model_with_float_experts_is_labelled_so(
    pytester: pytest.Pytester, tiny_mixtral_dir: Path
) -> None:
    pytest.importorskip("torchao")
    pytester.makeconftest(TORCHAO_HOOK)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_mixtral_dir}",
        "--llmq-suite",
        "-k",
        "coverage or memory",
        "--llmq-min-memory-ratio=2",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=2, deselected=10)
    result.stdout.fnmatch_lines_random(
        [
            "*: 4 of 4 expert banks stayed float (*), where torchao Int8WeightOnly (from the "
            "pytest_llmq_quantize hook) should quantize linear, lm_head, experts*",
            "*quant_memory failed for *: weights * (ratio *x < 2x); still float: experts "
            "(expert banks not quantized) 0.8 MB, *",
            "tiny-mixtral* [[]torchao Int8WeightOnly]: quantized *% of weight bytes: 9 of 9 "
            "linear layers, 0 of 4 expert banks (2 layers); float: experts 0.8 MB, embeddings "
            "0.1 MB, norms, other; torchao Int8WeightOnly, made by the pytest_llmq_quantize hook",
        ]
    )


def test_the_default_scheme_on_a_mixtral_checkpoint_passes_coverage_memory_round_trip(
    pytester: pytest.Pytester, tiny_mixtral_dir: Path
) -> None:
    report = pytester.path / "report.json"
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_mixtral_dir}",
        "--llmq-suite",
        "-k",
        "coverage or memory or round_trip",
        "--llmq-min-memory-ratio=2",
        f"--llmq-report={report}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=3, deselected=9)
    result.stdout.fnmatch_lines(
        [
            "tiny-mixtral* [[]weight-only-int8]: quantized *% of weight bytes: 9 of 9 linear "
            "layers, 4 of 4 expert banks (2 layers); float: embeddings 0.1 MB, norms, other; "
            "weight-only-int8, made by the built-in scheme*",
        ]
    )
    [pair] = json.loads(report.read_text())["pairs"].values()
    [memory] = [g for g in pair["gates"] if g["gate"] == "quant_memory"]
    assert memory["measurement"]["ratio"] >= 2.0


FILE_AND_RSS = """
import pytest

@pytest.mark.quant_memory(2, kind="file")
def test_file(llmq_pair):
    pass

@pytest.mark.quant_memory(0.5, kind="peak_rss")
def test_peak_rss(llmq_pair):
    pass
"""


def test_the_file_and_peak_rss_kinds_measure_the_saved_moe_model(
    pytester: pytest.Pytester, tiny_mixtral_dir: Path
) -> None:
    pytester.makepyfile(FILE_AND_RSS)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={tiny_mixtral_dir}", "-p", "no:cacheprovider", "-rs"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(["memory (file) * ok", "memory (peak_rss) * ok"])
