// cuda_routing.cu: the CUDA kernels of expert routing: cumsum, one_hot, bincount and the grouped GEMM.
//
// cumsum        one thread per line along `dim`, adding in order: the CPU's sequence of additions, so the CPU's
//               bits (no atomics, no tree).
// one_hot       one thread per output element.
// bincount      the values radix-sorted (CUB, only the bits a bin number needs); the first and last element of each
//               run of equal values write where it starts and ends; a bin's count is end - start: no atomics.
// Index values are checked by the kernels: an out-of-range one is skipped (its one_hot row stays zero, it counts in
// no bin) and recorded as an IndexFault (cuda_common.cuh), reported at the next read-back as the CPU words it.
// grouped_gemm  cuBLAS's grouped batched GEMM (cublasGemmGroupedBatchedEx, one problem per group, up to
//               kGroupsPerCall groups per call) for f32 (TF32 off) and bf16 with f32 accumulation. Its operand
//               pointers live in device memory: a small kernel writes them from a by-value table, so the call never
//               copies from pageable host memory nor waits. A bias is stored into C first and the GEMM adds onto
//               it (beta = 1): one rounding, as cuBLASLt's bias epilogue. Other entries (f64, TF32, GELU
//               epilogues, k = 0) go through gemm() one by one.
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <vector>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {
namespace {

// ---------------------------------------------------------------- cumsum

template <typename T>
__global__ void cumsum_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t lines, int64_t n, int64_t inner,
                              bool reverse) {
  ENG_GRID_STRIDE(line, lines) {
    const int64_t base = (line / inner) * n * inner + line % inner;
    T acc = T(0);
    for (int64_t s = 0; s < n; s++) {
      const int64_t j = reverse ? n - 1 - s : s;
      acc = acc + src[base + j * inner];
      dst[base + j * inner] = acc;
    }
  }
}

// ---------------------------------------------------------------- one_hot / bincount

template <typename T>
__global__ void one_hot_kernel(T* __restrict__ dst, const int64_t* __restrict__ index, int64_t n, int64_t classes,
                               IndexFault* fault) {
  ENG_GRID_STRIDE(i, n) {
    const int64_t row = i / classes, c = i % classes;
    const int64_t v = index[row];
    if (c == 0 && (v < 0 || v >= classes)) record_index_fault(fault, kFaultOneHot, 0, v, classes);
    dst[i] = v == c ? convert<T>(1) : T{};
  }
}

// Sort keys of the values; an out-of-range value becomes the sentinel key `bins`, which no bin counts.
__global__ void bin_keys_kernel(uint64_t* __restrict__ keys, const int64_t* __restrict__ index, int64_t stride,
                                int64_t n, int64_t bins, IndexFault* fault) {
  ENG_GRID_STRIDE(j, n) {
    const int64_t v = index[j * stride];
    const bool ok = v >= 0 && v < bins;
    if (!ok) record_index_fault(fault, kFaultBincount, 0, v, bins);
    keys[j] = uint64_t(ok ? v : bins);
  }
}

// Where each key's run starts and ends in the sorted keys: only the first (last) element of a run writes its start
// (end), so every slot has one writer; keys with no run keep the zeros they were given.
__global__ void bin_runs_kernel(int64_t* __restrict__ run_start, int64_t* __restrict__ run_end,
                                const uint64_t* __restrict__ sorted, int64_t n) {
  ENG_GRID_STRIDE(j, n) {
    const uint64_t key = sorted[j];
    if (j == 0 || sorted[j - 1] != key) run_start[key] = j;
    if (j == n - 1 || sorted[j + 1] != key) run_end[key] = j + 1;
  }
}

__global__ void bin_counts_kernel(int64_t* __restrict__ counts, const int64_t* __restrict__ run_start,
                                  const int64_t* __restrict__ run_end, int64_t bins) {
  ENG_GRID_STRIDE(b, bins) { counts[b] = run_end[b] - run_start[b]; }
}

// ---------------------------------------------------------------- grouped GEMM

constexpr int kGroupsPerCall = 64;

// The device-side pointer arrays of one grouped call: cuBLAS's first operand (our B), second (our A), and C.
struct GroupPointers {
  const void* p[3 * kGroupsPerCall];
};

__global__ void write_pointers_kernel(GroupPointers t, int count, const void** out) {
  ENG_GRID_STRIDE(i, int64_t(count)) { out[i] = t.p[i]; }
}

bool fits_int(const GemmArgs& g) {
  for (int64_t v : {g.m, g.n, g.k, g.lda, g.ldb, g.ldc})
    if (v > INT_MAX) return false;
  return true;
}

// Entries the grouped cuBLAS call takes (the rest go to gemm()).
bool groupable(const GemmArgs& g) {
  const bool type_ok = g.dtype == DType::BF16 || (g.dtype == DType::F32 && !cuda_tf32_enabled());
  const bool epilogue_ok = g.epilogue == GemmEpilogue::None || (g.epilogue == GemmEpilogue::Bias && g.bias && g.beta == 0);
  return type_ok && epilogue_ok && g.k > 0 && g.alpha != 0 && fits_int(g) && g.a && g.b && g.c;
}

}  // namespace

