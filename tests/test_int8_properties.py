"""Property tests of the int8 reference math (``pytest_llmquant.schemes.int8_math``).

The schemes' fast kernels are trusted because they match these few lines, so the
lines themselves are held to their contract on weights nobody would type by hand:
every magnitude float32 has (subnormal to near ``finfo.max``), all-zero rows, single
large outliers in a row of small values, empty matrices, and every group size.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_llmquant.schemes import int8_math

quantize_per_channel = int8_math.quantize_per_channel
dequantize = int8_math.dequantize

F32 = np.finfo(np.float32)
#: float32 rounds ``q * scale`` once in ``dequantize``: a relative error of at most
#: 2**-24 of ``|q * scale| <= 127.5 * scale``, i.e. ``127.5 * 2**-24 * scale`` absolute,
#: which is ``scale / 2 * 1.52e-5``. 2**-15 (3.05e-5) covers it with room to spare and is
#: still far too small to hide a real rounding bug (an off-by-one q costs a whole scale).
REL_EPS = 2.0**-15

PROPS = settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

#: value bounds from subnormal to float32's max; each exactly representable in float32
magnitudes = st.sampled_from(
    [float(np.float32(m)) for m in (1e-40, 1e-30, 1e-3, 1.0, 1e3, 1e30)] + [float(F32.max)]
)
group_sizes = st.one_of(st.none(), st.integers(1, 40))


@st.composite
def weights(draw: Any, min_side: int = 0, max_rows: int = 12, max_cols: int = 48) -> np.ndarray:
    """A float32 (rows, cols) matrix with some all-zero rows and some large outliers."""
    rows = draw(st.integers(min_side, max_rows), label="rows")
    cols = draw(st.integers(min_side, max_cols), label="cols")
    bound = draw(magnitudes, label="magnitude")
    elements = st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False)
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=elements), label="w").copy()
    if rows and cols:
        zero_rows = draw(st.lists(st.integers(0, rows - 1), max_size=rows), label="zero rows")
        w[zero_rows, :] = 0.0
        n_out = draw(st.integers(0, 3), label="outliers")
        for _ in range(n_out):
            r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
            w[r, c] = draw(st.sampled_from([1e4, -1e4, 1e8, -3e38, F32.max]), label="outlier")
    return w


def per_element(scales: np.ndarray, cols: int, group_size: int | None) -> np.ndarray:
    """Each element's scale, shape (rows, cols), from the (rows, n_groups) scales."""
    g = cols if group_size is None else group_size
    return np.repeat(scales, max(g, 1), axis=1)[:, :cols]


