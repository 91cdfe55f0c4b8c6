// cpu_reduce.cpp: sum/max/min over any set of dims, and max/min with indices along one dim.
//
// Determinism: every output is accumulated in the same order (row-major over the reduced elements,
// f64 accumulator for sums). A reduction with few outputs is split into fixed chunks of the reduced
// range whose partial sums are then added in order, so the thread count never changes the result.
// f32 column sums over leading dims (bias gradients) use fixed blocks of 64 rows the same way.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_fused.h"
#include "engine/backends/cpu/cpu_loops.h"

namespace eng {
using namespace cpu;

namespace {

constexpr int64_t kChunk = 32768;  // reduced elements per partial sum when outputs are few
constexpr int64_t kRowBlock = 64;  // rows per partial of a column sum (fixed: the summation order never depends on threads)

// Grow-only scratch for column-sum partials, owned by the calling thread (kernels run one at a time per caller).
double* reduce_scratch(size_t n) {
  static thread_local std::vector<double> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Row-major walk over a sub-box of dims (shape/strides), visiting offsets of `count` elements starting at `start`.
struct Odometer {
  int nd = 0;
  int64_t shape[kMaxDims], strides[kMaxDims];
  template <typename F> void walk(int64_t start, int64_t count, F f) const {
    int64_t idx[kMaxDims] = {};
    int64_t off = 0, rem = start;
    for (int d = nd - 1; d >= 0; d--) {
      idx[d] = rem % shape[d];
      rem /= shape[d];
      off += idx[d] * strides[d];
    }
    for (int64_t c = 0; c < count; c++) {
      f(off);
      for (int d = nd - 1; d >= 0; d--) {
        off += strides[d];
        if (++idx[d] < shape[d]) break;
        off -= idx[d] * strides[d];
        idx[d] = 0;
      }
    }
  }
};

template <typename T, typename Acc> struct ReduceOps {
  static Acc init(ReduceOp op) {
    switch (op) {
      case ReduceOp::Sum: return Acc(0);
      case ReduceOp::Max: return -std::numeric_limits<Acc>::infinity();
      case ReduceOp::Min: return std::numeric_limits<Acc>::infinity();
    }
    return Acc(0);
  }
  static Acc step(ReduceOp op, Acc acc, Acc x) {
    switch (op) {
      case ReduceOp::Sum: return acc + x;
      case ReduceOp::Max: return (x > acc || x != x) ? x : acc;
      case ReduceOp::Min: return (x < acc || x != x) ? x : acc;
    }
    return acc;
  }
};

template <typename T> void reduce_typed(ReduceOp op, const TensorDesc& dst, const TensorDesc& src) {
  using Acc = double;
  // Split src dims into kept (size matches dst) and reduced (dst size 1).
  Odometer kept, red;
  for (int d = 0; d < src.ndim; d++) {
    if (dst.shape[d] == src.shape[d]) {
      kept.shape[kept.nd] = src.shape[d];
      kept.strides[kept.nd++] = src.strides[d];
    } else {
      ENG_CHECK(dst.shape[d] == 1, "reduce: dst dim {} has size {}, expected 1 or {}", d, dst.shape[d], src.shape[d]);
      red.shape[red.nd] = src.shape[d];
      red.strides[red.nd++] = src.strides[d];
    }
  }
  // dst offsets follow the kept dims in the same order.
  Odometer dkept;
  for (int d = 0; d < src.ndim; d++)
    if (dst.shape[d] == src.shape[d]) {
      dkept.shape[dkept.nd] = dst.shape[d];
      dkept.strides[dkept.nd++] = dst.strides[d];
    }
  int64_t n_out = 1, n_red = 1;
  for (int d = 0; d < kept.nd; d++) n_out *= kept.shape[d];
  for (int d = 0; d < red.nd; d++) n_red *= red.shape[d];
  const T* s = static_cast<const T*>(src.data);
  T* o = static_cast<T*>(dst.data);
  using R = ReduceOps<T, Acc>;

  // Leading dims reduced, trailing dims kept, all contiguous (bias gradients, means over a batch).
  bool leading = src.contiguous() && dst.contiguous() && n_out > 1;
  for (int d = 0, seen_kept = 0; d < src.ndim && leading; d++) {
    bool kept_dim = dst.shape[d] == src.shape[d] && src.shape[d] != 1;
    bool red_dim = dst.shape[d] != src.shape[d];
    if (kept_dim) seen_kept = 1;
    if (red_dim && seen_kept) leading = false;
  }
  if (leading && n_red > 1) {
    if constexpr (std::is_same_v<T, float>) {
      if (op == ReduceOp::Sum) {
        // Sums of f32 columns (bias gradients): fixed blocks of kRowBlock rows, each summed into f64 column partials
        // by the vectorised kernel, blocks in parallel; then each column adds its block partials in block order.
        const int64_t blocks = (n_red + kRowBlock - 1) / kRowBlock;
        double* part = reduce_scratch(size_t(blocks * n_out));
        parallel_for(blocks, std::max<int64_t>(1, kChunk / (kRowBlock * n_out)), [&](int64_t lo, int64_t hi) {
          for (int64_t blk = lo; blk < hi; blk++) {
            double* acc = part + blk * n_out;
            std::fill(acc, acc + n_out, 0.0);
            const int64_t r0 = blk * kRowBlock;
            cpu::column_sums_f32(acc, s + r0 * n_out, n_out, std::min(kRowBlock, n_red - r0), n_out);
          }
        });
        parallel_for(n_out, 1024, [&](int64_t lo, int64_t hi) {
          for (int64_t c = lo; c < hi; c++) {
            double acc = 0;
            for (int64_t blk = 0; blk < blocks; blk++) acc += part[blk * n_out + c];
            o[c] = T(acc);
          }
        });
        return;
      }
    }
    // Max/min and f64: accumulate whole rows, column blocks in parallel (the general path's order).
    constexpr int64_t kCols = 256;
    parallel_for(n_out, kCols, [&](int64_t lo, int64_t hi) {
      Acc acc[kCols];
      for (int64_t c = lo; c < hi; c++) acc[c - lo] = R::init(op);
      for (int64_t r = 0; r < n_red; r++) {
        const T* row = s + r * n_out;
        for (int64_t c = lo; c < hi; c++) acc[c - lo] = R::step(op, acc[c - lo], Acc(row[c]));
      }
      for (int64_t c = lo; c < hi; c++) o[c] = T(acc[c - lo]);
    });
    return;
  }
  std::vector<int64_t> out_src(static_cast<size_t>(n_out)), out_dst(static_cast<size_t>(n_out));
  {
    int64_t i = 0;
    kept.walk(0, n_out, [&](int64_t off) { out_src[size_t(i++)] = off; });
    i = 0;
    dkept.walk(0, n_out, [&](int64_t off) { out_dst[size_t(i++)] = off; });
  }
  if (n_out >= 64 || n_red <= kChunk) {
    int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(n_red, 1));
    parallel_for(n_out, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) {
        Acc acc = R::init(op);
        const T* base = s + out_src[size_t(i)];
        red.walk(0, n_red, [&](int64_t off) { acc = R::step(op, acc, Acc(base[off])); });
        o[out_dst[size_t(i)]] = T(acc);
      }
    });
    return;
  }
  // Few outputs, long reductions: fixed chunks in parallel, partials combined in order.
  int64_t chunks = (n_red + kChunk - 1) / kChunk;
  std::vector<Acc> part(static_cast<size_t>(n_out * chunks));
  parallel_for(n_out * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; w++) {
      int64_t i = w / chunks, c = w % chunks;
      Acc acc = R::init(op);
      const T* base = s + out_src[size_t(i)];
      int64_t start = c * kChunk;
      red.walk(start, std::min(kChunk, n_red - start), [&](int64_t off) { acc = R::step(op, acc, Acc(base[off])); });
      part[size_t(w)] = acc;
    }
  });
  for (int64_t i = 0; i < n_out; i++) {
    Acc acc = R::init(op);
    for (int64_t c = 0; c < chunks; c++) acc = R::step(op, acc, part[size_t(i * chunks + c)]);
    o[out_dst[size_t(i)]] = T(acc);
  }
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const TensorDesc& dst, const TensorDesc& src) {
  ENG_CHECK(dst.ndim == src.ndim, "reduce: rank {} -> {}", src.ndim, dst.ndim);
  ENG_DISPATCH_FLOAT(src.dtype, "reduce", [&](auto tag) { reduce_typed<decltype(tag)>(op, dst, src); });
}

