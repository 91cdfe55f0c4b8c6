// cpu_fused.cpp: the f32 leaf kernels of cpu_fused.h, one clone per instruction set (see there).
//
// fp-contract=off: no a*b+c is fused into an fma beyond the explicit ones of fast_math_f32.h, so every clone (and
// the scalar tail of a loop) rounds exactly like the portable code. no-trapping-math: lets GCC if-convert the float selects of the GELU polynomial for
// AVX2 and SSE2 too (AVX-512 vectorises them anyway); it changes no result, exceptions stay masked.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include "engine/backends/cpu/cpu_fused.h"

#include "engine/fast_math_f32.h"
#include "engine/backends/cpu/cpu_clones.h"

namespace eng::cpu {

ENG_CLONES void gelu_span_f32(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] = gelu_f32(x[i]);
}

ENG_CLONES void gelu_backward_span_f32(float* dx, const float* x, const float* dy, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * gelu_grad_f32(x[i]);
}

ENG_CLONES void bias_gelu_tile_f32(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias, bool gelu,
                                   float* pre, int64_t ldp) {
  for (int64_t i = 0; i < rows; i++) {
    float* __restrict row = c + i * ldc;
    if (bias) {
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) row[j] += bias[j];
    }
    if (!gelu) continue;
    if (pre) {
      float* __restrict p = pre + i * ldp;
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) {
        p[j] = row[j];
        row[j] = gelu_f32(row[j]);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) row[j] = gelu_f32(row[j]);
    }
  }
}

ENG_CLONES void gelu_grad_tile_f32(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* pre, int64_t ldp) {
  for (int64_t i = 0; i < rows; i++) {
    float* __restrict row = c + i * ldc;
    const float* __restrict p = pre + i * ldp;
#pragma omp simd
    for (int64_t j = 0; j < cols; j++) row[j] = row[j] * gelu_grad_f32(p[j]);
  }
}

ENG_CLONES void column_sums_f32(double* acc, const float* x, int64_t ldx, int64_t rows, int64_t cols) {
  double* __restrict a = acc;
  for (int64_t r = 0; r < rows; r++) {
    const float* __restrict xr = x + r * ldx;
#pragma omp simd
    for (int64_t j = 0; j < cols; j++) a[j] += double(xr[j]);
  }
}

}  // namespace eng::cpu
