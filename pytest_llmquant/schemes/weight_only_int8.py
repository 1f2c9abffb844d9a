"""``weight-only-int8``: int8 weights with per-group float32 scales, float32 activations.

Why this recipe (see shared/notes/int8-on-cpu.md and the README's frontier table):

- Decode at batch 1 is a matrix-vector product and is memory-bandwidth bound, so the
  speed of an INT8 model comes from reading 1 byte per weight instead of 4. Activations
  stay float32, which costs no bandwidth and keeps the accuracy of the weights alone.
- Per-channel scales cost ~0.012 mean KLD on SmolLM2-135M; one scale per block of 32
  input columns (llama.cpp's Q8_0 layout) gets under 0.005 at 1.125 bytes per weight.
- ``lm_head`` is ~28M of SmolLM2's 135M weights and is read in full for every token, so
  it is quantized too (this unties it from the embedding, whose rows are only gathered).
- No torch CPU op multiplies int8 weights by float32 activations without first
  dequantizing the whole weight (``torch._weight_int8pack_mm`` is fast only for bf16),
  so the matrix-vector product is a small C kernel (AVX2 + FMA, OpenMP over output rows),
  compiled once with gcc into the user cache and loaded with ``ctypes``. It is tested
  against :func:`int8_math.linear_reference`. Where it cannot be built (no compiler, not
  x86-64 with AVX2, ``LLMQ_INT8_KERNEL=0``) the layer warns once and dequantizes in
  torch instead: same numbers up to float32 summation order, several times slower.
- Prompts (more than ``_KERNEL_MAX_TOKENS`` tokens) dequantize the weight and use the
  float32 GEMM: prefill is compute bound, where MKL beats a hand-written loop.

Options: ``group_size`` (int, default 32; ``0`` or ``None`` means per channel) and
``skip`` (list of layer-name suffixes to keep in float32, e.g. ``["lm_head"]``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import convert_conv1d, linear_like_layers, set_submodule
from .base import QuantScheme
from .int8_math import (
    dequantize,
    n_groups,
    pack_rows,
    packable,
    quantize_per_channel,
    unpack_rows,
)

#: Up to this many tokens per call the C kernel runs (decode, small batches); above it
#: the weight is dequantized and the float32 GEMM runs (prompt processing).
_KERNEL_MAX_TOKENS = 8
#: Calls with fewer multiply-adds than this run on one thread (see :func:`threads_for`).
_PARALLEL_MIN_WORK = 1 << 23

_KERNEL_SOURCE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline __m256 load8_i8_ps(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}

/* y[n0..n0+NR) = sum_g s[n, g] * (q[n, block g] . x[block g]) + bias, for one token.
   Two accumulators per row hide the FMA latency; NR rows share each load of x. */
static inline __attribute__((always_inline)) void wo_rows(
        const int8_t* q, const float* s, const float* x, const float* bias, float* y,
        int64_t n0, const int NR, int64_t K, int64_t gs, int64_t G) {
    __m256 tot[4];
    float stot[4];
    for (int r = 0; r < NR; ++r) { tot[r] = _mm256_setzero_ps(); stot[r] = 0.f; }
    for (int64_t g = 0; g < G; ++g) {
        const int64_t k0 = g * gs;
        const int64_t k1 = (k0 + gs < K) ? k0 + gs : K;
        __m256 a0[4], a1[4];
        float sa[4];
        for (int r = 0; r < NR; ++r) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); sa[r] = 0.f; }
        int64_t k = k0;
        for (; k + 16 <= k1; k += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
            for (int r = 0; r < NR; ++r) {
                const int8_t* row = q + (n0 + r) * K + k;
                a0[r] = _mm256_fmadd_ps(load8_i8_ps(row), x0, a0[r]);
                a1[r] = _mm256_fmadd_ps(load8_i8_ps(row + 8), x1, a1[r]);
            }
        }
        for (; k + 8 <= k1; k += 8) {
            const __m256 x0 = _mm256_loadu_ps(x + k);
            for (int r = 0; r < NR; ++r)
                a0[r] = _mm256_fmadd_ps(load8_i8_ps(q + (n0 + r) * K + k), x0, a0[r]);
        }
        for (; k < k1; ++k)
            for (int r = 0; r < NR; ++r) sa[r] += (float)q[(n0 + r) * K + k] * x[k];
        for (int r = 0; r < NR; ++r) {
            const float sc = s[(n0 + r) * G + g];
            tot[r] = _mm256_fmadd_ps(_mm256_add_ps(a0[r], a1[r]), _mm256_set1_ps(sc), tot[r]);
            stot[r] += sa[r] * sc;
        }
    }
    for (int r = 0; r < NR; ++r)
        y[n0 + r] = hsum_ps(tot[r]) + stot[r] + (bias ? bias[n0 + r] : 0.f);
}

/* Weight-only: y (M, N) = x (M, K) float32 times int8 q (N, K) with scales s (N, G),
   one scale per block of gs input columns (the last block may be shorter). */
void llmq_wo_gemm(const int8_t* q, const float* s, const float* x, const float* bias,
                  float* y, int64_t M, int64_t N, int64_t K, int64_t gs, int64_t G,
                  int nthreads) {
    const int64_t nblocks = (N + 3) / 4;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t n0 = b * 4;
        for (int64_t m = 0; m < M; ++m) {
            if (n0 + 4 <= N) {
                wo_rows(q, s, x + m * K, bias, y + m * N, n0, 4, K, gs, G);
            } else {
                for (int64_t n = n0; n < N; ++n)
                    wo_rows(q, s, x + m * K, bias, y + m * N, n, 1, K, gs, G);
            }
        }
    }
}

/* Dynamic int8 activations: t = x * inv_smooth (when given); for each token m and block g
   of gs columns, xs[m, g] = max|t| / 127 (at least FLT_MIN) and xq = rint(t / xs[m, g]).
   The same float32 operations, in the same order, as int8_math.quantize_activations. */
static void quantize_act(const float* x, const float* inv_s, int8_t* xq, float* xs,
                         int64_t M, int64_t K, int64_t gs, int64_t G) {
    for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K;
        for (int64_t g = 0; g < G; ++g) {
            const int64_t k0 = g * gs, k1 = (k0 + gs < K) ? k0 + gs : K;
            float amax = 0.f;
            for (int64_t k = k0; k < k1; ++k) {
                const float a = fabsf(inv_s ? xm[k] * inv_s[k] : xm[k]);
                amax = a > amax ? a : amax;
            }
            float sc = amax / 127.f;
            if (!(sc >= 1.17549435e-38f)) sc = 1.17549435e-38f;
            xs[m * G + g] = sc;
            for (int64_t k = k0; k < k1; ++k) {
                float v = nearbyintf((inv_s ? xm[k] * inv_s[k] : xm[k]) / sc);
                v = v > 127.f ? 127.f : (v < -127.f ? -127.f : v);
                xq[m * K + k] = (int8_t)v;
            }
        }
    }
}

static inline __attribute__((always_inline)) void w8a8_rows(
        const int8_t* q, const float* ws, const int8_t* xq, const float* xs,
        const float* bias, float* y, int64_t n0, const int NR, int64_t K, int64_t gs,
        int64_t G) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 tot[4];
    float stot[4];
    for (int r = 0; r < NR; ++r) { tot[r] = _mm256_setzero_ps(); stot[r] = 0.f; }
    for (int64_t g = 0; g < G; ++g) {
        const int64_t k0 = g * gs, k1 = (k0 + gs < K) ? k0 + gs : K;
        __m256i acc[4];
        int32_t sacc[4];
        for (int r = 0; r < NR; ++r) { acc[r] = _mm256_setzero_si256(); sacc[r] = 0; }
        int64_t k = k0;
        for (; k + 32 <= k1; k += 32) {
            const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + k));
            const __m256i ax = _mm256_sign_epi8(xv, xv);  /* |x|: x >= -127, so no overflow */
            for (int r = 0; r < NR; ++r) {
                const __m256i wv = _mm256_loadu_si256((const __m256i*)(q + (n0 + r) * K + k));
                /* |x| * (w * sign x) = x * w; a pair sums to at most 2 * 127 * 127 < 2**15 */
                const __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
            }
        }
        for (; k < k1; ++k)
            for (int r = 0; r < NR; ++r) sacc[r] += (int32_t)q[(n0 + r) * K + k] * (int32_t)xq[k];
        for (int r = 0; r < NR; ++r) {
            const float d = xs[g] * ws[(n0 + r) * G + g];
            tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), _mm256_set1_ps(d), tot[r]);
            stot[r] += (float)sacc[r] * d;
        }
    }
    for (int r = 0; r < NR; ++r)
        y[n0 + r] = hsum_ps(tot[r]) + stot[r] + (bias ? bias[n0 + r] : 0.f);
}

/* W8A8: y (M, N) = sum_g (xq[m, g] . q[n, g]) * xs[m, g] * ws[n, g] + bias, with int8
   activations quantized here (per token, or per token and block when G > 1) and exact
   int32 dot products per block. Tokens go in tiles of 64 so a tile of xq stays in L2
   while each thread streams its share of the weight rows. */
void llmq_w8a8_gemm(const int8_t* q, const float* ws, const float* x, const float* inv_s,
                    const float* bias, float* y, int64_t M, int64_t N, int64_t K, int64_t gs,
                    int64_t G, int nthreads) {
    int8_t* xq = (int8_t*)malloc((size_t)(M * K > 0 ? M * K : 1));
    float* xs = (float*)malloc(sizeof(float) * (size_t)(M * G > 0 ? M * G : 1));
    if (!xq || !xs) { free(xq); free(xs); return; }
    quantize_act(x, inv_s, xq, xs, M, K, gs, G);
    const int64_t nblocks = (N + 3) / 4;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    for (int64_t m0 = 0; m0 < M; m0 += 64) {
        const int64_t m1 = (m0 + 64 < M) ? m0 + 64 : M;
        #pragma omp for schedule(static) nowait
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t n0 = b * 4;
            for (int64_t m = m0; m < m1; ++m) {
                if (n0 + 4 <= N) {
                    w8a8_rows(q, ws, xq + m * K, xs + m * G, bias, y + m * N, n0, 4, K, gs, G);
                } else {
                    for (int64_t n = n0; n < N; ++n)
                        w8a8_rows(q, ws, xq + m * K, xs + m * G, bias, y + m * N, n, 1, K, gs, G);
                }
            }
        }
    }
    free(xq);
    free(xs);
}

/* ---- packed layout (see int8_math.pack_rows): one sequential stream per block of 4 rows.
   Block (b, g), at byte (b * G + g) * (16 + 128 * C): float32 scales of rows 4b..4b+3 for
   group g, then for each 32-column chunk c of the group the 4 rows' 32 int8 weights.
   Reading the weights in exactly the order they lie in memory is what lets one core
   approach its memory bandwidth; the row-major layout, read as 4 strided streams,
   reached less than half of it here. */

#define PK_ROWS 4
/* Software prefetch distance in bytes: the hardware prefetcher alone left ~20% of the
   bandwidth unused on this VM (measured 3.8x -> 4.6x over float32 at 4 KiB; prefetching
   past the end of a buffer is harmless, it never faults). */
#define PK_PREFETCH 4096

static inline __attribute__((always_inline)) void wo_packed_block(
        const uint8_t* p, const float* x, float* y, const float* bias, int64_t n0, int64_t N,
        int64_t G, int64_t C) {
    __m256 tot[PK_ROWS];
    for (int r = 0; r < PK_ROWS; ++r) tot[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
        const float* s = (const float*)p;
        const int8_t* q = (const int8_t*)(p + 16);
        __m256 a[PK_ROWS], c[PK_ROWS];
        for (int r = 0; r < PK_ROWS; ++r) { a[r] = _mm256_setzero_ps(); c[r] = _mm256_setzero_ps(); }
        for (int64_t ch = 0; ch < C; ++ch, q += 128) {
            _mm_prefetch((const char*)(q + PK_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char*)(q + PK_PREFETCH + 64), _MM_HINT_T0);
            const float* xc = x + (g * C + ch) * 32;
            const __m256 x0 = _mm256_loadu_ps(xc), x1 = _mm256_loadu_ps(xc + 8);
            const __m256 x2 = _mm256_loadu_ps(xc + 16), x3 = _mm256_loadu_ps(xc + 24);
            for (int r = 0; r < PK_ROWS; ++r) {
                const int8_t* qr = q + r * 32;
                a[r] = _mm256_fmadd_ps(load8_i8_ps(qr), x0, a[r]);
                c[r] = _mm256_fmadd_ps(load8_i8_ps(qr + 8), x1, c[r]);
                a[r] = _mm256_fmadd_ps(load8_i8_ps(qr + 16), x2, a[r]);
                c[r] = _mm256_fmadd_ps(load8_i8_ps(qr + 24), x3, c[r]);
            }
        }
        for (int r = 0; r < PK_ROWS; ++r)
            tot[r] = _mm256_fmadd_ps(_mm256_add_ps(a[r], c[r]), _mm256_set1_ps(s[r]), tot[r]);
        p += 16 + 128 * C;
    }
    for (int r = 0; r < PK_ROWS && n0 + r < N; ++r)
        y[n0 + r] = hsum_ps(tot[r]) + (bias ? bias[n0 + r] : 0.f);
}

/* Weight-only on the packed layout: y (M, N) = x (M, K) float32 times the packed weight. */
void llmq_wo_packed(const uint8_t* P, const float* x, const float* bias, float* y,
                    int64_t M, int64_t N, int64_t K, int64_t gs, int nthreads) {
    const int64_t G = K / gs, C = gs / 32, nblocks = (N + PK_ROWS - 1) / PK_ROWS;
    const int64_t bstride = G * (16 + 128 * C);
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t b = 0; b < nblocks; ++b)
        for (int64_t m = 0; m < M; ++m)
            wo_packed_block(P + b * bstride, x + m * K, y + m * N, bias, b * PK_ROWS, N, G, C);
}

/* The float32 weight (N, K) the packed layout stands for: prompts use it with the GEMM. */
void llmq_unpack_f32(const uint8_t* P, float* w, int64_t N, int64_t K, int64_t gs,
                     int nthreads) {
    const int64_t G = K / gs, C = gs / 32, nblocks = (N + PK_ROWS - 1) / PK_ROWS;
    const int64_t bstride = G * (16 + 128 * C);
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t b = 0; b < nblocks; ++b) {
        const uint8_t* p = P + b * bstride;
        for (int64_t g = 0; g < G; ++g, p += 16 + 128 * C) {
            const float* s = (const float*)p;
            for (int r = 0; r < PK_ROWS; ++r) {
                const int64_t n = b * PK_ROWS + r;
                if (n >= N) break;
                for (int64_t ch = 0; ch < C; ++ch) {
                    const int8_t* q = (const int8_t*)(p + 16 + 128 * ch + 32 * r);
                    float* out = w + n * K + (g * C + ch) * 32;
                    for (int k = 0; k < 32; ++k) out[k] = (float)q[k] * s[r];
                }
            }
        }
    }
}

static inline __attribute__((always_inline)) void w8a8_packed_block(
        const uint8_t* p, const int8_t* xq, const float* xs, float* y, const float* bias,
        int64_t n0, int64_t N, int64_t G, int64_t C) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 tot[PK_ROWS];
    for (int r = 0; r < PK_ROWS; ++r) tot[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
        const float* s = (const float*)p;
        const int8_t* q = (const int8_t*)(p + 16);
        __m256i acc[PK_ROWS];
        for (int r = 0; r < PK_ROWS; ++r) acc[r] = _mm256_setzero_si256();
        for (int64_t ch = 0; ch < C; ++ch, q += 128) {
            _mm_prefetch((const char*)(q + PK_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char*)(q + PK_PREFETCH + 64), _MM_HINT_T0);
            const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + (g * C + ch) * 32));
            const __m256i ax = _mm256_sign_epi8(xv, xv);
            for (int r = 0; r < PK_ROWS; ++r) {
                const __m256i wv = _mm256_loadu_si256((const __m256i*)(q + r * 32));
                const __m256i prod = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(prod, ones));
            }
        }
        for (int r = 0; r < PK_ROWS; ++r)
            tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), _mm256_set1_ps(xs[g] * s[r]), tot[r]);
        p += 16 + 128 * C;
    }
    for (int r = 0; r < PK_ROWS && n0 + r < N; ++r)
        y[n0 + r] = hsum_ps(tot[r]) + (bias ? bias[n0 + r] : 0.f);
}

/* W8A8 on the packed layout; activations are quantized per token and group of gs columns
   (gs = K: per token), exactly as in llmq_w8a8_gemm. */
void llmq_w8a8_packed(const uint8_t* P, const float* x, const float* inv_s, const float* bias,
                      float* y, int64_t M, int64_t N, int64_t K, int64_t gs, int nthreads) {
    const int64_t G = K / gs, C = gs / 32, nblocks = (N + PK_ROWS - 1) / PK_ROWS;
    const int64_t bstride = G * (16 + 128 * C);
    int8_t* xq = (int8_t*)malloc((size_t)(M * K > 0 ? M * K : 1));
    float* xs = (float*)malloc(sizeof(float) * (size_t)(M * G > 0 ? M * G : 1));
    if (!xq || !xs) { free(xq); free(xs); return; }
    quantize_act(x, inv_s, xq, xs, M, K, gs, G);
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    for (int64_t m0 = 0; m0 < M; m0 += 64) {
        const int64_t m1 = (m0 + 64 < M) ? m0 + 64 : M;
        #pragma omp for schedule(static) nowait
        for (int64_t b = 0; b < nblocks; ++b)
            for (int64_t m = m0; m < m1; ++m)
                w8a8_packed_block(P + b * bstride, xq + m * K, xs + m * G, y + m * N, bias,
                                  b * PK_ROWS, N, G, C);
    }
    free(xq);
    free(xs);
}

int llmq_abi_version(void) { return 3; }
"""

_CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11"]

_lock = threading.Lock()
_kernel: ctypes.CDLL | None = None
_kernel_error: str | None = None
_warned = False


def _kernel_path() -> Path:
    from ..cache import default_cache_dir

    compiler = os.environ.get("CC", "gcc")
    digest = hashlib.sha256("\0".join([_KERNEL_SOURCE, compiler, *_CFLAGS]).encode()).hexdigest()
    return default_cache_dir() / "kernels" / f"int8-{digest[:16]}" / "libllmq_int8.so"


def _build(path: Path) -> None:
    """Compile to a temporary name and rename, under a file lock: parallel test workers
    build once, and a killed build never leaves a half-written library behind."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=300):
        if path.exists():
            return
        src = path.with_suffix(".c")
        src.write_text(_KERNEL_SOURCE, encoding="utf-8")
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
        os.close(fd)
        try:
            cmd = [os.environ.get("CC", "gcc"), *_CFLAGS, str(src), "-o", tmp, "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no output"])[0]
                raise RuntimeError(f"gcc failed: {first}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _load() -> ctypes.CDLL:
    if os.environ.get("LLMQ_INT8_KERNEL", "1") == "0":
        raise RuntimeError("disabled by LLMQ_INT8_KERNEL=0")
    if sys.platform != "linux" or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise RuntimeError("needs Linux on an x86-64 CPU with AVX2")
    path = _kernel_path()
    if not path.exists():
        _build(path)
    lib = ctypes.CDLL(str(path))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.llmq_wo_gemm.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, i32]
    lib.llmq_wo_gemm.restype = None
    lib.llmq_w8a8_gemm.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64, i64, i32]
    lib.llmq_w8a8_gemm.restype = None
    lib.llmq_wo_packed.argtypes = [p, p, p, p, i64, i64, i64, i64, i32]
    lib.llmq_wo_packed.restype = None
    lib.llmq_unpack_f32.argtypes = [p, p, i64, i64, i64, i32]
    lib.llmq_unpack_f32.restype = None
    lib.llmq_w8a8_packed.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i32]
    lib.llmq_w8a8_packed.restype = None
    if lib.llmq_abi_version() != 3:
        raise RuntimeError(f"{path} is a different kernel version")
    return lib


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (with one warning per process) if it cannot
    be built or loaded here; callers then take the pure-torch path."""
    global _kernel, _kernel_error, _warned
    if _kernel is not None:  # the per-call fast path: no lock once loaded
        return _kernel
    with _lock:
        if _kernel is None and _kernel_error is None:
            try:
                _kernel = _load()
            except Exception as exc:  # any failure means: use the torch path
                _kernel_error = " ".join(str(exc).split()) or type(exc).__name__
        if _kernel is None and not _warned:
            _warned = True
            warnings.warn(
                f"pytest-llmquant: int8 C kernel unavailable ({_kernel_error}); "
                "using the slower pure-torch path",
                RuntimeWarning,
                stacklevel=3,
            )
        return _kernel


