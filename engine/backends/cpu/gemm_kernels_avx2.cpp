// gemm_kernels_avx2.cpp: the AVX2+FMA SGEMM micro-kernel (6 x 16 register tile: 12 ymm accumulators), its
// packing wrappers and a direct kernel for small problems. Every function here carries target("avx2,fma")
// and is only called after the driver checked the CPU supports both.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "engine/backends/cpu/gemm_kernels.h"

#define ENG_AVX2 __attribute__((target("avx2,fma")))
#define ENG_GEMM_TARGET ENG_AVX2
#include "engine/backends/cpu/gemm_small_driver.h"

namespace eng::gemm {
namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;

// Lane mask for the first n (< 8) lanes, for maskload (AMD's masked stores are slow, so stores of partial
// rows go through a small buffer instead).
ENG_AVX2 ENG_GEMM_INLINE __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// C[0..nr) = alpha * acc + beta * C for a row held in two ymm; full rows use vector loads and stores.
ENG_AVX2 ENG_GEMM_INLINE void store_row(float* c, __m256 acc0, __m256 acc1, float alpha, float beta, int nr) {
  const __m256 valpha = _mm256_set1_ps(alpha);
  __m256 r0 = _mm256_mul_ps(acc0, valpha), r1 = _mm256_mul_ps(acc1, valpha);
  if (nr == 16) {
    if (beta != 0.0f) {
      const __m256 vbeta = _mm256_set1_ps(beta);
      r0 = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(c), r0);
      r1 = _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(c + 8), r1);
    }
    _mm256_storeu_ps(c, r0);
    _mm256_storeu_ps(c + 8, r1);
    return;
  }
  alignas(32) float tmp[16];
  _mm256_store_ps(tmp, r0);
  _mm256_store_ps(tmp + 8, r1);
  if (beta != 0.0f) {
    for (int j = 0; j < nr; j++) c[j] = __builtin_fmaf(beta, c[j], tmp[j]);
  } else {
    for (int j = 0; j < nr; j++) c[j] = tmp[j];
  }
}

ENG_AVX2 void micro_6x16(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                         int mr, int nr, float alpha, float beta) {
  __m256 acc0[kMR], acc1[kMR];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; i++) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (int i = 0; i < mr; i++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; p++) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; i++) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
    }
    a += kMR;
    b += kNR;
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; i++)
    if (i < mr) store_row(c + i * ldc, acc0[i], acc1[i], alpha, beta, nr);
}

ENG_AVX2 void pack_a(bool trans_a, const float* a, int64_t lda, int64_t rows, int64_t kc, float* dst) {
  pack_a_panels<kMR>(trans_a, a, lda, rows, kc, dst);
}
ENG_AVX2 void pack_b(bool trans_b, const float* b, int64_t ldb, int64_t cols, int64_t kc, float* dst) {
  pack_b_panels<kNR>(trans_b, b, ldb, cols, kc, dst);
}

// Small problems (gemm_small_driver.h): R rows x up to 16 columns per register block, operands read in place.
struct SmallTiles {
  template <int R>
  static ENG_AVX2 ENG_GEMM_INLINE void block(int64_t k, int nc, float alpha, const float* a, int64_t a_row,
                                             int64_t a_col, const float* b, int64_t ldb, float beta, float* c,
                                             int64_t ldc) {
    const __m256i m0 = lane_mask(nc >= 8 ? 8 : nc), m1 = lane_mask(nc >= 16 ? 8 : nc > 8 ? nc - 8 : 0);
    __m256 acc0[R], acc1[R];
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int64_t p = 0; p < k; p++) {
      __m256 b0, b1;
      if (nc == 16) {
        b0 = _mm256_loadu_ps(b + p * ldb);
        b1 = _mm256_loadu_ps(b + p * ldb + 8);
      } else {
        b0 = _mm256_maskload_ps(b + p * ldb, m0);
        b1 = _mm256_maskload_ps(b + p * ldb + 8, m1);
      }
      for (int r = 0; r < R; r++) {
        const __m256 ar = _mm256_set1_ps(a[r * a_row + p * a_col]);
        acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
      }
    }
    for (int r = 0; r < R; r++) store_row(c + r * ldc, acc0[r], acc1[r], alpha, beta, nc);
  }
  static ENG_AVX2 ENG_GEMM_INLINE void transpose_b(const float* b, int64_t ldb, int64_t k, int64_t n, float* dst) {
    copy_transposed_b(b, ldb, k, n, dst);
  }

  static constexpr int kCols = 16;
  static constexpr bool kDotTail = false;
};

ENG_AVX2 void small_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  small_sgemm_driver<SmallTiles>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace

const SgemmKernel& sgemm_kernel_avx2() {
  // kc: A micro-panel 6 x 256 floats = 6 KiB of L1; nc: B block 256 x 512 floats = 512 KiB of L2;
  // mc: A block 4080 x 256 floats = 4 MiB of L3.
  static const SgemmKernel k{"avx2", kMR, kNR, 256, 512, 4080, micro_6x16, small_sgemm, pack_a, pack_b};
  return k;
}

}  // namespace eng::gemm

#endif  // x86
