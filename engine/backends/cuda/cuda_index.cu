// cuda_index.cu: indexing kernels of the CUDA backend: index_select, index_add, gather, scatter_add, sort, topk.
//
// index_select, gather   one thread per output element.
// scatter_add            one thread per (position outside `dim`) column: it walks the index along `dim` in order
//                        and adds into its own column of dst, so no two threads touch one element and the
//                        contributions to an element are added in index order: no atomics, the CPU's order.
// index_add              the 1-D index is sorted stably by target (CUB radix sort of (target, position) pairs);
//                        then one thread per dst element adds its sources in position order. Same order as the
//                        CPU's serial loop, so f32/f64 results are bitwise the CPU's.
// sort, topk             values become unsigned keys whose order is the CPU's order (NaN last, -0 == +0,
//                        descending = complemented keys); ties go to the lower position, so the order is total and
//                        any algorithm gives the same result. Lines up to 2048 long: a bitonic network per line in
//                        shared memory. Longer lines: two stable CUB radix sorts (by key, then by line).
// Index values are checked by the kernels themselves, so indexing never waits for the GPU: an out-of-range index is
// skipped (index_select and gather write 0 for it) and recorded as an IndexFault (cuda_common.cuh), which the host
// turns into the ops layer's error after its next read-back.
#include <cub/device/device_radix_sort.cuh>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {
namespace {

void check_index_dtype(const TensorDesc& index, const char* op) {
  ENG_CHECK(index.dtype == DType::I64, "{}: index tensor must be i64, got {}", op, dtype_name(index.dtype));
}
void check_rank(const TensorDesc& a, const TensorDesc& b, const char* op, const char* an, const char* bn) {
  ENG_CHECK(a.ndim == b.ndim, "{}: {} has rank {} but {} has rank {}", op, an, a.ndim, bn, b.ndim);
}
void check_dim(int dim, int ndim, const char* op) {
  ENG_CHECK(dim >= 0 && dim < ndim, "{}: dim {} out of range for rank {}", op, dim, ndim);
}

// Accumulating element types: f32, f64, bf16 (added in f32), i32, i64.
template <typename F> void dispatch_accumulate(DType dt, const char* op, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
  }
  (void)op;
}

// Walks the shape of one operand ("loop") with all its dims, giving the element offsets of two operands: a
// (all dims) and b (dims other than `dim`), and the position along `dim`.
struct DimGeo {
  int ndim = 0, dim = 0;
  int64_t shape[kMaxDims] = {}, sa[kMaxDims] = {}, sb[kMaxDims] = {};
};

DimGeo make_dim_geo(const TensorDesc& loop, int dim, const int64_t* sa, const int64_t* sb) {
  DimGeo g;
  g.ndim = loop.ndim;
  g.dim = dim;
  for (int d = 0; d < loop.ndim; d++) {
    g.shape[d] = loop.shape[d];
    g.sa[d] = sa[d];
    g.sb[d] = d == dim ? 0 : sb[d];
  }
  return g;
}

__device__ inline void dim_offsets(const DimGeo& g, int64_t i, int64_t& oa, int64_t& ob, int64_t& pos) {
  oa = ob = pos = 0;
  for (int d = g.ndim - 1; d >= 0; d--) {
    const int64_t idx = i % g.shape[d];
    i /= g.shape[d];
    if (d == g.dim) pos = idx;
    oa += idx * g.sa[d];
    ob += idx * g.sb[d];
  }
}

// ---------------------------------------------------------------- index_select / index_add

template <typename T>
__global__ void index_select_kernel(T* __restrict__ dst, const T* __restrict__ src, const int64_t* __restrict__ index,
                                    int64_t index_stride, int64_t src_dim_stride, int64_t src_dim_size, DimGeo g,
                                    int64_t n, IndexFault* fault, int dim) {
  ENG_GRID_STRIDE(i, n) {
    int64_t od, os, j;
    dim_offsets(g, i, od, os, j);
    const int64_t v = index[j * index_stride];
    const bool ok = v >= 0 && v < src_dim_size;
    if (!ok) record_index_fault(fault, kFaultIndexSelect, dim, v, src_dim_size);
    dst[od] = ok ? src[os + v * src_dim_stride] : T{};
  }
}

