// cpu_index.cpp: indexing kernels of the CPU backend: index_select, index_add, gather, scatter_add, sort, topk.
//
// Every kernel sees its iteration space as [outer, n, inner]: the dims before `dim`, `dim` itself, and the dims
// after it, with per-operand offset tables for the outer and inner positions (so any strides work). The copying
// kernels (index_select, gather) split the rows (outer, j) among threads. The accumulating kernels (index_add,
// scatter_add) split only (outer position, block of inner positions): such a piece owns the whole column of
// outputs it can touch along `dim`, so no two threads touch one element, and it applies the contributions to one
// output in index order: the result is bitwise the same for any thread count.
// Index values are all validated before anything is written; an out-of-range value throws an
// eng::Error naming the op, the value and the size, and leaves the destination untouched.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"

namespace eng {
using namespace cpu;

namespace {

// Offsets of the inner positions, either from a table (any strides) or as i * stride when the inner dims of
// every operand collapse to one stride (the common contiguous case, which then needs no table lookups).
struct TableInner {
  const int64_t* t;
  int64_t operator[](int64_t i) const { return t[i]; }
};
struct LinearInner {
  int64_t s;
  int64_t operator[](int64_t i) const { return i * s; }
};

// Offsets (in elements) of every outer and inner position of `loop` (split at `dim`) for up to K operands.
template <int K> struct Split {
  int64_t outer = 1, n = 1, inner = 1;
  std::vector<int64_t> outer_off[K], inner_off[K];
  int64_t dim_stride[K] = {};
  bool inner_linear = true;
  int64_t inner_stride[K] = {};

  // strides[k] are operand k's strides, indexed like loop's dims (operand k may be larger than loop).
  Split(const TensorDesc& loop, int dim, const int64_t* const strides[K]) {
    n = loop.shape[dim];
    for (int d = 0; d < dim; d++) outer *= loop.shape[d];
    for (int d = dim + 1; d < loop.ndim; d++) inner *= loop.shape[d];
    for (int k = 0; k < K; k++) {
      dim_stride[k] = strides[k][dim];
      outer_off[k] = offsets(loop, 0, dim, strides[k]);
      inner_off[k] = offsets(loop, dim + 1, loop.ndim, strides[k]);
      const std::vector<int64_t>& t = inner_off[k];
      inner_stride[k] = t.size() > 1 ? t[1] : 0;
      for (size_t i = 0; i < t.size() && inner_linear; i++) inner_linear = t[i] == int64_t(i) * inner_stride[k];
    }
  }
  // Row-major offsets of the sub-box of dims [lo, hi).
  static std::vector<int64_t> offsets(const TensorDesc& loop, int lo, int hi, const int64_t* strides) {
    std::vector<int64_t> off{0};
    for (int d = lo; d < hi; d++) {
      std::vector<int64_t> next;
      next.reserve(off.size() * size_t(loop.shape[d]));
      for (int64_t base : off)
        for (int64_t i = 0; i < loop.shape[d]; i++) next.push_back(base + i * strides[d]);
      off.swap(next);
    }
    return off;
  }

  // Calls f(acc) with acc[k][i] = inner offset i of operand k.
  template <typename F> void with_inner(F f) const {
    if (inner_linear) {
      std::array<LinearInner, K> a;
      for (int k = 0; k < K; k++) a[size_t(k)] = {inner_stride[k]};
      f(a);
    } else {
      std::array<TableInner, K> a;
      for (int k = 0; k < K; k++) a[size_t(k)] = {inner_off[k].data()};
      f(a);
    }
  }

  // Runs f(o, i0, i1) over pieces (outer position o, inner range [i0, i1)) in parallel; f walks all of `dim`.
  // For accumulating kernels: a piece owns every output it can touch. Piece sizes depend only on the shape.
  template <typename F> void for_columns(F f) const {
    if (outer == 0 || inner == 0) return;
    int64_t work_per_inner = std::max<int64_t>(n, 1);
    int64_t iblk = std::min(inner, std::max<int64_t>(64, kBlock / work_per_inner));
    int64_t blocks = (inner + iblk - 1) / iblk;
    int64_t grain = std::max<int64_t>(1, kBlock / (work_per_inner * iblk));
    parallel_for(outer * blocks, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; p++) {
        int64_t o = p / blocks, b = p % blocks;
        f(o, b * iblk, std::min(inner, (b + 1) * iblk));
      }
    });
  }

