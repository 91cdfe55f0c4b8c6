// cpu_nn.cpp: CPU kernels for softmax / log_softmax and layer norm, forward and backward.
//
// All operate on contiguous [rows, cols] row-major data. Rows are independent and run in parallel;
// the math inside a row is sequential, so the result does not depend on the thread count. Sums are
// accumulated in double for both dtypes (f32 results then agree with f64 to ~1e-7 relative).
// Layer norm's dw/db (column sums over all rows) use fixed blocks of rows whose partial sums are
// added in block order: deterministic for any OMP_NUM_THREADS.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"

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

// exp for f32 without a libm call or a data-dependent branch, so loops over it vectorise. Cephes-style:
// x = n ln2 + r with |r| <= ln2/2 (n rounded with the 1.5 * 2^23 trick, its integer read from the bits),
// exp(r) by a degree-6 polynomial, 2^n built in the exponent field. Within 1 ulp of exp for
// -87 <= x <= 88; below -87 it returns 0 (the true value is under 1.7e-38, -inf included); +inf and
// NaN come back as themselves. Pure arithmetic: the same bits on any thread count.
// (Float selects like `x < lo ? lo : x` would stop GCC from vectorising under -ftrapping-math, hence
// the integer clamp and the bit mask.)
inline float exp_f32(float x) {
  const float round_magic = 12582912.0f;
  const float nm = x * 1.44269504088896341f + round_magic;
  int32_t nm_bits, magic_bits;
  std::memcpy(&nm_bits, &nm, sizeof(nm_bits));
  std::memcpy(&magic_bits, &round_magic, sizeof(magic_bits));
  const int32_t ni = std::min(std::max(nm_bits - magic_bits, int32_t(-126)), int32_t(127));
  const float n = float(ni);
  float r = x - n * 0.693359375f;  // ln2 split in two so n * ln2_hi is exact
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const int32_t scale_bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  const float y = p * scale;
  int32_t y_bits;
  std::memcpy(&y_bits, &y, sizeof(y_bits));
  y_bits &= x >= -87.0f ? -1 : 0;  // a mask, not a multiply: the polynomial of -inf is NaN
  float out;
  std::memcpy(&out, &y_bits, sizeof(out));
  return out + (x == x ? 0.0f : x);  // NaN in, NaN out
}
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

template <typename T>
void layer_norm_forward_rows(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows, int64_t cols,
                             double eps) {
  cpu::parallel_for(rows, row_grain(cols), [&](int64_t lo, int64_t hi) {
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
      for (int64_t j = 0; j < cols; j++) {
        T v = (xr[j] - mu_t) * rs_t;
        if (w) v *= w[j];
        if (b) v += b[j];
        yr[j] = v;
      }
    }
  });
}

// Rows per block of the dw/db partial sums. Fixed, so the summation order never depends on threads.
constexpr int64_t kLnRowsPerBlock = 32;

template <typename T>
void layer_norm_backward_rows(T* dx, T* dw, T* db, const T* dy, const T* x, const T* mean, const T* rstd, const T* w,
                              int64_t rows, int64_t cols) {
  const bool want_params = dw || db;
  const int64_t blocks = (rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock;
  // partial[blk] holds [dw partial (cols), db partial (cols)] for that block of rows.
  std::vector<double> partial(want_params ? size_t(blocks) * size_t(2 * cols) : 0, 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1 && rows * cols >= cpu::kBlock)
  for (int64_t blk = 0; blk < blocks; blk++) {
    const int64_t r0 = blk * kLnRowsPerBlock, r1 = std::min(rows, r0 + kLnRowsPerBlock);
    double* pdw = want_params ? partial.data() + size_t(blk) * size_t(2 * cols) : nullptr;
    double* pdb = want_params ? pdw + cols : nullptr;
    for (int64_t r = r0; r < r1; r++) {
      const T* xr = x + r * cols;
      const T* gr = dy + r * cols;
      const double mu = double(mean[r]), rs = double(rstd[r]);
      if (want_params) {
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
        for (int64_t j = 0; j < cols; j++) dr[j] = T(rs * (dxhat(j) - m1 - (double(xr[j]) - mu) * rs * m2));
      };
      if (w)
        row(std::true_type{});
      else
        row(std::false_type{});
    }
  }
  if (!want_params) return;
  // Column sums of the block partials, in block order; parallel over columns.
  cpu::parallel_for(cols, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; j++) {
      double sw = 0, sb = 0;
      for (int64_t blk = 0; blk < blocks; blk++) {
        const double* p = partial.data() + size_t(blk) * size_t(2 * cols);
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
