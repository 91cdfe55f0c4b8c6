// cpu_backend.h: the CPU backend. Each family of kernels is in its own file:
//   cpu_elementwise.cpp  copy, fill, unary, binary, where
//   cpu_reduce.cpp       reduce, arg_reduce
//   cpu_gemm.cpp         gemm (packed, cache-blocked, run-time chosen micro-kernel) with bias / GELU epilogues
//   cpu_nn.cpp           softmax, layer norm
//   cpu_attention.cpp    fused attention for short sequences (forward and backward)
//   cpu_fused.cpp        f32 leaf kernels compiled per instruction set (GELU, epilogue tiles, column sums)
//   cpu_optim.cpp        adamw_update, adamw_update_multi (math in engine/optim_math.h), global_norm, sum_squares
//   cpu_index.cpp        index_select, index_add, gather, scatter_add, sort, topk
//   cpu_random.cpp       random_uniform, random_normal (Philox, engine/rng.h)
//   cpu_routing.cpp      cumsum, one_hot, bincount, grouped_gemm (expert routing)
// Parallel loops split work into pieces that do not depend on the thread count, so results are
// bitwise identical with any OMP_NUM_THREADS.
#pragma once
#include <vector>
#include "engine/backend.h"

namespace eng {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
#include "engine/backend_overrides.inc"  // every Backend method (engine/backend_methods.inc)
};

// The single raw-pointer GEMM entry points (row-major), also used by benchmarks directly.
void cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void cpu_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
               const double* b, int64_t ldb, double beta, double* c, int64_t ldc);
// What cpu_sgemm_fused does to C after alpha * op(A) op(B) + beta * C: add bias[j] to every row (bias may be
// null), then with gelu store the values to pre (row stride ldp; may be null) and apply the exact GELU. Each
// register tile gets it right after its last k block, while the tile is in L1.
// With gelu_grad instead, C is multiplied by gelu'(pre) (pre read, not written; no bias).
struct SgemmEpilogue {
  const float* bias = nullptr;
  bool gelu = false;
  float* pre = nullptr;
  int64_t ldp = 0;
  bool gelu_grad = false;
};
void cpu_sgemm_fused(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                     int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                     const SgemmEpilogue* ep);
// The epilogue of a GemmArgs (bias, GELU, GELU gradient) for its batch item whose C starts at c.
SgemmEpilogue sgemm_epilogue_for(const GemmArgs& g, const float* c);
// One problem of cpu_sgemm_grouped: its own rows of op(A), its own op(B) and C, and its epilogue (may be null).
struct SgemmProblem {
  int64_t m;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  const SgemmEpilogue* ep;
};
// Problems that share the transposes, n, k, alpha and beta (the experts of grouped_gemm), each computed with the bits
// cpu_sgemm_fused gives it alone, threaded together: the pool waits of one GEMM for all of them.
void cpu_sgemm_grouped(bool trans_a, bool trans_b, int64_t n, int64_t k, float alpha, float beta,
                       const std::vector<SgemmProblem>& problems);
// Name of the SGEMM micro-kernel chosen at run time ("avx512", "avx2", "generic").
const char* cpu_sgemm_kernel_name();

}  // namespace eng
