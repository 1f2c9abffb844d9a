/* The int8 matrix kernels of pytest-llmquant's weight-only-int8 and smoothquant-w8a8 schemes.

   Built at run time by pytest_llmquant/schemes/kernels/build.py (gcc -O3 -mavx2 -mfma -fopenmp)
   into the pytest-llmquant cache, and called through ctypes by the typed wrappers in
   pytest_llmquant/schemes/kernels/__init__.py. Each function is checked against the
   pure-torch references of pytest_llmquant/schemes/int8_math.py (tests/test_schemes.py).

   Every exported function but llmq_abi_version returns an int status: LLMQ_OK, or an
   LLMQ_E* code below, in which case y was not (fully) written and must not be read.
   Arguments are checked before anything is written, and a failed scratch allocation is
   reported as LLMQ_ENOMEM rather than as a silent early return. */

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LLMQ_OK 0
#define LLMQ_ENOMEM 1 /* a scratch buffer could not be allocated */
#define LLMQ_EINVAL 2 /* sizes that do not describe a valid call */
#define LLMQ_ENONFINITE 3 /* llmq_quantize_rows met an inf or a nan */
#define LLMQ_ABI_VERSION 7
#define LLMQ_MAX_PARTS 8 /* sibling layers one llmq_wo_packed_parts call computes */

/* The checks every entry point shares: non-negative sizes, G blocks of gs columns
   covering K (the last may be shorter), at least one thread. */
static int bad_sizes(int64_t M, int64_t N, int64_t K, int64_t gs, int64_t G, int nthreads) {
    if (M < 0 || N < 0 || K < 0 || gs < 1 || G < 0 || nthreads < 1) return 1;
    return K > 0 && G != (K + gs - 1) / gs;
}

/* The packed layout needs whole 32-column chunks and whole groups (int8_math.packable). */
static int bad_packed(int64_t M, int64_t N, int64_t K, int64_t gs, int nthreads) {
    if (gs < 32 || gs % 32 != 0 || K % gs != 0) return 1;
    return bad_sizes(M, N, K, gs, K / gs, nthreads);
}

/* Scratch for the quantized activations: xq (M x K int8) and xs (M x G float32). A size
   whose byte count overflows size_t cannot be allocated either, so it is ENOMEM too. */
static int alloc_act(int64_t M, int64_t K, int64_t G, int8_t** xq, float** xs) {
    const uint64_t m = (uint64_t)M, k = (uint64_t)K, g = (uint64_t)G;
    *xq = NULL;
    *xs = NULL;
    if ((k && m > SIZE_MAX / k) || (g && m > SIZE_MAX / sizeof(float) / g)) return LLMQ_ENOMEM;
    const size_t nq = (size_t)(m * k), ns = (size_t)(m * g) * sizeof(float);
    *xq = (int8_t*)malloc(nq ? nq : 1);
    *xs = (float*)malloc(ns ? ns : 1);
    if (*xq && *xs) return LLMQ_OK;
    free(*xq);
    free(*xs);
    *xq = NULL;
    *xs = NULL;
    return LLMQ_ENOMEM;
}

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
int llmq_wo_gemm(const int8_t* q, const float* s, const float* x, const float* bias,
                 float* y, int64_t M, int64_t N, int64_t K, int64_t gs, int64_t G,
                 int nthreads) {
    if (bad_sizes(M, N, K, gs, G, nthreads)) return LLMQ_EINVAL;
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
    return LLMQ_OK;
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
int llmq_w8a8_gemm(const int8_t* q, const float* ws, const float* x, const float* inv_s,
                   const float* bias, float* y, int64_t M, int64_t N, int64_t K, int64_t gs,
                   int64_t G, int nthreads) {
    if (bad_sizes(M, N, K, gs, G, nthreads)) return LLMQ_EINVAL;
    int8_t* xq;
    float* xs;
    if (alloc_act(M, K, G, &xq, &xs) != LLMQ_OK) return LLMQ_ENOMEM;
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
    return LLMQ_OK;
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
int llmq_wo_packed(const uint8_t* P, const float* x, const float* bias, float* y,
                   int64_t M, int64_t N, int64_t K, int64_t gs, int nthreads) {
    if (bad_packed(M, N, K, gs, nthreads)) return LLMQ_EINVAL;
    const int64_t G = K / gs, C = gs / 32, nblocks = (N + PK_ROWS - 1) / PK_ROWS;
    const int64_t bstride = G * (16 + 128 * C);
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t b = 0; b < nblocks; ++b)
        for (int64_t m = 0; m < M; ++m)
            wo_packed_block(P + b * bstride, x + m * K, y + m * N, bias, b * PK_ROWS, N, G, C);
    return LLMQ_OK;
}

/* Several sibling layers that read the same input (q/k/v, gate/up) in one call, so one
   parallel region and one pass over x serve them all. Their packed weights lie back to
   back in P (every part but the last a whole number of 4-row blocks, so the concatenation
   is itself the packed layout of the stacked weight). Part p's output is its own
   contiguous (M, rows[p]) block of y, at y + M * (rows[0] + ... + rows[p-1]), with
   biases[p] (NULL: none). One part is a plain layer. */
int llmq_wo_packed_parts(const uint8_t* P, const float* x, float* y, int64_t M, int64_t K,
                         int64_t gs, int64_t nparts, const int64_t* rows,
                         const float* const* biases, int nthreads) {
    if (nparts < 1 || nparts > LLMQ_MAX_PARTS || !rows || !biases) return LLMQ_EINVAL;
    int64_t first[LLMQ_MAX_PARTS + 1], off[LLMQ_MAX_PARTS], N = 0;
    first[0] = 0;
    for (int64_t p = 0; p < nparts; ++p) {
        if (rows[p] < 1 || (p + 1 < nparts && rows[p] % PK_ROWS)) return LLMQ_EINVAL;
        off[p] = N;
        N += rows[p];
        first[p + 1] = (N + PK_ROWS - 1) / PK_ROWS;
    }
    if (bad_packed(M, N, K, gs, nthreads)) return LLMQ_EINVAL;
    const int64_t G = K / gs, C = gs / 32, nblocks = first[nparts];
    const int64_t bstride = G * (16 + 128 * C);
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t b = 0; b < nblocks; ++b) {
        int64_t p = 0;
        while (b >= first[p + 1]) ++p;
        float* yp = y + M * off[p];
        const int64_t n0 = (b - first[p]) * PK_ROWS;
        for (int64_t m = 0; m < M; ++m)
            wo_packed_block(P + b * bstride, x + m * K, yp + m * rows[p], biases[p], n0,
                            rows[p], G, C);
    }
    return LLMQ_OK;
}