def run(w: np.ndarray, group_size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, scales = quantize_per_channel(torch.from_numpy(w), group_size)
    back = dequantize(q, scales, group_size)
    assert q.dtype == torch.int8 and tuple(q.shape) == w.shape
    assert scales.dtype == torch.float32 and back.dtype == torch.float32
    assert tuple(back.shape) == w.shape
    assert scales.shape[0] == w.shape[0]
    return q.numpy(), scales.numpy(), back.numpy()


@PROPS
@given(w=weights(), group_size=group_sizes)
def test_quantize_contract(w: np.ndarray, group_size: int | None) -> None:
    """One draw, every guarantee (drawing the matrix costs more than checking it)."""
    rows, cols = w.shape
    q, scales, back = run(w, group_size)

    # q is symmetric int8: never -128
    assert q.size == 0 or (q.min() >= -127 and q.max() <= 127)

    # one finite, positive scale per row (per channel) or per block of a row
    n_groups = 1 if group_size is None or cols == 0 else -(-cols // group_size)
    assert scales.shape == (rows, n_groups)
    assert np.isfinite(scales).all() and (scales > 0).all()

    # round trip: within half a scale of the original, per element, up to REL_EPS
    s = per_element(scales, cols, group_size).astype(np.float64)
    err = np.abs(back.astype(np.float64) - w.astype(np.float64))
    bound = s / 2 * (1 + REL_EPS)
    if err.size:
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert (err <= bound).all(), (
            f"element {worst}: w={w[worst]!r} back={back[worst]!r} scale={s[worst]!r}"
        )

    # rounding never flips a sign
    assert (q * np.sign(w) >= 0).all()

    # no int8 level is wasted: a block's largest value maps to +-127 (unless the block is
    # so small that its scale was clamped to the smallest normal float32)
    g = max(cols, 1) if group_size is None else group_size
    for r in range(rows):
        for start in range(0, cols, g):
            block = np.abs(w[r, start : start + g]).astype(np.float64)
            if block.max() / 127 >= F32.tiny:
                assert np.abs(q[r, start : start + g]).max() == 127, (r, start)


@PROPS
@given(w=weights(min_side=1), group_size=group_sizes)
def test_all_zero_rows_come_back_as_zeros(w: np.ndarray, group_size: int | None) -> None:
    w[0, :] = 0.0  # at least one zero row in every example
    q, scales, back = run(w, group_size)
    zero = ~w.any(axis=1)
    assert (q[zero] == 0).all()
    assert (back[zero] == 0).all() and not np.signbit(back[zero]).any()
    assert np.isfinite(scales[zero]).all() and (scales[zero] > 0).all()


@PROPS
@given(w=weights(min_side=1))
def test_group_at_least_cols_is_per_channel(w: np.ndarray) -> None:
    q1, s1, _ = run(w, None)
    q2, s2, _ = run(w, w.shape[1] + 3)
    assert np.array_equal(q1, q2) and np.array_equal(s1, s2)


NOT_2D = "quantize_per_channel expects a 2-D floating tensor"
NOT_FINITE = "quantize_per_channel got a non-finite weight"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(lambda: torch.ones(4), NOT_2D, id="1-D"),
        pytest.param(lambda: torch.ones(2, 2, 2), NOT_2D, id="3-D"),
        pytest.param(lambda: torch.ones(2, 3, dtype=torch.int32), NOT_2D, id="integer"),
        pytest.param(lambda: torch.tensor([[1.0, float("inf")]]), NOT_FINITE, id="inf"),
        pytest.param(lambda: torch.tensor([[float("nan"), 1.0]]), NOT_FINITE, id="nan"),
    ],
)
def test_rejects_what_it_cannot_quantize(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        quantize_per_channel(bad())


@pytest.mark.parametrize("group_size", [0, -1, 2.5, True])
def test_rejects_bad_group_size(group_size: Any) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^group_size must be a positive int or None, not {re.escape(repr(group_size))}$",
    ):
        quantize_per_channel(torch.ones(2, 4), group_size)


@PROPS
@given(w=weights(min_side=1), group_size=group_sizes, slab=st.integers(1, 64))
def test_a_big_weight_quantized_a_slab_of_rows_at_a_time_is_bit_identical(
    w: np.ndarray, group_size: int | None, slab: int
) -> None:
    """Rows are independent, so bounding the float64 scratch by quantizing a few rows at a
    time (what a 28M-weight lm_head gets) changes no bit of q or of the scales."""
    whole_q, whole_s = quantize_per_channel(torch.from_numpy(w), group_size)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_math, "_CHUNK_ELEMENTS", slab)
        q, s = quantize_per_channel(torch.from_numpy(w), group_size)
    assert torch.equal(q, whole_q) and torch.equal(s, whole_s)


@PROPS
@given(
    rows=st.integers(1, 23),
    groups=st.integers(1, 3),
    group_size=st.sampled_from([32, 64]),
    slab=st.integers(1, 400),
)
def test_packing_a_slab_of_rows_at_a_time_gives_the_same_bytes(
    rows: int, groups: int, group_size: int, slab: int
) -> None:
    """Blocks of 4 rows are packed independently, so packing a big weight a slab at a time
    (to keep the reshaping copies small) writes exactly the bytes of one whole pass."""
    gen = torch.Generator().manual_seed(rows * 1000 + slab)
    w = torch.randn(rows, groups * group_size, generator=gen)
    q, scales = quantize_per_channel(w, group_size)
    whole = int8_math.pack_rows(q, scales, group_size)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_math, "_PACK_SLAB_ELEMENTS", slab)
        assert torch.equal(int8_math.pack_rows(q, scales, group_size), whole)