// An out-of-range target becomes a key no dst position matches (uint64 of a negative value is >= 2^63).
__global__ void iota_keys_kernel(uint64_t* __restrict__ keys, int64_t* __restrict__ pos, const int64_t* __restrict__ index,
                                 int64_t stride, int64_t n, int64_t dst_dim_size, IndexFault* fault, int dim) {
  ENG_GRID_STRIDE(j, n) {
    const int64_t v = index[j * stride];
    if (v < 0 || v >= dst_dim_size) record_index_fault(fault, kFaultIndexAdd, dim, v, dst_dim_size);
    keys[j] = uint64_t(v);
    pos[j] = j;
  }
}

// First position in sorted[0, n) whose key is >= target (target as uint64, the sort's order).
__device__ inline int64_t lower_bound_u64(const uint64_t* sorted, int64_t n, uint64_t target) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < target)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// One thread per dst element: adds the sources whose index is its position along dim, in position order.
template <typename T>
__global__ void index_add_kernel(T* __restrict__ dst, const T* __restrict__ src, const uint64_t* __restrict__ sorted_keys,
                                 const int64_t* __restrict__ sorted_pos, int64_t n_index, int64_t src_dim_stride,
                                 DimGeo g, int64_t n) {
  ENG_GRID_STRIDE(i, n) {
    int64_t od, os, p;
    dim_offsets(g, i, od, os, p);
    const int64_t lo = lower_bound_u64(sorted_keys, n_index, uint64_t(p));
    if (lo >= n_index || sorted_keys[lo] != uint64_t(p)) continue;
    calc_t<T> acc = ld(dst[od]);
    for (int64_t s = lo; s < n_index && sorted_keys[s] == uint64_t(p); s++)
      acc = acc + ld(src[os + sorted_pos[s] * src_dim_stride]);
    dst[od] = st<T>(acc);
  }
}

// ---------------------------------------------------------------- gather / scatter_add

// Geo operands: 0 = dst, 1 = index, 2 = src with a zero stride along dim.
template <typename T>
__global__ void gather_kernel(T* __restrict__ dst, const T* __restrict__ src, const int64_t* __restrict__ index,
                              int64_t src_dim_stride, int64_t src_dim_size, Geo g, int64_t n, IndexFault* fault, int dim) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[3];
    geo_offsets<3>(g, i, off);
    const int64_t v = index[off[1]];
    const bool ok = v >= 0 && v < src_dim_size;
    if (!ok) record_index_fault(fault, kFaultGather, dim, v, src_dim_size);
    dst[off[0]] = ok ? src[off[2] + v * src_dim_stride] : T{};
  }
}

// LineGeo operands: 0 = dst, 1 = src, 2 = index. One thread per line walks j = 0..n-1 along dim in order.
template <typename T>
__global__ void scatter_add_kernel(T* __restrict__ dst, const T* __restrict__ src, const int64_t* __restrict__ index,
                                   LineGeo g, int64_t n, int64_t dst_dim_stride, int64_t dst_dim_size,
                                   int64_t src_dim_stride, int64_t index_dim_stride, IndexFault* fault, int dim) {
  ENG_GRID_STRIDE(line, g.lines) {
    int64_t off[3];
    line_offsets<3>(g, line, off);
    for (int64_t j = 0; j < n; j++) {
      const int64_t v = index[off[2] + j * index_dim_stride];
      if (v < 0 || v >= dst_dim_size) {
        record_index_fault(fault, kFaultScatterAdd, dim, v, dst_dim_size);
        continue;
      }
      T& d = dst[off[0] + v * dst_dim_stride];
      d = st<T>(ld(d) + ld(src[off[1] + j * src_dim_stride]));
    }
  }
}

// ---------------------------------------------------------------- sort / topk

