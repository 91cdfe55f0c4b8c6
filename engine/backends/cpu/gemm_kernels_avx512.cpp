// gemm_kernels_avx512.cpp: the AVX-512 SGEMM micro-kernel (12 x 32 register tile: 24 zmm accumulators),
// its packing wrappers and a direct kernel for small problems. Compiled for baseline x86-64; every function
// here carries target("avx512f") and is only called after the driver checked the CPU supports it.
#if defined(__x86_64__) || defined(__i386__)
// GCC 12's unpack/shuffle intrinsics pass an undefined vector as the masked-off source, which its
// uninitialised-use analysis reports once they are inlined here; the values are never used.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "engine/backends/cpu/gemm_kernels.h"

#define ENG_AVX512 __attribute__((target("avx512f")))
#define ENG_GEMM_TARGET ENG_AVX512
#include "engine/backends/cpu/gemm_small_driver.h"

namespace eng::gemm {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;

// Stores one row of the tile: C = alpha * acc + beta * C (C not read when beta == 0).
ENG_AVX512 ENG_GEMM_INLINE void store_row(float* c, __m512 acc0, __m512 acc1, __m512 valpha, __m512 vbeta,
                                          bool read_c) {
  __m512 r0 = _mm512_mul_ps(acc0, valpha), r1 = _mm512_mul_ps(acc1, valpha);
  if (read_c) {
    r0 = _mm512_fmadd_ps(vbeta, _mm512_loadu_ps(c), r0);
    r1 = _mm512_fmadd_ps(vbeta, _mm512_loadu_ps(c + 16), r1);
  }
  _mm512_storeu_ps(c, r0);
  _mm512_storeu_ps(c + 16, r1);
}

ENG_AVX512 ENG_GEMM_INLINE void store_row_masked(float* c, __m512 acc0, __m512 acc1, __m512 valpha, __m512 vbeta,
                                                 bool read_c, __mmask16 m0, __mmask16 m1) {
  __m512 r0 = _mm512_mul_ps(acc0, valpha), r1 = _mm512_mul_ps(acc1, valpha);
  if (read_c) {
    r0 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m0, c), r0);
    r1 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m1, c + 16), r1);
  }
  _mm512_mask_storeu_ps(c, m0, r0);
  _mm512_mask_storeu_ps(c + 16, m1, r1);
}

// Stores the mr x nr tile held in the accumulators: C = alpha * acc + beta * C, masked at a partial tile's edges.
ENG_AVX512 ENG_GEMM_INLINE void store_tile(float* c, int64_t ldc, const __m512* acc0, const __m512* acc1, int mr, int nr,
                                           float alpha, float beta) {
  const __m512 valpha = _mm512_set1_ps(alpha), vbeta = _mm512_set1_ps(beta);
  const bool read_c = beta != 0.0f;
  if (mr == kMR && nr == kNR) {
#pragma GCC unroll 12
    for (int i = 0; i < kMR; i++) store_row(c + i * ldc, acc0[i], acc1[i], valpha, vbeta, read_c);
    return;
  }
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF) : nr <= 16 ? __mmask16(0) : __mmask16((1u << (nr - 16)) - 1);
#pragma GCC unroll 12
  for (int i = 0; i < kMR; i++)
    if (i < mr) store_row_masked(c + i * ldc, acc0[i], acc1[i], valpha, vbeta, read_c, m0, m1);
}

ENG_AVX512 void micro_12x32(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                            int mr, int nr, float alpha, float beta) {
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; i++) acc0[i] = acc1[i] = _mm512_setzero_ps();
  // Pull the C tile toward L1 while the k loop runs; it is needed only at the end.
  for (int i = 0; i < mr; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNR), _MM_HINT_T0);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; i++) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += kMR;
    b += kNR;
  }
  store_tile(c, ldc, acc0, acc1, mr, nr, alpha, beta);
}

// The k loop of the tile with A read in place: row i at rows[i / 4] + (i % 4) * lda, advancing one float per k step.
ENG_AVX512 ENG_GEMM_INLINE void direct_a_loop(int64_t kc, const float* r0, const float* r4, const float* r8, int64_t lda,
                                              const float* __restrict b, __m512* acc0, __m512* acc1) {
  const int64_t l2 = 2 * lda, l3 = 3 * lda;
  for (int64_t p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNR), _MM_HINT_T0);
    const float* base[3] = {r0 + p, r4 + p, r8 + p};
