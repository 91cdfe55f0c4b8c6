// cpu_loops.h: strided iteration helpers shared by the CPU kernels.
//
// Work is split into fixed pieces (rows of the innermost dim, or blocks of kBlock elements when
// everything is contiguous), so which thread runs a piece never changes any result.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "engine/backend.h"
#include "engine/error.h"

namespace eng::cpu {

constexpr int64_t kBlock = 16384;  // elements per parallel piece for flat loops

// Run f over [0, n) in pieces of `grain`, in parallel when there is more than one piece.
template <typename F> void parallel_for(int64_t n, int64_t grain, F f) {
  int64_t pieces = (n + grain - 1) / grain;
  if (pieces <= 1) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < pieces; p++) f(p * grain, std::min(n, (p + 1) * grain));
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
