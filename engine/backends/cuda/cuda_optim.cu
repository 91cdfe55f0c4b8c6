// cuda_optim.cu: the fused AdamW update on the GPU: one thread per element runs adamw_element
// (engine/optim_math.h), the function the CPU loop runs, with the scalars computed once on the host by the
// same adamw_scalars. Compiled with -fmad=false (see the Makefile) so no multiply-add is fused; with IEEE
// sqrt and division (nvcc's defaults) f64 updates are bitwise the CPU's, and so are the f32 moments. The f32
// parameter can differ in its last bit: on the host, ::sqrt(float) resolves to the C library's double sqrt, so the
// CPU evaluates the denominator in double, while the device uses the f32 sqrt (tests/gpu checks both facts).
#include "engine/backends/cuda/cuda_common.cuh"
#include "engine/optim_math.h"

namespace eng {
namespace cuda {
namespace {

template <typename T>
__global__ void adamw_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, int64_t n,
                             AdamWScalars<T> s) {
  ENG_GRID_STRIDE(i, n) {
    T pi = p[i], mi = m[i], vi = v[i];
    adamw_element<T>(pi, g[i], mi, vi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void CudaBackend::adamw_update(DType dt, void* param, const void* grad, void* m, void* v, int64_t n, const AdamWArgs& a) {
  OpScope scope(*this, "cuda.adamw_update");
  ENG_CHECK(n >= 0, "adamw_update: negative element count {}", n);
  ENG_CHECK(a.step >= 1, "adamw_update: step must be >= 1 (1-based, for bias correction), got {}", a.step);
  if (n == 0) return;
  switch (dt) {
    case DType::F32:
      adamw_kernel<float><<<blocks_for(n), kThreads>>>(static_cast<float*>(param), static_cast<const float*>(grad),
                                                       static_cast<float*>(m), static_cast<float*>(v), n,
                                                       adamw_scalars<float>(a));
      break;
    case DType::F64:
      adamw_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(param), static_cast<const double*>(grad),
                                                        static_cast<double*>(m), static_cast<double*>(v), n,
                                                        adamw_scalars<double>(a));
      break;
    default: ENG_FAIL("adamw_update: dtype {} not supported on cuda (f32, f64)", dtype_name(dt));
  }
  CUDA_CHECK_LAUNCH("adamw_update");
}

}  // namespace cuda
}  // namespace eng
