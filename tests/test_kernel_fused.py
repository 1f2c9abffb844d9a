"""The fused decode calls of ``weight-only-int8`` (q/k/v and gate/up in one kernel call)
against the pure-torch reference, on odd shapes, and the rules of when a fused output
may be reused: the same input object, each output once, the layers' buffers unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_llmquant.schemes import get_scheme, kernels
from pytest_llmquant.schemes.int8_math import linear_reference
from pytest_llmquant.schemes.kernels.calls import PackedCall
from pytest_llmquant.schemes.weight_only_fused import fuse_siblings
from pytest_llmquant.schemes.weight_only_linear import WeightOnlyInt8Linear


@pytest.fixture(autouse=True)
def lib():
    reason = kernels.kernel_unavailable_reason()
    if reason is not None:
        pytest.skip(f"C kernel not expected to build here: {reason}")
    return kernels.load_library()


class Attn(nn.Module):
    """The call pattern of a transformers attention block: three siblings, one input."""

    def __init__(self, k: int, rows: tuple[int, int, int], bias: bool) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(k, n, bias=bias) for n in rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


class Mlp(nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(k, n, bias=False), nn.Linear(k, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_proj(x) * self.up_proj(x)


def _reference(layer: WeightOnlyInt8Linear, x: torch.Tensor) -> torch.Tensor:
    q, scales = layer.int8_state()
    return linear_reference(x, q, scales, layer.group_size, layer.bias)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.is_contiguous()
    assert float((out - ref).abs().max()) <= 1e-5 * (1 + float(ref.abs().max()))


def _quantized(module: nn.Module, group: int) -> nn.Module:
    return get_scheme("weight-only-int8", group_size=group).quantize(copy.deepcopy(module))


@pytest.mark.parametrize(
    "k,rows,group,bias",
    [(96, (12, 8, 5), 32, True), (576, (576, 192, 192), 32, False), (64, (4, 4, 1), 64, True)],
)
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_fused_qkv_matches_reference(k, rows, group, bias, tokens):
    attn = _quantized(Attn(k, rows, bias).requires_grad_(False), group)
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    assert layers[0]._group is not None and all(la._group is layers[0]._group for la in layers)
    x = torch.randn(2, tokens, k)
    outs = [layer(x) for layer in layers]
    for layer, out in zip(layers, outs, strict=True):
        _close(out, _reference(layer, x))


def test_fused_gate_up_matches_reference_and_the_threads_do_not_change_it():
    mlp = _quantized(Mlp(576, 1536), 32)
    x = torch.randn(1, 1, 576)
    before = torch.get_num_threads()
    try:
        got = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got[threads] = (mlp.gate_proj(x), mlp.up_proj(x))
    finally:
        torch.set_num_threads(before)
    for layer, out in zip((mlp.gate_proj, mlp.up_proj), got[1], strict=True):
        _close(out, _reference(layer, x))
    # each output row is one thread's sum in a fixed order: bit-identical at any count
    assert all(torch.equal(a, b) for a, b in zip(got[1], got[2], strict=True))


def test_rows_not_a_multiple_of_4_are_not_fused_and_still_exact():
    attn = _quantized(Attn(64, (6, 8, 8), False), 32)
    assert attn.q_proj._group is None  # 6 rows: the concatenation would not be the layout
    x = torch.randn(1, 64)
    for layer in (attn.q_proj, attn.k_proj, attn.v_proj):
        _close(layer(x), _reference(layer, x))


def test_a_cached_output_is_only_for_the_same_tensor_and_only_once():
    attn = _quantized(Attn(64, (8, 4, 4), False), 32)
    x, other = torch.randn(1, 64), torch.randn(1, 64)
    q1 = attn.q_proj(x)
    k_other = attn.k_proj(other)  # another input: computed, not the cached k of x
    _close(k_other, _reference(attn.k_proj, other))
    q2 = attn.q_proj(x)  # twice: computed again, same numbers
    assert torch.equal(q1, q2)
    _close(attn.v_proj(x), _reference(attn.v_proj, x))


def test_a_replaced_buffer_dissolves_the_group():
    attn = _quantized(Attn(64, (8, 4, 4), True), 32)
    group = attn.q_proj._group
    attn.k_proj.bias = torch.randn(4)  # a new tensor the fused call does not hold
    x = torch.randn(1, 64)
    for layer in (attn.q_proj, attn.k_proj, attn.v_proj):
        _close(layer(x), _reference(layer, x))
    assert attn.q_proj._group is not group


def test_a_deep_copy_computes_on_its_own_tensors():
    attn = _quantized(Attn(64, (8, 4, 4), True), 32)
    twin = copy.deepcopy(attn)
    with torch.no_grad():
        twin.q_proj.bias += 1.0  # in place on the copy's own bias
    x = torch.randn(1, 64)
    assert torch.allclose(twin.q_proj(x), attn.q_proj(x) + 1.0, atol=1e-5)


def test_fuse_siblings_counts_groups_and_keeps_saved_state_per_layer():
    model = nn.Sequential(Attn(64, (8, 4, 4), False), Mlp(64, 12))
    quantized = _quantized(model, 32)
    assert fuse_siblings(quantized) == 2  # fusing again re-fuses the same two groups
    q, scales = quantized[0].q_proj.int8_state()
    assert q.shape == (8, 64) and scales.shape == (8, 2)


def test_packed_call_refuses_what_the_c_code_could_not_read_safely():
    layer = WeightOnlyInt8Linear.from_linear(nn.Linear(64, 8), 32)
    packed = layer.packed
    assert packed is not None
    with pytest.raises(ValueError, match="bytes"):
        PackedCall(packed[:-1], 64, 32, [8], [None])
    with pytest.raises(ValueError, match="multiple of 4"):
        PackedCall(packed, 64, 32, [3, 5], [None, None])
    with pytest.raises(ValueError, match="bias"):
        PackedCall(packed, 64, 32, [8], [torch.zeros(7)])
    call = PackedCall(packed, 64, 32, [8], [None])
    for bad in (torch.randn(1, 63), torch.randn(1, 64).half(), torch.randn(64, 2).t()):
        with pytest.raises(ValueError, match="contiguous float32"):
            call(bad)


@settings(max_examples=25, deadline=None)
@given(
    k_chunks=st.integers(1, 6),
    rows=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    tokens=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_packed_call_parts_match_reference(k_chunks, rows, tokens, seed):
    """Any split into parts (all but the last a multiple of 4 rows) computes each part
    as its own layer would."""
    k = 32 * k_chunks
    widths = [4 * r for r in rows[:-1]] + [rows[-1]]
    gen = torch.Generator().manual_seed(seed)
    layers = [
        WeightOnlyInt8Linear.from_linear(nn.Linear(k, n).requires_grad_(False), 32) for n in widths
    ]
    packed = torch.cat([la.packed for la in layers if la.packed is not None])
    call = PackedCall(packed, k, 32, widths, [la.bias for la in layers])
    x = torch.randn(tokens, k, generator=gen)
    for layer, out in zip(layers, call(x), strict=True):
        _close(out, _reference(layer, x))


def test_packed_call_decode_takes_only_a_decode_input_and_gives_the_calls_numbers():
    """``decode`` is the layers' per-token path: None (the layer takes its general path)
    for anything the kernel does not run, the exact numbers of a checked call otherwise."""
    layers = [WeightOnlyInt8Linear.from_linear(nn.Linear(64, n), 32) for n in (8, 4)]
    packed = torch.cat([la.packed for la in layers if la.packed is not None])
    call = PackedCall(packed, 64, 32, [8, 4], [la.bias for la in layers], max_tokens=3)
    not_decode = (
        torch.randn(1, 63),  # the wrong width
        torch.randn(1, 64).half(),  # another dtype
        torch.randn(64, 2).t(),  # not contiguous
        torch.randn(0, 64),  # no token
        torch.randn(4, 64),  # more tokens than max_tokens
    )
    for x in not_decode:
        assert call.decode(x) is None, tuple(x.shape)
    for x in (torch.randn(64), torch.randn(1, 1, 64), torch.randn(3, 64)):
        outs = call.decode(x)
        assert outs is not None
        for out, checked in zip(outs, call(x), strict=True):
            assert torch.equal(out, checked)


@pytest.mark.parametrize("lead", [(), (1,), (1, 1)], ids=["1-d", "2-d", "3-d"])
def test_one_token_parts_are_contiguous_in_the_inputs_shape(lead):
    """One token's parts are columns of one (..., total) output: each must still be a
    contiguous (..., rows[p]) tensor, as a layer of its own returns (models ``.view`` them)."""
    widths = (8, 4, 5)
    layers = [WeightOnlyInt8Linear.from_linear(nn.Linear(96, n), 32) for n in widths]
    packed = torch.cat([la.packed for la in layers if la.packed is not None])
    call = PackedCall(packed, 96, 32, widths, [la.bias for la in layers])
    x = torch.randn(*lead, 96)
    for layer, n, out in zip(layers, widths, call(x), strict=True):
        assert out.shape == (*lead, n) and out.is_contiguous()
        _close(out, _reference(layer, x))
