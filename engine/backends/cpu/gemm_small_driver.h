// gemm_small_driver.h: the driver of the direct (unpacked) SGEMM kernel for small problems, written once and
// compiled into each vector instruction set's kernel file (gemm_kernels_avx2.cpp, gemm_kernels_avx512.cpp).
// The including file defines ENG_GEMM_TARGET, its target attribute (a function inlined into a target-specific one
// must carry the same target), and gives small_sgemm_driver a Tiles type with:
//   static constexpr int kCols       columns of C in one register block
//   static constexpr bool kDotTail   whether the last 1..4 columns of a transposed B go to dot_tail_columns
//   template <int R> static void block(k, nc, alpha, a, a_row, a_col, b, ldb, beta, c, ldc)
//                                    R rows x nc (<= kCols) columns of C; B row-major, read in place
//   static void transpose_b(b, ldb, k, n, dst)   op(B) = B^T (stored n x k) written out as a contiguous k x n matrix
//   static void dot_tail_columns(m, j0, j1, k, alpha, a, lda, b, ldb, beta, c, ldc)   (kDotTail only)
#pragma once
#ifndef ENG_GEMM_TARGET
#error "define ENG_GEMM_TARGET (the kernel file's target attribute) before including gemm_small_driver.h"
#endif
#include <cstdint>
#include <vector>

#include "engine/backends/cpu/gemm_kernels_common.h"

namespace eng::gemm {

template <typename Tiles>
ENG_GEMM_TARGET ENG_GEMM_INLINE void small_sgemm_driver(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                                        float alpha, const float* a, int64_t lda, const float* b,
                                                        int64_t ldb, float beta, float* c, int64_t ldc) {
  constexpr int kCols = Tiles::kCols;
  // A last block of 1..4 columns would cost a whole block (attention scores of 65 tokens: 64 + 1); with B stored
  // transposed and A row-major those columns are dot products instead.
  int64_t n_main = n;
  if constexpr (Tiles::kDotTail) {
    if (trans_b && !trans_a && n > kCols && n % kCols != 0 && n % kCols <= 4) {
      n_main = n - n % kCols;
      Tiles::dot_tail_columns(m, n_main, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }
  }
  static thread_local std::vector<float> b_copy;
  if (trans_b) {
    b_copy.resize(size_t(k * n_main));
    Tiles::transpose_b(b, ldb, k, n_main, b_copy.data());
    b = b_copy.data();
    ldb = n_main;
  }
  const int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;
  for (int64_t j = 0; j < n_main; j += kCols) {
    const int nc = int(n_main - j < kCols ? n_main - j : kCols);
    int64_t i = 0;
    for (; i + 4 <= m; i += 4)
      Tiles::template block<4>(k, nc, alpha, a + i * a_row, a_row, a_col, b + j, ldb, beta, c + i * ldc + j, ldc);
    for (; i < m; i++)
      Tiles::template block<1>(k, nc, alpha, a + i * a_row, a_row, a_col, b + j, ldb, beta, c + i * ldc + j, ldc);
  }
}

}  // namespace eng::gemm