#pragma GCC unroll 3
    for (int g = 0; g < 3; g++) {
      const __m512 x0 = _mm512_set1_ps(base[g][0]), x1 = _mm512_set1_ps(base[g][lda]);
      const __m512 x2 = _mm512_set1_ps(base[g][l2]), x3 = _mm512_set1_ps(base[g][l3]);
      acc0[4 * g] = _mm512_fmadd_ps(x0, b0, acc0[4 * g]);
      acc1[4 * g] = _mm512_fmadd_ps(x0, b1, acc1[4 * g]);
      acc0[4 * g + 1] = _mm512_fmadd_ps(x1, b0, acc0[4 * g + 1]);
      acc1[4 * g + 1] = _mm512_fmadd_ps(x1, b1, acc1[4 * g + 1]);
      acc0[4 * g + 2] = _mm512_fmadd_ps(x2, b0, acc0[4 * g + 2]);
      acc1[4 * g + 2] = _mm512_fmadd_ps(x2, b1, acc1[4 * g + 2]);
      acc0[4 * g + 3] = _mm512_fmadd_ps(x3, b0, acc0[4 * g + 3]);
      acc1[4 * g + 3] = _mm512_fmadd_ps(x3, b1, acc1[4 * g + 3]);
    }
    b += kNR;
  }
}

// The same tile as micro_12x32 with A read in place: row i at a + i * lda. Each k step broadcasts one float from
// each of the 12 rows, whose current cache lines stay in L1 while the B block streams past, as a packed panel
// would. Same arithmetic in the same order as micro_12x32, so the results are bitwise equal. A partial tile
// (mr < 12) reads a copy of its rows padded with zeros instead, so no row past the matrix is touched.
ENG_AVX512 void micro_12x32_direct_a(int64_t kc, const float* a, int64_t lda, const float* __restrict b, float* c,
                                     int64_t ldc, int mr, int nr, float alpha, float beta) {
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; i++) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int i = 0; i < mr; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
  if (mr == kMR) {
    direct_a_loop(kc, a, a + 4 * lda, a + 8 * lda, lda, b, acc0, acc1);
  } else {
    static thread_local std::vector<float> rows;
    rows.assign(size_t(kMR * kc), 0.0f);
    for (int i = 0; i < mr; i++) std::copy(a + i * lda, a + i * lda + kc, rows.begin() + i * kc);
    direct_a_loop(kc, rows.data(), rows.data() + 4 * kc, rows.data() + 8 * kc, kc, b, acc0, acc1);
  }
  store_tile(c, ldc, acc0, acc1, mr, nr, alpha, beta);
}

// The same tile with a transposed A read in place: element (i, p) of op(A) at a[p * lda + i], so each k step
// broadcasts 12 consecutive floats, exactly the layout of a packed A panel but lda apart instead of 12. Same
// arithmetic in the same order as micro_12x32 (bitwise equal results). A partial tile (mr < 12) reads a padded
// copy, so nothing past the matrix is touched.
ENG_AVX512 void micro_12x32_direct_at(int64_t kc, const float* a, int64_t lda, const float* __restrict b, float* c,
                                      int64_t ldc, int mr, int nr, float alpha, float beta) {
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; i++) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int i = 0; i < mr; i++) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
  int64_t step = lda;
  if (mr < kMR) {
    static thread_local std::vector<float> panel;
    panel.assign(size_t(kMR * kc), 0.0f);
    for (int64_t p = 0; p < kc; p++) std::copy(a + p * lda, a + p * lda + mr, panel.begin() + p * kMR);
    a = panel.data();
    step = kMR;
  }
  for (int64_t p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(a + 4 * step), _MM_HINT_T0);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; i++) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += step;
    b += kNR;
  }
  store_tile(c, ldc, acc0, acc1, mr, nr, alpha, beta);
}

// Transposes 16 rows of 16 floats (r[i] = row i) into 16 columns (col[c] lane i = r[i] lane c). Rows
// 12..15 may be known zero (zero_tail), which skips a quarter of the shuffles.
ENG_AVX512 ENG_GEMM_INLINE void transpose16(const __m512 r[16], __m512 col[16], bool zero_tail) {
  __m512 u[16];
  for (int g = 0; g < 4; g++) {
    if (zero_tail && g == 3) {
      for (int i = 12; i < 16; i++) u[i] = _mm512_setzero_ps();
      break;
    }
    const __m512 t0 = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]), t1 = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
    const __m512 t2 = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
    const __m512 t3 = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
    // Per 128-bit lane, u[4g + c] = (row 4g, 4g+1, 4g+2, 4g+3) at column c (+4, +8, +12 in lanes 1..3).
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  }
  for (int c = 0; c < 4; c++) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[c], u[c + 4], 0x88), x1 = _mm512_shuffle_f32x4(u[c], u[c + 4], 0xdd);
    const __m512 y0 = _mm512_shuffle_f32x4(u[c + 8], u[c + 12], 0x88);
    const __m512 y1 = _mm512_shuffle_f32x4(u[c + 8], u[c + 12], 0xdd);
    col[c] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    col[c + 8] = _mm512_shuffle_f32x4(x0, y0, 0xdd);
    col[c + 4] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    col[c + 12] = _mm512_shuffle_f32x4(x1, y1, 0xdd);
  }
}