  // Runs f(o, j) over every row (outer position o, position j along dim) in parallel; f walks the inner range.
  // For kernels that write each output once (gather, index_select), where any split of the rows is safe.
  template <typename F> void for_rows(F f) const {
    if (outer == 0 || n == 0 || inner == 0) return;
    parallel_for(outer * n, std::max<int64_t>(1, kBlock / inner), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r++) f(r / n, r % n);
    });
  }
};

template <typename I> const I* as(const TensorDesc& d) { return static_cast<const I*>(d.data); }

void check_index_dtype(const TensorDesc& index, const char* op) {
  ENG_CHECK(index.dtype == DType::I64, "{}: index tensor must be i64, got {}", op, dtype_name(index.dtype));
}

// Every value of `index` (any strides) must lie in [0, size); throws naming the first bad one in row-major
// order. Fixed pieces checked in parallel, then scanned in order, so the error never depends on the threads.
void check_index_range(const TensorDesc& index, int64_t size, const char* op, int dim) {
  int64_t n = index.numel();
  if (n == 0) return;
  const int64_t* p = as<int64_t>(index);
  int64_t pieces = (n + kBlock - 1) / kBlock;
  std::vector<char> bad(static_cast<size_t>(pieces), 0);
  std::vector<int64_t> bad_value(static_cast<size_t>(pieces), 0);
  parallel_for(pieces, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t piece = lo; piece < hi; piece++) {
      int64_t start = piece * kBlock, count = std::min(kBlock, n - start);
      int64_t idx[kMaxDims] = {}, off = 0, rem = start;
      for (int d = index.ndim - 1; d >= 0; d--) {
        idx[d] = rem % index.shape[d];
        rem /= index.shape[d];
        off += idx[d] * index.strides[d];
      }
      for (int64_t c = 0; c < count; c++) {
        int64_t v = p[off];
        if (v < 0 || v >= size) {
          bad[size_t(piece)] = 1;
          bad_value[size_t(piece)] = v;
          break;
        }
        for (int d = index.ndim - 1; d >= 0; d--) {
          off += index.strides[d];
          if (++idx[d] < index.shape[d]) break;
          off -= idx[d] * index.strides[d];
          idx[d] = 0;
        }
      }
    }
  });
  for (int64_t piece = 0; piece < pieces; piece++)
    if (bad[size_t(piece)])
      ENG_FAIL("{}: index {} out of range for dim {} of size {}", op, bad_value[size_t(piece)], dim, size);
}

// Data movement only needs the element size: bf16 and the integer types move like any other.
template <typename F> void dispatch_by_size(DType dt, F f) {
  switch (dtype_size(dt)) {
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    default: ENG_FAIL("internal: element size {} of dtype {}", dtype_size(dt), dtype_name(dt));
  }
}

// Arithmetic and comparisons: f32, f64, i32, i64.
template <typename F> void dispatch_arith(DType dt, const char* op, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
    default: ENG_FAIL("{}: dtype {} not supported on the CPU", op, dtype_name(dt));
  }
}

void check_rank(const TensorDesc& a, const TensorDesc& b, const char* op, const char* an, const char* bn) {
  ENG_CHECK(a.ndim == b.ndim, "{}: {} has rank {} but {} has rank {}", op, an, a.ndim, bn, b.ndim);
}

// NaN sorts above every number (as PyTorch does): a strict weak order for ascending sorts.
template <typename T> bool less_nan_last(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) return a < b || (!std::isnan(a) && std::isnan(b));
  return a < b;
}

}  // namespace