void CudaBackend::cumsum(const TensorDesc& dst, const TensorDesc& src, int dim, bool reverse) {
  OpScope scope(*this, "cuda.cumsum");
  ENG_CHECK(dst.contiguous() && src.contiguous(), "cuda cumsum: dst and src must be contiguous");
  ENG_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "cuda cumsum: dst ({}, {} elements) and src ({}, {} "
            "elements) differ", dtype_name(dst.dtype), dst.numel(), dtype_name(src.dtype), src.numel());
  ENG_CHECK(dim >= 0 && dim < src.ndim, "cuda cumsum: dim {} out of range for rank {}", dim, src.ndim);
  if (src.numel() == 0) return;
  int64_t n = src.shape[dim], inner = 1;
  for (int d = dim + 1; d < src.ndim; d++) inner *= src.shape[d];
  const int64_t lines = src.numel() / n;
  auto run = [&](auto t) {
    using T = decltype(t);
    cumsum_kernel<T><<<blocks_for(lines), kThreads>>>(static_cast<T*>(dst.data), static_cast<const T*>(src.data), lines,
                                                      n, inner, reverse);
  };
  switch (src.dtype) {
    case DType::F32: run(float{}); break;
    case DType::F64: run(double{}); break;
    case DType::I64: run(int64_t{}); break;
    default: ENG_FAIL("cumsum: dtype {} is not supported (f32, f64, i64)", dtype_name(src.dtype));
  }
  CUDA_CHECK_LAUNCH("cumsum");
}

void CudaBackend::one_hot(const TensorDesc& dst, const TensorDesc& index) {
  OpScope scope(*this, "cuda.one_hot");
  ENG_CHECK(index.dtype == DType::I64, "one_hot: index must be i64, got {}", dtype_name(index.dtype));
  ENG_CHECK(dst.contiguous() && index.contiguous(), "cuda one_hot: dst and index must be contiguous");
  ENG_CHECK(dst.ndim == index.ndim + 1, "cuda one_hot: dst has rank {} but index has rank {}", dst.ndim, index.ndim);
  const int64_t classes = dst.shape[dst.ndim - 1], n = dst.numel();
  ENG_CHECK(n == index.numel() * classes, "cuda one_hot: dst has {} elements, not {} x {}", n, index.numel(), classes);
  if (n == 0) return;
  dispatch_all(dst.dtype, [&](auto t) {
    using T = decltype(t);
    one_hot_kernel<T><<<blocks_for(n), kThreads>>>(static_cast<T*>(dst.data), static_cast<const int64_t*>(index.data),
                                                   n, classes, index_fault());
  });
  CUDA_CHECK_LAUNCH("one_hot");
}

void CudaBackend::bincount(const TensorDesc& counts, const TensorDesc& index) {
  OpScope scope(*this, "cuda.bincount");
  ENG_CHECK(index.dtype == DType::I64, "bincount: index must be i64, got {}", dtype_name(index.dtype));
  ENG_CHECK(counts.dtype == DType::I64 && counts.ndim == 1 && counts.contiguous(),
            "cuda bincount: counts must be a contiguous 1-D i64 tensor");
  ENG_CHECK(index.ndim == 1, "cuda bincount: index must be 1-D, got rank {}", index.ndim);
  const int64_t bins = counts.shape[0], n = index.shape[0];
  if (bins == 0) return;
  // Run bounds of keys 0..bins (the last one is the out-of-range sentinel), zero for keys that never occur.
  DeviceBuffer bounds(device(), size_t(2 * (bins + 1)) * sizeof(int64_t));
  int64_t* run_start = bounds.as<int64_t>();
  int64_t* run_end = run_start + bins + 1;
  CUDA_CHECK(cudaMemsetAsync(run_start, 0, bounds.size(), 0));
  if (n > 0) {
    DeviceBuffer keys(device(), size_t(n) * sizeof(uint64_t)), sorted(device(), size_t(n) * sizeof(uint64_t));
    bin_keys_kernel<<<blocks_for(n), kThreads>>>(keys.as<uint64_t>(), static_cast<const int64_t*>(index.data),
                                                 index.strides[0], n, bins, index_fault());
    CUDA_CHECK_LAUNCH("bincount (keys)");
    int end_bit = 1;  // keys are at most `bins`: sort only the bits that can be set
    while (end_bit < 64 && (uint64_t(1) << end_bit) <= uint64_t(bins)) end_bit++;
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, keys.as<uint64_t>(), sorted.as<uint64_t>(), n, 0,
                                              end_bit));
    DeviceBuffer temp(device(), temp_bytes);
    CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp.get(), temp_bytes, keys.as<uint64_t>(), sorted.as<uint64_t>(), n, 0,
                                              end_bit));
    bin_runs_kernel<<<blocks_for(n), kThreads>>>(run_start, run_end, sorted.as<uint64_t>(), n);
    CUDA_CHECK_LAUNCH("bincount (runs)");
  }
  bin_counts_kernel<<<blocks_for(bins), kThreads>>>(static_cast<int64_t*>(counts.data), run_start, run_end, bins);
  CUDA_CHECK_LAUNCH("bincount");
}