def threads_for(work: int) -> int:
    """OpenMP threads for a call doing ``work`` multiply-adds: 1 below ``_PARALLEL_MIN_WORK``.

    On a small CPU shared with other processes, waking a second thread for each small
    matrix-vector product costs more than it saves (a parallel region waits for a thread
    the OS has not scheduled yet: we measured 100x slowdowns of 1536x576 products on
    this 2-core machine under load), so only big layers (``lm_head``) and prompts fan out.
    """
    return 1 if work < _PARALLEL_MIN_WORK else torch.get_num_threads()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class WeightOnlyInt8Linear(nn.Module):
    """A linear layer holding int8 weights and float32 block scales, never a float weight.

    Shapes the C kernel can stream (columns in whole 32-column chunks and whole groups)
    are kept only in the packed layout of :func:`int8_math.pack_rows`; other shapes keep
    row-major ``weight_int8`` and ``scales``. Either way there is deliberately no
    ``weight`` attribute: nothing can silently fall back to a float weight, and
    :func:`pytest_llmquant.layers.coverage` counts the layer as quantized.
    """

    packed: torch.Tensor | None
    weight_int8: torch.Tensor | None
    scales: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int | None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = group_size  # None: per channel
        if scales.shape != (self.out_features, n_groups(self.in_features, group_size)):
            raise ValueError(
                f"scales of shape {tuple(scales.shape)} do not fit {tuple(q.shape)} "
                f"with group_size={group_size}"
            )
        self.is_packed = packable(self.out_features, self.in_features, group_size)
        if self.is_packed:
            self.register_buffer("packed", pack_rows(q, scales, group_size))
            self.register_buffer("weight_int8", None)
            self.register_buffer("scales", None)
        else:
            self.register_buffer("packed", None)
            self.register_buffer("weight_int8", q.to(torch.int8).contiguous())
            self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )
        #: block length the kernels see (the whole row when per channel)
        self.block = group_size or max(self.in_features, 1)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None) -> WeightOnlyInt8Linear:
        q, scales = quantize_per_channel(linear.weight.detach().to(torch.float32), group_size)
        return cls(q, scales, linear.bias, group_size)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        """Keep scales and bias float32 through ``.to(dtype)``/``.half()`` (moving them
        between devices is fine): the kernels read them as float32 whatever the
        activations are, and a round trip through bfloat16 would lose precision."""
        kept = {n: t for n in ("bias", "scales") if (t := self._buffers.get(n)) is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != torch.float32:
                self._buffers[name] = old.to(new.device)
        return self

    def int8_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, scales)`` in the row-major layout of :func:`int8_math.quantize_per_channel`."""
        if self.packed is not None:
            return unpack_rows(self.packed, self.out_features, self.in_features, self.group_size)
        assert self.weight_int8 is not None and self.scales is not None
        return self.weight_int8, self.scales

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer stands for (prompts and the pure-torch path)."""
        lib = kernel()
        if self.packed is not None and lib is not None:
            n, k = self.out_features, self.in_features
            w = torch.empty(n, k, dtype=torch.float32)
            lib.llmq_unpack_f32(
                self.packed.data_ptr(), w.data_ptr(), n, k, self.block, threads_for(n * k * 8)
            )
            return w
        q, scales = self.int8_state()
        return dequantize(q, scales, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # decode fast path: a few microseconds of Python per call matter here, because
        # a 135M model makes ~200 of these calls per generated token
        lib = _kernel
        if (
            lib is not None
            and self.packed is not None
            and x.dtype is torch.float32
            and x.is_contiguous()
            and x.device.type == "cpu"
        ):
            n, k = self.out_features, self.in_features
            m = x.numel() // k
            if 0 < m <= _KERNEL_MAX_TOKENS:
                y = x.new_empty((*x.shape[:-1], n))
                lib.llmq_wo_packed(
                    self.packed.data_ptr(),
                    x.data_ptr(),
                    None if self.bias is None else self.bias.data_ptr(),
                    y.data_ptr(),
                    m,
                    n,
                    k,
                    self.block,
                    threads_for(m * n * k),
                )
                return y
        return self._forward_general(x)

    def _forward_general(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        lead = x.shape[:-1]
        m = lead.numel()
        lib = kernel()
        if lib is None or m > _KERNEL_MAX_TOKENS or x.device.type != "cpu" or m == 0:
            w = self.dequantized_weight().to(x.device, x.dtype)
            return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        x2 = x.reshape(m, k).to(torch.float32).contiguous()
        y = torch.empty(m, n, dtype=torch.float32)
        bias = None if self.bias is None else self.bias.data_ptr()
        nt = threads_for(m * n * k)
        if self.packed is not None:
            lib.llmq_wo_packed(
                self.packed.data_ptr(), x2.data_ptr(), bias, y.data_ptr(), m, n, k, self.block, nt
            )
        else:
            assert self.weight_int8 is not None and self.scales is not None
            lib.llmq_wo_gemm(
                self.weight_int8.data_ptr(),
                self.scales.data_ptr(),
                x2.data_ptr(),
                bias,
                y.data_ptr(),
                m,
                n,
                k,
                self.block,
                self.scales.shape[1],
                nt,
            )
        return y.reshape(*lead, n).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}, "
            f"packed={self.is_packed}"
        )