// ---------------------------------------------------------------- index_select / index_add

void CpuBackend::index_select(const TensorDesc& dst, const TensorDesc& src, int dim, const TensorDesc& index) {
  check_index_dtype(index, "index_select");
  check_rank(dst, src, "index_select", "dst", "src");
  ENG_CHECK(index.ndim == 1 && index.shape[0] == dst.shape[dim], "index_select: index must be 1-D of length {}", dst.shape[dim]);
  ENG_CHECK(dst.dtype == src.dtype, "index_select: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  check_index_range(index, src.shape[dim], "index_select", dim);
  const int64_t* strides[2] = {dst.strides, src.strides};
  Split<2> sp(dst, dim, strides);
  const int64_t* ip = as<int64_t>(index);
  int64_t is = index.strides[0];
  dispatch_by_size(dst.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* out = static_cast<T*>(dst.data);
    const T* in = as<T>(src);
    sp.with_inner([&](const auto& at) {
      sp.for_rows([&](int64_t o, int64_t j) {
        T* oj = out + sp.outer_off[0][size_t(o)] + j * sp.dim_stride[0];
        const T* sj = in + sp.outer_off[1][size_t(o)] + ip[j * is] * sp.dim_stride[1];
        for (int64_t i = 0; i < sp.inner; i++) oj[at[0][i]] = sj[at[1][i]];
      });
    });
  });
}

