// cuda_reduce.cu: sum / max / min over any set of dims (reduce) and max / min with indices along one dim
// (arg_reduce), for f32, f64 and bf16 (f64 accumulators, as the CPU).
//
// reduce: the reduced dims and the kept dims are each merged where their strides allow. Then one of two
// layouts, chosen from the shapes alone:
//   inner  the reduced elements are the closer ones in memory: a warp (short reductions) or a block per
//          output; thread t sums elements t, t + G, t + 2G, ...; the threads' partials meet in a fixed tree.
//   outer  the kept elements are the closer ones (column sums, bias gradients): one thread per output walks
//          its reduced elements in order, so neighbouring threads read neighbouring addresses.
// Long reductions are cut into fixed chunks (their length depends only on the shapes) whose partial results
// go to a scratch buffer and are then combined in chunk order. No atomics: the same inputs give the same
// bits on every run. The order differs from the CPU's, so sums agree with it to rounding (~1e-16 relative in
// the f64 accumulator), not bitwise.
//
// arg_reduce: a warp per line along `dim`; each lane keeps its best (value, index), and pairs are combined by a
// rule that is independent of the combining order: NaN beats numbers, a larger (smaller) value beats a
// smaller (larger) one, and equal values go to the lower index. That is exactly the CPU's "first maximum,
// first NaN" result.
#include <cmath>
#include <limits>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {
namespace {

struct ReduceGeo {
  int nk = 0, nr = 0;  // kept dims, reduced dims (after merging)
  int64_t ksize[kMaxDims] = {}, ksrc[kMaxDims] = {}, kdst[kMaxDims] = {};
  int64_t rsize[kMaxDims] = {}, rsrc[kMaxDims] = {};
  int64_t n_out = 1, n_red = 1;
};

ReduceGeo make_reduce_geo(const TensorDesc& dst, const TensorDesc& src) {
  ReduceGeo g;
  for (int d = 0; d < src.ndim; d++) {
    const int64_t size = src.shape[d];
    if (size == 1) continue;
    if (dst.shape[d] == size) {
      if (g.nk > 0 && g.ksrc[g.nk - 1] == src.strides[d] * size && g.kdst[g.nk - 1] == dst.strides[d] * size) {
        g.ksize[g.nk - 1] *= size;
        g.ksrc[g.nk - 1] = src.strides[d];
        g.kdst[g.nk - 1] = dst.strides[d];
      } else {
        g.ksize[g.nk] = size;
        g.ksrc[g.nk] = src.strides[d];
        g.kdst[g.nk] = dst.strides[d];
        g.nk++;
      }
      g.n_out *= size;
    } else {
      ENG_CHECK(dst.shape[d] == 1, "reduce: dst dim {} has size {}, expected 1 or {}", d, dst.shape[d], size);
      if (g.nr > 0 && g.rsrc[g.nr - 1] == src.strides[d] * size) {
        g.rsize[g.nr - 1] *= size;
        g.rsrc[g.nr - 1] = src.strides[d];
      } else {
        g.rsize[g.nr] = size;
        g.rsrc[g.nr] = src.strides[d];
        g.nr++;
      }
      g.n_red *= size;
    }
  }
  return g;
}

__device__ inline void out_offsets(const ReduceGeo& g, int64_t o, int64_t& so, int64_t& dof) {
  so = 0;
  dof = 0;
  for (int d = g.nk - 1; d >= 0; d--) {
    const int64_t idx = g.nk == 1 ? o : o % g.ksize[d];
    o = g.nk == 1 ? 0 : o / g.ksize[d];
    so += idx * g.ksrc[d];
    dof += idx * g.kdst[d];
  }
}

__device__ inline int64_t red_offset(const ReduceGeo& g, int64_t r) {
  if (g.nr == 1) return r * g.rsrc[0];
  int64_t off = 0;
  for (int d = g.nr - 1; d >= 0; d--) {
    off += (r % g.rsize[d]) * g.rsrc[d];
    r /= g.rsize[d];
  }
  return off;
}

template <typename Op> __host__ __device__ inline double reduce_init();
template <> __host__ __device__ inline double reduce_init<SumOp>() { return 0.0; }
template <> __host__ __device__ inline double reduce_init<MaxOp>() { return -INFINITY; }
template <> __host__ __device__ inline double reduce_init<MinOp>() { return INFINITY; }

template <typename T> __device__ inline T from_acc(double a) { return st<T>(calc_t<T>(a)); }

// inner layout: kGroup threads per (output, chunk) item.
template <int kGroup, typename T, typename Op>
__global__ void reduce_inner_kernel(const T* __restrict__ src, T* __restrict__ dst, double* __restrict__ partial,
                                    ReduceGeo g, int64_t chunk, int64_t chunks) {
  __shared__ double smem[kGroup / 32];
  constexpr int kGroupsPerBlock = kThreads / kGroup;
  const int lane = threadIdx.x % kGroup, group = threadIdx.x / kGroup;
  const int64_t items = g.n_out * chunks;
  Op op;
  for (int64_t item = int64_t(blockIdx.x) * kGroupsPerBlock + group; item < items;
       item += int64_t(gridDim.x) * kGroupsPerBlock) {
    const int64_t o = item / chunks, c = item % chunks;
    int64_t so, dof;
    out_offsets(g, o, so, dof);
    const int64_t r0 = c * chunk, r1 = min(g.n_red, r0 + chunk);
    double acc = reduce_init<Op>();
    for (int64_t r = r0 + lane; r < r1; r += kGroup) acc = op(acc, double(ld(src[so + red_offset(g, r)])));
    acc = group_allreduce<kGroup>(acc, op, smem);
    if (lane == 0) {
      if (chunks == 1)
        dst[dof] = from_acc<T>(acc);
      else
        partial[o * chunks + c] = acc;
    }
  }
}

// outer layout: one thread per (output, chunk) item, outputs fastest.
template <typename T, typename Op>
__global__ void reduce_outer_kernel(const T* __restrict__ src, T* __restrict__ dst, double* __restrict__ partial,
                                    ReduceGeo g, int64_t chunk, int64_t chunks) {
  Op op;
  ENG_GRID_STRIDE(item, g.n_out * chunks) {
    const int64_t o = item % g.n_out, c = item / g.n_out;
    int64_t so, dof;
    out_offsets(g, o, so, dof);
    const int64_t r0 = c * chunk, r1 = min(g.n_red, r0 + chunk);
    double acc = reduce_init<Op>();
    for (int64_t r = r0; r < r1; r++) acc = op(acc, double(ld(src[so + red_offset(g, r)])));
    if (chunks == 1)
      dst[dof] = from_acc<T>(acc);
    else
      partial[o * chunks + c] = acc;
  }
}

// Partials of output o are partial[o * chunks + c]; combined in chunk order.
template <typename T, typename Op>
__global__ void reduce_finish_kernel(const double* __restrict__ partial, T* __restrict__ dst, ReduceGeo g, int64_t chunks) {
  Op op;
  ENG_GRID_STRIDE(o, g.n_out) {
    int64_t so, dof;
    out_offsets(g, o, so, dof);
    double acc = reduce_init<Op>();
    for (int64_t c = 0; c < chunks; c++) acc = op(acc, partial[o * chunks + c]);
    dst[dof] = from_acc<T>(acc);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T, typename Op> void reduce_typed(int device, const TensorDesc& dst, const TensorDesc& src) {
  const ReduceGeo g = make_reduce_geo(dst, src);
  if (g.n_out == 0) return;
  T* out = static_cast<T*>(dst.data);
  const T* in = static_cast<const T*>(src.data);
  // The reduced elements are the nearer ones in memory when their innermost stride is the smaller.
  const bool inner = g.nr > 0 && (g.nk == 0 || std::llabs(g.rsrc[g.nr - 1]) < std::llabs(g.ksrc[g.nk - 1]));
  if (inner) {
    // Enough (output, chunk) items to fill a large GPU (~1024 groups), chunks of at least 4096 elements.
    const int64_t want_chunks = ceil_div(1024, g.n_out);
    const int64_t chunk = std::max<int64_t>(4096, ceil_div(g.n_red, want_chunks));
    const int64_t chunks = ceil_div(g.n_red, chunk);
    DeviceBuffer partial(device, chunks > 1 ? size_t(g.n_out * chunks) * sizeof(double) : 0);
    const int64_t items = g.n_out * chunks;
    if (std::min(chunk, g.n_red) <= 1024) {
      reduce_inner_kernel<32, T, Op><<<blocks_for(items, kThreads / 32), kThreads>>>(in, out, partial.as<double>(), g,
                                                                                      chunk, chunks);
    } else {
      reduce_inner_kernel<kThreads, T, Op><<<blocks_for(items, 1), kThreads>>>(in, out, partial.as<double>(), g, chunk,
                                                                                chunks);
    }
    CUDA_CHECK_LAUNCH("reduce");
    if (chunks > 1) {
      reduce_finish_kernel<T, Op><<<blocks_for(g.n_out), kThreads>>>(partial.as<double>(), out, g, chunks);
      CUDA_CHECK_LAUNCH("reduce (combine chunks)");
    }
    return;
  }
  // outer: ~64k threads in flight, chunks of at least 64 elements.
  const int64_t want_chunks = ceil_div(int64_t(1) << 16, g.n_out);
  const int64_t chunk = std::max<int64_t>(64, ceil_div(g.n_red, want_chunks));
  const int64_t chunks = ceil_div(g.n_red, chunk);
  DeviceBuffer partial(device, chunks > 1 ? size_t(g.n_out * chunks) * sizeof(double) : 0);
  reduce_outer_kernel<T, Op><<<blocks_for(g.n_out * chunks), kThreads>>>(in, out, partial.as<double>(), g, chunk, chunks);
  CUDA_CHECK_LAUNCH("reduce");
  if (chunks > 1) {
    reduce_finish_kernel<T, Op><<<blocks_for(g.n_out), kThreads>>>(partial.as<double>(), out, g, chunks);
    CUDA_CHECK_LAUNCH("reduce (combine chunks)");
  }
}

// ---------------------------------------------------------------- arg_reduce

// Does (va, ia) beat (vb, ib)? Independent of the order pairs are met in (see the top of the file).
template <typename C> __device__ inline bool arg_better(C va, int64_t ia, C vb, int64_t ib, bool is_max) {
  const bool na = va != va, nb = vb != vb;
  if (na || nb) return (na && nb) ? ia < ib : na;
  if (is_max ? va > vb : va < vb) return true;
  if (is_max ? vb > va : vb < va) return false;
  return ia < ib;
}

// One warp per line; operands of the LineGeo: 0 = src, 1 = values, 2 = indices.
template <typename T>
__global__ void arg_reduce_kernel(const T* __restrict__ src, T* __restrict__ values, int64_t* __restrict__ indices,
                                  LineGeo g, int64_t n, int64_t stride, bool is_max) {
  using C = calc_t<T>;
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t line = int64_t(blockIdx.x) * kWarps + warp; line < g.lines; line += int64_t(gridDim.x) * kWarps) {
    int64_t off[3];
    line_offsets<3>(g, line, off);
    C best = C(0);
    int64_t bi = -1;  // -1: this lane has seen nothing yet
    for (int64_t j = lane; j < n; j += 32) {
      const C x = ld(src[off[0] + j * stride]);
      if (bi < 0 || arg_better(x, j, best, bi, is_max)) {
        best = x;
        bi = j;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const C ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi >= 0 && (bi < 0 || arg_better(ob, oi, best, bi, is_max))) {
        best = ob;
        bi = oi;
      }
    }
    if (lane == 0) {
      values[off[1]] = st<T>(best);
      indices[off[2]] = bi;
    }
  }
}

}  // namespace

void CudaBackend::reduce(ReduceOp op, const TensorDesc& dst, const TensorDesc& src) {
  OpScope scope(*this, "cuda.reduce");
  ENG_CHECK(dst.ndim == src.ndim, "reduce: rank {} -> {}", src.ndim, dst.ndim);
  ENG_CHECK(dst.dtype == src.dtype, "reduce: dtype {} -> {}", dtype_name(src.dtype), dtype_name(dst.dtype));
  if (dst.numel() == 0 || src.numel() == 0) return;
  dispatch_float(src.dtype, "reduce", [&](auto t) {
    using T = decltype(t);
    switch (op) {
      case ReduceOp::Sum: reduce_typed<T, SumOp>(device(), dst, src); break;
      case ReduceOp::Max: reduce_typed<T, MaxOp>(device(), dst, src); break;
      case ReduceOp::Min: reduce_typed<T, MinOp>(device(), dst, src); break;
    }
  });
}

void CudaBackend::arg_reduce(bool is_max, const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src,
                             int dim) {
  OpScope scope(*this, "cuda.arg_reduce");
  ENG_CHECK(dim >= 0 && dim < src.ndim, "max/min: dim {} out of range for rank {}", dim, src.ndim);
  ENG_CHECK(indices.dtype == DType::I64, "max/min: indices must be i64, got {}", dtype_name(indices.dtype));
  ENG_CHECK(values.dtype == src.dtype, "max/min: values are {} but src is {}", dtype_name(values.dtype),
            dtype_name(src.dtype));
  const int64_t n = src.shape[dim];
  ENG_CHECK(n > 0, "max/min along an empty dim {}", dim);
  const int64_t* strides[3] = {src.strides, values.strides, indices.strides};
  const LineGeo g = make_line_geo(src, dim, strides, 3);
  if (g.lines == 0 || src.numel() == 0) return;
  dispatch_float(src.dtype, "max/min", [&](auto t) {
    using T = decltype(t);
    arg_reduce_kernel<T><<<blocks_for(g.lines, kThreads / 32), kThreads>>>(
        static_cast<const T*>(src.data), static_cast<T*>(values.data), static_cast<int64_t*>(indices.data), g, n,
        src.strides[dim], is_max);
  });
  CUDA_CHECK_LAUNCH("arg_reduce");
}

}  // namespace cuda
}  // namespace eng
