// cpu_nn.cpp: CPU kernels for softmax / log_softmax and layer norm, forward and backward.
//
// All operate on contiguous [rows, cols] row-major data. Rows are independent and run in parallel;
// the math inside a row is sequential, so the result does not depend on the thread count. Sums are
// accumulated in double for both dtypes (f32 results then agree with f64 to ~1e-7 relative).
// Layer norm's dw/db (column sums over all rows) use fixed blocks of rows whose partial sums are
// added in block order: deterministic for any OMP_NUM_THREADS.
// fp-contract=off: vector clones round exactly like the portable code; no-trapping-math lets the float selects
// vectorise (no result changes). The f32 row loops are compiled per instruction set (ENG_CLONES, as cpu_fused.cpp).
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"
#include "engine/fast_math_f32.h"
#include "engine/backends/cpu/cpu_clones.h"

namespace eng {

namespace {

// Rows per parallel piece: about kBlock elements, at least one row.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, cpu::kBlock / std::max<int64_t>(cols, 1)); }

void check_rows_cols(const char* op, int64_t rows, int64_t cols) {
  ENG_CHECK(rows >= 0 && cols >= 0, "{}: negative size (rows {}, cols {})", op, rows, cols);
}

// Sum of f(j) for j in [0, n) in double, over kLanes interleaved partial sums combined in a fixed order:
// the compiler can vectorise it (a single running sum cannot be reordered), and the order never
// depends on threads.
constexpr int kLanes = 8;
template <typename F> inline double lane_sum(int64_t n, F f) {
  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; l++) acc[l] += f(j + l);
  for (int l = 0; j < n; j++, l++) acc[l] += f(j);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Two sums at once: f(j, a, b) adds its terms to a and b; the same fixed lane order as lane_sum.
template <typename F> inline void lane_sum2(int64_t n, F f, double& sum_a, double& sum_b) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; l++) f(j + l, a[l], b[l]);
  for (int l = 0; j < n; j++, l++) f(j, a[l], b[l]);
  sum_a = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  sum_b = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

// Largest value of f(j), j in [0, n), over interleaved lanes (max is exact, so the order does not matter).
template <typename T, typename F> inline T lane_max(int64_t n, F f) {
  T m[kLanes];
  for (int l = 0; l < kLanes; l++) m[l] = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; l++) {
      T v = f(j + l);
      m[l] = v > m[l] ? v : m[l];
    }
  for (int l = 0; j < n; j++, l++) {
    T v = f(j);
    m[l] = v > m[l] ? v : m[l];
  }
  T r = m[0];
  for (int l = 1; l < kLanes; l++) r = m[l] > r ? m[l] : r;
  return r;
}

// exp_f32 (engine/fast_math_f32.h): no libm call, so loops over it vectorise; within 1 ulp.
inline float exp_t(float x) { return exp_f32(x); }
inline double exp_t(double x) { return std::exp(x); }

// ---------------------------------------------------------------- softmax

// y = softmax(scale * x) (or its log) for one row.
template <typename T> void softmax_row(T* y, const T* x, int64_t cols, T scale, bool log) {
  T mx = lane_max<T>(cols, [&](int64_t j) { return scale * x[j]; });
  // A row of all -inf has no finite maximum; shift by 0 so it gives NaN like the definition, not a crash.
  if (std::isinf(mx) && mx < 0) mx = T(0);
  if (log) {
    const double total = lane_sum(cols, [&](int64_t j) { return double(exp_t(scale * x[j] - mx)); });
    const T lse = mx + T(std::log(total));
    for (int64_t j = 0; j < cols; j++) y[j] = scale * x[j] - lse;
  } else {
    for (int64_t j = 0; j < cols; j++) y[j] = exp_t(scale * x[j] - mx);
    const double total = lane_sum(cols, [&](int64_t j) { return double(y[j]); });
    const T inv = T(1.0 / total);
    for (int64_t j = 0; j < cols; j++) y[j] *= inv;
  }
}

// dx for one row, from the saved output y and the incoming gradient dy.
//   softmax:     dx = scale * y * (dy - sum(dy * y))
//   log_softmax: dx = scale * (dy - exp(y) * sum(dy))
template <typename T> void softmax_backward_row(T* dx, const T* y, const T* dy, int64_t cols, T scale, bool log) {
  if (log) {
    const T s = T(lane_sum(cols, [&](int64_t j) { return double(dy[j]); }));
    for (int64_t j = 0; j < cols; j++) dx[j] = scale * (dy[j] - exp_t(y[j]) * s);
  } else {
    const T s = T(lane_sum(cols, [&](int64_t j) { return double(dy[j]) * double(y[j]); }));
    for (int64_t j = 0; j < cols; j++) dx[j] = scale * y[j] * (dy[j] - s);
  }
}

// ---------------------------------------------------------------- layer norm