void CpuBackend::index_add(const TensorDesc& dst, int dim, const TensorDesc& index, const TensorDesc& src) {
  check_index_dtype(index, "index_add");
  check_rank(dst, src, "index_add", "dst", "src");
  ENG_CHECK(index.ndim == 1 && index.shape[0] == src.shape[dim], "index_add: index must be 1-D of length {}", src.shape[dim]);
  ENG_CHECK(dst.dtype == src.dtype, "index_add: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  for (int d = 0; d < dst.ndim; d++)
    ENG_CHECK(d == dim || dst.shape[d] == src.shape[d], "index_add: dst and src differ in dim {} ({} vs {})", d,
              dst.shape[d], src.shape[d]);
  check_index_range(index, dst.shape[dim], "index_add", dim);
  // Iterate over src; a piece (outer position, inner block) owns dst's column at those positions along `dim`.
  const int64_t* strides[2] = {dst.strides, src.strides};
  Split<2> sp(src, dim, strides);
  const int64_t* ip = as<int64_t>(index);
  int64_t is = index.strides[0];
  dispatch_arith(dst.dtype, "index_add", [&](auto tag) {
    using T = decltype(tag);
    T* out = static_cast<T*>(dst.data);
    const T* in = as<T>(src);
    sp.with_inner([&](const auto& at) {
      sp.for_columns([&](int64_t o, int64_t i0, int64_t i1) {
        T* ob = out + sp.outer_off[0][size_t(o)];
        const T* sb = in + sp.outer_off[1][size_t(o)];
        for (int64_t j = 0; j < sp.n; j++) {  // index order: duplicates accumulate in a fixed order
          T* oj = ob + ip[j * is] * sp.dim_stride[0];
          const T* sj = sb + j * sp.dim_stride[1];
          for (int64_t i = i0; i < i1; i++) oj[at[0][i]] += sj[at[1][i]];
        }
      });
    });
  });
}

// ---------------------------------------------------------------- gather / scatter_add

void CpuBackend::gather(const TensorDesc& dst, const TensorDesc& src, int dim, const TensorDesc& index) {
  check_index_dtype(index, "gather");
  check_rank(index, src, "gather", "index", "src");
  check_rank(index, dst, "gather", "index", "dst");
  ENG_CHECK(dst.dtype == src.dtype, "gather: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  for (int d = 0; d < index.ndim; d++) {
    ENG_CHECK(dst.shape[d] == index.shape[d], "gather: dst and index differ in dim {}", d);
    ENG_CHECK(d == dim || index.shape[d] <= src.shape[d], "gather: index size {} exceeds src size {} in dim {}",
              index.shape[d], src.shape[d], d);
  }
  check_index_range(index, src.shape[dim], "gather", dim);
  const int64_t* strides[3] = {dst.strides, src.strides, index.strides};
  Split<3> sp(index, dim, strides);
  const int64_t* ip = as<int64_t>(index);
  dispatch_by_size(dst.dtype, [&](auto tag) {
    using T = decltype(tag);
    T* out = static_cast<T*>(dst.data);
    const T* in = as<T>(src);
    sp.with_inner([&](const auto& at) {
      sp.for_rows([&](int64_t o, int64_t j) {
        T* oj = out + sp.outer_off[0][size_t(o)] + j * sp.dim_stride[0];
        const T* sb = in + sp.outer_off[1][size_t(o)];
        const int64_t* xj = ip + sp.outer_off[2][size_t(o)] + j * sp.dim_stride[2];
        int64_t ds = sp.dim_stride[1];
        for (int64_t i = 0; i < sp.inner; i++) oj[at[0][i]] = sb[xj[at[2][i]] * ds + at[1][i]];
      });
    });
  });
}

void CpuBackend::scatter_add(const TensorDesc& dst, int dim, const TensorDesc& index, const TensorDesc& src) {
  check_index_dtype(index, "scatter_add");
  check_rank(index, src, "scatter_add", "index", "src");
  check_rank(index, dst, "scatter_add", "index", "dst");
  ENG_CHECK(dst.dtype == src.dtype, "scatter_add: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  for (int d = 0; d < index.ndim; d++) {
    ENG_CHECK(index.shape[d] <= src.shape[d], "scatter_add: index size {} exceeds src size {} in dim {}", index.shape[d],
              src.shape[d], d);
    ENG_CHECK(d == dim || index.shape[d] <= dst.shape[d], "scatter_add: index size {} exceeds dst size {} in dim {}",
              index.shape[d], dst.shape[d], d);
  }
  check_index_range(index, dst.shape[dim], "scatter_add", dim);
  // Iterate over index; a piece (outer position, inner block) owns dst's column at those positions along `dim`.
  const int64_t* strides[3] = {dst.strides, src.strides, index.strides};
  Split<3> sp(index, dim, strides);
  const int64_t* ip = as<int64_t>(index);
  dispatch_arith(dst.dtype, "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    T* out = static_cast<T*>(dst.data);
    const T* in = as<T>(src);
    sp.with_inner([&](const auto& at) {
      sp.for_columns([&](int64_t o, int64_t i0, int64_t i1) {
        T* ob = out + sp.outer_off[0][size_t(o)];
        const T* sb = in + sp.outer_off[1][size_t(o)];
        const int64_t* xb = ip + sp.outer_off[2][size_t(o)];
        int64_t ds = sp.dim_stride[0];
        for (int64_t j = 0; j < sp.n; j++) {  // index order: duplicates accumulate in a fixed order
          const T* sj = sb + j * sp.dim_stride[1];
          const int64_t* xj = xb + j * sp.dim_stride[2];
          for (int64_t i = i0; i < i1; i++) ob[xj[at[2][i]] * ds + at[0][i]] += sj[at[1][i]];
        }
      });
    });
  });
}

// ---------------------------------------------------------------- sort / topk

