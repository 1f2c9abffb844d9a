"""The int8 C kernel (``int8.c``) of the ``weight-only-int8`` and ``smoothquant-w8a8`` schemes.

Schemes call it only through the typed wrappers below (:func:`wo_packed`, :func:`wo_gemm`,
:func:`w8a8_packed`, :func:`w8a8_gemm`, :func:`unpack_f32`): each takes the layer's
tensors and widths, checks every size the C code will trust (a wrong one would read or
write past a buffer, not raise), picks the thread count, and turns a nonzero C status
into a one-line :class:`KernelError` that names the fix, so no caller ever reads an
output buffer the kernel did not write. Decode goes through :class:`.calls.PackedCall`
instead, which checks the weights once when it is made and only the input per call. Before using them a layer asks :func:`available`
(which builds the library on first use and warns once if it cannot) and otherwise takes
its torch path.

Where the library lives: ``<cache dir>/kernels/``, the cache dir being the one given to
:func:`set_cache_dir` (the session's ``--llmq-cache-dir``) or the user cache. See
:mod:`.build` for how it is compiled and verified.

Importing this package does not import torch (the wrappers only call ``data_ptr`` on
what they are given), so the plugin may ask :func:`kernel_unavailable_reason` at
configure time.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import LlmqError
from . import build
from .build import DISABLE_ENV, kernel_unavailable_reason

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENOMEM",
    "EINVAL",
    "KernelError",
    "available",
    "check_status",
    "configured_cache_dir",
    "kernel_unavailable_reason",
    "library_path",
    "load_library",
    "loaded",
    "packed_nbytes",
    "path_description",
    "set_cache_dir",
    "threads_for",
    "unpack_f32",
    "w8a8_gemm",
    "w8a8_packed",
    "wo_gemm",
    "wo_packed",
]

#: status codes of int8.c (0 is success)
ENOMEM = 1
EINVAL = 2

#: Calls with fewer multiply-adds than this run on one thread (see :func:`threads_for`).
#: Measured with ``python benchmarks/kernel_grain.py --threads 2`` (one token, k=576,
#: weights from DRAM, 1 vs 2 threads interleaved). One thread streamed ~10 GB/s (a
#: 576x576 product: ~37 us); a fork/join of libgomp's already spinning threads is
#: estimated at a few microseconds (not isolated here), so a split should pay from
#: ~20 us of work (~250 KB of int8 weight). 2**18
#: (262k multiply-adds, o_proj-sized: 576x576 = 332k) puts every fused SmolLM2 call over
#: the grain and keeps tiny layers (k/v alone are 110k) on one thread. Under a load
#: average of 8-10 on 2 cores (others' jobs) 2 threads lost at every size below 1.8M:
#: an oversubscribed machine makes any parallel region wait, as it does torch's own.
PARALLEL_MIN_WORK = 1 << 18
#: rows per block and columns per chunk of the packed layout (``int8_math.pack_rows``)
_PK_ROWS, _PK_COLS = 4, 32


class KernelError(LlmqError):
    """The C kernel could not be built, or a call to it failed (one line, names the fix)."""


_lock = threading.Lock()
_cache_dir: str | None = None
_lib: ctypes.CDLL | None = None
_path: Path | None = None
_error: str | None = None
_warned = False


def set_cache_dir(path: str | None) -> None:
    """Build into (and load from) ``<path>/kernels/``; None means the user cache.

    The session calls this at start-up with its ``--llmq-cache-dir``. It also forgets the
    library loaded so far and any earlier failure, so the next use loads from ``path``."""
    global _cache_dir, _lib, _path, _error, _warned
    with _lock:
        _cache_dir = None if path is None else str(path)
        _lib, _path, _error, _warned = None, None, None, False


def configured_cache_dir() -> str | None:
    """What :func:`set_cache_dir` was last given (None: the user cache)."""
    return _cache_dir


def loaded() -> bool:
    """Whether the library is loaded already: the per-call check of the decode fast path
    (no lock, no build, no warning)."""
    return _lib is not None


def load_library() -> ctypes.CDLL:
    """The loaded kernel library, built first if needed; raises :class:`KernelError`.

    Where :func:`kernel_unavailable_reason` is None a failure here is a bug or a broken
    toolchain, which is why the tests call this and not :func:`available`. A failure is
    remembered: later calls raise it again rather than compiling again."""
    global _lib, _path, _error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            _error = kernel_unavailable_reason()
            if _error is None:
                try:
                    _lib, _path = build.build_and_load(_cache_dir)
                except Exception as exc:  # compiler, cache and loader errors alike
                    _error = " ".join(str(exc).split()) or type(exc).__name__
        if _lib is None:
            raise KernelError(_unavailable_message(_error or "unknown reason"))
        return _lib


def _unavailable_message(reason: str) -> str:
    if reason.startswith("disabled by"):
        fix = f"unset {DISABLE_ENV} to use it"
    else:
        fix = (
            "install gcc with OpenMP (an x86-64 CPU with AVX2 and FMA is needed), "
            f"or set {DISABLE_ENV}=0 to choose the slower pure-torch path"
        )
    return f"int8 C kernel unavailable ({reason}); {fix}"


def available() -> bool:
    """Whether the schemes can call the kernel; builds it on first use. If it cannot be
    built or loaded here, warns once and returns False: callers take their torch path."""
    global _warned
    if _lib is not None:
        return True
    try:
        load_library()
        return True
    except KernelError:
        with _lock:
            warn, _warned = not _warned, True
        if warn:
            warnings.warn(
                f"pytest-llmquant: int8 C kernel unavailable ({_error}); "
                "using the slower pure-torch path",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


def library_path() -> Path | None:
    """The ``.so`` in use, or None if none is loaded."""
    return _path


def path_description(fallback: str = "torch dequantize fallback") -> str:
    """Which path the int8 layers run, for the summary: ``"AVX2 C kernel"``, or
    ``"<fallback> (<reason>)"``. Builds nothing and imports no torch."""
    if _lib is not None:
        return "AVX2 C kernel"
    reason = _error or kernel_unavailable_reason()
    if reason is not None:
        return f"{fallback} ({reason})"
    return "AVX2 C kernel (not loaded yet)"


def threads_for(work: int) -> int:
    """OpenMP threads for a call doing ``work`` multiply-adds: the session's
    (``torch.get_num_threads()``) from ``PARALLEL_MIN_WORK`` on, else 1.

    The kernel's parallel regions run on the same libgomp thread pool as torch's own ops
    (the process loads one OpenMP runtime), so fanning out costs a fork/join of threads
    that are already spinning, not a thread start. Below the grain that fork/join costs
    more than the split saves. See ``PARALLEL_MIN_WORK`` for how the grain was measured.
    """
    if work < PARALLEL_MIN_WORK:
        return 1
    get = _get_num_threads
    if get is None:
        import torch

        get = _set_get_num_threads(torch.get_num_threads)
    return get()


_get_num_threads: Callable[[], int] | None = None


def _set_get_num_threads(fn: Callable[[], int]) -> Callable[[], int]:
    global _get_num_threads
    _get_num_threads = fn
    return fn


def check_status(status: int, function: str, m: int, n: int, k: int) -> None:
    """Turn a C status into a one-line :class:`KernelError` naming the fix (0: nothing)."""
    if status == 0:
        return
    sizes = f"{m} token(s) x {k} inputs -> {n} outputs"
    if status == ENOMEM:
        raise KernelError(
            f"int8 C kernel {function} could not allocate its scratch memory for {sizes}; "
            "free memory, or run fewer tokens per forward call (a smaller batch, or the "
            "prompt in chunks)"
        )
    if status == EINVAL:
        raise KernelError(
            f"int8 C kernel {function} rejected the sizes {sizes}: a pytest-llmquant bug, "
            f"please report it; set {DISABLE_ENV}=0 to use the pure-torch path meanwhile"
        )
    raise KernelError(
        f"int8 C kernel {function} returned unknown status {status} for {sizes}; "
        f"rebuild it by deleting the cache's kernels/ dir, or set {DISABLE_ENV}=0"
    )


def _lib_or_raise() -> ctypes.CDLL:
    return _lib if _lib is not None else load_library()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@functools.lru_cache(maxsize=256)
def packed_nbytes(n: int, k: int, block: int) -> int:
    """Bytes of an (n, k) weight in the packed layout with blocks of ``block`` columns
    (``int8_math.pack_rows``); ValueError for a shape that layout cannot hold."""
    if n < 1 or block < _PK_COLS or block % _PK_COLS or k % block:
        raise ValueError(f"a ({n}, {k}) weight in blocks of {block} columns cannot be packed")
    return -(-n // _PK_ROWS) * (k // block) * (4 * _PK_ROWS + _PK_ROWS * block)


def _bad(what: str, t: torch.Tensor, want: int) -> ValueError:
    return ValueError(f"{what} has {t.numel()} elements, not {want}")


def _tokens(x: torch.Tensor, out: torch.Tensor, n: int, k: int, bias: torch.Tensor | None) -> int:
    """Tokens in ``x`` (``m`` of ``out (m, n) = x (m, k) @ W.T``), checking every size the
    C kernel will trust: a wrong one would read or write past a buffer, not raise."""
    m = x.numel() // k if k else 0
    if x.numel() != m * k:
        raise _bad("x", x, m * k)
    if out.numel() != m * n:
        raise _bad("out", out, m * n)
    if bias is not None and bias.numel() != n:
        raise _bad("bias", bias, n)
    return m


# The wrappers below: tensors must be contiguous float32 (weights int8/uint8) on the CPU,
# as the int8 layers hold them; ``n`` and ``k`` are the layer's output and input widths.


def wo_packed(
    packed: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    n: int,
    k: int,
    block: int,
) -> None:
    """``out = x @ W.T + bias`` with W in the packed layout, float32 activations."""
    m = _tokens(x, out, n, k, bias)
    if packed.numel() != packed_nbytes(n, k, block):
        raise _bad("packed weight", packed, packed_nbytes(n, k, block))
    status = _lib_or_raise().llmq_wo_packed(
        packed.data_ptr(), x.data_ptr(), _ptr(bias), out.data_ptr(), m, n, k, block,
        threads_for(m * n * k),
    )  # fmt: skip
    if status:
        check_status(status, "llmq_wo_packed", m, n, k)


def wo_gemm(
    q: torch.Tensor,
    scales: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    n: int,
    k: int,
    block: int,
) -> None:
    """``out = x @ W.T + bias`` with W row-major int8 ``q`` (n, k) and ``scales`` (n, G),
    one per block of ``block`` columns (the C kernel checks G against k and block)."""
    m = _tokens(x, out, n, k, bias)
    if q.numel() != n * k:
        raise _bad("q", q, n * k)
    groups = scales.numel() // n if n else 0
    status = _lib_or_raise().llmq_wo_gemm(
        q.data_ptr(), scales.data_ptr(), x.data_ptr(), _ptr(bias), out.data_ptr(),
        m, n, k, block, groups, threads_for(m * n * k),
    )  # fmt: skip
    if status:
        check_status(status, "llmq_wo_gemm", m, n, k)


def w8a8_packed(
    packed: torch.Tensor,
    x: torch.Tensor,
    inv_smooth: torch.Tensor | None,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    n: int,
    k: int,
    block: int,
) -> None:
    """W8A8 on the packed layout: ``x * inv_smooth`` quantized to int8 per token and
    block, exact int32 dot products."""
    m = _tokens(x, out, n, k, bias)
    if packed.numel() != packed_nbytes(n, k, block):
        raise _bad("packed weight", packed, packed_nbytes(n, k, block))
    if inv_smooth is not None and inv_smooth.numel() != k:
        raise _bad("inv_smooth", inv_smooth, k)
    status = _lib_or_raise().llmq_w8a8_packed(
        packed.data_ptr(), x.data_ptr(), _ptr(inv_smooth), _ptr(bias), out.data_ptr(),
        m, n, k, block, threads_for(m * n * k),
    )  # fmt: skip
    if status:
        check_status(status, "llmq_w8a8_packed", m, n, k)


def w8a8_gemm(
    q: torch.Tensor,
    scales: torch.Tensor,
    x: torch.Tensor,
    inv_smooth: torch.Tensor | None,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    n: int,
    k: int,
    block: int,
) -> None:
    """W8A8 with row-major int8 ``q`` (n, k) and ``scales`` (n, G), one per row and block."""
    m = _tokens(x, out, n, k, bias)
    if q.numel() != n * k:
        raise _bad("q", q, n * k)
    if inv_smooth is not None and inv_smooth.numel() != k:
        raise _bad("inv_smooth", inv_smooth, k)
    groups = scales.numel() // n if n else 0
    status = _lib_or_raise().llmq_w8a8_gemm(
        q.data_ptr(), scales.data_ptr(), x.data_ptr(), _ptr(inv_smooth), _ptr(bias),
        out.data_ptr(), m, n, k, block, groups, threads_for(m * n * k),
    )  # fmt: skip
    if status:
        check_status(status, "llmq_w8a8_gemm", m, n, k)


def unpack_f32(packed: torch.Tensor, out: torch.Tensor, n: int, k: int, block: int) -> None:
    """``out`` (n, k) = the float32 weight the packed layout stands for."""
    if out.numel() != n * k:
        raise _bad("out", out, n * k)
    if packed.numel() != packed_nbytes(n, k, block):
        raise _bad("packed weight", packed, packed_nbytes(n, k, block))
    status = _lib_or_raise().llmq_unpack_f32(
        packed.data_ptr(), out.data_ptr(), n, k, block, threads_for(n * k * 8)
    )
    if status:
        check_status(status, "llmq_unpack_f32", 0, n, k)