// Rows [lo, hi) of the forward pass.
template <typename T>
inline __attribute__((always_inline)) void layer_norm_forward_range(T* y, T* mean, T* rstd, const T* x, const T* w,
                                                                    const T* b, int64_t lo, int64_t hi, int64_t cols,
                                                                    double eps) {
  for (int64_t r = lo; r < hi; r++) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    // Mean, then the variance about it (the row is in cache; two sweeps avoid the cancellation of E[x^2]-E[x]^2).
    const double mu = lane_sum(cols, [&](int64_t j) { return double(xr[j]); }) / double(cols);
    const double sq = lane_sum(cols, [&](int64_t j) {
      double d = double(xr[j]) - mu;
      return d * d;
    });
    const double rs = 1.0 / std::sqrt(sq / double(cols) + eps);
    const T mu_t = T(mu), rs_t = T(rs);
    if (mean) mean[r] = mu_t;
    if (rstd) rstd[r] = rs_t;
    if (w && b) {
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) yr[j] = (xr[j] - mu_t) * rs_t * w[j] + b[j];
    } else {
      for (int64_t j = 0; j < cols; j++) {
        T v = (xr[j] - mu_t) * rs_t;
        if (w) v *= w[j];
        if (b) v += b[j];
        yr[j] = v;
      }
    }
  }
}

ENG_CLONES void layer_norm_forward_range_f32(float* y, float* mean, float* rstd, const float* x, const float* w,
                                             const float* b, int64_t lo, int64_t hi, int64_t cols, double eps) {
  layer_norm_forward_range<float>(y, mean, rstd, x, w, b, lo, hi, cols, eps);
}
inline void layer_norm_forward_range_any(float* y, float* mean, float* rstd, const float* x, const float* w,
                                         const float* b, int64_t lo, int64_t hi, int64_t cols, double eps) {
  layer_norm_forward_range_f32(y, mean, rstd, x, w, b, lo, hi, cols, eps);
}
inline void layer_norm_forward_range_any(double* y, double* mean, double* rstd, const double* x, const double* w,
                                         const double* b, int64_t lo, int64_t hi, int64_t cols, double eps) {
  layer_norm_forward_range<double>(y, mean, rstd, x, w, b, lo, hi, cols, eps);
}

template <typename T>
void layer_norm_forward_rows(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows, int64_t cols,
                             double eps) {
  cpu::parallel_for(rows, row_grain(cols), [&](int64_t lo, int64_t hi) {
    layer_norm_forward_range_any(y, mean, rstd, x, w, b, lo, hi, cols, eps);
  });
}

// Rows per block of the dw/db partial sums. Fixed, so the summation order never depends on threads.
constexpr int64_t kLnRowsPerBlock = 32;

// Rows [r0, r1) of the backward pass: dx, and this block's dw/db partials (pdw/pdb, zeroed here; may be null).
template <typename T>
inline __attribute__((always_inline)) void layer_norm_backward_block(T* dx, double* pdw, double* pdb, const T* dy,
                                                                     const T* x, const T* mean, const T* rstd,
                                                                     const T* w, int64_t r0, int64_t r1,
                                                                     int64_t cols) {
  if (pdw) {
    for (int64_t j = 0; j < cols; j++) pdw[j] = 0.0;
    for (int64_t j = 0; j < cols; j++) pdb[j] = 0.0;
  }
  for (int64_t r = r0; r < r1; r++) {
    const T* xr = x + r * cols;
    const T* gr = dy + r * cols;
    const double mu = double(mean[r]), rs = double(rstd[r]);
    if (pdw) {
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) {
        double xhat = (double(xr[j]) - mu) * rs;
        pdw[j] += double(gr[j]) * xhat;
        pdb[j] += double(gr[j]);
      }
    }
    if (!dx) continue;
    // dxhat = dy * w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    T* dr = dx + r * cols;
    auto row = [&](auto has_w) {
      constexpr bool kW = decltype(has_w)::value;
      auto dxhat = [&](int64_t j) { return kW ? double(gr[j]) * double(w[j]) : double(gr[j]); };
      double s1, s2;
      lane_sum2(cols, [&](int64_t j, double& a, double& b) {
        double g = dxhat(j);
        a += g;
        b += g * ((double(xr[j]) - mu) * rs);
      }, s1, s2);
      const double m1 = s1 / double(cols), m2 = s2 / double(cols);
#pragma omp simd
      for (int64_t j = 0; j < cols; j++) dr[j] = T(rs * (dxhat(j) - m1 - (double(xr[j]) - mu) * rs * m2));
    };
    if (w)
      row(std::true_type{});
    else
      row(std::false_type{});
  }
}