namespace {

// Shared by sort and topk: for every line of src along `dim`, order the positions 0..n-1 with `order` and
// write the first `k` of them (and their values, when values.data is set).
template <typename T, typename Order>
void order_lines(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim, int64_t k,
                 Order order) {
  const int64_t* strides[3] = {src.strides, indices.strides, values.data ? values.strides : indices.strides};
  Split<3> sp(src, dim, strides);
  const T* in = as<T>(src);
  int64_t* out_i = static_cast<int64_t*>(indices.data);
  T* out_v = static_cast<T*>(values.data);
  int64_t n = sp.n;
  if (k == 0) return;
  sp.for_columns([&](int64_t o, int64_t i0, int64_t i1) {
    std::vector<T> key(static_cast<size_t>(n));
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t i = i0; i < i1; i++) {
      const T* line = in + sp.outer_off[0][size_t(o)] + sp.inner_off[0][size_t(i)];
      for (int64_t j = 0; j < n; j++) key[size_t(j)] = line[j * sp.dim_stride[0]];
      std::iota(perm.begin(), perm.end(), int64_t(0));
      // Ties break by lower position, which makes the order total: the result never depends on the algorithm.
      auto cmp = [&](int64_t a, int64_t b) {
        T ka = key[size_t(a)], kb = key[size_t(b)];
        if (order(ka, kb)) return true;
        if (order(kb, ka)) return false;
        return a < b;
      };
      if (k < n)
        std::partial_sort(perm.begin(), perm.begin() + k, perm.end(), cmp);
      else
        std::sort(perm.begin(), perm.end(), cmp);
      int64_t* oi = out_i + sp.outer_off[1][size_t(o)] + sp.inner_off[1][size_t(i)];
      for (int64_t j = 0; j < k; j++) oi[j * sp.dim_stride[1]] = perm[size_t(j)];
      if (out_v) {
        T* ov = out_v + sp.outer_off[2][size_t(o)] + sp.inner_off[2][size_t(i)];
        for (int64_t j = 0; j < k; j++) ov[j * sp.dim_stride[2]] = key[size_t(perm[size_t(j)])];
      }
    }
  });
}

void check_order_args(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim, int64_t k,
                      const char* op) {
  ENG_CHECK(indices.dtype == DType::I64, "{}: indices must be i64, got {}", op, dtype_name(indices.dtype));
  ENG_CHECK(dim >= 0 && dim < src.ndim, "{}: dim {} out of range for rank {}", op, dim, src.ndim);
  check_rank(indices, src, op, "indices", "src");
  ENG_CHECK(k >= 0 && k <= src.shape[dim], "{}: k = {} out of range for dim {} of size {}", op, k, dim, src.shape[dim]);
  for (int d = 0; d < src.ndim; d++)
    ENG_CHECK(indices.shape[d] == (d == dim ? k : src.shape[d]), "{}: indices have the wrong shape in dim {}", op, d);
  if (values.data) {
    check_rank(values, src, op, "values", "src");
    ENG_CHECK(values.dtype == src.dtype, "{}: values are {} but src is {}", op, dtype_name(values.dtype), dtype_name(src.dtype));
    for (int d = 0; d < src.ndim; d++)
      ENG_CHECK(values.shape[d] == indices.shape[d], "{}: values and indices differ in dim {}", op, d);
  }
}

}  // namespace

void CpuBackend::sort(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int dim, bool descending) {
  ENG_CHECK(src.ndim > 0, "sort: needs at least one dim");
  check_order_args(values, indices, src, dim, src.shape[dim], "sort");
  dispatch_arith(src.dtype, "sort", [&](auto tag) {
    using T = decltype(tag);
    if (descending)
      order_lines<T>(values, indices, src, dim, src.shape[dim], [](T a, T b) { return less_nan_last(b, a); });
    else
      order_lines<T>(values, indices, src, dim, src.shape[dim], [](T a, T b) { return less_nan_last(a, b); });
  });
}

void CpuBackend::topk(const TensorDesc& values, const TensorDesc& indices, const TensorDesc& src, int64_t k, int dim,
                      bool largest) {
  ENG_CHECK(src.ndim > 0, "topk: needs at least one dim");
  check_order_args(values, indices, src, dim, k, "topk");
  dispatch_arith(src.dtype, "topk", [&](auto tag) {
    using T = decltype(tag);
    // NaN counts as the largest value, as in PyTorch.
    if (largest)
      order_lines<T>(values, indices, src, dim, k, [](T a, T b) { return less_nan_last(b, a); });
    else
      order_lines<T>(values, indices, src, dim, k, [](T a, T b) { return less_nan_last(a, b); });
  });
}

}  // namespace eng
