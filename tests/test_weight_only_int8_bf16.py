"""``weight-only-int8-bf16``: the scheme that needs no compiler.

What is held: the layer computes ``bf16(bf16(x) @ (q * s)^T)`` with float32 sums on both
of its paths (torch's int8 op for few tokens, the float32 GEMM for prompts), and the
output layer's top logits are exact float32; shapes the op cannot take never reach it;
GPTQ lowers the output error it promises to lower and does not depend on how many
calibration passes the memory budget allows; calibration text is the end of the corpus,
never the part the similarity gate scores; the tiny GPT-2 (Conv1D) is fully covered and
reloads to identical logits; and the scheme runs where no C compiler exists.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_llmquant.errors import LlmqUsageError  # noqa: E402
from pytest_llmquant.layers import coverage, linear_like_layers  # noqa: E402
from pytest_llmquant.schemes import get_scheme, gptq  # noqa: E402
from pytest_llmquant.schemes import weight_only_int8_bf16 as wb  # noqa: E402

NAME = "weight-only-int8-bf16"
#: one bfloat16 rounding of the output (2**-9 relative) plus float32 summation slack
BF16_REL = 2.0**-8


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _layer(rows: int, cols: int, *, bias: bool = False, exact_top: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    linear = torch.nn.Linear(cols, rows, bias=bias).requires_grad_(False)
    return wb.Int8PackLinear.from_linear(linear, exact_top), linear


def _reference(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the layer stands for, in float64: bfloat16 input times ``q * s``, and the
    bias (added after the op's bfloat16 rounding, so it is not part of what is rounded)."""
    w = layer.weight_int8.double() * layer.scales.double().unsqueeze(1)
    product = x.to(torch.bfloat16).double() @ w.t()
    bias = torch.zeros(()) if layer.bias is None else layer.bias.double()
    return product, bias


def _within_one_rounding(out: torch.Tensor, product: torch.Tensor, bias) -> bool:
    err = (out.double() - product - bias).abs()
    return bool((err <= BF16_REL * product.abs() + 1e-6 * float(product.abs().max())).all())


# -- the layer ------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 3, wb._OP_MAX_TOKENS, wb._OP_MAX_TOKENS + 1, 70])
@pytest.mark.parametrize("rows,cols", [(64, 64), (7, 96), (130, 576), (5, 13), (3, 40)])
def test_layer_matches_its_reference_on_both_paths(tokens, rows, cols):
    """Few tokens take torch's int8 op (K a multiple of 16), many the float32 GEMM, and
    odd K (13, 40) always the GEMM: the op reads past short rows (it crashed at K = 13)."""
    layer, _ = _layer(rows, cols, bias=True)
    x = _rand(tokens, cols, seed=tokens)
    xb = x.to(torch.bfloat16)
    expect_op = tokens <= wb._OP_MAX_TOKENS and cols % 16 == 0
    assert layer._use_op(xb) is expect_op
    out = layer(x)
    assert out.dtype == torch.float32 and out.shape == (tokens, rows)
    assert _within_one_rounding(out, *_reference(layer, x))


def test_op_and_gemm_paths_agree_row_by_row():
    """A decode step and a prompt compute the same numbers for the same token, up to
    one bfloat16 rounding step (their float32 sums differ only in order)."""
    layer, _ = _layer(96, 576)
    x = _rand(40, 576, seed=3)
    few = layer(x[:4])  # the op
    many = layer(x)[:4]  # the GEMM
    assert layer._use_op(x[:4].to(torch.bfloat16)) and not layer._use_op(x.to(torch.bfloat16))
    assert torch.allclose(few, many, rtol=2 * BF16_REL, atol=0)  # at most one step apart


