"""Pure int8 math shared by the INT8 schemes: symmetric quantization and its references.

Why a separate module: the schemes' fast paths (a C kernel, packed layouts) are only
trusted because they are tested against these few lines of plain torch, and the
property tests hold these functions to the guarantees below.

Public contract (names and signatures are stable; property tests depend on them)::

    quantize_per_channel(w: Tensor, group_size: int | None = None) -> tuple[Tensor, Tensor]
    dequantize(q: Tensor, scales: Tensor, group_size: int | None = None) -> Tensor

- ``w`` is a finite 2-D floating tensor of shape ``(rows, cols)``; anything else raises
  ``ValueError``. ``rows`` or ``cols`` may be 0.
- ``group_size=None`` means one scale per row ("per channel"); an integer ``g >= 1``
  means one scale per block of ``g`` consecutive columns of a row (llama.cpp's Q8_0 is
  ``g=32``). The last block of a row is shorter when ``g`` does not divide ``cols``.
  ``g >= cols`` is the same as per channel.
- ``q`` is ``torch.int8`` of shape ``(rows, cols)`` with values in ``[-127, 127]``
  (never -128, so the range is symmetric and ``-q`` never overflows).
- ``scales`` is ``torch.float32`` of shape ``(rows, n_groups)``, ``n_groups =
  ceil(cols / g)`` (1 per channel). Every scale is finite and ``> 0``, also for an
  all-zero block (it then gets the smallest normal float32, and its ``q`` is 0).
  ``scale = max|w_block| / 127`` otherwise, so the block's largest value maps to +-127.
- ``dequantize(q, scales, g)`` returns float32 ``q * scale`` (one float32 rounding).
- Round trip: elementwise ``|dequantize(*quantize_per_channel(w, g), g) - w| <= scale / 2``
  up to float32 rounding of the product ``q * scale``; precisely, computed in float64,
  ``err <= scale / 2 * (1 + 2**-15)``. ``q`` is the nearest integer to ``w / scale``
  (ties to even; the division is done in float64 so it is exact enough to decide).

The two matmul references (``linear_reference``, ``linear_w8a8_reference``) define what
the fast kernels of ``weight-only-int8`` and ``smoothquant-w8a8`` must compute.
"""

from __future__ import annotations

import torch

_QMAX = 127
#: smallest normal float32: the scale of an all-zero block (finite, positive, and no
#: division by it can overflow because such a block has only zeros).
_MIN_SCALE = float(torch.finfo(torch.float32).tiny)
#: what both quantizers (this one and the C kernel's) say of an inf or a nan weight
NON_FINITE_WEIGHT = "quantize_per_channel got a non-finite weight (inf or nan)"