// Unsigned keys whose ascending order is the CPU's ascending order: NaN above everything, -0 equal to +0.
template <typename T> struct SortKey;
template <> struct SortKey<float> {
  using U = uint32_t;
  __device__ static U of(float x) {
    if (x != x) return 0xffffffffu;
    const uint32_t u = x == 0.0f ? 0u : __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};
template <> struct SortKey<double> {
  using U = uint64_t;
  __device__ static U of(double x) {
    if (x != x) return ~uint64_t(0);
    const uint64_t u = x == 0.0 ? 0ull : uint64_t(__double_as_longlong(x));
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  }
};
template <> struct SortKey<bf16_t> {
  using U = uint32_t;
  __device__ static U of(bf16_t x) { return SortKey<float>::of(ld(x)); }
};
template <> struct SortKey<int32_t> {
  using U = uint32_t;
  __device__ static U of(int32_t x) { return uint32_t(x) ^ 0x80000000u; }
};
template <> struct SortKey<int64_t> {
  using U = uint64_t;
  __device__ static U of(int64_t x) { return uint64_t(x) ^ 0x8000000000000000ull; }
};

constexpr int kBitonicMax = 2048;  // longest line sorted in shared memory
constexpr int kBitonicThreads = 512;

// One block per line. LineGeo operands: 0 = src, 1 = values, 2 = indices. Writes the first k of the order.
template <typename T>
__global__ void __launch_bounds__(kBitonicThreads)
    bitonic_sort_kernel(const T* __restrict__ src, T* __restrict__ values, int64_t* __restrict__ indices, LineGeo g,
                        int n, int npow2, int k, int64_t src_stride, int64_t values_stride, int64_t indices_stride,
                        bool descending) {
  using U = typename SortKey<T>::U;
  __shared__ U keys[kBitonicMax];
  __shared__ int pos[kBitonicMax];
  for (int64_t line = blockIdx.x; line < g.lines; line += gridDim.x) {
    int64_t off[3];
    line_offsets<3>(g, line, off);
    for (int t = threadIdx.x; t < npow2; t += blockDim.x) {
      if (t < n) {
        const U key = SortKey<T>::of(src[off[0] + t * src_stride]);
        keys[t] = descending ? U(~key) : key;
      } else {
        keys[t] = U(~U(0));  // padding sorts after every real element (ties go to the lower position)
      }
      pos[t] = t;
    }
    __syncthreads();
    for (int size = 2; size <= npow2; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = threadIdx.x; t < npow2 / 2; t += blockDim.x) {
          const int a = 2 * t - (t & (stride - 1));  // the lower element of pair t (bit `stride` clear)
          const int b = a + stride;
          const bool ascending = (a & size) == 0;
          const U ka = keys[a], kb = keys[b];
          const int pa = pos[a], pb = pos[b];
          const bool a_after_b = ka > kb || (ka == kb && pa > pb);
          if (a_after_b == ascending) {
            keys[a] = kb;
            keys[b] = ka;
            pos[a] = pb;
            pos[b] = pa;
          }
        }
        __syncthreads();
      }
    }
    for (int r = threadIdx.x; r < k; r += blockDim.x) {
      const int j = pos[r];
      indices[off[2] + r * indices_stride] = j;
      if (values) values[off[1] + r * values_stride] = src[off[0] + j * src_stride];
    }
    __syncthreads();  // the next line overwrites keys/pos
  }
}

// Long lines: element e = line * n + j.
template <typename T, typename U>
__global__ void make_sort_keys_kernel(U* __restrict__ keys, int64_t* __restrict__ ids, const T* __restrict__ src,
                                      LineGeo g, int64_t n, int64_t src_stride, bool descending, int64_t total) {
  ENG_GRID_STRIDE(e, total) {
    int64_t off[3];
    line_offsets<3>(g, e / n, off);
    const U key = SortKey<T>::of(src[off[0] + (e % n) * src_stride]);
    keys[e] = descending ? U(~key) : key;
    ids[e] = e;
  }
}

__global__ void line_of_kernel(uint64_t* __restrict__ line_keys, const int64_t* __restrict__ ids, int64_t n, int64_t total) {
  ENG_GRID_STRIDE(e, total) line_keys[e] = uint64_t(ids[e] / n);
}

// ids are grouped by line and ordered within each line: rank r of line L is ids[L * n + r].
template <typename T>
__global__ void write_sorted_kernel(const int64_t* __restrict__ ids, const T* __restrict__ src, T* __restrict__ values,
                                    int64_t* __restrict__ indices, LineGeo g, int64_t n, int64_t k, int64_t src_stride,
                                    int64_t values_stride, int64_t indices_stride, int64_t total) {
  ENG_GRID_STRIDE(e, total) {
    const int64_t r = e % n;
    if (r >= k) continue;
    int64_t off[3];
    line_offsets<3>(g, e / n, off);
    const int64_t j = ids[e] % n;
    indices[off[2] + r * indices_stride] = j;
    if (values) values[off[1] + r * values_stride] = src[off[0] + j * src_stride];
  }
}

int bits_for(uint64_t max_value) {
  int b = 1;
  while (b < 64 && (max_value >> b) != 0) b++;
  return b;
}

