// cpu_optim.cpp: the CPU kernels of the fused AdamW update (per-element math in engine/optim_math.h), its
// multi-tensor form with clipping, and the gradient norm (global_norm) with its per-tensor sums (sum_squares). The
// update is elementwise over fixed blocks and the norm sums fixed blocks in order, so neither depends on the
// thread count.
#include <cmath>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"
#include "engine/optim_math.h"

namespace eng {

namespace {

// kScaled: each gradient element is multiplied by grad_scale first (clipping; the same f32/f64 product that
// scaling the gradient in place would store).
template <typename T, bool kScaled = false>
void adamw_cpu(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWArgs& a, T grad_scale = T(1)) {
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
    for (int64_t i = lo; i < hi; i++) adamw_element<T>(p[i], kScaled ? g[i] * grad_scale : g[i], mm[i], vv[i], s);
  });
}

// Fixed blocks, each summed in order in 8 lanes, then the block sums added in order: the block size is fixed, so
// the thread count never changes the result.
template <typename T> double sum_squares_blocks(const T* x, int64_t n) {
  constexpr int64_t kSumBlock = 4096;
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(size_t(std::max<int64_t>(blocks, 0)), 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t lo = b * kSumBlock, hi = std::min(n, lo + kSumBlock);
    // 8 independent lanes (i mod 8) for instruction-level parallelism; combined in a fixed order.
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8)
      for (int l = 0; l < 8; l++) lane[l] += double(x[i + l]) * double(x[i + l]);
    for (; i < hi; i++) lane[0] += double(x[i]) * double(x[i]);
    partial[size_t(b)] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
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

namespace {

template <typename T> void adamw_multi_cpu(const std::vector<AdamWTensor>& list, const AdamWClip& clip) {
  bool scaled = false;
  T scale = T(1);
  if (clip.grad_norm) {
    const double norm = *clip.grad_norm;
    if (!std::isfinite(norm)) return;  // nothing changes; the caller reports the norm
    const double coef = clip.max_norm / (norm + 1e-6);
    scaled = clip.max_norm > 0 && coef < 1.0;
    scale = T(coef);
  }
  for (const AdamWTensor& t : list) {
    ENG_CHECK(t.n >= 0, "adamw_update_multi: negative element count {}", t.n);
    ENG_CHECK(t.args.step >= 1, "adamw_update_multi: step must be >= 1 (1-based, for bias correction), got {}",
              t.args.step);
    T* p = static_cast<T*>(t.param);
    const T* g = static_cast<const T*>(t.grad);
    T* m = static_cast<T*>(t.m);
    T* v = static_cast<T*>(t.v);
    if (scaled)
      adamw_cpu<T, true>(p, g, m, v, t.n, t.args, scale);
    else
      adamw_cpu<T>(p, g, m, v, t.n, t.args);
  }
}

}  // namespace

void CpuBackend::adamw_update_multi(DType dt, const std::vector<AdamWTensor>& tensors, const AdamWClip& clip) {
  switch (dt) {
    case DType::F32: adamw_multi_cpu<float>(tensors, clip); break;
    case DType::F64: adamw_multi_cpu<double>(tensors, clip); break;
    default: ENG_FAIL("adamw_update_multi: dtype {} not supported on the CPU (f32, f64)", dtype_name(dt));
  }
}

namespace {

double sum_squares_of(DType dt, const SumSquaresTensor& t) {
  ENG_CHECK(t.n >= 0, "sum of squares: negative element count {}", t.n);
  switch (dt) {
    case DType::F32: return sum_squares_blocks(static_cast<const float*>(t.data), t.n);
    case DType::F64: return sum_squares_blocks(static_cast<const double*>(t.data), t.n);
    default: ENG_FAIL("sum of squares: dtype {} not supported on the CPU (f32, f64)", dtype_name(dt));
  }
}

}  // namespace

void CpuBackend::sum_squares(DType dt, const std::vector<SumSquaresTensor>& tensors, double* sums) {
  for (size_t k = 0; k < tensors.size(); k++) sums[k] = sum_squares_of(dt, tensors[k]);
}

void CpuBackend::global_norm(DType dt, const std::vector<SumSquaresTensor>& tensors, double* norm) {
  double total = 0;
  for (const SumSquaresTensor& t : tensors) total += sum_squares_of(dt, t);
  *norm = std::sqrt(total);
}

}  // namespace eng