def test_exact_top_logits_are_float32_and_the_rest_bfloat16():
    layer, _ = _layer(500, 64, exact_top=8, seed=1)
    x = _rand(30, 64, seed=2)  # 30 tokens: the GEMM path
    out = layer(x)
    w = layer.weight_int8.double() * layer.scales.double().unsqueeze(1)
    exact = x.double() @ w.t()
    coarse = wb.Int8PackLinear(layer.weight_int8, layer.scales, None, 0)(x)
    top = coarse.topk(8, dim=-1).indices  # the ones recomputed
    assert torch.allclose(out.gather(-1, top).double(), exact.gather(-1, top), rtol=1e-5)
    assert torch.equal(out.argmax(-1), exact.argmax(-1))
    rest = torch.ones_like(out, dtype=torch.bool).scatter_(-1, top, False)
    assert torch.equal(out[rest], out[rest].to(torch.bfloat16).float())  # the op's rounding
    assert not torch.equal(out[~rest], out[~rest].to(torch.bfloat16).float())
    assert torch.equal(out[rest], coarse[rest])


def test_exact_top_logits_include_the_bias():
    layer, linear = _layer(300, 64, bias=True, exact_top=4, seed=4)
    x = _rand(3, 64, seed=5)  # 3 tokens: the op path
    out = layer(x)
    w = layer.weight_int8.double() * layer.scales.double().unsqueeze(1)
    exact = x.double() @ w.t() + linear.bias.double()
    coarse = wb.Int8PackLinear(layer.weight_int8, layer.scales, layer.bias, 0)(x)
    top = coarse.topk(4, dim=-1).indices
    assert torch.allclose(out.gather(-1, top).double(), exact.gather(-1, top), rtol=1e-5)


def test_layer_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="q \\(N, K\\) and scales \\(N,\\)"):
        wb.Int8PackLinear(torch.zeros(4, 16, dtype=torch.int8), torch.ones(3))


def test_dtype_casts_keep_bfloat16_scales_and_float32_bias():
    layer, _ = _layer(8, 64, bias=True)
    x = _rand(1, 64)
    expected = layer(x)
    layer.to(torch.float16)
    assert layer.scales.dtype == torch.bfloat16 and layer.bias is not None
    assert layer.bias.dtype == torch.float32 and layer.weight_int8.dtype == torch.int8
    assert torch.equal(layer(x), expected)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_row_scales_are_the_smallest_bfloat16_that_fits():
    w = _rand(50, 33, seed=5) * torch.logspace(-6, 3, 50).unsqueeze(1)
    w[7] = 0
    s = gptq.bf16_row_scales(w)
    exact = (w.abs().amax(1) / 127).double()
    assert torch.equal(s, s.to(torch.bfloat16).float())  # representable
    ok = exact > 0
    assert bool((s.double()[ok] >= exact[ok]).all())  # |w| / s never exceeds 127
    below = (s.to(torch.bfloat16).view(torch.int16) - 1).view(torch.bfloat16).double()
    assert bool((below[ok] < exact[ok]).all())  # and the next one down would not fit
    assert float(s[7]) > 0
    q = gptq.round_nearest(w, s)
    assert int(q.abs().max()) <= 127 and not bool(q[7].any())


# -- GPTQ -------------------------------------------------------------------------------------


def _problem(rows=40, cols=48, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, rows, cols, generator=g)
    mix = torch.randn(batch, cols, cols, generator=g) * 0.3 + torch.eye(cols)
    x = torch.randn(batch, 300, cols, generator=g) @ mix  # correlated inputs
    h = x.transpose(1, 2) @ x / 300
    return w, gptq.bf16_row_scales(w), h


def _output_error(w, q, s, h) -> float:
    e = (w - q.float() * s.unsqueeze(-1)).double()
    return float(((e @ h.double()) * e).sum())


def test_gptq_lowers_the_output_error_it_promises_to_lower():
    w, s, h = _problem()
    q = gptq.gptq_round(w, s, h)
    assert q.dtype == torch.int8 and q.shape == w.shape and int(q.abs().max()) <= 127
    for i in range(w.shape[0]):
        near = gptq.round_nearest(w[i], s[i])
        assert _output_error(w[i], q[i], s[i], h[i]) < 0.9 * _output_error(w[i], near, s[i], h[i])


def test_gptq_batch_is_the_same_as_one_matrix_at_a_time():
    w, s, h = _problem()
    both = gptq.gptq_round(w, s, h)
    for i in range(w.shape[0]):
        assert torch.equal(both[i], gptq.gptq_round(w[i : i + 1], s[i : i + 1], h[i : i + 1])[0])