void check_order_args(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim, int64_t k,
                      const char* op) {
  ENG_CHECK(src.ndim > 0, "{}: needs at least one dim", op);
  ENG_CHECK(indices.dtype == DType::I64, "{}: indices must be i64, got {}", op, dtype_name(indices.dtype));
  check_dim(dim, src.ndim, op);
  check_rank(indices, src, op, "indices", "src");
  ENG_CHECK(k >= 0 && k <= src.shape[dim], "{}: k = {} out of range for dim {} of size {}", op, k, dim, src.shape[dim]);
  for (int d = 0; d < src.ndim; d++)
    ENG_CHECK(indices.shape[d] == (d == dim ? k : src.shape[d]), "{}: indices have the wrong shape in dim {}", op, d);
  if (values.data) {
    check_rank(values, src, op, "values", "src");
    ENG_CHECK(values.dtype == src.dtype, "{}: values are {} but src is {}", op, dtype_name(values.dtype),
              dtype_name(src.dtype));
    for (int d = 0; d < src.ndim; d++)
      ENG_CHECK(values.shape[d] == indices.shape[d], "{}: values and indices differ in dim {}", op, d);
  }
}

template <typename T>
void order_lines(int device, const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim,
                 int64_t k, bool descending) {
  using U = typename SortKey<T>::U;
  const int64_t n = src.shape[dim];
  const int64_t* strides[3] = {src.strides, values.data ? values.strides : indices.strides, indices.strides};
  const LineGeo g = make_line_geo(src, dim, strides, 3);
  if (k == 0 || n == 0 || g.lines == 0) return;
  const T* in = static_cast<const T*>(src.data);
  T* out_v = static_cast<T*>(values.data);
  int64_t* out_i = static_cast<int64_t*>(indices.data);
  const int64_t vstride = values.data ? values.strides[dim] : 0;
  if (n <= kBitonicMax) {
    int npow2 = 1;
    while (npow2 < n) npow2 <<= 1;
    const int threads = std::min(kBitonicThreads, std::max(32, npow2 / 2));
    const unsigned blocks = unsigned(std::min<int64_t>(g.lines, 65535 * 8));
    bitonic_sort_kernel<T><<<blocks, threads>>>(in, out_v, out_i, g, int(n), npow2, int(k), src.strides[dim], vstride,
                                                indices.strides[dim], descending);
    CUDA_CHECK_LAUNCH("sort (bitonic)");
    return;
  }
  const int64_t total = g.lines * n;
  DeviceBuffer keys_a(device, size_t(total) * sizeof(U)), keys_b(device, size_t(total) * sizeof(U));
  DeviceBuffer ids_a(device, size_t(total) * sizeof(int64_t)), ids_b(device, size_t(total) * sizeof(int64_t));
  const bool by_line = g.lines > 1;
  DeviceBuffer line_a(device, by_line ? size_t(total) * sizeof(uint64_t) : 0);
  DeviceBuffer line_b(device, by_line ? size_t(total) * sizeof(uint64_t) : 0);
  const int line_bits = bits_for(uint64_t(g.lines - 1));
  size_t temp1 = 0, temp2 = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp1, keys_a.as<U>(), keys_b.as<U>(), ids_a.as<int64_t>(),
                                             ids_b.as<int64_t>(), total));
  if (by_line)
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp2, line_a.as<uint64_t>(), line_b.as<uint64_t>(),
                                               ids_b.as<int64_t>(), ids_a.as<int64_t>(), total, 0, line_bits));
  DeviceBuffer temp(device, std::max(temp1, temp2));
  make_sort_keys_kernel<T, U><<<blocks_for(total), kThreads>>>(keys_a.as<U>(), ids_a.as<int64_t>(), in, g, n,
                                                               src.strides[dim], descending, total);
  CUDA_CHECK_LAUNCH("sort (keys)");
  // Stable sort by key: within a line, equal keys keep position order.
  size_t bytes = temp1;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), bytes, keys_a.as<U>(), keys_b.as<U>(), ids_a.as<int64_t>(),
                                             ids_b.as<int64_t>(), total));
  const int64_t* ordered = ids_b.as<int64_t>();
  if (by_line) {
    // Stable sort by line: groups the lines and keeps each line's key order.
    line_of_kernel<<<blocks_for(total), kThreads>>>(line_a.as<uint64_t>(), ids_b.as<int64_t>(), n, total);
    CUDA_CHECK_LAUNCH("sort (line keys)");
    bytes = temp2;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), bytes, line_a.as<uint64_t>(), line_b.as<uint64_t>(),
                                               ids_b.as<int64_t>(), ids_a.as<int64_t>(), total, 0, line_bits));
    ordered = ids_a.as<int64_t>();
  }
  write_sorted_kernel<T><<<blocks_for(total), kThreads>>>(ordered, in, out_v, out_i, g, n, k, src.strides[dim], vstride,
                                                          indices.strides[dim], total);
  CUDA_CHECK_LAUNCH("sort (write)");
}

