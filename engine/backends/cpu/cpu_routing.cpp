// cpu_routing.cpp: the CPU kernels of expert routing: cumsum, one_hot, bincount and the grouped GEMM.
//
// cumsum       [outer, n, inner] view of contiguous tensors; a piece owns a block of (outer, inner) lines and
//              walks each along n in order, so every element is the same sequence of additions whatever thread
//              runs it (bitwise equal for any thread count, and equal to the CUDA kernel's order).
// one_hot, bincount  every index is checked before anything is written; integer results, so the order of the
//              writes cannot change a bit.
// grouped_gemm groups that share n and k (an expert layer's forward and input gradient: its rows split by expert)
//              run in one call of the packed driver (cpu_sgemm_grouped): all experts' weights packed in one pool
//              job per k block, all their row pieces in the next, each element with the bits of its own GEMM.
//              Others (the weight gradient splits k) run one packed GEMM per group, threaded inside; groups too
//              small for threads run side by side, one thread each. No bit depends on the thread count.
// permute_rows, rows_dot  a piece owns whole rows (of dst for permute_rows, whose rows are each written once since
//              perm is checked to be a permutation first); rows_dot sums each row in order: no bit depends on threads.
#include <cstring>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_loops.h"

namespace eng {
using namespace cpu;

namespace {

// Lines along `dim` of a contiguous tensor: outer * inner of them, n long, elements `inner` apart.
struct Lines {
  int64_t outer = 1, n = 1, inner = 1;
};

Lines lines_of(const TensorDesc& t, int dim) {
  Lines l;
  l.n = t.shape[dim];
  for (int d = 0; d < dim; d++) l.outer *= t.shape[d];
  for (int d = dim + 1; d < t.ndim; d++) l.inner *= t.shape[d];
  return l;
}

template <typename T> void cumsum_lines(T* dst, const T* src, const Lines& l, bool reverse) {
  const int64_t lines = l.outer * l.inner;
  // Pieces of whole lines (about kBlock elements each): which thread runs a piece changes nothing.
  const int64_t grain = std::max<int64_t>(1, kBlock / std::max<int64_t>(l.n, 1));
  parallel_for(lines, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t line = lo; line < hi; line++) {
      const int64_t base = (line / l.inner) * l.n * l.inner + line % l.inner;
      T acc = T(0);
      for (int64_t s = 0; s < l.n; s++) {
        const int64_t j = reverse ? l.n - 1 - s : s;
        acc = acc + src[base + j * l.inner];
        dst[base + j * l.inner] = acc;
      }
    }
  });
}

// The first index outside [0, size), or -1 when all are inside; for the one-line error before any write.
int64_t first_out_of_range(const int64_t* index, int64_t n, int64_t size) {
  for (int64_t i = 0; i < n; i++)
    if (index[i] < 0 || index[i] >= size) return i;
  return -1;
}

template <typename T> void write_ones(void* dst, const int64_t* index, int64_t rows, int64_t classes, T one) {
  T* d = static_cast<T*>(dst);
  parallel_for(rows, std::max<int64_t>(1, kBlock / std::max<int64_t>(classes, 1)), [&](int64_t lo, int64_t hi) {
    std::memset(static_cast<void*>(d + lo * classes), 0, size_t((hi - lo) * classes) * sizeof(T));
    for (int64_t r = lo; r < hi; r++) d[r * classes + index[r]] = one;
  });
}

// Below this many multiply-adds a group's GEMM runs on one thread anyway (cpu_gemm.cpp's kParallelGemmWork), so
// such groups are better run side by side.
constexpr int64_t kSerialGroupWork = int64_t(1) << 20;

// Index of the first entry of perm [n] that is out of range or repeats one before it, or -1 for a permutation.
int64_t first_non_permutation(const int64_t* perm, int64_t n) {
  std::vector<char> seen(size_t(n), 0);
  for (int64_t i = 0; i < n; i++) {
    if (perm[i] < 0 || perm[i] >= n || seen[size_t(perm[i])]) return i;
    seen[size_t(perm[i])] = 1;
  }
  return -1;
}