def test_gptq_rounds_an_unseen_input_to_nearest():
    w, s, h = _problem(batch=1)
    h[0, 5, :] = 0
    h[0, :, 5] = 0
    q = gptq.gptq_round(w, s, h)
    assert torch.equal(q[0, :, 5], gptq.round_nearest(w[0, :, 5:6], s[0])[:, 0])


def test_gptq_rejects_mismatched_shapes():
    w, s, h = _problem()
    with pytest.raises(ValueError, match="gptq_round needs"):
        gptq.gptq_round(w, s[:, :-1], h)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def test_layers_that_read_one_input_share_one_hessian():
    model = _tiny_llama()
    ids = [torch.arange(40) % 96, (torch.arange(30) * 7) % 96]
    stats = gptq.collect_input_stats(model, ids)
    leader = stats.leader
    assert leader["model.layers.0.self_attn.k_proj"] == "model.layers.0.self_attn.q_proj"
    assert leader["model.layers.0.self_attn.v_proj"] == "model.layers.0.self_attn.q_proj"
    assert leader["model.layers.1.mlp.up_proj"] == "model.layers.1.mlp.gate_proj"
    assert leader["model.layers.1.mlp.down_proj"] == "model.layers.1.mlp.down_proj"
    assert set(stats.hessian) == set(leader.values()) and stats.tokens == 70
    # H is the mean of x x^T of what the layer really reads
    seen = []
    o_proj = model.model.layers[0].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 64)))
    with torch.inference_mode():
        for i in ids:
            model(input_ids=i.reshape(1, -1), use_cache=False)
    handle.remove()
    x = torch.cat(seen)
    assert torch.allclose(
        stats.hessian["model.layers.0.self_attn.o_proj"], x.T @ x / 70, rtol=1e-4, atol=1e-6
    )


def test_gptq_weights_do_not_depend_on_the_number_of_calibration_passes():
    """A small memory budget splits the statistics into several passes over the text;
    every pass sees the FP32 model, so the int8 weights are the same."""
    model = _tiny_llama()
    ids = [torch.arange(64) % 96]
    one = get_scheme(NAME, stats_mib=64)
    many = get_scheme(NAME, stats_mib=0.02)  # 20 KiB: one layer per pass
    widths = {n: m.weight.shape[1] for n, m in linear_like_layers(model).items()}
    assert len(wb._passes(widths, one.stats_bytes)) == 1
    assert len(wb._passes(widths, many.stats_bytes)) == len(widths)
    out = []
    for scheme in (one, many):
        scheme.prepare(model, ids)
        out.append(scheme.quantize(copy.deepcopy(model)))
    for name in widths:
        a, b = out[0].get_submodule(name), out[1].get_submodule(name)
        assert torch.equal(a.weight_int8, b.weight_int8) and torch.equal(a.scales, b.scales)


# -- calibration ------------------------------------------------------------------------------


