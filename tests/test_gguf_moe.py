"""A Q8_0 GGUF of a mixture-of-experts model as the INT8 side, its expert blocks unchanged.

The files are a tiny random Mixtral (2 layers, 4 experts, top-2) written as llama.cpp
writes one (:mod:`gguf_mixtral`): architecture ``llama`` with stacked 3-D expert tensors.
llama.cpp itself reading the F32 file to transformers' logits is the proof that the
writer lays the experts out as llama.cpp does; the loader is then held to the file's own
numbers, bank by bank.
"""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path

import pytest
from gguf_mixtral import tiny_mixtral_files
from test_runtimes import kld

from pytest_llmquant import LlmqUsageError
from pytest_llmquant.int8.gguf_q8_0 import load_gguf_int8

needs_llama_cpp = pytest.mark.skipif(
    find_spec("llama_cpp") is None, reason="needs llama-cpp-python (the llamacpp extra)"
)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_mixtral_files(tmp_path_factory.mktemp("mixtral"))


@pytest.fixture(scope="module")
def reference(mixtral: dict[str, Path]):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(mixtral["dir"]).eval()


def _file_banks(path: Path, layer: int) -> dict[str, object]:
    """The three expert tensors of ``layer`` as gguf's own decoder reads them (float32)."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(path).tensors:
        m = re.fullmatch(rf"blk\.{layer}\.ffn_(gate|up|down)_exps\.weight", t.name)
        if m:
            out[m[1]] = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
    return out


def test_each_experts_weights_are_the_files_q8_0_blocks(
    mixtral: dict[str, Path], reference
) -> None:  # type: ignore[no-untyped-def]
    """gate and up are stacked row-wise into one gate_up layer per expert, down is its own:
    every weight equals what gguf decodes from the file, to the bit."""
    import torch

    from pytest_llmquant.schemes.weight_only_experts import Int8Experts

    model = load_gguf_int8(mixtral["Q8_0"], reference)
    for layer in range(2):
        experts = model.model.layers[layer].mlp.experts
        assert isinstance(experts, Int8Experts)
        banks = _file_banks(mixtral["Q8_0"], layer)
        for e in range(experts.num_experts):
            gate_up = torch.cat([banks["gate"][e], banks["up"][e]])  # type: ignore[index]
            assert torch.equal(experts.gate_up[e].dequantized_weight(), gate_up)
            assert torch.equal(experts.down[e].dequantized_weight(), banks["down"][e])  # type: ignore[index]


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    report = pytester.path / "report.json"
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--llmq-eval-tokens=192", f"--llmq-report={report}", *args
    )  # fmt: skip
    return result, json.loads(report.read_text())


def test_the_suite_counts_the_expert_banks_and_passes(
    pytester: pytest.Pytester, mixtral: dict[str, Path]
) -> None:
    """coverage, similarity, memory (weights >= 2x) and round_trip all pass; speed is left
    out because a 64-wide model's decode step is call overhead, not weights."""
    result, report = _run(
        pytester, "--llmq-suite", "-k", "not speedup",
        f"--llmq-model={mixtral['dir']}", f"--llmq-int8-model={mixtral['Q8_0']}",
    )  # fmt: skip
    result.assert_outcomes(passed=11, deselected=1)
    assert re.search(
        r"tiny-mixtral \[gguf Q8_0\]: quantized \d+\.\d% of weight bytes: 9 of 9 linear "
        r"layers, 4 of 4 expert banks \(2 layers\); float: embeddings",
        result.stdout.str(),
    )
    (pair,) = report["pairs"].values()
    assert pair["coverage"]["expert_banks"]["float"] == []
    assert len(pair["coverage"]["expert_banks"]["quantized"]) == 4


def _float_experts_copy(src: Path, dst: Path) -> Path:
    """``src`` with its expert tensors stored as F32 (every other tensor unchanged)."""
    from gguf.quants import dequantize

    from pytest_llmquant.formats.gguf.write import copy_gguf

    def keep(t):  # type: ignore[no-untyped-def]
        if "_exps." in t.name:
            return dequantize(t.data, t.tensor_type), None
        return t.data, t.tensor_type

    return copy_gguf(src, dst, keep)


