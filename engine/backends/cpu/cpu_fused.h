// cpu_fused.h: f32 leaf kernels over contiguous spans and tiles for the hot paths of a training step (GELU and
// its gradient, the GEMM epilogue, column sums for bias gradients). Each is compiled for AVX-512, AVX2+FMA
// (x86-64-v3) and baseline x86-64, and the loader picks the best one the CPU has (target_clones), so the library
// itself stays baseline. Callers split the work into fixed pieces; inside a piece the order of operations never
// depends on threads, so results are bitwise identical with any OMP_NUM_THREADS. The math is
// engine/fast_math_f32.h (explicit fmas, no other contraction), so a value is the same whichever clone or loop
// position computes it, and the same as the scalar unary/binary path.
#pragma once
#include <cstdint>

namespace eng::cpu {

// y[i] = gelu(x[i]) (exact erf form, f32 polynomial of engine/fast_math_f32.h). y may alias x.
void gelu_span_f32(float* y, const float* x, int64_t n);
// dx[i] = dy[i] * gelu'(x[i]). dx may alias dy.
void gelu_backward_span_f32(float* dx, const float* x, const float* dy, int64_t n);

// GEMM epilogue on a rows x cols tile of C (row stride ldc): c += bias[j] (bias may be null); then, when gelu,
// pre[i * ldp + j] = c (pre may be null) and c = gelu(c).
void bias_gelu_tile_f32(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* bias, bool gelu, float* pre,
                        int64_t ldp);

// GEMM epilogue of the backward pass: c[i * ldc + j] *= gelu'(pre[i * ldp + j]) on a rows x cols tile.
void gelu_grad_tile_f32(float* c, int64_t ldc, int64_t rows, int64_t cols, const float* pre, int64_t ldp);

// acc[j] += sum over rows r of x[r * ldx + j] for j < cols, rows in order, one f64 accumulator per column.
void column_sums_f32(double* acc, const float* x, int64_t ldx, int64_t rows, int64_t cols);

}  // namespace eng::cpu