// A not transposed: each micro-panel is 12 stored rows turned on their side, 16 k steps at a time.
ENG_AVX512 void pack_a(bool trans_a, const float* a, int64_t lda, int64_t rows, int64_t kc, float* dst) {
  const int64_t panels = (rows + kMR - 1) / kMR;
  const __mmask16 keep12 = 0x0FFF;
  if (trans_a) {
    // op(A)(i, p) = a[p * lda + i]: 12-float runs. Tiles of 16 k steps x 4 panels keep the source lines and
    // the destination lines (each panel gets 16 whole k steps = 12 cache lines) in L1 while they are used.
    for (int64_t p0 = 0; p0 < kc; p0 += 16) {
      const int64_t p1 = p0 + 16 < kc ? p0 + 16 : kc;
      for (int64_t r = 0; r < panels; r++) {
        const int64_t mr = rows - r * kMR;
        const __mmask16 mask = mr >= kMR ? keep12 : __mmask16((1u << mr) - 1);
        const float* src = a + r * kMR;
        float* d = dst + r * kMR * kc;
        for (int64_t p = p0; p < p1; p++)
          _mm512_mask_storeu_ps(d + p * kMR, keep12, _mm512_maskz_loadu_ps(mask, src + p * lda));
      }
    }
    return;
  }
  for (int64_t r = 0; r < panels; r++) {
    const float* ar = a + r * kMR * lda;
    float* dr = dst + r * kMR * kc;
    const int mr = int(rows - r * kMR < kMR ? rows - r * kMR : kMR);
    int64_t p = 0;
    for (; p + 16 <= kc; p += 16) {
      __m512 row[16], col[16];
      for (int i = 0; i < 16; i++) row[i] = i < mr ? _mm512_loadu_ps(ar + i * lda + p) : _mm512_setzero_ps();
      transpose16(row, col, true);
      for (int c = 0; c < 16; c++) _mm512_mask_storeu_ps(dr + (p + c) * kMR, keep12, col[c]);
    }
    for (; p < kc; p++) {
      float* d = dr + p * kMR;
      for (int i = 0; i < mr; i++) d[i] = ar[i * lda + p];
      for (int i = mr; i < kMR; i++) d[i] = 0.0f;
    }
  }
}

// B transposed (stored n x k): each 32-column micro-panel is two 16 x 16 transposes per 16 k steps.
ENG_AVX512 void pack_b(bool trans_b, const float* b, int64_t ldb, int64_t cols, int64_t kc, float* dst) {
  if (!trans_b) {
    pack_b_panels<kNR>(false, b, ldb, cols, kc, dst);
    return;
  }
  const int64_t panels = (cols + kNR - 1) / kNR;
  for (int64_t q = 0; q < panels; q++) {
    const float* bq = b + q * kNR * ldb;
    float* dq = dst + q * kNR * kc;
    const int nr = int(cols - q * kNR < kNR ? cols - q * kNR : kNR);
    int64_t p = 0;
    for (; p + 16 <= kc; p += 16) {
      for (int h = 0; h < 2; h++) {
        __m512 row[16], col[16];
        for (int j = 0; j < 16; j++)
          row[j] = 16 * h + j < nr ? _mm512_loadu_ps(bq + (16 * h + j) * ldb + p) : _mm512_setzero_ps();
        transpose16(row, col, false);
        for (int c = 0; c < 16; c++) _mm512_store_ps(dq + (p + c) * kNR + 16 * h, col[c]);
      }
    }
    for (; p < kc; p++) {
      float* d = dq + p * kNR;
      for (int j = 0; j < nr; j++) d[j] = bq[j * ldb + p];
      for (int j = nr; j < kNR; j++) d[j] = 0.0f;
    }
  }
}