def test_experts_a_gguf_keeps_in_float_fail_coverage_by_name(
    pytester: pytest.Pytester, mixtral: dict[str, Path], tmp_path: Path
) -> None:
    """A Q8_0 file whose expert tensors are F32: the model loads, the summary says the
    banks stayed float, and the suite's coverage check fails naming them."""
    mixed = _float_experts_copy(mixtral["Q8_0"], tmp_path / "float-experts.gguf")
    result, report = _run(
        pytester, "--llmq-suite", "-k", "coverage",
        f"--llmq-model={mixtral['dir']}", f"--llmq-int8-model={mixed}",
    )  # fmt: skip
    result.assert_outcomes(failed=1, deselected=11)
    result.stdout.fnmatch_lines(["*0 of 4 expert banks*"])
    result.stdout.fnmatch_lines(["*4 of 4 expert banks stayed float (model.layers.0.mlp.experts*"])
    (pair,) = report["pairs"].values()
    assert len(pair["coverage"]["expert_banks"]["float"]) == 4


def test_experts_of_another_shape_are_refused_in_one_line(
    mixtral: dict[str, Path], tmp_path: Path
) -> None:
    """The GGUF of a Mixtral with a narrower expert layer is not this model's INT8 file."""
    other = tiny_mixtral_files(tmp_path, ffn=96, name="narrow")["Q8_0"]
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(mixtral["dir"])
    with pytest.raises(LlmqUsageError) as info:
        load_gguf_int8(other, reference)
    message = str(info.value)
    assert "\n" not in message
    assert "blk.0.ffn_gate_exps.weight has shape (4, 96, 64)" in message
    assert "model.layers.0.mlp.experts need (4, 128, 64)" in message


@needs_llama_cpp
def test_llama_cpp_reads_the_files_experts_as_transformers_does(
    pytester: pytest.Pytester, mixtral: dict[str, Path]
) -> None:
    """The F32 file in llama.cpp gives transformers' logits (KLD ~1e-8: the writer lays the
    experts out as llama.cpp's converter does), and its Q8_0 file there is further off
    than the same blocks in torch (llama.cpp rounds the activations too)."""
    pytester.makepyfile(
        "import pytest\n@pytest.mark.quant_similarity(max_kl=1.0, min_same_top=0.01)\n"
        "def test_x(llmq_pair): pass\n"
    )
    runs = {"F32 llama.cpp": ("F32", "llama.cpp"), "Q8_0 llama.cpp": ("Q8_0", "llama.cpp"),
            "Q8_0 torch": ("Q8_0", "torch")}  # fmt: skip
    klds = {}
    for name, (kind, runtime) in runs.items():
        result, report = _run(
            pytester, f"--llmq-model={mixtral['dir']}", f"--llmq-int8-model={mixtral[kind]}",
            f"--llmq-int8-runtime={runtime}",
        )  # fmt: skip
        result.assert_outcomes(passed=1)
        klds[name] = kld(report)
    assert klds["F32 llama.cpp"] < 1e-6, klds
    assert klds["Q8_0 llama.cpp"] > klds["Q8_0 torch"] > 100 * klds["F32 llama.cpp"], klds


def test_a_mixtral_gguf_as_the_reference_says_transformers_reads_it_dense(
    pytester: pytest.Pytester, mixtral: dict[str, Path]
) -> None:
    """transformers' GGUF loader has no expert keys for ``llama``: one line saying so and
    naming the fix, not "truncated or corrupt"."""
    pytester.makepyfile("def test_x(llmq_pair): pass\n")
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--llmq-cache-dir={pytester.path / 'cache'}",
        f"--llmq-model={mixtral['F32']}",
    )  # fmt: skip
    result.assert_outcomes(errors=1)
    lines = [line for line in result.stdout.lines if "is a mixture-of-experts 'llama' GGUF" in line]
    assert lines and "4 experts" in lines[0] and "reads as a dense model" in lines[0]
    assert "pass the transformers checkpoint directory as --llmq-model" in lines[0]
    assert "corrupt" not in result.stdout.str()