void CudaBackend::grouped_gemm(const std::vector<GemmArgs>& groups) {
  OpScope scope(*this, "cuda.grouped_gemm");
  std::vector<const GemmArgs*> grouped;
  for (const GemmArgs& g : groups) {
    ENG_CHECK(g.batch == 1, "cuda grouped_gemm: every group is one GEMM (batch 1), got batch {}", g.batch);
    ENG_CHECK(g.dtype == groups[0].dtype, "cuda grouped_gemm: groups of dtypes {} and {}", dtype_name(groups[0].dtype),
              dtype_name(g.dtype));
    if (g.m == 0 || g.n == 0) continue;
    if (!groupable(g)) {
      gemm(g);
      continue;
    }
    ENG_CHECK(g.ldc >= g.n, "cuda grouped_gemm: ldc={} is less than n={}", g.ldc, g.n);
    ENG_CHECK(g.lda >= (g.trans_a ? g.m : g.k) && g.ldb >= (g.trans_b ? g.k : g.n),
              "cuda grouped_gemm: lda={} or ldb={} is less than the stored widths", g.lda, g.ldb);
    if (g.epilogue == GemmEpilogue::Bias) {  // C = bias on every row; the GEMM then adds onto it
      TensorDesc c, bias;
      c.data = g.c;
      bias.data = const_cast<void*>(g.bias);
      c.dtype = bias.dtype = g.dtype;
      c.ndim = bias.ndim = 2;
      c.shape[0] = bias.shape[0] = g.m;
      c.shape[1] = bias.shape[1] = g.n;
      c.strides[0] = g.ldc;
      c.strides[1] = bias.strides[1] = 1;
      bias.strides[0] = 0;
      copy(c, bias);
    }
    grouped.push_back(&g);
  }
  if (grouped.empty()) return;
  const bool bf16 = groups[0].dtype == DType::BF16;
  const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasHandle_t blas = static_cast<cublasHandle_t>(blas_handle());
  for (size_t first = 0; first < grouped.size(); first += kGroupsPerCall) {
    const int count = int(std::min(grouped.size() - first, size_t(kGroupsPerCall)));
    // Column-major view of each row-major problem (cuda_gemm.cu): first operand = B, second = A, result n x m.
    const size_t cnt = size_t(count);
    std::vector<cublasOperation_t> op1(cnt), op2(cnt);
    std::vector<int> m(cnt), n(cnt), k(cnt), ld1(cnt), ld2(cnt), ldc(cnt), sizes(cnt, 1);
    std::vector<float> alpha(cnt), beta(cnt);
    GroupPointers table{};
    for (int j = 0; j < count; j++) {
      const GemmArgs& g = *grouped[first + size_t(j)];
      op1[size_t(j)] = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      op2[size_t(j)] = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
      m[size_t(j)] = int(g.n);
      n[size_t(j)] = int(g.m);
      k[size_t(j)] = int(g.k);
      ld1[size_t(j)] = int(g.ldb);
      ld2[size_t(j)] = int(g.lda);
      ldc[size_t(j)] = int(g.ldc);
      alpha[size_t(j)] = float(g.alpha);
      beta[size_t(j)] = g.epilogue == GemmEpilogue::Bias ? 1.0f : float(g.beta);
      table.p[j] = g.b;
      table.p[kGroupsPerCall + j] = g.a;
      table.p[2 * kGroupsPerCall + j] = g.c;
    }
    DeviceBuffer ptrs(device(), sizeof(GroupPointers));
    write_pointers_kernel<<<1, kThreads>>>(table, 3 * kGroupsPerCall, ptrs.as<const void*>());
    CUDA_CHECK_LAUNCH("grouped_gemm (pointers)");
    const void* const* p1 = ptrs.as<const void*>();
    const void* const* p2 = p1 + kGroupsPerCall;
    void* const* pc = const_cast<void* const*>(p1 + 2 * kGroupsPerCall);
    CUBLAS_CHECK(cublasGemmGroupedBatchedEx(blas, op1.data(), op2.data(), m.data(), n.data(), k.data(), alpha.data(),
                                            p1, type, ld1.data(), p2, type, ld2.data(), beta.data(), pc, type,
                                            ldc.data(), count, sizes.data(), CUBLAS_COMPUTE_32F));
  }
}

// permute_rows, rows_dot: eng::permute_rows composes index_select and mul on CUDA (engine/ops/routing.cpp), so
// these CPU-only kernels are never called here; a direct call says so.
void CudaBackend::permute_rows(const TensorDesc&, const TensorDesc&, const TensorDesc&, const TensorDesc&, bool) {
  ENG_FAIL("cuda permute_rows: no kernel; eng::permute_rows composes index_select and mul on CUDA");
}
void CudaBackend::rows_dot(const TensorDesc&, const TensorDesc&, const TensorDesc&, const TensorDesc&) {
  ENG_FAIL("cuda rows_dot: no kernel; eng::permute_rows composes index_select and mul on CUDA");
}

}  // namespace cuda
}  // namespace eng