/* What a prepared decode call keeps fixed (kernels/calls.py makes one per fused group):
   llmq_wo_packed_run takes only what changes per token, because each argument ctypes
   converts costs about 0.1 us and a 135M model makes 121 of these calls per token. */
typedef struct {
    const uint8_t* P;
    int64_t K, gs, nparts;
    const int64_t* rows;
    const float* const* biases;
} llmq_parts_t;

/* llmq_wo_packed_parts on a prepared call; every size is checked there, as before. */
int llmq_wo_packed_run(const llmq_parts_t* c, const float* x, float* y, int64_t M,
                       int nthreads) {
    if (!c) return LLMQ_EINVAL;
    return llmq_wo_packed_parts(c->P, x, y, M, c->K, c->gs, c->nparts, c->rows, c->biases,
                                nthreads);
}

/* Symmetric int8 of a float32 weight (N, K), one scale per row and block of gs columns
   (the last block may be shorter): int8_math.quantize_per_channel in one pass, bit for
   bit. The same steps in the same precision: amax in double, the scale amax / 127 rounded
   to float32 and then toward zero when rounding went up, at least FLT_MIN, and q the
   double quotient rounded half to even (nearbyint, as torch.round) and clamped to +-127.
   No FMA contraction can enter (gcc -std=c11 contracts nothing, and there is no a*b+c). */
int llmq_quantize_rows(const float* w, int8_t* q, float* s, int64_t N, int64_t K, int64_t gs,
                       int nthreads) {
    if (N < 0 || K < 1 || gs < 1 || nthreads < 1) return LLMQ_EINVAL;
    const int64_t G = (K + gs - 1) / gs;
    int bad = 0;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1) reduction(|:bad)
    for (int64_t n = 0; n < N; ++n) {
        const float* row = w + n * K;
        for (int64_t g = 0; g < G; ++g) {
            const int64_t c0 = g * gs, c1 = c0 + gs < K ? c0 + gs : K;
            double amax = 0.0;
            for (int64_t c = c0; c < c1; ++c) {
                const double a = fabs((double)row[c]);
                bad |= !(a <= DBL_MAX); /* inf, or nan (every comparison with it is false) */
                amax = a > amax ? a : amax;
            }
            const double exact = amax / 127.0;
            float sc = (float)exact;
            if ((double)sc > exact) sc = nextafterf(sc, 0.0f);
            if (sc < FLT_MIN) sc = FLT_MIN;
            const double sd = (double)sc;
            for (int64_t c = c0; c < c1; ++c) {
                double v = nearbyint((double)row[c] / sd);
                v = v > 127.0 ? 127.0 : (v < -127.0 ? -127.0 : v);
                q[n * K + c] = (int8_t)v;
            }
            s[n * G + g] = sc;
        }
    }
    return bad ? LLMQ_ENONFINITE : LLMQ_OK;
}

/* The float32 weight (N, K) the packed layout stands for: prompts use it with the GEMM. */
int llmq_unpack_f32(const uint8_t* P, float* w, int64_t N, int64_t K, int64_t gs,
                    int nthreads) {
    if (bad_packed(0, N, K, gs, nthreads)) return LLMQ_EINVAL;
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
    return LLMQ_OK;
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
int llmq_w8a8_packed(const uint8_t* P, const float* x, const float* inv_s, const float* bias,
                     float* y, int64_t M, int64_t N, int64_t K, int64_t gs, int nthreads) {
    if (bad_packed(M, N, K, gs, nthreads)) return LLMQ_EINVAL;
    const int64_t G = K / gs, C = gs / 32, nblocks = (N + PK_ROWS - 1) / PK_ROWS;
    const int64_t bstride = G * (16 + 128 * C);
    int8_t* xq;
    float* xs;
    if (alloc_act(M, K, G, &xq, &xs) != LLMQ_OK) return LLMQ_ENOMEM;
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
    return LLMQ_OK;
}

/* Not a status: the version of this interface, which the loader checks. */
int llmq_abi_version(void) { return LLMQ_ABI_VERSION; }