def test_calibration_is_the_end_of_the_corpus(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_llmquant.evaltext import default_corpus

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    chunks = wb.calibration_ids(model, 600)
    ids = AutoTokenizer.from_pretrained(tiny_gpt2_dir)(default_corpus()).input_ids
    assert torch.cat(chunks).tolist() == ids[-600:]
    assert max(c.numel() for c in chunks) <= model.config.n_positions
    # the similarity gate scores from the start: 2048 tokens plus a window are far away
    assert len(ids) - 600 > 2048 + 512


def test_without_a_tokenizer_calibration_warns_and_uses_fixed_ids(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    model.name_or_path = model.config._name_or_path = ""
    with pytest.warns(RuntimeWarning, match="pseudo-random token ids"):
        first = wb.calibration_ids(model, 100)
    with pytest.warns(RuntimeWarning, match="pseudo-random token ids"):
        assert torch.equal(torch.cat(first), torch.cat(wb.calibration_ids(model, 100)))


def test_calibration_outside_the_vocabulary_is_a_usage_error(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    scheme = get_scheme(NAME)
    scheme.prepare(model, [torch.tensor([1, 2, 10**6])])
    with pytest.raises(LlmqUsageError, match="outside this model's vocabulary"):
        scheme.quantize(model)


def test_options_are_recorded_and_validated():
    scheme = get_scheme(NAME, rounding="nearest", exact_top=4)
    assert scheme.describe()["config"] == {
        "rounding": "nearest",
        "calibration_tokens": 1024,
        "exact_top": 4,
        "stats_mib": 512,
        "skip": [],
    }
    for bad, message in (
        ({"rounding": "stochastic"}, "rounding must be 'gptq' or 'nearest', not 'stochastic'"),
        ({"exact_top": -1}, "calibration_tokens must be >= 16, exact_top >= 0 and stats_mib > 0; got 1024, -1, 512"),
        ({"calibration_tokens": 3}, "calibration_tokens must be >= 16, exact_top >= 0 and stats_mib > 0; got 3, 32, 512"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            get_scheme(NAME, **bad)


# -- the scheme on the tiny GPT-2 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float32).eval()
    int8 = get_scheme(NAME).quantize(copy.deepcopy(model)).eval()
    return model, int8


def test_every_conv1d_and_linear_is_quantized_and_only_lm_head_is_refined(tiny_pair):
    model, int8 = tiny_pair
    cov = coverage(model, int8)
    assert cov.complete, str(cov)
    assert any(n.endswith("c_attn") for n in cov.quantized) and "lm_head" in cov.quantized
    refined = [n for n, m in int8.named_modules() if getattr(m, "exact_top", 0)]
    assert refined == ["lm_head"]


def test_save_and_load_give_identical_logits_on_both_paths(tiny_pair, tmp_path: Path):
    _, int8 = tiny_pair
    scheme = get_scheme(NAME)
    scheme.save(int8, tmp_path)
    loaded = get_scheme(NAME).load(tmp_path)
    prompt = torch.arange(60).reshape(2, 30) % int8.config.vocab_size  # > _OP_MAX_TOKENS
    with torch.inference_mode():
        for ids in (prompt, prompt[:, :1]):
            assert torch.equal(int8(input_ids=ids).logits, loaded(input_ids=ids).logits)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        assert fh.get_tensor("lm_head.scales").dtype == torch.bfloat16
        assert "lm_head.weight" not in set(fh.keys())


def test_scheme_runs_where_no_compiler_exists(tiny_gpt2_dir: Path, tmp_path: Path):
    """No gcc on PATH, CC set to a failing command, the C kernel switched off: this scheme
    neither tries to build nor imports the C-kernel module."""
    code = (
        "import sys, copy, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "from pytest_llmquant.schemes import get_scheme\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tiny_gpt2_dir)!r}).eval()\n"
        f"q = get_scheme({NAME!r}).quantize(copy.deepcopy(m)).eval()\n"
        "with torch.inference_mode():\n"
        "    q(torch.arange(8).reshape(1, 8))\n"
        "print(sorted(n for n in sys.modules if n.startswith('pytest_llmquant.schemes.')))\n"
    )
    env = dict(os.environ, CC="false", LLMQ_INT8_KERNEL="0", XDG_CACHE_HOME=str(tmp_path))
    env["PATH"] = os.path.dirname(sys.executable)  # the venv's python, and no gcc
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.strip().splitlines()[-1]
    assert "weight_only_int8_bf16" in loaded and "weight_only_int8'" not in loaded
    assert not list(tmp_path.rglob("*.so"))


def test_quantize_without_the_int8_op_warns_and_computes_the_same(monkeypatch, tiny_pair):
    """Older torch without ``_weight_int8pack_mm``: every call takes the GEMM path."""
    _, int8 = tiny_pair
    ids = torch.arange(5).reshape(1, 5)
    with torch.inference_mode():
        fast = int8(input_ids=ids).logits
    monkeypatch.setattr(wb, "_op_available", lambda: False)
    with torch.inference_mode():
        slow = int8(input_ids=ids).logits
    assert torch.allclose(fast, slow, atol=1e-3)
    with pytest.warns(RuntimeWarning, match="no torch._weight_int8pack_mm"):
        get_scheme(NAME, rounding="nearest").quantize(copy.deepcopy(tiny_pair[0]))
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        get_scheme(NAME, rounding="nearest").quantize(copy.deepcopy(tiny_pair[0]))