void check_rows_operand(const TensorDesc& t, int64_t n, int64_t width, const char* op, const char* name) {
  ENG_CHECK(t.contiguous() && t.ndim >= 1 && t.shape[0] == n && t.numel() == n * width,
            "cpu {}: {} must be contiguous with {} rows of {} elements", op, name, n, width);
}

template <typename T>
void permute_rows_kernel(T* dst, const T* src, const int64_t* perm, const T* scale, int64_t n, int64_t width,
                         bool scatter) {
  parallel_for(n, std::max<int64_t>(1, kBlock / std::max<int64_t>(width, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      T* d = dst + (scatter ? perm[i] : i) * width;
      const T* s = src + (scatter ? i : perm[i]) * width;
      if (scale) {
        const T f = scale[i];
        for (int64_t j = 0; j < width; j++) d[j] = f * s[j];
      } else {
        std::memcpy(d, s, size_t(width) * sizeof(T));
      }
    }
  });
}

template <typename T>
void rows_dot_kernel(T* dst, const T* a, const T* b, const int64_t* perm, int64_t n, int64_t width) {
  parallel_for(n, std::max<int64_t>(1, kBlock / std::max<int64_t>(width, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      const T* ai = a + i * width;
      const T* bi = b + perm[i] * width;
      double acc = 0;
      for (int64_t j = 0; j < width; j++) acc += double(ai[j]) * double(bi[j]);
      dst[i] = T(acc);
    }
  });
}

}  // namespace

void CpuBackend::permute_rows(const TensorDesc& dst, const TensorDesc& src, const TensorDesc& perm,
                              const TensorDesc& scale, bool scatter) {
  ENG_CHECK(perm.dtype == DType::I64 && perm.ndim == 1 && perm.contiguous(), "cpu permute_rows: perm must be contiguous i64 [n]");
  const int64_t n = perm.shape[0], width = n ? src.numel() / n : 0;
  check_rows_operand(src, n, width, "permute_rows", "src");
  check_rows_operand(dst, n, width, "permute_rows", "dst");
  ENG_CHECK(dst.dtype == src.dtype, "cpu permute_rows: dst is {} but src is {}", dtype_name(dst.dtype), dtype_name(src.dtype));
  if (scale.data)
    ENG_CHECK(scale.dtype == src.dtype && scale.ndim == 1 && scale.shape[0] == n && scale.contiguous(),
              "cpu permute_rows: scale must be contiguous {} [{}]", dtype_name(src.dtype), n);
  const int64_t* p = static_cast<const int64_t*>(perm.data);
  const int64_t bad = first_non_permutation(p, n);
  if (bad >= 0) ENG_FAIL("permute_rows: perm is not a permutation of [0, {}): perm[{}] = {}", n, bad, p[bad]);
  switch (src.dtype) {
    case DType::F32:
      permute_rows_kernel(static_cast<float*>(dst.data), static_cast<const float*>(src.data), p,
                          static_cast<const float*>(scale.data), n, width, scatter);
      break;
    case DType::F64:
      permute_rows_kernel(static_cast<double*>(dst.data), static_cast<const double*>(src.data), p,
                          static_cast<const double*>(scale.data), n, width, scatter);
      break;
    default: ENG_FAIL("permute_rows: dtype {} is not supported on the CPU (f32, f64)", dtype_name(src.dtype));
  }
}