// Small problems (gemm_small_driver.h): R rows of C x up to 32 columns per register block, B read in place
// (row-major k x n with leading dimension ldb), A read through its strides. Masked loads clip the columns.
struct SmallTiles {
  template <int R>
  static ENG_AVX512 ENG_GEMM_INLINE void block(int64_t k, int nc, float alpha, const float* a, int64_t a_row,
                                              int64_t a_col, const float* b, int64_t ldb, float beta, float* c,
                                              int64_t ldc) {
    const __mmask16 m0 = nc >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nc) - 1);
    const __mmask16 m1 = nc >= 32 ? __mmask16(0xFFFF) : nc <= 16 ? __mmask16(0) : __mmask16((1u << (nc - 16)) - 1);
    __m512 acc0[R], acc1[R];
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p++) {
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + p * ldb), b1 = _mm512_maskz_loadu_ps(m1, b + p * ldb + 16);
      for (int r = 0; r < R; r++) {
        const __m512 ar = _mm512_set1_ps(a[r * a_row + p * a_col]);
        acc0[r] = _mm512_fmadd_ps(ar, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(ar, b1, acc1[r]);
      }
    }
    const __m512 valpha = _mm512_set1_ps(alpha), vbeta = _mm512_set1_ps(beta);
    for (int r = 0; r < R; r++) store_row_masked(c + r * ldc, acc0[r], acc1[r], valpha, vbeta, beta != 0.0f, m0, m1);
  }

  // op(B) = B^T (B stored n x k) written out as a contiguous k x n matrix, 16 x 16 blocks at a time.
  static ENG_AVX512 void transpose_b(const float* b, int64_t ldb, int64_t k, int64_t n, float* dst) {
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      const int jn = int(n - j0 < 16 ? n - j0 : 16);
      const __mmask16 mask_j = jn == 16 ? __mmask16(0xFFFF) : __mmask16((1u << jn) - 1);
      for (int64_t p0 = 0; p0 < k; p0 += 16) {
        const int pn = int(k - p0 < 16 ? k - p0 : 16);
        const __mmask16 mask_p = pn == 16 ? __mmask16(0xFFFF) : __mmask16((1u << pn) - 1);
        __m512 row[16], col[16];
        for (int j = 0; j < 16; j++)
          row[j] = j < jn ? _mm512_maskz_loadu_ps(mask_p, b + (j0 + j) * ldb + p0) : _mm512_setzero_ps();
        transpose16(row, col, false);
        for (int c = 0; c < pn; c++) _mm512_mask_storeu_ps(dst + (p0 + c) * n + j0, mask_j, col[c]);
      }
    }
  }

  // C[i][j] = alpha * (row i of A . row j of the stored B) + beta * C[i][j] for the last few columns of a problem
  // with B transposed (stored n x k, so a column of op(B) is contiguous): one vector dot product over k per element.
  static ENG_AVX512 void dot_tail_columns(int64_t m, int64_t j0, int64_t j1, int64_t k, float alpha, const float* a,
                                          int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                                          int64_t ldc) {
    for (int64_t j = j0; j < j1; j++) {
      const float* bj = b + j * ldb;
      for (int64_t i = 0; i < m; i++) {
        const float* ai = a + i * lda;
        __m512 acc = _mm512_setzero_ps();
        int64_t p = 0;
        for (; p + 16 <= k; p += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(ai + p), _mm512_loadu_ps(bj + p), acc);
        if (p < k) {
          const __mmask16 mk = __mmask16((1u << (k - p)) - 1);
          acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, ai + p), _mm512_maskz_loadu_ps(mk, bj + p), acc);
        }
        const float v = alpha * _mm512_reduce_add_ps(acc);
        c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
      }
    }
  }

  static constexpr int kCols = 32;
  static constexpr bool kDotTail = true;
};

ENG_AVX512 void small_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                            const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                            int64_t ldc) {
  small_sgemm_driver<SmallTiles>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

const SgemmKernel& sgemm_kernel_avx512() {
  // kc: A micro-panel 12 x 384 floats = 18 KiB of the 32 KiB L1; nc: B block 384 x 320 floats = 480 KiB of
  // a 1 MiB L2; mc: A block 3072 x 384 floats = 4.5 MiB of L3.
  static const SgemmKernel k{"avx512", kMR, kNR, 384, 320, 3072, micro_12x32, small_sgemm, pack_a, pack_b,
                             micro_12x32_direct_a, micro_12x32_direct_at};
  return k;
}

}  // namespace eng::gemm

#endif  // x86
