// cuda_check.h: error checks for CUDA runtime and cuBLAS calls. Each failure names the call, the file,
// the line and a hint, in one line.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/error.h"

namespace eng::cuda {

inline const char* cuda_hint(cudaError_t e) {
  switch (e) {
    case cudaErrorNoDevice: return "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)";
    case cudaErrorInsufficientDriver: return "the driver is older than this CUDA runtime";
    case cudaErrorMemoryAllocation: return "out of GPU memory: lower the batch size";
    case cudaErrorInvalidDevice: return "device index out of range";
    default: return "run under compute-sanitizer for details";
  }
}

}  // namespace eng::cuda

#define CUDA_CHECK(call)                                                                              \
  do {                                                                                                \
    cudaError_t eng_err_ = (call);                                                                    \
    if (eng_err_ != cudaSuccess)                                                                      \
      ENG_FAIL("CUDA error {} ({}) in {} at {}:{}; hint: {}", cudaGetErrorName(eng_err_),            \
               cudaGetErrorString(eng_err_), #call, __FILE__, __LINE__, ::eng::cuda::cuda_hint(eng_err_)); \
  } while (0)

#define CUBLAS_CHECK(call)                                                                            \
  do {                                                                                                \
    cublasStatus_t eng_st_ = (call);                                                                  \
    if (eng_st_ != CUBLAS_STATUS_SUCCESS)                                                             \
      ENG_FAIL("cuBLAS error {} in {} at {}:{}; hint: check shapes and leading dimensions",          \
               int(eng_st_), #call, __FILE__, __LINE__);                                              \
  } while (0)

// After a kernel launch: the launch error always; a synchronising check in debug builds names the op.
#ifdef ENG_CUDA_DEBUG
#define CUDA_CHECK_LAUNCH(op)                                                     \
  do {                                                                            \
    CUDA_CHECK(cudaGetLastError());                                               \
    cudaError_t eng_sync_ = cudaDeviceSynchronize();                              \
    if (eng_sync_ != cudaSuccess) ENG_FAIL("CUDA kernel of op '{}' failed: {}", op, cudaGetErrorString(eng_sync_)); \
  } while (0)
#else
#define CUDA_CHECK_LAUNCH(op) CUDA_CHECK(cudaGetLastError())
#endif
