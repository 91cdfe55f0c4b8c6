// cpu_optim.cpp: the CPU kernel of the fused AdamW update (per-element math in engine/optim_math.h).
// Purely elementwise over fixed blocks, so the result is the same for any thread count.
#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"
#include "engine/optim_math.h"

namespace eng {

namespace {

template <typename T> void adamw_cpu(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWArgs& a) {
  const AdamWScalars<T> s = adamw_scalars<T>(a);
  cpu::parallel_for(n, cpu::kBlock, [&](int64_t lo, int64_t hi) {
    // The four buffers never overlap; `omp simd` lets the compiler use vector sqrt/div (each lane
    // does exactly the scalar math, so vectorizing does not change any result). GCC vectorizes it
    // only with -fno-math-errno (sqrt otherwise may set errno).
    T* __restrict p = param;
    const T* __restrict g = grad;
    T* __restrict mm = m;
    T* __restrict vv = v;
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) adamw_element<T>(p[i], g[i], mm[i], vv[i], s);
  });
}

}  // namespace

void CpuBackend::adamw_update(DType dt, void* param, const void* grad, void* m, void* v, int64_t n, const AdamWArgs& a) {
  ENG_CHECK(n >= 0, "adamw_update: negative element count {}", n);
  ENG_CHECK(a.step >= 1, "adamw_update: step must be >= 1 (1-based, for bias correction), got {}", a.step);
  switch (dt) {
    case DType::F32:
      adamw_cpu(static_cast<float*>(param), static_cast<const float*>(grad), static_cast<float*>(m), static_cast<float*>(v),
                n, a);
      break;
    case DType::F64:
      adamw_cpu(static_cast<double*>(param), static_cast<const double*>(grad), static_cast<double*>(m),
                static_cast<double*>(v), n, a);
      break;
    default: ENG_FAIL("adamw_update: dtype {} not supported on the CPU (f32, f64)", dtype_name(dt));
  }
}

}  // namespace eng
