// cuda_nn.cu: softmax / log_softmax and layer norm, forward and backward, on contiguous [rows, cols] data, for
// f32, f64 and bf16 (arithmetic in f32 for bf16). The math mirrors engine/backends/cpu/cpu_nn.cpp line by line
// (sums in double, the same expressions in the element type), so results agree with the CPU to rounding.
//
// A row is handled by one warp when it has at most 1024 columns (8 rows per block), else by a whole block of
// 256 threads. Thread t covers columns t, t + G, ...; row sums and maxima combine in a fixed butterfly /
// tree, so a run repeats bit for bit. Layer norm's dw/db are column sums over all rows: fixed blocks of 32 rows
// (the CPU's block size) give partial sums that are then added in block order, with no atomics; this is the
// CPU's summation order exactly.
// Layer norm's mean and rstd are stored in the arithmetic type (calc_t: f32 for bf16 inputs, as the ops layer
// allocates them), so bf16 mixed precision keeps f32 statistics between the forward and backward passes.
#include <cmath>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {
namespace {

// max that skips NaN like the CPU's lane_max (`v > m ? v : m`); a NaN input still turns the row into NaN
// through its exp.
struct PlainMaxOp {
  template <typename A> __device__ A operator()(A a, A b) const { return b > a ? b : a; }
};

constexpr int64_t kWarpRowCols = 1024;  // rows up to this many columns get one warp
constexpr int64_t kLnRowsPerBlock = 32;  // rows per partial sum of dw/db (as the CPU)

template <int kGroup, typename F> __device__ inline void for_rows(int64_t rows, F f) {
  constexpr int kRowsPerBlock = kThreads / kGroup;
  const int group = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + group; r < rows; r += int64_t(gridDim.x) * kRowsPerBlock)
    f(r, lane);
}

// ---------------------------------------------------------------- softmax

template <int kGroup, typename T>
__global__ void softmax_forward_kernel(T* __restrict__ y, const T* __restrict__ x, int64_t rows, int64_t cols,
                                       calc_t<T> scale, bool log) {
  using C = calc_t<T>;
  __shared__ C smem_c[kGroup / 32];
  __shared__ double smem_d[kGroup / 32];
  for_rows<kGroup>(rows, [&](int64_t r, int lane) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    C mx = C(-INFINITY);
    for (int64_t j = lane; j < cols; j += kGroup) mx = PlainMaxOp()(mx, C(scale * ld(xr[j])));
    mx = group_allreduce<kGroup>(mx, PlainMaxOp(), smem_c);
    // A row of all -inf has no finite maximum; shift by 0 so it gives NaN like the definition.
    if (isinf(mx) && mx < C(0)) mx = C(0);
    double part = 0;
    for (int64_t j = lane; j < cols; j += kGroup) part += double(::exp(C(scale * ld(xr[j]) - mx)));
    const double total = group_allreduce<kGroup>(part, SumOp(), smem_d);
    if (log) {
      const C lse = mx + C(::log(total));
      for (int64_t j = lane; j < cols; j += kGroup) yr[j] = st<T>(C(scale * ld(xr[j]) - lse));
    } else {
      const C inv = C(1.0 / total);
      for (int64_t j = lane; j < cols; j += kGroup) yr[j] = st<T>(C(::exp(C(scale * ld(xr[j]) - mx)) * inv));
    }
  });
}

//   softmax:     dx = scale * y * (dy - sum(dy * y))
//   log_softmax: dx = scale * (dy - exp(y) * sum(dy))
template <int kGroup, typename T>
__global__ void softmax_backward_kernel(T* __restrict__ dx, const T* __restrict__ y, const T* __restrict__ dy,
                                        int64_t rows, int64_t cols, calc_t<T> scale, bool log) {
  using C = calc_t<T>;
  __shared__ double smem_d[kGroup / 32];
  for_rows<kGroup>(rows, [&](int64_t r, int lane) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    T* dr = dx + r * cols;
    double part = 0;
    if (log) {
      for (int64_t j = lane; j < cols; j += kGroup) part += double(ld(gr[j]));
    } else {
      for (int64_t j = lane; j < cols; j += kGroup) part += double(ld(gr[j])) * double(ld(yr[j]));
    }
    const C s = C(group_allreduce<kGroup>(part, SumOp(), smem_d));
    if (log) {
      for (int64_t j = lane; j < cols; j += kGroup) dr[j] = st<T>(C(scale * C(ld(gr[j]) - C(::exp(ld(yr[j])) * s))));
    } else {
      for (int64_t j = lane; j < cols; j += kGroup) dr[j] = st<T>(C(C(scale * ld(yr[j])) * C(ld(gr[j]) - s)));
    }
  });
}

// ---------------------------------------------------------------- layer norm

