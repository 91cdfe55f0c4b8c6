// cuda_check.h: error checks for CUDA runtime, cuBLAS / cuBLASLt, cuDNN and NCCL calls. Each failure throws
// eng::Error with one line naming the call, the file, the line and a hint.
//   CUDA_CHECK(cudaMalloc(&p, n));
//   CUBLAS_CHECK(cublasLtMatmul(...));          // cuBLASLt returns cublasStatus_t too
//   CUDA_CHECK_LAUNCH("softmax_forward");       // after a kernel launch: the launch error always, and in
//                                               // debug builds (ENG_CUDA_DEBUG) a sync that names the op
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/error.h"

#if defined(__has_include)
#if __has_include(<cudnn.h>)
#include <cudnn.h>
#define ENG_HAVE_CUDNN_HEADER 1
#endif
#if __has_include(<nccl.h>)
#include <nccl.h>
#define ENG_HAVE_NCCL_HEADER 1
#endif
#endif

namespace eng::cuda {

inline const char* cuda_hint(cudaError_t e) {
  switch (e) {
    case cudaErrorNoDevice: return "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)";
    case cudaErrorInsufficientDriver: return "the driver is older than this CUDA runtime";
    case cudaErrorMemoryAllocation: return "out of GPU memory: lower the batch size";
    case cudaErrorInvalidDevice: return "device index out of range";
    case cudaErrorNoKernelImageForDevice: return "this GPU's architecture is not in the build's -gencode list (see the Makefile)";
    case cudaErrorIllegalAddress: return "a kernel read or wrote outside its buffers: rebuild with DEBUG=1 and run under compute-sanitizer";
    case cudaErrorLaunchOutOfResources: return "too many registers or threads for one block";
    case cudaErrorInvalidConfiguration: return "bad grid/block/shared-memory configuration for the launch";
    default: return "run under compute-sanitizer for details";
  }
}

inline const char* cublas_hint(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "cuBLAS handle not created (is a GPU visible?)";
    case CUBLAS_STATUS_ALLOC_FAILED: return "out of GPU memory for cuBLAS workspace";
    case CUBLAS_STATUS_INVALID_VALUE: return "check sizes, leading dimensions and strides";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "this GPU lacks the feature (e.g. bf16 or TF32 needs sm_80+)";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "no algorithm for this combination of types, layouts and epilogue";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GEMM kernel failed to run (see compute-sanitizer)";
    default: return "check shapes and leading dimensions";
  }
}

}  // namespace eng::cuda

#define CUDA_CHECK(call)                                                                                     \
  do {                                                                                                       \
    cudaError_t eng_err_ = (call);                                                                           \
    if (eng_err_ != cudaSuccess)                                                                             \
      ENG_FAIL("CUDA error {} ({}) in {} at {}:{}; hint: {}", cudaGetErrorName(eng_err_),                   \
               cudaGetErrorString(eng_err_), #call, __FILE__, __LINE__, ::eng::cuda::cuda_hint(eng_err_));   \
  } while (0)

#define CUBLAS_CHECK(call)                                                                                   \
  do {                                                                                                       \
    cublasStatus_t eng_st_ = (call);                                                                         \
    if (eng_st_ != CUBLAS_STATUS_SUCCESS)                                                                    \
      ENG_FAIL("cuBLAS error {} in {} at {}:{}; hint: {}", cublasGetStatusName(eng_st_), #call, __FILE__,   \
               __LINE__, ::eng::cuda::cublas_hint(eng_st_));                                                 \
  } while (0)

#ifdef ENG_HAVE_CUDNN_HEADER
#define CUDNN_CHECK(call)                                                                                    \
  do {                                                                                                       \
    cudnnStatus_t eng_st_ = (call);                                                                          \
    if (eng_st_ != CUDNN_STATUS_SUCCESS)                                                                     \
      ENG_FAIL("cuDNN error {} in {} at {}:{}; hint: check the cuDNN version (9.x) and tensor layouts",     \
               cudnnGetErrorString(eng_st_), #call, __FILE__, __LINE__);                                     \
  } while (0)
#endif

#ifdef ENG_HAVE_NCCL_HEADER
#define NCCL_CHECK(call)                                                                                     \
  do {                                                                                                       \
    ncclResult_t eng_st_ = (call);                                                                           \
    if (eng_st_ != ncclSuccess)                                                                              \
      ENG_FAIL("NCCL error {} in {} at {}:{}; hint: set NCCL_DEBUG=INFO and check that every rank called",  \
               ncclGetErrorString(eng_st_), #call, __FILE__, __LINE__);                                      \
  } while (0)
#endif

// After a kernel launch: the launch error always; a synchronising check in debug builds names the op.
#ifdef ENG_CUDA_DEBUG
#define CUDA_CHECK_LAUNCH(op)                                                                                \
  do {                                                                                                       \
    cudaError_t eng_launch_ = cudaGetLastError();                                                            \
    if (eng_launch_ != cudaSuccess)                                                                          \
      ENG_FAIL("CUDA launch of op '{}' failed at {}:{}: {}; hint: {}", op, __FILE__, __LINE__,              \
               cudaGetErrorString(eng_launch_), ::eng::cuda::cuda_hint(eng_launch_));                        \
    cudaError_t eng_sync_ = cudaDeviceSynchronize();                                                         \
    if (eng_sync_ != cudaSuccess)                                                                            \
      ENG_FAIL("CUDA kernel of op '{}' failed at {}:{}: {}; hint: {}", op, __FILE__, __LINE__,              \
               cudaGetErrorString(eng_sync_), ::eng::cuda::cuda_hint(eng_sync_));                            \
  } while (0)
#else
#define CUDA_CHECK_LAUNCH(op)                                                                                \
  do {                                                                                                       \
    cudaError_t eng_launch_ = cudaGetLastError();                                                            \
    if (eng_launch_ != cudaSuccess)                                                                          \
      ENG_FAIL("CUDA launch of op '{}' failed at {}:{}: {}; hint: {}", op, __FILE__, __LINE__,              \
               cudaGetErrorString(eng_launch_), ::eng::cuda::cuda_hint(eng_launch_));                        \
  } while (0)
#endif
