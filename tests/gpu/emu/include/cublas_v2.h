// Fake cuBLAS for the CPU emulation build: a naive column-major strided-batched GEMM, and the grouped batched GEMM
// (pointer arrays) on the same naive loop.
#pragma once
#include "cuda_runtime.h"

#include <cstdint>
#include <cstring>

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77, CUBLAS_COMPUTE_64F = 70 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
typedef struct EmuBlas* cublasHandle_t;
inline const char* cublasGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS_EMU"; }
inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = reinterpret_cast<cublasHandle_t>(0x1); return CUBLAS_STATUS_SUCCESS; }

namespace emu {
extern int g_gemm_calls_classic, g_gemm_calls_lt, g_gemm_calls_grouped;
inline double load(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_32F: return double(static_cast<const float*>(p)[i]);
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16BF: {
      uint32_t u = uint32_t(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return double(f);
    }
    default: fail("bad data type");
  }
  return 0;
}
inline void store(void* p, cudaDataType_t t, int64_t i, double v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = float(v); break;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    case CUDA_R_16BF: {
      float f = float(v);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      u += 0x7fffu + ((u >> 16) & 1u);
      static_cast<uint16_t*>(p)[i] = uint16_t(u >> 16);
      break;
    }
    default: fail("bad data type");
  }
}
// Column-major D[i + j*ldd] = alpha * sum_p opA(i,p) opB(p,j) + beta * C[i + j*ldc] (+ bias[i]).
// TF32 inputs: an f32 with its mantissa rounded (to nearest, ties away) to 10 bits. Hardware may truncate instead;
// the tests' TF32 bounds (2^-10 per input) hold for both.
inline double tf32_round(double x) {
  float f = float(x);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return double(f);
}

inline void naive_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const void* A, cudaDataType_t at,
                       int64_t lda, int64_t sa, const void* B, int64_t ldb, int64_t sb, double beta, const void* C,
                       int64_t ldc, int64_t sc, void* D, int64_t ldd, int64_t sd, int64_t batch, const void* bias,
                       bool tf32 = false) {
  for (int64_t b = 0; b < batch; b++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < m; i++) {
        double acc = 0;
        for (int64_t p = 0; p < k; p++) {
          double a = load(A, at, b * sa + (ta ? p + i * lda : i + p * lda));
          double bb = load(B, at, b * sb + (tb ? j + p * ldb : p + j * ldb));
          if (tf32) {
            a = tf32_round(a);
            bb = tf32_round(bb);
          }
          acc += a * bb;
        }
        double v = alpha * acc;
        if (std::getenv("EMU_GEMM_DEBUG") && i == 0 && j == 0) std::fprintf(stderr, "naive: acc=%g c=%g beta=%g\n", acc, load(C, at, b * sc + i + j * ldc), beta);
        if (beta != 0) v += beta * load(C, at, b * sc + i + j * ldc);
        if (bias) v += load(bias, at, i);
        store(D, at, b * sd + i + j * ldd, v);
      }
}
}  // namespace emu

inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                                 int k, const void* alpha, const void* A, cudaDataType_t at, int lda,
                                                 long long sa, const void* B, cudaDataType_t bt, int ldb, long long sb,
                                                 const void* beta, void* C, cudaDataType_t ct, int ldc, long long sc,
                                                 int batch, cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (at != bt || bt != ct) emu::fail("classic gemm: mixed types");
  const bool f64 = compute == CUBLAS_COMPUTE_64F;
  const double al = f64 ? *static_cast<const double*>(alpha) : double(*static_cast<const float*>(alpha));
  const double be = f64 ? *static_cast<const double*>(beta) : double(*static_cast<const float*>(beta));
  // cuBLAS's requirements on leading dims.
  if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k)) emu::fail("classic gemm: lda too small");
  if (ldb < std::max(1, tb == CUBLAS_OP_N ? k : n)) emu::fail("classic gemm: ldb too small");
  if (ldc < std::max(1, m)) emu::fail("classic gemm: ldc too small");
  emu::g_gemm_calls_classic++;
  emu::naive_gemm(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, al, A, at, lda, sa, B, ldb, sb, be, C, ldc, sc, C, ldc, sc,
                  batch, nullptr, compute == CUBLAS_COMPUTE_32F_FAST_TF32);
  return CUBLAS_STATUS_SUCCESS;
}

// Grouped: group i has group_size[i] problems sharing transposes, sizes, leading dims, alpha[i] and beta[i]; the
// pointer arrays (device memory on a GPU) hold one entry per problem, groups one after another. The type
// combinations are those the engine uses and cuBLAS documents: f32 or bf16 operands with COMPUTE_32F.
inline cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t ta[], const cublasOperation_t tb[],
                                                 const int m[], const int n[], const int k[], const void* alpha,
                                                 const void* const A[], cudaDataType_t at, const int lda[],
                                                 const void* const B[], cudaDataType_t bt, const int ldb[],
                                                 const void* beta, void* const C[], cudaDataType_t ct, const int ldc[],
                                                 int group_count, const int group_size[], cublasComputeType_t compute) {
  if (at != bt || bt != ct) emu::fail("grouped gemm: mixed types");
  if (compute != CUBLAS_COMPUTE_32F || (at != CUDA_R_32F && at != CUDA_R_16BF))
    emu::fail("grouped gemm: only f32 / bf16 operands with CUBLAS_COMPUTE_32F are emulated");
  if (group_count < 0) emu::fail("grouped gemm: negative group count");
  emu::g_gemm_calls_grouped++;
  int64_t problem = 0;
  for (int i = 0; i < group_count; i++) {
    if (m[i] < 0 || n[i] < 0 || k[i] < 0 || group_size[i] < 0) emu::fail("grouped gemm: negative size");
    if (lda[i] < std::max(1, ta[i] == CUBLAS_OP_N ? m[i] : k[i])) emu::fail("grouped gemm: lda too small");
    if (ldb[i] < std::max(1, tb[i] == CUBLAS_OP_N ? k[i] : n[i])) emu::fail("grouped gemm: ldb too small");
    if (ldc[i] < std::max(1, m[i])) emu::fail("grouped gemm: ldc too small");
    const double al = double(static_cast<const float*>(alpha)[i]), be = double(static_cast<const float*>(beta)[i]);
    for (int j = 0; j < group_size[i]; j++, problem++)
      emu::naive_gemm(ta[i] == CUBLAS_OP_T, tb[i] == CUBLAS_OP_T, m[i], n[i], k[i], al, A[problem], at, lda[i], 0,
                      B[problem], ldb[i], 0, be, C[problem], ldc[i], 0, C[problem], ldc[i], 0, 1, nullptr);
  }
  return CUBLAS_STATUS_SUCCESS;
}