template <int kGroup, typename T>
__global__ void layer_norm_forward_kernel(T* __restrict__ y, calc_t<T>* __restrict__ mean,
                                          calc_t<T>* __restrict__ rstd, const T* __restrict__ x,
                                          const T* __restrict__ w, const T* __restrict__ b, int64_t rows, int64_t cols,
                                          double eps) {
  using C = calc_t<T>;
  __shared__ double smem_d[kGroup / 32];
  for_rows<kGroup>(rows, [&](int64_t r, int lane) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    // Mean, then the variance about it (two sweeps avoid the cancellation of E[x^2] - E[x]^2).
    double part = 0;
    for (int64_t j = lane; j < cols; j += kGroup) part += double(ld(xr[j]));
    const double mu = group_allreduce<kGroup>(part, SumOp(), smem_d) / double(cols);
    part = 0;
    for (int64_t j = lane; j < cols; j += kGroup) {
      const double d = double(ld(xr[j])) - mu;
      part += d * d;
    }
    const double sq = group_allreduce<kGroup>(part, SumOp(), smem_d);
    const double rs = 1.0 / ::sqrt(sq / double(cols) + eps);
    const C mu_t = C(mu), rs_t = C(rs);
    if (lane == 0) {
      if (mean) mean[r] = mu_t;
      if (rstd) rstd[r] = rs_t;
    }
    for (int64_t j = lane; j < cols; j += kGroup) {
      C v = C(ld(xr[j]) - mu_t) * rs_t;
      if (w) v = v * ld(w[j]);
      if (b) v = v + ld(b[j]);
      yr[j] = st<T>(v);
    }
  });
}

// dxhat = dy * w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
template <int kGroup, typename T>
__global__ void layer_norm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                              const calc_t<T>* __restrict__ mean, const calc_t<T>* __restrict__ rstd,
                                              const T* __restrict__ w, int64_t rows, int64_t cols) {
  __shared__ double smem_d[kGroup / 32];
  for_rows<kGroup>(rows, [&](int64_t r, int lane) {
    const T* xr = x + r * cols;
    const T* gr = dy + r * cols;
    T* dr = dx + r * cols;
    const double mu = double(mean[r]), rs = double(rstd[r]);
    auto dxhat = [&](int64_t j) { return w ? double(ld(gr[j])) * double(ld(w[j])) : double(ld(gr[j])); };
    double p1 = 0, p2 = 0;
    for (int64_t j = lane; j < cols; j += kGroup) {
      const double g = dxhat(j);
      p1 += g;
      p2 += g * ((double(ld(xr[j])) - mu) * rs);
    }
    const double m1 = group_allreduce<kGroup>(p1, SumOp(), smem_d) / double(cols);
    const double m2 = group_allreduce<kGroup>(p2, SumOp(), smem_d) / double(cols);
    for (int64_t j = lane; j < cols; j += kGroup)
      dr[j] = st<T>(calc_t<T>(rs * (dxhat(j) - m1 - (double(ld(xr[j])) - mu) * rs * m2)));
  });
}

// Partial dw/db of one block of kLnRowsPerBlock rows for one column: partial[blk][0][j] (dw), [blk][1][j] (db).
template <typename T>
__global__ void layer_norm_backward_partial_kernel(double* __restrict__ partial, const T* __restrict__ dy,
                                                   const T* __restrict__ x, const calc_t<T>* __restrict__ mean,
                                                   const calc_t<T>* __restrict__ rstd, int64_t rows, int64_t cols,
                                                   int64_t blocks) {
  ENG_GRID_STRIDE(item, blocks * cols) {
    const int64_t blk = item / cols, j = item % cols;
    const int64_t r0 = blk * kLnRowsPerBlock, r1 = min(rows, r0 + kLnRowsPerBlock);
    double sw = 0, sb = 0;
    for (int64_t r = r0; r < r1; r++) {
      const double g = double(ld(dy[r * cols + j]));
      const double xhat = (double(ld(x[r * cols + j])) - double(mean[r])) * double(rstd[r]);
      sw += g * xhat;
      sb += g;
    }
    partial[blk * 2 * cols + j] = sw;
    partial[blk * 2 * cols + cols + j] = sb;
  }
}

template <typename T>
__global__ void layer_norm_backward_params_kernel(T* __restrict__ dw, T* __restrict__ db, const double* __restrict__ partial,
                                                  int64_t cols, int64_t blocks) {
  ENG_GRID_STRIDE(j, cols) {
    double sw = 0, sb = 0;
    for (int64_t blk = 0; blk < blocks; blk++) {
      sw += partial[blk * 2 * cols + j];
      sb += partial[blk * 2 * cols + cols + j];
    }
    if (dw) dw[j] = st<T>(calc_t<T>(sw));
    if (db) db[j] = st<T>(calc_t<T>(sb));
  }
}

void check_rows_cols(const char* op, int64_t rows, int64_t cols) {
  ENG_CHECK(rows >= 0 && cols >= 0, "{}: negative size (rows {}, cols {})", op, rows, cols);
}