def _check_group(cols: int, group_size: int | None) -> int:
    """The effective block length (``cols`` for per channel, at least 1)."""
    if group_size is None:
        return max(cols, 1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int or None, not {group_size!r}")
    return group_size


def n_groups(cols: int, group_size: int | None) -> int:
    """How many scales a row of ``cols`` columns gets (``ceil(cols / g)``, 1 per channel)."""
    g = _check_group(cols, group_size)
    return max(1, -(-cols // g)) if cols else 1


def _blocks(x: torch.Tensor, g: int) -> tuple[torch.Tensor, int]:
    """View ``(rows, cols)`` as ``(rows, n, g)`` blocks, zero-padding the last block."""
    rows, cols = x.shape
    n = max(1, -(-cols // g))
    pad = n * g - cols
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(rows, n, g), pad


def quantize_per_channel(
    w: torch.Tensor, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest int8 with one float32 scale per row or per row block.

    See the module docstring for the guarantees. Zero padding of a short last block
    cannot change its scale (``|0|`` never exceeds the block's max).
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.dtype.is_floating_point:
        raise ValueError("quantize_per_channel expects a 2-D floating tensor (rows, cols)")
    rows, cols = w.shape
    g = _check_group(cols, group_size)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(NON_FINITE_WEIGHT)
    if cols == 0:
        return (
            torch.zeros(rows, 0, dtype=torch.int8, device=w.device),
            torch.full((rows, 1), _MIN_SCALE, dtype=torch.float32, device=w.device),
        )
    step = max(1, _CHUNK_ELEMENTS // cols)
    if rows <= step:
        return _quantize_rows(w, g)
    q = torch.empty(rows, cols, dtype=torch.int8, device=w.device)
    scales = torch.empty(rows, n_groups(cols, group_size), dtype=torch.float32, device=w.device)
    for i in range(0, rows, step):  # into place: no list of parts fragmenting the heap
        q[i : i + step], scales[i : i + step] = _quantize_rows(w[i : i + step], g)
    return q, scales


#: rows are quantized independently, so a big weight is done a slab of rows at a time: the
#: float64 scratch stays ~4 x 8 MB instead of 4 x 8 bytes per weight (~0.9 GB of peak RSS
#: for SmolLM2's 28M-weight lm_head), with bit-identical results
_CHUNK_ELEMENTS = 1 << 20


def _quantize_rows(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = w.shape
    w64 = w.detach().to(torch.float64)
    blocks, pad = _blocks(w64, g)
    amax = blocks.abs().amax(dim=-1)
    # the scale is rounded to float32 *before* q is chosen, so q is optimal for the
    # scale that is stored, and the round-trip bound holds for the stored scale
    exact = amax / _QMAX
    scales = exact.to(torch.float32)
    # round the scale toward zero, so 127 * scale never exceeds max|w| (no overflow to
    # inf near float32's max, and the largest value still maps to +-127)
    scales = torch.where(
        scales.to(torch.float64) > exact, torch.nextafter(scales, torch.zeros_like(scales)), scales
    )
    scales = scales.clamp_min(_MIN_SCALE)
    q = torch.round(blocks / scales.to(torch.float64).unsqueeze(-1)).clamp_(-_QMAX, _QMAX)
    q = q.to(torch.int8).reshape(rows, blocks.shape[1] * blocks.shape[2])
    if pad:
        q = q[:, :cols]
    return q.contiguous(), scales.contiguous()


def dequantize(
    q: torch.Tensor, scales: torch.Tensor, group_size: int | None = None
) -> torch.Tensor:
    """float32 ``q * scale`` for the layout :func:`quantize_per_channel` returns."""
    if q.dim() != 2 or scales.dim() != 2 or scales.shape[0] != q.shape[0]:
        raise ValueError(
            f"q must be (rows, cols) and scales (rows, n_groups); got "
            f"{tuple(q.shape)} and {tuple(scales.shape)}"
        )
    rows, cols = q.shape
    expected = n_groups(cols, group_size)
    if scales.shape[1] != expected:
        raise ValueError(
            f"{cols} columns with group_size={group_size} need {expected} scales "
            f"per row, not {scales.shape[1]}"
        )
    if cols == 0:
        return torch.zeros(rows, 0, dtype=torch.float32, device=q.device)
    g = _check_group(cols, group_size)
    blocks, pad = _blocks(q.to(torch.float32), g)
    out = (blocks * scales.to(torch.float32).unsqueeze(-1)).reshape(rows, blocks.shape[1] * g)
    return (out[:, :cols] if pad else out).contiguous()


def quantize_activations(
    x: torch.Tensor, group_size: int | None = None, inv_smooth: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 for activations ``x`` of shape (tokens, cols).

    One scale per token (``group_size=None``) or per token and block of ``group_size``
    columns: per token, not per tensor, because one outlier token must not flatten all
    the others. ``inv_smooth`` (cols,) multiplies ``x`` first (SmoothQuant's ``x / s``).
    Returns ``(q int8 (tokens, cols), scales float32 (tokens, n_groups))``. Every step is
    a float32 operation, so the C kernel reproduces ``q`` and the scales bit for bit.
    """
    t = x.to(torch.float32)
    if inv_smooth is not None:
        t = t * inv_smooth.to(torch.float32)
    tokens, cols = t.shape
    g = _check_group(cols, group_size)
    blocks, pad = _blocks(t, g)
    scales = (blocks.abs().amax(dim=-1) / _QMAX).clamp_min(_MIN_SCALE)
    q = torch.round(blocks / scales.unsqueeze(-1)).clamp_(-_QMAX, _QMAX).to(torch.int8)
    q = q.reshape(tokens, blocks.shape[1] * g)
    return (q[:, :cols] if pad else q).contiguous(), scales


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic int8 for activations (tokens, cols): scales are (tokens, 1)."""
    return quantize_activations(x, None)


def linear_reference(
    x: torch.Tensor,
    q: torch.Tensor,
    scales: torch.Tensor,
    group_size: int | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """What a weight-only int8 linear computes: fp32 activations times dequantized weights.

    Written per block (sum over blocks of ``scale * (x_block @ q_block)``) in float64,
    so it is the exact value the kernels approximate with float32 sums.
    """
    rows, cols = q.shape
    g = _check_group(cols, group_size)
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), cols).to(torch.float64)
    out = torch.zeros(x2.shape[0], rows, dtype=torch.float64)
    for i, start in enumerate(range(0, max(cols, 1), g)):
        if start >= cols:
            break
        part = x2[:, start : start + g] @ q[:, start : start + g].to(torch.float64).t()
        out += part * scales[:, i].to(torch.float64)
    if bias is not None:
        out += bias.to(torch.float64)
    return out.to(torch.float32).reshape(*lead, rows)


def linear_w8a8_reference(
    x: torch.Tensor,
    q: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int | None = None,
    inv_smooth: torch.Tensor | None = None,
) -> torch.Tensor:
    """What a W8A8 linear computes: int8 activations from :func:`quantize_activations`
    (per token, or per token and block), int8 weights with ``scales`` (rows, n_groups)
    on the same blocks, an exact integer dot product per block, then
    ``x_scale * w_scale`` per block, summed in float64."""
    rows, cols = q.shape
    lead = x.shape[:-1]
    xq, xs = quantize_activations(x.reshape(lead.numel(), cols), group_size, inv_smooth)
    g = _check_group(cols, group_size)
    out = torch.zeros(xq.shape[0], rows, dtype=torch.float64)
    for i, start in enumerate(range(0, cols, g)):
        # exact: int64 products and sums of at most 2**17 terms of |x*w| <= 127**2
        acc = xq[:, start : start + g].to(torch.int64) @ q[:, start : start + g].to(torch.int64).t()
        out += (
            acc.to(torch.float64)
            * xs[:, i : i + 1].to(torch.float64)
            * scales[:, i].to(torch.float64)
        )
    if bias is not None:
        out += bias.to(torch.float64)
    return out.to(torch.float32).reshape(*lead, rows)


# -- the kernels' packed layout --------------------------------------------------------
#: rows per block and columns per chunk of the packed layout (fixed by the C kernels)
PACK_ROWS = 4
PACK_CHUNK = 32


def packable(rows: int, cols: int, group_size: int | None) -> bool:
    """Whether :func:`pack_rows` accepts this shape: columns in whole 32-column chunks and
    whole groups (other shapes use the kernels' row-major path)."""
    g = cols if group_size is None else group_size
    return (
        rows > 0 and cols > 0 and cols % PACK_CHUNK == 0 and g % PACK_CHUNK == 0 and cols % g == 0
    )


def pack_rows(q: torch.Tensor, scales: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``(q, scales)`` from :func:`quantize_per_channel` as one flat uint8 tensor that the
    kernels read front to back: for each block of 4 rows (the last zero-padded) and each
    group, the 4 rows' float32 scales (16 bytes), then for each 32-column chunk of the
    group the 4 rows' 32 int8 weights (128 bytes)."""
    rows, cols = q.shape
    if not packable(rows, cols, group_size):
        raise ValueError(f"shape {(rows, cols)} with group_size={group_size} cannot be packed")
    # blocks of 4 rows are packed independently: a big weight goes a slab at a time into
    # its place, so the reshaping copies stay small (~4 MB) instead of ~3x the weight
    slab = max(PACK_ROWS, (_PACK_SLAB_ELEMENTS // cols) // PACK_ROWS * PACK_ROWS)
    if rows <= slab:
        return _pack_block_rows(q, scales, group_size)
    g = cols if group_size is None else group_size
    per_block = (cols // g) * (4 * PACK_ROWS + PACK_ROWS * g)
    out = torch.empty(-(-rows // PACK_ROWS) * per_block, dtype=torch.uint8, device=q.device)
    for r0 in range(0, rows, slab):
        part = _pack_block_rows(q[r0 : r0 + slab], scales[r0 : r0 + slab], group_size)
        start = r0 // PACK_ROWS * per_block
        out[start : start + part.numel()] = part
    return out


#: rows x columns packed at once by :func:`pack_rows`
_PACK_SLAB_ELEMENTS = 1 << 22


def _pack_block_rows(q: torch.Tensor, scales: torch.Tensor, group_size: int | None) -> torch.Tensor:
    rows, cols = q.shape
    g = cols if group_size is None else group_size
    n_groups_, chunks = cols // g, g // PACK_CHUNK
    blocks = -(-rows // PACK_ROWS)
    pad = blocks * PACK_ROWS - rows
    q = torch.nn.functional.pad(q.to(torch.int8), (0, 0, 0, pad))
    scales = torch.nn.functional.pad(scales.to(torch.float32), (0, 0, 0, pad), value=_MIN_SCALE)
    qb = (
        q.reshape(blocks, PACK_ROWS, n_groups_, chunks, PACK_CHUNK)
        .permute(0, 2, 3, 1, 4)
        .reshape(blocks, n_groups_, chunks * PACK_ROWS * PACK_CHUNK)
    )
    sb = scales.reshape(blocks, PACK_ROWS, n_groups_).permute(0, 2, 1).contiguous()
    sb = sb.view(torch.uint8).reshape(blocks, n_groups_, 4 * PACK_ROWS)
    return torch.cat([sb, qb.contiguous().view(torch.uint8)], dim=2).reshape(-1).contiguous()


def unpack_rows(
    packed: torch.Tensor, rows: int, cols: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_rows` (bit-exact): ``(q int8 (rows, cols), scales)``."""
    g = cols if group_size is None else group_size
    n_groups_, chunks = cols // g, g // PACK_CHUNK
    blocks = -(-rows // PACK_ROWS)
    per_group = 4 * PACK_ROWS + chunks * PACK_ROWS * PACK_CHUNK
    if packed.dtype != torch.uint8 or packed.numel() != blocks * n_groups_ * per_group:
        raise ValueError(
            f"a packed ({rows}, {cols}) weight with group_size={group_size} has "
            f"{blocks * n_groups_ * per_group} bytes, not {packed.numel()}"
        )
    data = packed.reshape(blocks, n_groups_, per_group)
    sb = data[:, :, : 4 * PACK_ROWS].contiguous().view(torch.float32)  # (blocks, groups, 4)
    scales = sb.permute(0, 2, 1).reshape(blocks * PACK_ROWS, n_groups_)[:rows]
    qb = data[:, :, 4 * PACK_ROWS :].contiguous().view(torch.int8)
    qb = qb.reshape(blocks, n_groups_, chunks, PACK_ROWS, PACK_CHUNK).permute(0, 3, 1, 2, 4)
    q = qb.reshape(blocks * PACK_ROWS, cols)[:rows]
    return q.contiguous(), scales.contiguous()