template <typename F> void dispatch_sortable(DType dt, const char* op, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
  }
  (void)op;
}

}  // namespace

void CudaBackend::index_select(const TensorDesc& dst, const TensorDesc& src, int dim, const TensorDesc& index) {
  OpScope scope(*this, "cuda.index_select");
  check_index_dtype(index, "index_select");
  check_rank(dst, src, "index_select", "dst", "src");
  check_dim(dim, src.ndim, "index_select");
  ENG_CHECK(index.ndim == 1 && index.shape[0] == dst.shape[dim], "index_select: index must be 1-D of length {}",
            dst.shape[dim]);
  ENG_CHECK(dst.dtype == src.dtype, "index_select: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  const int64_t n = dst.numel();
  if (n == 0) return;
  const DimGeo g = make_dim_geo(dst, dim, dst.strides, src.strides);
  dispatch_by_size(dst.dtype, [&](auto t) {
    using T = decltype(t);
    index_select_kernel<T><<<blocks_for(n), kThreads>>>(static_cast<T*>(dst.data), static_cast<const T*>(src.data),
                                                        static_cast<const int64_t*>(index.data), index.strides[0],
                                                        src.strides[dim], src.shape[dim], g, n, index_fault(), dim);
  });
  CUDA_CHECK_LAUNCH("index_select");
}

void CudaBackend::index_add(const TensorDesc& dst, int dim, const TensorDesc& index, const TensorDesc& src) {
  OpScope scope(*this, "cuda.index_add");
  check_index_dtype(index, "index_add");
  check_rank(dst, src, "index_add", "dst", "src");
  check_dim(dim, dst.ndim, "index_add");
  ENG_CHECK(index.ndim == 1 && index.shape[0] == src.shape[dim], "index_add: index must be 1-D of length {}",
            src.shape[dim]);
  ENG_CHECK(dst.dtype == src.dtype, "index_add: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  for (int d = 0; d < dst.ndim; d++)
    ENG_CHECK(d == dim || dst.shape[d] == src.shape[d], "index_add: dst and src differ in dim {} ({} vs {})", d,
              dst.shape[d], src.shape[d]);
  const int64_t n_index = index.shape[0];
  const int64_t n = dst.numel();
  if (n == 0 || n_index == 0 || src.numel() == 0) return;
  // (target, position) pairs sorted by target, stably: each target's sources in position order.
  DeviceBuffer keys(device(), size_t(n_index) * sizeof(uint64_t)), keys_sorted(device(), size_t(n_index) * sizeof(uint64_t));
  DeviceBuffer pos(device(), size_t(n_index) * sizeof(int64_t)), pos_sorted(device(), size_t(n_index) * sizeof(int64_t));
  iota_keys_kernel<<<blocks_for(n_index), kThreads>>>(keys.as<uint64_t>(), pos.as<int64_t>(),
                                                      static_cast<const int64_t*>(index.data), index.strides[0], n_index,
                                                      dst.shape[dim], index_fault(), dim);
  CUDA_CHECK_LAUNCH("index_add (keys)");
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.as<uint64_t>(), keys_sorted.as<uint64_t>(),
                                             pos.as<int64_t>(), pos_sorted.as<int64_t>(), n_index));
  DeviceBuffer temp(device(), temp_bytes);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, keys.as<uint64_t>(), keys_sorted.as<uint64_t>(),
                                             pos.as<int64_t>(), pos_sorted.as<int64_t>(), n_index));
  const DimGeo g = make_dim_geo(dst, dim, dst.strides, src.strides);
  dispatch_accumulate(dst.dtype, "index_add", [&](auto t) {
    using T = decltype(t);
    index_add_kernel<T><<<blocks_for(n), kThreads>>>(static_cast<T*>(dst.data), static_cast<const T*>(src.data),
                                                     keys_sorted.as<uint64_t>(), pos_sorted.as<int64_t>(), n_index,
                                                     src.strides[dim], g, n);
  });
  CUDA_CHECK_LAUNCH("index_add");
}