// Launches kernel<kGroup> with a warp per row for short rows, a block per row for long ones.
#define ENG_LAUNCH_ROWS(kernel, T, rows, cols, ...)                                                   \
  do {                                                                                                \
    if ((cols) <= kWarpRowCols)                                                                       \
      kernel<32, T><<<blocks_for((rows), kThreads / 32), kThreads>>>(__VA_ARGS__);                    \
    else                                                                                              \
      kernel<kThreads, T><<<blocks_for((rows), 1), kThreads>>>(__VA_ARGS__);                          \
  } while (0)

}  // namespace

void CudaBackend::softmax_forward(DType dt, void* y, const void* x, int64_t rows, int64_t cols, double scale, bool log) {
  OpScope scope(*this, log ? "cuda.log_softmax_forward" : "cuda.softmax_forward");
  check_rows_cols("softmax", rows, cols);
  if (rows == 0 || cols == 0) return;
  dispatch_float(dt, "softmax", [&](auto t) {
    using T = decltype(t);
    ENG_LAUNCH_ROWS(softmax_forward_kernel, T, rows, cols, static_cast<T*>(y), static_cast<const T*>(x), rows, cols,
                    calc_t<T>(scale), log);
  });
  CUDA_CHECK_LAUNCH("softmax_forward");
}

void CudaBackend::softmax_backward(DType dt, void* dx, const void* y, const void* dy, int64_t rows, int64_t cols,
                                   double scale, bool log) {
  OpScope scope(*this, log ? "cuda.log_softmax_backward" : "cuda.softmax_backward");
  check_rows_cols("softmax_backward", rows, cols);
  if (rows == 0 || cols == 0) return;
  dispatch_float(dt, "softmax_backward", [&](auto t) {
    using T = decltype(t);
    ENG_LAUNCH_ROWS(softmax_backward_kernel, T, rows, cols, static_cast<T*>(dx), static_cast<const T*>(y),
                    static_cast<const T*>(dy), rows, cols, calc_t<T>(scale), log);
  });
  CUDA_CHECK_LAUNCH("softmax_backward");
}

void CudaBackend::layer_norm_forward(DType dt, void* y, void* mean, void* rstd, const void* x, const void* w,
                                     const void* b, int64_t rows, int64_t cols, double eps) {
  OpScope scope(*this, "cuda.layer_norm_forward");
  check_rows_cols("layer_norm", rows, cols);
  ENG_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got {}", eps);
  if (rows == 0) return;
  ENG_CHECK(cols > 0, "layer_norm: normalising over an empty last dim ({} rows of 0 columns)", rows);
  dispatch_float(dt, "layer_norm", [&](auto t) {
    using T = decltype(t);
    ENG_LAUNCH_ROWS(layer_norm_forward_kernel, T, rows, cols, static_cast<T*>(y), static_cast<calc_t<T>*>(mean),
                    static_cast<calc_t<T>*>(rstd), static_cast<const T*>(x), static_cast<const T*>(w),
                    static_cast<const T*>(b), rows, cols, eps);
  });
  CUDA_CHECK_LAUNCH("layer_norm_forward");
}

void CudaBackend::layer_norm_backward(DType dt, void* dx, void* dw, void* db, const void* dy, const void* x,
                                      const void* mean, const void* rstd, const void* w, int64_t rows, int64_t cols) {
  OpScope scope(*this, "cuda.layer_norm_backward");
  check_rows_cols("layer_norm_backward", rows, cols);
  if (cols == 0) return;
  const int64_t blocks = (rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock;
  dispatch_float(dt, "layer_norm_backward", [&](auto t) {
    using T = decltype(t);
    const T* dyp = static_cast<const T*>(dy);
    const T* xp = static_cast<const T*>(x);
    const calc_t<T>* mp = static_cast<const calc_t<T>*>(mean);  // f32 for bf16 (see the top of the file)
    const calc_t<T>* rp = static_cast<const calc_t<T>*>(rstd);
    if (dx && rows > 0) {
      ENG_LAUNCH_ROWS(layer_norm_backward_dx_kernel, T, rows, cols, static_cast<T*>(dx), dyp, xp, mp, rp,
                      static_cast<const T*>(w), rows, cols);
      CUDA_CHECK_LAUNCH("layer_norm_backward (dx)");
    }
    if (!dw && !db) return;
    DeviceBuffer partial(device(), size_t(std::max<int64_t>(blocks, 1)) * size_t(2 * cols) * sizeof(double));
    if (blocks > 0) {
      layer_norm_backward_partial_kernel<T><<<blocks_for(blocks * cols), kThreads>>>(partial.as<double>(), dyp, xp, mp,
                                                                                     rp, rows, cols, blocks);
      CUDA_CHECK_LAUNCH("layer_norm_backward (dw/db partial sums)");
    }
    layer_norm_backward_params_kernel<T><<<blocks_for(cols), kThreads>>>(static_cast<T*>(dw), static_cast<T*>(db),
                                                                         partial.as<double>(), cols, blocks);
    CUDA_CHECK_LAUNCH("layer_norm_backward (dw/db)");
  });
}

}  // namespace cuda
}  // namespace eng