void CpuBackend::rows_dot(const TensorDesc& dst, const TensorDesc& a, const TensorDesc& b, const TensorDesc& perm) {
  ENG_CHECK(perm.dtype == DType::I64 && perm.ndim == 1 && perm.contiguous(), "cpu rows_dot: perm must be contiguous i64 [n]");
  const int64_t n = perm.shape[0], width = n ? a.numel() / n : 0;
  check_rows_operand(a, n, width, "rows_dot", "a");
  check_rows_operand(b, n, width, "rows_dot", "b");
  ENG_CHECK(dst.contiguous() && dst.numel() == n, "cpu rows_dot: dst must be contiguous with {} elements", n);
  ENG_CHECK(dst.dtype == a.dtype && b.dtype == a.dtype, "cpu rows_dot: dst, a and b must share a dtype");
  const int64_t* p = static_cast<const int64_t*>(perm.data);
  const int64_t bad = first_out_of_range(p, n, n);
  if (bad >= 0) ENG_FAIL("rows_dot: perm[{}] = {} out of range for {} rows", bad, p[bad], n);
  switch (a.dtype) {
    case DType::F32:
      rows_dot_kernel(static_cast<float*>(dst.data), static_cast<const float*>(a.data), static_cast<const float*>(b.data),
                      p, n, width);
      break;
    case DType::F64:
      rows_dot_kernel(static_cast<double*>(dst.data), static_cast<const double*>(a.data),
                      static_cast<const double*>(b.data), p, n, width);
      break;
    default: ENG_FAIL("rows_dot: dtype {} is not supported on the CPU (f32, f64)", dtype_name(a.dtype));
  }
}

void CpuBackend::cumsum(const TensorDesc& dst, const TensorDesc& src, int dim, bool reverse) {
  ENG_CHECK(dst.contiguous() && src.contiguous(), "cpu cumsum: dst and src must be contiguous");
  ENG_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "cpu cumsum: dst ({}, {} elements) and src ({}, {} "
            "elements) differ", dtype_name(dst.dtype), dst.numel(), dtype_name(src.dtype), src.numel());
  ENG_CHECK(dim >= 0 && dim < src.ndim, "cpu cumsum: dim {} out of range for rank {}", dim, src.ndim);
  if (src.numel() == 0) return;
  const Lines l = lines_of(src, dim);
  switch (src.dtype) {
    case DType::F32: cumsum_lines(static_cast<float*>(dst.data), static_cast<const float*>(src.data), l, reverse); break;
    case DType::F64: cumsum_lines(static_cast<double*>(dst.data), static_cast<const double*>(src.data), l, reverse); break;
    case DType::I64: cumsum_lines(static_cast<int64_t*>(dst.data), static_cast<const int64_t*>(src.data), l, reverse); break;
    default: ENG_FAIL("cumsum: dtype {} is not supported (f32, f64, i64)", dtype_name(src.dtype));
  }
}

void CpuBackend::one_hot(const TensorDesc& dst, const TensorDesc& index) {
  ENG_CHECK(index.dtype == DType::I64, "one_hot: index must be i64, got {}", dtype_name(index.dtype));
  ENG_CHECK(dst.contiguous() && index.contiguous(), "cpu one_hot: dst and index must be contiguous");
  ENG_CHECK(dst.ndim == index.ndim + 1, "cpu one_hot: dst has rank {} but index has rank {}", dst.ndim, index.ndim);
  const int64_t classes = dst.shape[dst.ndim - 1], rows = index.numel();
  ENG_CHECK(dst.numel() == rows * classes, "cpu one_hot: dst has {} elements, not {} x {}", dst.numel(), rows, classes);
  const int64_t* idx = static_cast<const int64_t*>(index.data);
  const int64_t bad = first_out_of_range(idx, rows, classes);
  if (bad >= 0) ENG_FAIL("one_hot: index {} out of range for {} classes", idx[bad], classes);
  if (dst.numel() == 0) return;
  switch (dst.dtype) {
    case DType::F32: write_ones(dst.data, idx, rows, classes, 1.0f); break;
    case DType::F64: write_ones(dst.data, idx, rows, classes, 1.0); break;
    case DType::BF16: write_ones(dst.data, idx, rows, classes, bf16(1.0f)); break;
    case DType::I32: write_ones(dst.data, idx, rows, classes, int32_t(1)); break;
    case DType::I64: write_ones(dst.data, idx, rows, classes, int64_t(1)); break;
  }
}