ENG_CLONES void layer_norm_backward_block_f32(float* dx, double* pdw, double* pdb, const float* dy, const float* x,
                                              const float* mean, const float* rstd, const float* w, int64_t r0,
                                              int64_t r1, int64_t cols) {
  layer_norm_backward_block<float>(dx, pdw, pdb, dy, x, mean, rstd, w, r0, r1, cols);
}
inline void layer_norm_backward_block_any(float* dx, double* pdw, double* pdb, const float* dy, const float* x,
                                          const float* mean, const float* rstd, const float* w, int64_t r0, int64_t r1,
                                          int64_t cols) {
  layer_norm_backward_block_f32(dx, pdw, pdb, dy, x, mean, rstd, w, r0, r1, cols);
}
inline void layer_norm_backward_block_any(double* dx, double* pdw, double* pdb, const double* dy, const double* x,
                                          const double* mean, const double* rstd, const double* w, int64_t r0,
                                          int64_t r1, int64_t cols) {
  layer_norm_backward_block<double>(dx, pdw, pdb, dy, x, mean, rstd, w, r0, r1, cols);
}

// Grow-only scratch for the dw/db block partials, owned by the calling thread.
double* ln_partials(size_t n) {
  static thread_local std::vector<double> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <typename T>
void layer_norm_backward_rows(T* dx, T* dw, T* db, const T* dy, const T* x, const T* mean, const T* rstd, const T* w,
                              int64_t rows, int64_t cols) {
  const bool want_params = dw || db;
  const int64_t blocks = (rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock;
  // partial[blk] holds [dw partial (cols), db partial (cols)] for that block of rows.
  double* partial = want_params ? ln_partials(size_t(blocks) * size_t(2 * cols)) : nullptr;
  const int64_t grain = std::max<int64_t>(1, cpu::kBlock / (kLnRowsPerBlock * std::max<int64_t>(cols, 1)));
  cpu::parallel_for(blocks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; blk++) {
      double* pdw = want_params ? partial + size_t(blk) * size_t(2 * cols) : nullptr;
      layer_norm_backward_block_any(dx, pdw, pdw ? pdw + cols : nullptr, dy, x, mean, rstd, w, blk * kLnRowsPerBlock,
                                    std::min(rows, (blk + 1) * kLnRowsPerBlock), cols);
    }
  });
  if (!want_params) return;
  // Column sums of the block partials, in block order; parallel over columns.
  cpu::parallel_for(cols, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; j++) {
      double sw = 0, sb = 0;
      for (int64_t blk = 0; blk < blocks; blk++) {
        const double* p = partial + size_t(blk) * size_t(2 * cols);
        sw += p[j];
        sb += p[cols + j];
      }
      if (dw) dw[j] = T(sw);
      if (db) db[j] = T(sb);
    }
  });
}

}  // namespace

void CpuBackend::softmax_forward(DType dt, void* y, const void* x, int64_t rows, int64_t cols, double scale, bool log) {
  check_rows_cols("softmax", rows, cols);
  if (rows == 0 || cols == 0) return;
  ENG_DISPATCH_FLOAT(dt, "softmax", [&](auto tag) {
    using T = decltype(tag);
    T* yp = static_cast<T*>(y);
    const T* xp = static_cast<const T*>(x);
    cpu::parallel_for(rows, row_grain(cols), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r++) softmax_row<T>(yp + r * cols, xp + r * cols, cols, T(scale), log);
    });
  });
}

void CpuBackend::softmax_backward(DType dt, void* dx, const void* y, const void* dy, int64_t rows, int64_t cols,
                                  double scale, bool log) {
  check_rows_cols("softmax_backward", rows, cols);
  if (rows == 0 || cols == 0) return;
  ENG_DISPATCH_FLOAT(dt, "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    T* dxp = static_cast<T*>(dx);
    const T* yp = static_cast<const T*>(y);
    const T* gp = static_cast<const T*>(dy);
    cpu::parallel_for(rows, row_grain(cols), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r++)
        softmax_backward_row<T>(dxp + r * cols, yp + r * cols, gp + r * cols, cols, T(scale), log);
    });
  });
}

void CpuBackend::layer_norm_forward(DType dt, void* y, void* mean, void* rstd, const void* x, const void* w,
                                    const void* b, int64_t rows, int64_t cols, double eps) {
  check_rows_cols("layer_norm", rows, cols);
  ENG_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got {}", eps);
  if (rows == 0) return;
  ENG_CHECK(cols > 0, "layer_norm: normalising over an empty last dim ({} rows of 0 columns)", rows);
  ENG_DISPATCH_FLOAT(dt, "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    layer_norm_forward_rows<T>(static_cast<T*>(y), static_cast<T*>(mean), static_cast<T*>(rstd),
                               static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), rows, cols,
                               eps);
  });
}

void CpuBackend::layer_norm_backward(DType dt, void* dx, void* dw, void* db, const void* dy, const void* x,
                                     const void* mean, const void* rstd, const void* w, int64_t rows, int64_t cols) {
  check_rows_cols("layer_norm_backward", rows, cols);
  if (cols == 0) return;
  ENG_DISPATCH_FLOAT(dt, "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    layer_norm_backward_rows<T>(static_cast<T*>(dx), static_cast<T*>(dw), static_cast<T*>(db),
                                static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(mean),
                                static_cast<const T*>(rstd), static_cast<const T*>(w), rows, cols);
  });
}

}  // namespace eng
