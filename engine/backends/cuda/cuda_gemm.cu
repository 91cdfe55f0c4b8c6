// cuda_gemm.cu: GEMM on the GPU through cuBLASLt, with classic cuBLAS (cublasGemmStridedBatchedEx) as the
// fallback when cuBLASLt's heuristic offers no algorithm.
//
// Convention: GemmArgs is row-major. A row-major matrix is the column-major matrix of its transpose with the
// same leading dimension, so row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets B as
// its first operand and A as its second, sizes (n, m, k).
// Types:   f32  compute 32F, or 32F_FAST_TF32 when set_cuda_tf32(true) (backend.h)
//          bf16 A, B, C in bf16, compute and scale in f32
//          f64  compute 64F
// Epilogues: Bias runs inside cuBLASLt (CUBLASLT_EPILOGUE_BIAS; f32 and bf16). cuBLASLt's own GELU epilogue is the
// tanh approximation, not the engine's exact erf GELU, so BiasGelu = cuBLASLt bias + our exact-GELU kernel
// (which also writes the pre-activation for backward). f64 and the fallback path do bias and GELU in our kernel.
// GeluGrad (C *= gelu'(pre), the backward of mlp_gelu's GELU) is our kernel after the GEMM, for the same reason:
// cuBLASLt's DGELU epilogue is the derivative of the tanh form.
// Heuristic results are cached per problem (types, sizes, leading dims, strides, alignments, epilogue, TF32).
// Determinism: cuBLAS(Lt) gives the same bits run to run for one algorithm on one GPU model; the algorithm for
// a problem is chosen once and reused.
#include <cublasLt.h>

#include <array>
#include <climits>
#include <map>
#include <mutex>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {

constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

struct GemmState {
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  std::mutex mu;  // guards the cache
  struct Cached {
    bool ok = false;
    cublasLtMatmulAlgo_t algo{};
  };
  std::map<std::array<int64_t, 20>, Cached> cache;
};

CudaBackend::CudaBackend(int device) : device_(device) {}

// Backends live until the process ends (cuda_backend.cu); the handles are left to the driver's teardown.
CudaBackend::~CudaBackend() = default;

GemmState& CudaBackend::gemm_state() {
  std::call_once(gemm_once_, [&] {
    auto s = std::make_unique<GemmState>();
    CUDA_CHECK(cudaSetDevice(device_));
    CUBLAS_CHECK(cublasCreate(&s->blas));
    CUBLAS_CHECK(cublasLtCreate(&s->lt));
    CUDA_CHECK(cudaMalloc(&s->workspace, kLtWorkspaceBytes));
    gemm_ = std::move(s);
  });
  return *gemm_;
}

void* CudaBackend::blas_handle() { return gemm_state().blas; }

namespace {

// RAII holders for cuBLASLt descriptors.
struct LtMatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~LtMatmulDesc() {
    if (d) cublasLtMatmulDescDestroy(d);
  }
};
struct LtLayout {
  cublasLtMatrixLayout_t d = nullptr;
  ~LtLayout() {
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};
struct LtPreference {
  cublasLtMatmulPreference_t d = nullptr;
  ~LtPreference() {
    if (d) cublasLtMatmulPreferenceDestroy(d);
  }
};

// Largest power of two (at most 256) that divides the address and every byte step taken from it.
uint32_t alignment_of(const void* p, int64_t ld_bytes, int64_t stride_bytes) {
  uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(p)) | uint64_t(ld_bytes) | uint64_t(stride_bytes) | 256u;
  return uint32_t(bits & (~bits + 1));
}

void make_layout(LtLayout& l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.d, type, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
}

void check_gemm_args(const GemmArgs& g) {
  ENG_CHECK(g.batch >= 0, "cuda gemm: negative batch {}", g.batch);
  ENG_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0, "cuda gemm: negative size m={} n={} k={}", g.m, g.n, g.k);
  if (g.batch == 0 || g.m == 0 || g.n == 0) return;
  ENG_CHECK(g.c, "cuda gemm: C is null");
  ENG_CHECK(g.ldc >= g.n, "cuda gemm: ldc={} is less than n={}", g.ldc, g.n);
  if (g.k == 0) return;
  ENG_CHECK(g.a && g.b, "cuda gemm: A or B is null");
  const int64_t a_cols = g.trans_a ? g.m : g.k, b_cols = g.trans_b ? g.k : g.n;
  ENG_CHECK(g.lda >= a_cols, "cuda gemm: lda={} is less than the {} columns of stored A", g.lda, a_cols);
  ENG_CHECK(g.ldb >= b_cols, "cuda gemm: ldb={} is less than the {} columns of stored B", g.ldb, b_cols);
}

