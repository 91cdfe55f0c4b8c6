// cpu_loops.h: strided iteration helpers shared by the CPU kernels.
//
// Work is split into fixed pieces (rows of the innermost dim, or blocks of kBlock elements when
// everything is contiguous), so which thread runs a piece never changes any result.
#pragma once
#include <algorithm>
#include <cstdint>

#include "engine/backend.h"
#include "engine/backends/cpu/cpu_pool.h"
#include "engine/error.h"

namespace eng::cpu {

constexpr int64_t kBlock = 16384;  // elements per parallel piece for flat loops

// Run f over [0, n) in pieces of `grain`, in parallel (cpu_pool.h) when there is more than one piece.
template <typename F> void parallel_for(int64_t n, int64_t grain, F f) {
  int64_t pieces = (n + grain - 1) / grain;
  if (pieces <= 1) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
  run_pieces(pieces, [&](int64_t p) { f(p * grain, std::min(n, (p + 1) * grain)); });
}

// Offsets (in elements) of the element with row-major linear index `i` of `shape`, for up to 4 operands.
template <int N> struct StridedIndex {
  int ndim;
  const int64_t* shape;
  const int64_t* strides[N];
  void offsets(int64_t i, int64_t out[N]) const {
    for (int k = 0; k < N; k++) out[k] = 0;
    for (int d = ndim - 1; d >= 0; d--) {
      int64_t idx = i % shape[d];
      i /= shape[d];
      for (int k = 0; k < N; k++) out[k] += idx * strides[k][d];
    }
  }
};

// Calls f(off[0..N)) for each element of dst's shape in row-major order, with per-operand element offsets.
// Parallel over rows of the last dim (or over contiguous blocks when all operands are contiguous alike).
template <int N, typename F> void for_each_offset(const TensorDesc* ds[N], F f) {
  const TensorDesc& d0 = *ds[0];
  int64_t n = d0.numel();
  if (n == 0) return;
  bool flat = true;
  for (int k = 0; k < N; k++) flat = flat && ds[k]->contiguous() && ds[k]->numel() == n;
  if (flat) {
    parallel_for(n, kBlock, [&](int64_t lo, int64_t hi) {
      int64_t off[N];
      for (int64_t i = lo; i < hi; i++) {
        for (int k = 0; k < N; k++) off[k] = i;
        f(off);
      }
    });
    return;
  }
  int nd = d0.ndim;
  int64_t inner = nd ? d0.shape[nd - 1] : 1;
  int64_t rows = n / inner;
  StridedIndex<N> si{nd ? nd - 1 : 0, d0.shape, {}};
  int64_t inner_stride[N];
  for (int k = 0; k < N; k++) {
    si.strides[k] = ds[k]->strides;
    inner_stride[k] = nd ? ds[k]->strides[nd - 1] : 0;
  }
  int64_t grain = std::max<int64_t>(1, kBlock / std::max<int64_t>(inner, 1));
  parallel_for(rows, grain, [&](int64_t lo, int64_t hi) {
    int64_t base[N], off[N];
    for (int64_t r = lo; r < hi; r++) {
      si.offsets(r, base);
      for (int64_t j = 0; j < inner; j++) {
        for (int k = 0; k < N; k++) off[k] = base[k] + j * inner_stride[k];
        f(off);
      }
    }
  });
}

// Merges adjacent dims that are laid out contiguously w.r.t. each other in every operand (and drops
// size-1 dims), so that the innermost loop is as long as possible. Shapes/strides are rewritten in place.
template <int N> int coalesce(int ndim, int64_t* shape, int64_t (*strides)[kMaxDims]) {
  int out = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    if (out > 0) {
      bool merge = true;
      for (int k = 0; k < N; k++) merge = merge && strides[k][out - 1] == strides[k][d] * shape[d];
      if (merge) {
        shape[out - 1] *= shape[d];
        for (int k = 0; k < N; k++) strides[k][out - 1] = strides[k][d];
        continue;
      }
    }
    shape[out] = shape[d];
    for (int k = 0; k < N; k++) strides[k][out] = strides[k][d];
    out++;
  }
  return out;
}

// Calls f(base[N], inner_stride[N], n) for each innermost row of dst's shape (after coalescing), where
// base are per-operand element offsets of the row's first element; rows run in parallel in fixed pieces.
// Kernels write a tight (vectorisable) loop over the row.
template <int N, typename F> void for_each_row(const TensorDesc* ds[N], F f) {
  int64_t n = ds[0]->numel();
  if (n == 0) return;
  int64_t shape[kMaxDims];
  int64_t strides[N][kMaxDims];
  int nd = ds[0]->ndim;
  for (int d = 0; d < nd; d++) {
    shape[d] = ds[0]->shape[d];
    for (int k = 0; k < N; k++) strides[k][d] = ds[k]->strides[d];
  }
  nd = coalesce<N>(nd, shape, strides);
  int64_t inner = nd ? shape[nd - 1] : 1;
  int64_t inner_stride[N];
  for (int k = 0; k < N; k++) inner_stride[k] = nd ? strides[k][nd - 1] : 0;
  int64_t rows = n / inner;
  int64_t grain = std::max<int64_t>(1, kBlock / std::max<int64_t>(inner, 1));
  if (rows == 1 && inner > kBlock) {  // one long row: split it into fixed blocks
    parallel_for(inner, kBlock, [&](int64_t lo, int64_t hi) {
      int64_t base[N];
      for (int k = 0; k < N; k++) base[k] = lo * inner_stride[k];
      f(base, inner_stride, hi - lo);
    });
    return;
  }
  int outer_nd = nd ? nd - 1 : 0;
  parallel_for(rows, grain, [&](int64_t lo, int64_t hi) {
    int64_t base[N];
    for (int64_t r = lo; r < hi; r++) {
      int64_t rem = r;
      for (int k = 0; k < N; k++) base[k] = 0;
      for (int d = outer_nd - 1; d >= 0; d--) {
        int64_t idx = rem % shape[d];
        rem /= shape[d];
        for (int k = 0; k < N; k++) base[k] += idx * strides[k][d];
      }
      f(base, inner_stride, inner);
    }
  });
}

}  // namespace eng::cpu

// Dispatch a generic lambda over the floating dtypes f32/f64: ENG_DISPATCH_FLOAT(dt, "op", [&](auto tag){ using T = decltype(tag); ... });
#define ENG_DISPATCH_FLOAT(dt, opname, ...)                                                   \
  do {                                                                                        \
    auto eng_fn_ = __VA_ARGS__;                                                               \
    switch (dt) {                                                                             \
      case ::eng::DType::F32: eng_fn_(float{}); break;                                        \
      case ::eng::DType::F64: eng_fn_(double{}); break;                                       \
      default: ENG_FAIL("{}: dtype {} not supported on the CPU", opname, ::eng::dtype_name(dt)); \
    }                                                                                         \
  } while (0)
