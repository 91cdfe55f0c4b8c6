// Fake cuBLASLt for the CPU emulation build: descriptors keep their attributes; the matmul checks that the
// layouts fit together and runs the naive GEMM.
#pragma once
#include "cublas_v2.h"

typedef struct EmuLt* cublasLtHandle_t;
struct EmuMatmulDesc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  int32_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  uint32_t epilogue = 1;
  const void* bias = nullptr;
};
struct EmuLayout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch = 1;
  int64_t stride = 0;
};
struct EmuPref {
  int dummy;
};
typedef EmuMatmulDesc* cublasLtMatmulDesc_t;
typedef EmuLayout* cublasLtMatrixLayout_t;
typedef EmuPref* cublasLtMatmulPreference_t;
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};
enum cublasLtEpilogue_t { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 };
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
};
enum cublasLtMatrixLayoutAttribute_t { CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6 };
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) { *h = reinterpret_cast<cublasLtHandle_t>(0x2); return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t c, cudaDataType_t s) {
  *d = new EmuMatmulDesc{c, s};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* v, size_t n) {
  switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA: if (n != 4) emu::fail("transa size"); std::memcpy(&d->ta, v, 4); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: if (n != 4) emu::fail("transb size"); std::memcpy(&d->tb, v, 4); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: if (n != 4) emu::fail("epilogue size"); std::memcpy(&d->epilogue, v, 4); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: if (n != sizeof(void*)) emu::fail("bias size"); std::memcpy(&d->bias, v, n); break;
  }
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t t, uint64_t rows, uint64_t cols, int64_t ld) {
  if (ld < int64_t(std::max<uint64_t>(1, rows))) emu::fail("layout: ld < rows");
  *l = new EmuLayout{t, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { delete l; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, const void* v, size_t n) {
  if (a == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) { if (n != 4) emu::fail("batch size"); std::memcpy(&l->batch, v, 4); }
  if (a == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET) { if (n != 8) emu::fail("stride size"); std::memcpy(&l->stride, v, 8); }
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) { *p = new EmuPref{}; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { delete p; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t a, const void*, size_t n) {
  if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && n != 8) emu::fail("workspace attr size");
  if (a != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && n != 4) emu::fail("alignment attr size");
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                                     cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                                     cublasLtMatmulPreference_t, int req, cublasLtMatmulHeuristicResult_t* r, int* ret) {
  if (req < 1) emu::fail("heuristic count");
  std::memset(r, 0, sizeof(*r));
  r->state = CUBLAS_STATUS_SUCCESS;
  *ret = 1;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void* alpha, const void* A, cublasLtMatrixLayout_t la,
                                     const void* B, cublasLtMatrixLayout_t lb, const void* beta, const void* C, cublasLtMatrixLayout_t lc,
                                     void* D, cublasLtMatrixLayout_t ld, const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
  const bool ta = d->ta == CUBLAS_OP_T, tb = d->tb == CUBLAS_OP_T;
  const uint64_t m = ta ? la->cols : la->rows, k = ta ? la->rows : la->cols;
  const uint64_t kb = tb ? lb->cols : lb->rows, n = tb ? lb->rows : lb->cols;
  if (k != kb) emu::fail("lt: inner dims differ");
  if (lc->rows != m || lc->cols != n || ld->rows != m || ld->cols != n) emu::fail("lt: C/D layout does not match op(A) op(B)");
  if (la->batch != lb->batch || la->batch != lc->batch || lc->batch != ld->batch) emu::fail("lt: batch counts differ");
  if (la->type != lb->type || la->type != lc->type) emu::fail("lt: mixed types");
  const bool f64 = d->compute == CUBLAS_COMPUTE_64F;
  if ((d->scale == CUDA_R_64F) != f64) emu::fail("lt: scale type");
  const double al = f64 ? *static_cast<const double*>(alpha) : double(*static_cast<const float*>(alpha));
  const double be = f64 ? *static_cast<const double*>(beta) : double(*static_cast<const float*>(beta));
  const void* bias = nullptr;
  if (d->epilogue == CUBLASLT_EPILOGUE_BIAS) {
    if (!d->bias) emu::fail("lt: bias epilogue without a pointer");
    bias = d->bias;
  }
  emu::g_gemm_calls_lt++;
  emu::naive_gemm(ta, tb, int64_t(m), int64_t(n), int64_t(k), al, A, la->type, la->ld, la->stride, B, lb->ld, lb->stride, be, C,
                  lc->ld, lc->stride, D, ld->ld, ld->stride, la->batch, bias, d->compute == CUBLAS_COMPUTE_32F_FAST_TF32);
  return CUBLAS_STATUS_SUCCESS;
}