// The GEMM through cuBLASLt with the algorithm its heuristic picks (cached per problem); false when it offers
// none. With lt_bias, cuBLASLt adds the bias (CUBLASLT_EPILOGUE_BIAS).
bool lt_matmul(GemmState& s, const GemmArgs& g, cudaDataType_t type, cublasComputeType_t compute,
               cudaDataType_t scale_type, const void* alpha, const void* beta, bool lt_bias, bool tf32) {
  const int64_t es = int64_t(dtype_size(g.dtype));
  // Column-major view: first operand = B (n x k after op), second = A (k x m after op), result n x m.
  const cublasOperation_t op1 = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LtMatmulDesc desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.d, compute, scale_type));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)));
  if (lt_bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
  }
  LtLayout la, lb, lc;
  make_layout(la, type, g.trans_b ? g.k : g.n, g.trans_b ? g.n : g.k, g.ldb, g.batch, g.stride_b);
  make_layout(lb, type, g.trans_a ? g.m : g.k, g.trans_a ? g.k : g.m, g.lda, g.batch, g.stride_a);
  make_layout(lc, type, g.n, g.m, g.ldc, g.batch, g.stride_c);
  const int64_t batch_step = g.batch > 1 ? 1 : 0;
  const uint32_t align_a = alignment_of(g.b, g.ldb * es, g.stride_b * es * batch_step);
  const uint32_t align_b = alignment_of(g.a, g.lda * es, g.stride_a * es * batch_step);
  const uint32_t align_c = alignment_of(g.c, g.ldc * es, g.stride_c * es * batch_step);
  const uint32_t align_bias = lt_bias ? alignment_of(g.bias, 0, 0) : 256u;
  const std::array<int64_t, 20> key = {int64_t(g.dtype), g.trans_a, g.trans_b, g.m, g.n, g.k, g.lda, g.ldb, g.ldc,
                                       g.stride_a * batch_step, g.stride_b * batch_step, g.stride_c * batch_step,
                                       g.batch, int64_t(lt_bias), int64_t(tf32), align_a, align_b, align_c, align_bias,
                                       int64_t(g.beta != 0.0)};
  GemmState::Cached algo;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.cache.find(key);
    if (it != s.cache.end()) {
      algo = it->second;
      known = true;
    }
  }
  if (!known) {
    LtPreference pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.d));
    const uint64_t ws = kLtWorkspaceBytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(s.lt, desc.d, la.d, lb.d, lc.d, lc.d, pref.d, 1, &result, &returned);
    algo.ok = st == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (algo.ok) algo.algo = result.algo;
    std::lock_guard<std::mutex> lock(s.mu);
    s.cache[key] = algo;
  }
  if (!algo.ok) return false;
  CUBLAS_CHECK(cublasLtMatmul(s.lt, desc.d, alpha, g.b, la.d, g.a, lb.d, beta, g.c, lc.d, g.c, lc.d, &algo.algo,
                              s.workspace, kLtWorkspaceBytes, 0));
  return true;
}

}  // namespace

void CudaBackend::gemm(const GemmArgs& g) {
  OpScope scope(*this, "cuda.gemm");
  check_gemm_args(g);
  if (g.batch == 0 || g.m == 0 || g.n == 0) return;
  ENG_CHECK(g.dtype == DType::F32 || g.dtype == DType::F64 || g.dtype == DType::BF16,
            "cuda gemm: dtype {} is not supported (f32, f64, bf16)", dtype_name(g.dtype));
  if (g.k == 0 || g.alpha == 0.0) {  // C = beta * C, then the epilogue
    gemm_scale_c(g);
    gemm_epilogue(g, false);
    return;
  }
  GemmState& s = gemm_state();
  const bool f64 = g.dtype == DType::F64, bf16 = g.dtype == DType::BF16;
  const bool tf32 = g.dtype == DType::F32 && cuda_tf32_enabled();
  const cudaDataType_t type = f64 ? CUDA_R_64F : (bf16 ? CUDA_R_16BF : CUDA_R_32F);
  const cublasComputeType_t compute = f64 ? CUBLAS_COMPUTE_64F : (tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
  const cudaDataType_t scale_type = f64 ? CUDA_R_64F : CUDA_R_32F;
  const float alpha_f = float(g.alpha), beta_f = float(g.beta);
  const void* alpha = f64 ? static_cast<const void*>(&g.alpha) : static_cast<const void*>(&alpha_f);
  const void* beta = f64 ? static_cast<const void*>(&g.beta) : static_cast<const void*>(&beta_f);
  // Column-major view for the fallback too: first operand = B, second = A, result n x m.
  const cublasOperation_t op1 = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const bool lt_bias = (g.epilogue == GemmEpilogue::Bias || g.epilogue == GemmEpilogue::BiasGelu) && g.bias &&
                       !f64;  // BiasGelu may come without a bias

  // A batch that shares A or B (stride 0, from a broadcast batch dim) goes to classic cuBLAS, which documents it.
  const bool shared_operand = g.batch > 1 && (g.stride_a == 0 || g.stride_b == 0);
  if (!shared_operand && lt_matmul(s, g, type, compute, scale_type, alpha, beta, lt_bias, tf32)) {
    gemm_epilogue(g, lt_bias);
    return;
  }

  // ---- classic cuBLAS (32-bit sizes)
  ENG_CHECK(g.m <= INT_MAX && g.n <= INT_MAX && g.k <= INT_MAX && g.lda <= INT_MAX && g.ldb <= INT_MAX &&
                g.ldc <= INT_MAX && g.batch <= INT_MAX,
            "cuda gemm: sizes m={} n={} k={} (or leading dims) exceed the 32-bit range of the cuBLAS fallback", g.m,
            g.n, g.k);
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(s.blas, op1, op2, int(g.n), int(g.m), int(g.k), alpha, g.b, type, int(g.ldb),
                                          g.stride_b, g.a, type, int(g.lda), g.stride_a, beta, g.c, type, int(g.ldc),
                                          g.stride_c, int(g.batch), compute, CUBLAS_GEMM_DEFAULT));
  gemm_epilogue(g, false);
}

}  // namespace cuda
}  // namespace eng
