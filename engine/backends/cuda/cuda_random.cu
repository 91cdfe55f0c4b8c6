// cuda_random.cu: random_uniform and random_normal on the GPU. Element i (row-major logical index of dst,
// whatever its strides) gets Philox counter offset + i through the same ENG_HOST_DEVICE functions the CPU uses
// (engine/rng.h), so uniform fills are bitwise identical to the CPU's, and normal fills agree to the last bit of
// CUDA's log/cos (see rng.h). One thread per element: no order, nothing to repeat differently.
#include "engine/backends/cuda/cuda_common.cuh"
#include "engine/rng.h"

namespace eng {
namespace cuda {
namespace {

template <typename T>
__global__ void uniform_kernel(T* __restrict__ d, Geo g, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                               double lo, double hi) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[1];
    geo_offsets<1>(g, i, off);
    if constexpr (std::is_same_v<T, float>)
      d[off[0]] = philox_uniform_f32(seed, stream, offset + uint64_t(i), lo, hi);
    else
      d[off[0]] = philox_uniform_f64(seed, stream, offset + uint64_t(i), lo, hi);
  }
}

template <typename T>
__global__ void normal_kernel(T* __restrict__ d, Geo g, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                              double mean, double std) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[1];
    geo_offsets<1>(g, i, off);
    d[off[0]] = T(philox_normal_f64(seed, stream, offset + uint64_t(i), mean, std));
  }
}

// Row-major logical order must survive make_geo's merging: it only merges dims whose row-major order is kept.
Geo random_geo(const TensorDesc& dst) {
  const TensorDesc* ds[1] = {&dst};
  return make_geo(ds, 1);
}

}  // namespace

void CudaBackend::random_uniform(const TensorDesc& dst, uint64_t seed, uint64_t stream, uint64_t offset, double lo,
                                 double hi) {
  OpScope scope(*this, "cuda.random_uniform");
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Geo g = random_geo(dst);
  switch (dst.dtype) {
    case DType::F32:
      uniform_kernel<float><<<blocks_for(n), kThreads>>>(static_cast<float*>(dst.data), g, n, seed, stream, offset, lo, hi);
      break;
    case DType::F64:
      uniform_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(dst.data), g, n, seed, stream, offset, lo, hi);
      break;
    default: ENG_FAIL("random_uniform: dtype {} not supported on cuda (f32, f64)", dtype_name(dst.dtype));
  }
  CUDA_CHECK_LAUNCH("random_uniform");
}

void CudaBackend::random_normal(const TensorDesc& dst, uint64_t seed, uint64_t stream, uint64_t offset, double mean,
                                double std) {
  OpScope scope(*this, "cuda.random_normal");
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Geo g = random_geo(dst);
  switch (dst.dtype) {
    case DType::F32:
      normal_kernel<float><<<blocks_for(n), kThreads>>>(static_cast<float*>(dst.data), g, n, seed, stream, offset, mean, std);
      break;
    case DType::F64:
      normal_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(dst.data), g, n, seed, stream, offset, mean, std);
      break;
    default: ENG_FAIL("random_normal: dtype {} not supported on cuda (f32, f64)", dtype_name(dst.dtype));
  }
  CUDA_CHECK_LAUNCH("random_normal");
}

}  // namespace cuda
}  // namespace eng
