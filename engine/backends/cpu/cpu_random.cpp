// cpu_random.cpp: CPU kernels random_uniform and random_normal. Element i (row-major logical index
// of dst, whatever its strides) gets Philox counter offset + i (engine/rng.h), so each value depends
// only on (seed, stream, offset + i): the same for any thread count and the same as the CUDA kernels.
#include <cstdint>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"
#include "engine/rng.h"

namespace eng {

namespace {

// Calls f(i, element offset) for every logical index i of dst, in fixed blocks (thread-count independent).
template <typename F> void for_each_logical(const TensorDesc& dst, F f) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (dst.contiguous()) {
    cpu::parallel_for(n, cpu::kBlock, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) f(i, i);
    });
    return;
  }
  const int nd = dst.ndim;
  cpu::parallel_for(n, cpu::kBlock, [&](int64_t lo, int64_t hi) {
    // Multi-index of `lo`, then an odometer walk to `hi`.
    int64_t idx[kMaxDims] = {};
    int64_t off = 0;
    int64_t rest = lo;
    for (int d = nd - 1; d >= 0; d--) {
      idx[d] = rest % dst.shape[d];
      rest /= dst.shape[d];
      off += idx[d] * dst.strides[d];
    }
    for (int64_t i = lo; i < hi; i++) {
      f(i, off);
      for (int d = nd - 1; d >= 0; d--) {
        off += dst.strides[d];
        if (++idx[d] < dst.shape[d]) break;
        off -= idx[d] * dst.strides[d];
        idx[d] = 0;
      }
    }
  });
}

}  // namespace

void CpuBackend::random_uniform(const TensorDesc& dst, uint64_t seed, uint64_t stream, uint64_t offset, double lo,
                                double hi) {
  switch (dst.dtype) {
    case DType::F32: {
      float* p = static_cast<float*>(dst.data);
      for_each_logical(dst, [&](int64_t i, int64_t off) {
        p[off] = philox_uniform_f32(seed, stream, offset + uint64_t(i), lo, hi);
      });
      break;
    }
    case DType::F64: {
      double* p = static_cast<double*>(dst.data);
      for_each_logical(dst, [&](int64_t i, int64_t off) {
        p[off] = philox_uniform_f64(seed, stream, offset + uint64_t(i), lo, hi);
      });
      break;
    }
    default: ENG_FAIL("random_uniform: dtype {} not supported on the CPU (f32, f64)", dtype_name(dst.dtype));
  }
}

void CpuBackend::random_normal(const TensorDesc& dst, uint64_t seed, uint64_t stream, uint64_t offset, double mean,
                               double std) {
  switch (dst.dtype) {
    case DType::F32: {
      float* p = static_cast<float*>(dst.data);
      for_each_logical(dst, [&](int64_t i, int64_t off) {
        p[off] = float(philox_normal_f64(seed, stream, offset + uint64_t(i), mean, std));
      });
      break;
    }
    case DType::F64: {
      double* p = static_cast<double*>(dst.data);
      for_each_logical(dst, [&](int64_t i, int64_t off) {
        p[off] = philox_normal_f64(seed, stream, offset + uint64_t(i), mean, std);
      });
      break;
    }
    default: ENG_FAIL("random_normal: dtype {} not supported on the CPU (f32, f64)", dtype_name(dst.dtype));
  }
}

}  // namespace eng