void CudaBackend::gather(const TensorDesc& dst, const TensorDesc& src, int dim, const TensorDesc& index) {
  OpScope scope(*this, "cuda.gather");
  check_index_dtype(index, "gather");
  check_rank(index, src, "gather", "index", "src");
  check_rank(index, dst, "gather", "index", "dst");
  check_dim(dim, src.ndim, "gather");
  ENG_CHECK(dst.dtype == src.dtype, "gather: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  for (int d = 0; d < index.ndim; d++) {
    ENG_CHECK(dst.shape[d] == index.shape[d], "gather: dst and index differ in dim {}", d);
    ENG_CHECK(d == dim || index.shape[d] <= src.shape[d], "gather: index size {} exceeds src size {} in dim {}",
              index.shape[d], src.shape[d], d);
  }
  const int64_t n = index.numel();
  if (n == 0) return;
  TensorDesc src_nodim = src;  // src's element offsets outside dim; the index supplies the position along dim
  src_nodim.strides[dim] = 0;
  const TensorDesc* ds[3] = {&dst, &index, &src_nodim};  // walks dst's shape (= index's)
  const Geo g = make_geo(ds, 3);
  dispatch_by_size(dst.dtype, [&](auto t) {
    using T = decltype(t);
    gather_kernel<T><<<blocks_for(n), kThreads>>>(static_cast<T*>(dst.data), static_cast<const T*>(src.data),
                                                  static_cast<const int64_t*>(index.data), src.strides[dim],
                                                  src.shape[dim], g, n, index_fault(), dim);
  });
  CUDA_CHECK_LAUNCH("gather");
}

void CudaBackend::scatter_add(const TensorDesc& dst, int dim, const TensorDesc& index, const TensorDesc& src) {
  OpScope scope(*this, "cuda.scatter_add");
  check_index_dtype(index, "scatter_add");
  check_rank(index, src, "scatter_add", "index", "src");
  check_rank(index, dst, "scatter_add", "index", "dst");
  check_dim(dim, dst.ndim, "scatter_add");
  ENG_CHECK(dst.dtype == src.dtype, "scatter_add: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  for (int d = 0; d < index.ndim; d++) {
    ENG_CHECK(index.shape[d] <= src.shape[d], "scatter_add: index size {} exceeds src size {} in dim {}", index.shape[d],
              src.shape[d], d);
    ENG_CHECK(d == dim || index.shape[d] <= dst.shape[d], "scatter_add: index size {} exceeds dst size {} in dim {}",
              index.shape[d], dst.shape[d], d);
  }
  if (index.numel() == 0) return;
  const int64_t* strides[3] = {dst.strides, src.strides, index.strides};
  const LineGeo g = make_line_geo(index, dim, strides, 3);
  dispatch_accumulate(dst.dtype, "scatter_add", [&](auto t) {
    using T = decltype(t);
    scatter_add_kernel<T><<<blocks_for(g.lines), kThreads>>>(static_cast<T*>(dst.data), static_cast<const T*>(src.data),
                                                            static_cast<const int64_t*>(index.data), g, index.shape[dim],
                                                            dst.strides[dim], dst.shape[dim], src.strides[dim],
                                                            index.strides[dim], index_fault(), dim);
  });
  CUDA_CHECK_LAUNCH("scatter_add");
}

void CudaBackend::sort(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim, bool descending) {
  OpScope scope(*this, "cuda.sort");
  ENG_CHECK(src.ndim > 0, "sort: needs at least one dim");
  check_dim(dim, src.ndim, "sort");
  check_order_args(values, indices, src, dim, src.shape[dim], "sort");
  dispatch_sortable(src.dtype, "sort", [&](auto t) {
    order_lines<decltype(t)>(device(), values, indices, src, dim, src.shape[dim], descending);
  });
}

void CudaBackend::topk(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int64_t k, int dim,
                       bool largest) {
  OpScope scope(*this, "cuda.topk");
  ENG_CHECK(src.ndim > 0, "topk: needs at least one dim");
  check_dim(dim, src.ndim, "topk");
  check_order_args(values, indices, src, dim, k, "topk");
  // The k largest are the first k of the descending order (NaN counts as the largest, as in PyTorch).
  dispatch_sortable(src.dtype, "topk", [&](auto t) { order_lines<decltype(t)>(device(), values, indices, src, dim, k, largest); });
}

}  // namespace cuda
}  // namespace eng
