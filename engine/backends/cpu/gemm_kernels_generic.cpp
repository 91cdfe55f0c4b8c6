// gemm_kernels_generic.cpp: the portable SGEMM micro-kernel (4 x 16 tile in plain C++, which the compiler
// vectorises with whatever the baseline target has), its packing wrappers and a direct small-problem kernel.
// Used on CPUs without AVX2+FMA.
#include <vector>

#include "engine/backends/cpu/gemm_kernels.h"
#include "engine/backends/cpu/gemm_kernels_common.h"

namespace eng::gemm {
namespace {

constexpr int kMR = 4;
constexpr int kNR = 16;

void micro_4x16(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc, int mr,
                int nr, float alpha, float beta) {
  float acc[kMR][kNR] = {};
  for (int64_t p = 0; p < kc; p++) {
    for (int i = 0; i < kMR; i++) {
      const float ai = a[i];
      for (int j = 0; j < kNR; j++) acc[i][j] += ai * b[j];
    }
    a += kMR;
    b += kNR;
  }
  for (int i = 0; i < mr; i++) {
    float* row = c + i * ldc;
    if (beta != 0.0f) {
      for (int j = 0; j < nr; j++) row[j] = alpha * acc[i][j] + beta * row[j];
    } else {
      for (int j = 0; j < nr; j++) row[j] = alpha * acc[i][j];
    }
  }
}

void pack_a(bool trans_a, const float* a, int64_t lda, int64_t rows, int64_t kc, float* dst) {
  pack_a_panels<kMR>(trans_a, a, lda, rows, kc, dst);
}
void pack_b(bool trans_b, const float* b, int64_t ldb, int64_t cols, int64_t kc, float* dst) {
  pack_b_panels<kNR>(trans_b, b, ldb, cols, kc, dst);
}

// Small problems: one row of C at a time, accumulated in a local buffer over k (in order), B rows contiguous.
void small_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  static thread_local std::vector<float> b_copy, acc;
  if (trans_b) {
    b_copy.resize(size_t(k * n));
    copy_transposed_b(b, ldb, k, n, b_copy.data());
    b = b_copy.data();
    ldb = n;
  }
  acc.resize(size_t(n));
  const int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;
  for (int64_t i = 0; i < m; i++) {
    float* __restrict s = acc.data();
    for (int64_t j = 0; j < n; j++) s[j] = 0.0f;
    for (int64_t p = 0; p < k; p++) {
      const float aip = a[i * a_row + p * a_col];
      const float* __restrict brow = b + p * ldb;
      for (int64_t j = 0; j < n; j++) s[j] += aip * brow[j];
    }
    float* row = c + i * ldc;
    if (beta != 0.0f) {
      for (int64_t j = 0; j < n; j++) row[j] = alpha * s[j] + beta * row[j];
    } else {
      for (int64_t j = 0; j < n; j++) row[j] = alpha * s[j];
    }
  }
}

}  // namespace

const SgemmKernel& sgemm_kernel_generic() {
  static const SgemmKernel k{"generic", kMR, kNR, 256, 256, 1024, micro_4x16, small_sgemm, pack_a, pack_b};
  return k;
}

}  // namespace eng::gemm