def _group_option(value: Any) -> int | None:
    if value in (None, 0, "0", "none", "channel"):
        return None
    size = int(value)
    if size < 1:
        raise ValueError(f"group_size must be >= 1 (or 0/None for per channel), not {value!r}")
    return size


def _skipped(name: str, skip: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


class WeightOnlyInt8(QuantScheme):
    name = "weight-only-int8"
    shares_float_weights = True  # it replaces linear layers, never writes to a weight
    summary = (
        "int8 weights, one float32 scale per 32 input columns (Q8_0 layout), float32 "
        "activations; AVX2 C kernel for decode, lm_head included"
    )
    #: measured 0.0042 on SmolLM2-135M over the default corpus (benchmarks/schemes.py),
    #: rounded up with room for the corpus and library versions changing
    kld_bound = 0.005

    def __init__(self, **config: Any) -> None:
        config.setdefault("group_size", 32)
        config.setdefault("skip", [])
        super().__init__(**config)
        self.group_size = _group_option(config["group_size"])
        self.skip = [str(s) for s in config["skip"]]

    def quantize(self, model: nn.Module) -> nn.Module:
        kernel()  # build (or find) the kernel now, not inside the first timed forward
        convert_conv1d(model)
        for name, module in linear_like_layers(model).items():
            if not _skipped(name, self.skip):
                assert isinstance(module, nn.Linear)  # convert_conv1d made every layer one
                set_submodule(
                    model, name, WeightOnlyInt8Linear.from_linear(module, self.group_size)
                )
        return model

    def is_quantized_module(self, module: nn.Module) -> bool:
        return type(module) is WeightOnlyInt8Linear

    def state_tensors(
        self, name: str, module: nn.Module
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert isinstance(module, WeightOnlyInt8Linear)
        q, scales = module.int8_state()  # always the row-major layout: files outlive kernels
        parts = {"weight_int8": q, "scales": scales}
        if module.bias is not None:
            parts["bias"] = module.bias
        meta = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "group_size": module.group_size,
            "bias": module.bias is not None,
        }
        return parts, meta

    def module_from_tensors(
        self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> nn.Module:
        kernel()  # as in quantize: a loaded model is ready to time
        return WeightOnlyInt8Linear(
            tensors["weight_int8"],
            tensors["scales"],
            tensors.get("bias") if meta["bias"] else None,
            meta["group_size"],
        )
