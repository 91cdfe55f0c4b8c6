// cpu_backend.h: the CPU backend. Each family of kernels is in its own file:
//   cpu_elementwise.cpp  copy, fill, unary, binary, where
//   cpu_reduce.cpp       reduce, arg_reduce
//   cpu_gemm.cpp         gemm (packed, cache-blocked, run-time chosen micro-kernel) with bias / GELU epilogues
//   cpu_nn.cpp           softmax, layer norm
//   cpu_attention.cpp    fused attention for short sequences (forward and backward)
//   cpu_fused.cpp        f32 leaf kernels compiled per instruction set (GELU, epilogue tiles, column sums)
//   cpu_optim.cpp        adamw_update, adamw_update_multi (math in engine/optim_math.h), global_norm
//   cpu_index.cpp        index_select, index_add, gather, scatter_add, sort, topk
//   cpu_random.cpp       random_uniform, random_normal (Philox, engine/rng.h)
//   cpu_routing.cpp      cumsum, one_hot, bincount, grouped_gemm (expert routing)
// Parallel loops split work into pieces that do not depend on the thread count, so results are
// bitwise identical with any OMP_NUM_THREADS.
#pragma once
#include "engine/backend.h"

namespace eng {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void copy(const TensorDesc& dst, const TensorDesc& src) override;
  void fill(const TensorDesc& dst, double value) override;
  void unary(UnaryOp op, const TensorDesc& dst, const TensorDesc& src, UnaryParams p) override;
  void binary(BinaryOp op, const TensorDesc& dst, const TensorDesc& a, const TensorDesc& b) override;
  void where(const TensorDesc& dst, const TensorDesc& cond, const TensorDesc& a, const TensorDesc& b) override;
  void reduce(ReduceOp op, const TensorDesc& dst, const TensorDesc& src) override;
  void arg_reduce(bool is_max, const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim) override;
  void gemm(const GemmArgs& g) override;
  bool supports_gemm_epilogue(GemmEpilogue e) const override;
  bool has_fused_attention(DType dt, int64_t head_dim, int64_t v_dim) const override;
  void attention_forward(const AttentionArgs& a) override;
  void attention_backward(const AttentionArgs& a) override;
  bool supports_strided_attention() const override;
  void softmax_forward(DType dt, void* y, const void* x, int64_t rows, int64_t cols, double scale, bool log) override;
  void softmax_backward(DType dt, void* dx, const void* y, const void* dy, int64_t rows, int64_t cols, double scale,
                        bool log) override;
  void layer_norm_forward(DType dt, void* y, void* mean, void* rstd, const void* x, const void* w, const void* b,
                          int64_t rows, int64_t cols, double eps) override;
  void layer_norm_backward(DType dt, void* dx, void* dw, void* db, const void* dy, const void* x, const void* mean,
                           const void* rstd, const void* w, int64_t rows, int64_t cols) override;
  void index_select(const TensorDesc& dst, const TensorDesc& src, int dim, const TensorDesc& index) override;
  void index_add(const TensorDesc& dst, int dim, const TensorDesc& index, const TensorDesc& src) override;
  void gather(const TensorDesc& dst, const TensorDesc& src, int dim, const TensorDesc& index) override;
  void scatter_add(const TensorDesc& dst, int dim, const TensorDesc& index, const TensorDesc& src) override;
  void sort(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim, bool descending) override;
  void topk(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int64_t k, int dim,
            bool largest) override;
  void random_uniform(const TensorDesc& dst, uint64_t seed, uint64_t stream, uint64_t offset, double lo,
                      double hi) override;
  void random_normal(const TensorDesc& dst, uint64_t seed, uint64_t stream, uint64_t offset, double mean,
                     double std) override;
  void adamw_update(DType dt, void* param, const void* grad, void* m, void* v, int64_t n, const AdamWArgs& a) override;
  void adamw_update_multi(DType dt, const std::vector<AdamWTensor>& tensors, const AdamWClip& clip) override;
  void global_norm(DType dt, const std::vector<SumSquaresTensor>& tensors, double* norm) override;
  // ---- routing for expert layers (cpu_routing.cpp)
  void cumsum(const TensorDesc& dst, const TensorDesc& src, int dim, bool reverse) override;
  void one_hot(const TensorDesc& dst, const TensorDesc& index) override;
  void bincount(const TensorDesc& counts, const TensorDesc& index) override;
  void grouped_gemm(const std::vector<GemmArgs>& groups) override;
  // ---- end of routing
};

namespace cpu {
// Sum of the squares of n contiguous f32 or f64 elements in f64, in global_norm's fixed order.
double sum_squares(DType dt, const void* data, int64_t n);
}  // namespace cpu

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
// Name of the SGEMM micro-kernel chosen at run time ("avx512", "avx2", "generic").
const char* cpu_sgemm_kernel_name();

}  // namespace eng