void CpuBackend::arg_reduce(bool is_max, const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src,
                            int dim) {
  ENG_DISPATCH_FLOAT(src.dtype, "max/min", [&](auto tag) {
    using T = decltype(tag);
    // Iterate over all positions of `values` (src shape with dim collapsed to 1).
    TensorDesc outer = values;
    const T* s = static_cast<const T*>(src.data);
    T* v = static_cast<T*>(values.data);
    int64_t* ix = static_cast<int64_t*>(indices.data);
    int64_t n = src.shape[dim], st = src.strides[dim];
    int64_t n_out = outer.numel();
    parallel_for(n_out, std::max<int64_t>(1, kChunk / std::max<int64_t>(n, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) {
        int64_t rem = i, so = 0, vo = 0, io = 0;
        for (int d = src.ndim - 1; d >= 0; d--) {
          int64_t idx = rem % values.shape[d];
          rem /= values.shape[d];
          so += idx * src.strides[d];
          vo += idx * values.strides[d];
          io += idx * indices.strides[d];
        }
        T best = s[so];
        int64_t bi = 0;
        for (int64_t j = 1; j < n; j++) {
          T x = s[so + j * st];
          if (best != best) break;  // NaN wins, like PyTorch
          if (x != x || (is_max ? x > best : x < best)) {
            best = x;
            bi = j;
          }
        }
        v[vo] = best;
        ix[io] = bi;
      }
    });
  });
}

}  // namespace eng
