"""Every registered INT8 scheme, on the tiny GPT-2 (Conv1D layers, tied lm_head).

What is held for each scheme: save -> load gives bit-identical logits without the FP32
weights; every Conv1D and Linear is quantized; logits stay close to FP32; the FP32
model is left untouched. The C kernels are checked against the pure-torch references
of ``int8_math`` on random matrices (odd shapes, batch 1 and more, prompt shapes), and
the pure-torch fallback is checked to warn once and compute the same numbers.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_llmquant.layers import coverage, linear_like_layers  # noqa: E402
from pytest_llmquant.schemes import REGISTRY, get_scheme, kernels  # noqa: E402
from pytest_llmquant.schemes import weight_only_int8 as wo  # noqa: E402
from pytest_llmquant.schemes.int8_math import (  # noqa: E402
    dequantize,
    linear_reference,
    linear_w8a8_reference,
    pack_rows,
    packable,
    quantize_per_channel,
    unpack_rows,
)
from pytest_llmquant.schemes.w8a8 import SmoothQuantW8A8, W8A8Linear  # noqa: E402

SCHEMES = sorted(REGISTRY)

#: mean KLD of INT8 vs FP32 next-token distributions on the tiny random GPT-2 (64 wide,
#: 2 layers). Its logits are nearly flat, so these are loose sanity bounds (a broken
#: layer gives ~0.1 or more), not the SmolLM2 quality bounds (``scheme.kld_bound``).
#: Measured: weight-only-int8 ~2e-7, smoothquant-w8a8 ~5e-6, dynamic-int8 ~1e-4.
TINY_KLD_BOUND = {"dynamic-int8": 0.01}
TINY_KLD_DEFAULT = 1e-3


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float32).eval()
    ids = torch.randint(
        0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    return model, ids


@pytest.fixture(scope="module")
def quantized(tiny):
    """Each scheme's INT8 copy of the tiny GPT-2, built once, and the FP32 state before."""
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    for name in SCHEMES:
        scheme = get_scheme(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scheme.prepare(model)
            out[name] = (scheme, scheme.quantize(copy.deepcopy(model)).eval())
    return out, before


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def kld(p_logits, q_logits) -> float:
    logp = torch.log_softmax(p_logits.double(), -1)
    logq = torch.log_softmax(q_logits.double(), -1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


# -- every scheme on the tiny GPT-2 ---------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_save_load_gives_identical_logits(name, tiny, quantized, tmp_path):
    model, ids = tiny
    scheme, int8 = quantized[0][name]
    scheme.save(int8, tmp_path)
    loaded = get_scheme(name).load(tmp_path)
    assert torch.equal(logits(int8, ids), logits(loaded, ids))
    assert torch.equal(logits(int8, ids[:, :1]), logits(loaded, ids[:, :1]))  # decode path
    # the file holds no float weight of a quantized layer: reloading needs no FP32 copy
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    for layer in linear_like_layers(model):
        assert f"{layer}.weight" not in keys


@pytest.mark.parametrize("name", SCHEMES)
def test_every_conv1d_and_linear_is_quantized(name, tiny, quantized):
    model, _ = tiny
    cov = coverage(model, quantized[0][name][1])
    assert cov.complete, str(cov)
    assert any(n.endswith("c_attn") for n in cov.quantized)  # Conv1D
    assert "lm_head" in cov.quantized  # Linear


@pytest.mark.parametrize("name", SCHEMES)
def test_int8_logits_close_to_fp32(name, tiny, quantized):
    model, ids = tiny
    int8 = quantized[0][name][1]
    value = kld(logits(model, ids), logits(int8, ids))
    assert value <= TINY_KLD_BOUND.get(name, TINY_KLD_DEFAULT)


@pytest.mark.parametrize("name", [n for n in SCHEMES if n != "dynamic-int8"])
def test_decode_step_agrees_with_prompt(name, tiny, quantized):
    """One token at a time (the kernels' decode path) gives what the whole prompt gives
    (the prompt path dequantizes and uses the float32 GEMM). Not for dynamic-int8: its
    per-tensor activation scale depends on every token in the call."""
    _, ids = tiny
    int8 = quantized[0][name][1]
    with torch.inference_mode():
        out = int8(input_ids=ids[:, :4], use_cache=True)
        step = int8(input_ids=ids[:, 4:5], cache=out.past_key_values).logits
    assert torch.allclose(step[:, -1], logits(int8, ids[:, :5])[:, -1], atol=1e-4)


@pytest.mark.parametrize("name", SCHEMES)
def test_fp32_model_is_unchanged_and_not_shared(name, tiny, quantized):
    model, _ = tiny
    (_, int8), before = quantized[0][name], quantized[1]
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    def ptrs(m):
        return {t.data_ptr() for t in m.state_dict().values() if isinstance(t, torch.Tensor)}

    assert not ptrs(model) & ptrs(int8)


@pytest.mark.parametrize("name", ["weight-only-int8", "smoothquant-w8a8"])
def test_quantize_is_deterministic_and_stateless(name, tiny):
    model, ids = tiny
    scheme = get_scheme(name)
    a = scheme.quantize(copy.deepcopy(model))
    b = scheme.quantize(copy.deepcopy(model))  # same object, second model
    assert torch.equal(logits(a, ids), logits(b, ids))


def test_w8a8_recalibrates_for_another_architecture(tiny):
    """A scheme prepared on one model must not smooth another with those statistics;
    without a tokenizer next to the model it calibrates on pseudo-random ids, and says so."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _ = tiny
    torch.manual_seed(0)
    wider = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=50)
    ).eval()
    scheme = SmoothQuantW8A8(calibration_tokens=128)
    scheme.prepare(model)
    assert not scheme._calibrated_for(wider)
    with pytest.warns(RuntimeWarning, match="pseudo-random token ids"):
        int8 = scheme.quantize(wider)
    assert scheme._absmax is not None
    assert {v.numel() for v in scheme._absmax.values()} == {32, 128}  # wider's inputs
    assert coverage(GPT2LMHeadModel(wider.config), int8).complete


def test_scheme_options_are_recorded_and_validated():
    scheme = get_scheme("weight-only-int8", group_size=64, skip=["lm_head"])
    assert scheme.describe()["config"] == {"group_size": 64, "skip": ["lm_head"]}
    assert get_scheme("weight-only-int8", group_size=0).group_size is None
    with pytest.raises(
        ValueError, match=r"^group_size must be >= 1 \(or 0/None for per channel\), not -3$"
    ):
        get_scheme("weight-only-int8", group_size=-3)
    with pytest.raises(
        ValueError, match=r"^alpha must be in \[0, 1\] \(or None: no smoothing\), not 1\.5$"
    ):
        get_scheme("smoothquant-w8a8", alpha=1.5)


def test_skip_keeps_a_layer_in_float_and_coverage_says_so(tiny):
    model, _ = tiny
    int8 = get_scheme("weight-only-int8", skip=["lm_head"]).quantize(copy.deepcopy(model))
    assert coverage(model, int8).kept_float == ["lm_head"]


# -- kernels against the references ---------------------------------------------------------

SHAPES = [  # (tokens, rows, cols, group_size): odd sizes take the row-major kernel
    (1, 64, 64, 32),
    (1, 7, 13, None),
    (3, 9, 100, 34),
    (1, 1537, 576, 32),
    (5, 96, 576, 64),
    (2, 33, 96, None),
    (8, 17, 41, 5),
    (1, 1, 1, None),
    (4, 130, 256, 128),
    (1, 6, 64, 1),
]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def lib():
    """The kernel, where it should build: there a build failure errors the test instead
    of skipping it (``kernel_unavailable_reason`` says where; see test_kernels.py)."""
    reason = kernels.kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(f"C kernel not expected to build here: {reason}")
    return kernels.load_library()


@pytest.fixture
def restore_kernel():
    """After a test that changes how the kernel loads, forget what it loaded (and warned):
    ``set_cache_dir`` resets both, and the next use loads the kernel as before."""
    before = kernels.configured_cache_dir()
    yield
    kernels.set_cache_dir(before)


@pytest.mark.parametrize("tokens,rows,cols,group", SHAPES)
def test_weight_only_kernel_matches_reference(lib, tokens, rows, cols, group):
    linear = torch.nn.Linear(cols, rows).requires_grad_(False)
    layer = wo.WeightOnlyInt8Linear.from_linear(linear, group)
    assert layer.is_packed == packable(rows, cols, group)
    q, scales = layer.int8_state()
    for lead in [(tokens,), (2, tokens), (1, 40)]:  # 1 x 40 tokens: the prompt path
        x = _rand(*lead, cols, seed=tokens)
        ref = linear_reference(x, q, scales, group, linear.bias)
        out = layer(x)
        assert out.shape == ref.shape
        tol = 1e-5 * (1 + float(ref.abs().max()))
        assert float((out - ref).abs().max()) <= tol


@pytest.mark.parametrize("tokens,rows,cols,group", SHAPES + [(70, 40, 96, None), (130, 8, 64, 32)])
@pytest.mark.parametrize("smooth", [False, True])
def test_w8a8_kernel_matches_reference(lib, tokens, rows, cols, group, smooth):
    linear = torch.nn.Linear(cols, rows).requires_grad_(False)
    absmax = (torch.rand(cols) * 5 + 0.1) if smooth else None
    layer = W8A8Linear.from_linear(linear, absmax, 0.5 if smooth else None, group)
    q, scales = layer.int8_state()
    x = _rand(tokens, cols, seed=cols)
    x[:, 0] *= 30  # an outlier channel
    ref = linear_w8a8_reference(x, q, scales, linear.bias, group, layer.inv_smooth)
    out = layer(x)
    # integer dot products are exact; only the float32 scaling and sums differ
    assert float((out - ref).abs().max()) <= 1e-5 * (1 + float(ref.abs().max()))


@pytest.mark.parametrize(
    "rows,cols,group",
    [(1, 32, 32), (5, 64, 32), (9, 96, None), (1536, 576, 32), (3, 256, 128), (4, 64, 64)],
)
def test_pack_unpack_round_trip_and_layout(rows, cols, group):
    w = _rand(rows, cols, seed=rows)
    q, scales = quantize_per_channel(w, group)
    packed = pack_rows(q, scales, group)
    q2, s2 = unpack_rows(packed, rows, cols, group)
    assert torch.equal(q, q2) and torch.equal(scales, s2)
    # the layout, element by element: block b, group g -> 4 scales, then chunks of 4 x 32
    g = group or cols
    per_group = 16 + 128 * (g // 32)
    for row, col in [(0, 0), (rows - 1, cols - 1), (rows // 2, cols // 3)]:
        b, r, grp = row // 4, row % 4, col // g
        chunk, k = (col % g) // 32, col % 32
        base = (b * (cols // g) + grp) * per_group
        assert int(packed[base + 16 + 128 * chunk + 32 * r + k].view(torch.int8)) == int(
            q[row, col]
        )
        scale_bytes = packed[base + 4 * r : base + 4 * r + 4].contiguous().view(torch.float32)
        assert float(scale_bytes) == float(scales[row, grp])
    with pytest.raises(
        ValueError,
        match=rf"^shape \({rows}, {cols - 1}\) with group_size={group} cannot be packed$",
    ):
        pack_rows(q[:, : cols - 1], scales, group)


def test_unpack_f32_kernel_matches_dequantize(lib):
    q, scales = quantize_per_channel(_rand(37, 192, seed=3), 64)
    layer = wo.WeightOnlyInt8Linear(q, scales, None, 64)
    assert torch.equal(layer.dequantized_weight(), dequantize(q, scales, 64))


def _awkward_weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Random rows plus the cases a quantizer gets wrong: an all-zero row, a row whose
    scale rounds up to float32 (so it must step back toward zero), ties at half a step,
    values near float32's max and its smallest normals."""
    w = _rand(rows, cols, seed=seed) * 3
    w[0] = 0
    if rows > 1:
        w[1] = torch.linspace(-1, 1, cols) * (1 / 3)
    if rows > 2:
        w[2, :] = 0.5
        w[2, 0] = 127.0  # scale 1: 0.5 is a tie, rounded to even (0)
    if rows > 3:
        w[3] = torch.finfo(torch.float32).max * torch.linspace(-1, 1, cols)
    if rows > 4:
        w[4] = torch.finfo(torch.float32).tiny * torch.arange(cols, dtype=torch.float32)
    return w


@pytest.mark.parametrize(
    "rows,cols,group",
    [(1, 32, 32), (5, 64, 32), (9, 96, None), (7, 100, 32), (6, 33, 8), (37, 192, 64),
     (1536, 576, 32), (3, 5, None)],
)  # fmt: skip
def test_quantize_kernel_gives_the_reference_bit_for_bit(lib, rows, cols, group):
    """The C quantizer (what building weight-only-int8 calls) and the float64 torch
    reference agree on every int8 value and every scale, short last blocks included."""
    from pytest_llmquant.schemes.kernels.quantize import quantize_rows

    w = _awkward_weight(rows, cols, seed=rows * cols)
    q_ref, s_ref = quantize_per_channel(w, group)
    q, s = quantize_rows(w, group)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.view(torch.int32), s_ref.view(torch.int32))  # the bits, -0.0 too


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_quantize_kernel_refuses_a_non_finite_weight_as_the_reference_does(lib, bad):
    from pytest_llmquant.schemes.kernels.quantize import quantize_rows

    w = _rand(9, 64, seed=2)
    w[8, 63] = bad  # the last element: every row and block is looked at
    for quantize in (quantize_rows, quantize_per_channel):
        with pytest.raises(ValueError, match=r"non-finite weight \(inf or nan\)$"):
            quantize(w, 32)


def test_a_layer_built_with_the_kernel_is_the_layer_the_reference_builds(lib, monkeypatch):
    linear = torch.nn.Linear(96, 44)
    with_kernel = wo.WeightOnlyInt8Linear.from_linear(linear, 32)
    monkeypatch.setattr(kernels, "available", lambda: False)
    without = wo.WeightOnlyInt8Linear.from_linear(linear, 32)
    assert torch.equal(with_kernel.int8_state()[0], without.int8_state()[0])
    assert torch.equal(with_kernel.int8_state()[1], without.int8_state()[1])


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_a_big_layer_computes_a_prompt_a_slab_of_rows_at_a_time(monkeypatch, lib, bias):
    """A prompt through a big layer never dequantizes the whole weight at once, and the
    slabs (the last one short, rows not a multiple of 4) give the whole-weight GEMM's
    numbers up to float32 summation order."""
    linear = torch.nn.Linear(64, 37, bias=bias)
    layer = wo.WeightOnlyInt8Linear.from_linear(linear, 32)
    x = _rand(12, 64, seed=5)
    whole = torch.nn.functional.linear(x, layer.dequantized_weight(), layer.bias)
    seen: list[int] = []
    unpack = kernels.unpack_f32

    def spy(packed, out, n, k, block):
        seen.append(n)
        unpack(packed, out, n, k, block)

    monkeypatch.setattr("pytest_llmquant.schemes.weight_only_linear._SLAB_ELEMENTS", 8 * 64)
    monkeypatch.setattr(kernels, "unpack_f32", spy)
    got = layer(x)
    assert seen == [8, 8, 8, 8, 5]
    torch.testing.assert_close(got, whole, rtol=1e-6, atol=1e-6)


def test_fallback_warns_once_and_computes_the_same(monkeypatch, lib, restore_kernel):
    linear = torch.nn.Linear(64, 24)
    layer = wo.WeightOnlyInt8Linear.from_linear(linear, 32)
    w8a8 = W8A8Linear.from_linear(linear, torch.rand(64) + 0.5, 0.5, None)
    x = _rand(1, 64)
    fast, fast8 = layer(x), w8a8(x)
    monkeypatch.setenv("LLMQ_INT8_KERNEL", "0")
    kernels.set_cache_dir(kernels.configured_cache_dir())  # forget the loaded library
    with pytest.warns(
        RuntimeWarning, match=r"int8 C kernel unavailable \(disabled by LLMQ_INT8_KERNEL=0\)"
    ):
        slow = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per process
        slow8 = w8a8(x)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast8, slow8, atol=1e-5)
    assert get_scheme("weight-only-int8").describe()["kernel"] == (
        "torch dequantize fallback (disabled by LLMQ_INT8_KERNEL=0)"
    )


def test_failed_build_falls_back(monkeypatch, tmp_path, lib, restore_kernel):
    monkeypatch.setenv("CC", "gcc -fno-such-flag")  # runs, but every compile fails
    kernels.set_cache_dir(str(tmp_path))
    with pytest.warns(
        RuntimeWarning, match=r"int8 C kernel unavailable \(gcc -fno-such-flag failed: "
    ):
        assert not kernels.available()
    layer = wo.WeightOnlyInt8Linear.from_linear(torch.nn.Linear(64, 8), 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already
        assert layer(_rand(1, 64)).shape == (1, 8)  # the torch path
    assert not list(tmp_path.rglob("*.so"))  # no half-built library left behind


def test_layers_keep_float32_scales_through_dtype_casts(lib):
    linear = torch.nn.Linear(64, 8).requires_grad_(False)
    x = _rand(1, 64)
    for layer in (
        wo.WeightOnlyInt8Linear.from_linear(linear, 32),
        W8A8Linear.from_linear(linear, torch.rand(64) + 0.5, 0.5, None),
    ):
        expected = layer(x)
        layer.to(torch.bfloat16)
        assert layer.bias is not None and layer.bias.dtype == torch.float32
        assert torch.equal(layer(x), expected)
        assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
