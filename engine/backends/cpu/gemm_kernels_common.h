// gemm_kernels_common.h: SGEMM packing routines written once as always-inline templates. Each kernel file
// wraps them in a function compiled for its instruction set, so the same source vectorises per target.
#pragma once
#include <cstdint>
#include <cstring>

#define ENG_GEMM_INLINE inline __attribute__((always_inline))

namespace eng::gemm {

// Packs rows [0, rows) of op(A) (starting at `a`, already offset to the block) and kc k steps into
// ceil(rows / MR) micro-panels: panel r at dst + r * MR * kc holds dst[p * MR + i] = op(A)(r * MR + i, p),
// zero past the last row.
template <int MR>
ENG_GEMM_INLINE void pack_a_panels(bool trans_a, const float* a, int64_t lda, int64_t rows, int64_t kc, float* dst) {
  const int64_t panels = (rows + MR - 1) / MR;
  if (trans_a) {
    // op(A)(i, p) = a[p * lda + i]: walk each stored row once, left to right, dealing it out to the panels.
    for (int64_t p = 0; p < kc; p++) {
      const float* src = a + p * lda;
      for (int64_t r = 0; r < panels; r++) {
        float* d = dst + r * MR * kc + p * MR;
        const int64_t mr = rows - r * MR;
        if (mr >= MR) {
          for (int i = 0; i < MR; i++) d[i] = src[r * MR + i];
        } else {
          for (int i = 0; i < mr; i++) d[i] = src[r * MR + i];
          for (int i = int(mr); i < MR; i++) d[i] = 0.0f;
        }
      }
    }
    return;
  }
  // op(A)(i, p) = a[i * lda + p]: a transpose; blocks of 8 k steps keep the reads of each row contiguous.
  for (int64_t r = 0; r < panels; r++) {
    const float* ar = a + r * MR * lda;
    float* dr = dst + r * MR * kc;
    const int mr = int(rows - r * MR < MR ? rows - r * MR : MR);
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
      float* d = dr + p * MR;
      for (int i = 0; i < mr; i++) {
        const float* src = ar + i * lda + p;
        for (int q = 0; q < 8; q++) d[q * MR + i] = src[q];
      }
      for (int i = mr; i < MR; i++)
        for (int q = 0; q < 8; q++) d[q * MR + i] = 0.0f;
    }
    for (; p < kc; p++) {
      float* d = dr + p * MR;
      for (int i = 0; i < mr; i++) d[i] = ar[i * lda + p];
      for (int i = mr; i < MR; i++) d[i] = 0.0f;
    }
  }
}

// Packs columns [0, cols) of op(B) (starting at `b`) and kc k steps into ceil(cols / NR) micro-panels: panel q
// at dst + q * NR * kc holds dst[p * NR + j] = op(B)(p, q * NR + j), zero past the last column.
template <int NR>
ENG_GEMM_INLINE void pack_b_panels(bool trans_b, const float* b, int64_t ldb, int64_t cols, int64_t kc, float* dst) {
  const int64_t panels = (cols + NR - 1) / NR;
  if (!trans_b) {
    // op(B)(p, j) = b[p * ldb + j]: walk each stored row once, dealing it out to the panels.
    for (int64_t p = 0; p < kc; p++) {
      const float* src = b + p * ldb;
      for (int64_t q = 0; q < panels; q++) {
        float* d = dst + q * NR * kc + p * NR;
        const int64_t nr = cols - q * NR;
        if (nr >= NR) {
          for (int j = 0; j < NR; j++) d[j] = src[q * NR + j];
        } else {
          for (int j = 0; j < nr; j++) d[j] = src[q * NR + j];
          for (int j = int(nr); j < NR; j++) d[j] = 0.0f;
        }
      }
    }
    return;
  }
  // op(B)(p, j) = b[j * ldb + p]: a transpose, in blocks of 8 k steps as for A.
  for (int64_t q = 0; q < panels; q++) {
    const float* bq = b + q * NR * ldb;
    float* dq = dst + q * NR * kc;
    const int nr = int(cols - q * NR < NR ? cols - q * NR : NR);
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
      float* d = dq + p * NR;
      for (int j = 0; j < nr; j++) {
        const float* src = bq + j * ldb + p;
        for (int r = 0; r < 8; r++) d[r * NR + j] = src[r];
      }
      for (int j = nr; j < NR; j++)
        for (int r = 0; r < 8; r++) d[r * NR + j] = 0.0f;
    }
    for (; p < kc; p++) {
      float* d = dq + p * NR;
      for (int j = 0; j < nr; j++) d[j] = bq[j * ldb + p];
      for (int j = nr; j < NR; j++) d[j] = 0.0f;
    }
  }
}

// Copies op(B) (k x n) into a contiguous row-major buffer; small kernels use it when B is transposed.
ENG_GEMM_INLINE void copy_transposed_b(const float* b, int64_t ldb, int64_t k, int64_t n, float* dst) {
  for (int64_t j = 0; j < n; j++)
    for (int64_t p = 0; p < k; p++) dst[p * n + j] = b[j * ldb + p];
}

}  // namespace eng::gemm