void CpuBackend::bincount(const TensorDesc& counts, const TensorDesc& index) {
  ENG_CHECK(index.dtype == DType::I64, "bincount: index must be i64, got {}", dtype_name(index.dtype));
  ENG_CHECK(counts.dtype == DType::I64 && counts.ndim == 1 && counts.contiguous(),
            "cpu bincount: counts must be a contiguous 1-D i64 tensor");
  ENG_CHECK(index.ndim == 1, "cpu bincount: index must be 1-D, got rank {}", index.ndim);
  const int64_t bins = counts.shape[0], n = index.shape[0], stride = index.strides[0];
  const int64_t* idx = static_cast<const int64_t*>(index.data);
  for (int64_t i = 0; i < n; i++) {
    const int64_t v = idx[i * stride];
    if (v < 0 || v >= bins) ENG_FAIL("bincount: index {} out of range for {} bins", v, bins);
  }
  int64_t* c = static_cast<int64_t*>(counts.data);
  std::fill(c, c + bins, int64_t(0));
  for (int64_t i = 0; i < n; i++) c[idx[i * stride]]++;
}

void CpuBackend::grouped_gemm(const std::vector<GemmArgs>& groups) {
  for (const GemmArgs& g : groups) {
    ENG_CHECK(g.batch == 1, "cpu grouped_gemm: every group is one GEMM (batch 1), got batch {}", g.batch);
    ENG_CHECK(g.dtype == groups[0].dtype, "cpu grouped_gemm: groups of dtypes {} and {}", dtype_name(groups[0].dtype),
              dtype_name(g.dtype));
  }
  if (groups.empty()) return;
  // f32 groups that share the transposes, n, k, alpha and beta (the row groups of an expert layer's forward and
  // input gradient) are threaded together by the packed driver, each with the bits of its own GEMM.
  const GemmArgs& g0 = groups[0];
  bool together = g0.dtype == DType::F32;
  for (const GemmArgs& g : groups)
    together = together && g.trans_a == g0.trans_a && g.trans_b == g0.trans_b && g.n == g0.n && g.k == g0.k &&
               g.alpha == g0.alpha && g.beta == g0.beta;
  if (together) {
    for (const GemmArgs& g : groups) {
      if (g.epilogue == GemmEpilogue::Bias) ENG_CHECK(g.bias, "cpu grouped_gemm: Bias epilogue without a bias");
      if (g.epilogue == GemmEpilogue::GeluGrad) ENG_CHECK(g.pre_gelu, "cpu grouped_gemm: GeluGrad epilogue without pre_gelu");
    }
    std::vector<SgemmEpilogue> epilogues(groups.size());
    std::vector<SgemmProblem> problems;
    for (size_t i = 0; i < groups.size(); i++) {
      const GemmArgs& g = groups[i];
      epilogues[i] = sgemm_epilogue_for(g, static_cast<const float*>(g.c));
      problems.push_back({g.m, static_cast<const float*>(g.a), g.lda, static_cast<const float*>(g.b), g.ldb,
                          static_cast<float*>(g.c), g.ldc, g.epilogue == GemmEpilogue::None ? nullptr : &epilogues[i]});
    }
    cpu_sgemm_grouped(g0.trans_a, g0.trans_b, g0.n, g0.k, float(g0.alpha), float(g0.beta), problems);
    return;
  }
  // Otherwise (the weight gradient splits k; f64): one GEMM per group, threaded inside; groups too small for threads
  // run side by side.
  std::vector<const GemmArgs*> small;
  for (const GemmArgs& g : groups) {
    if (g.m * g.n * g.k < kSerialGroupWork)
      small.push_back(&g);
    else
      gemm(g);  // threaded inside
  }
  run_pieces(int64_t(small.size()), [&](int64_t i) { gemm(*small[size_t(i)]); });
}

}  // namespace eng
