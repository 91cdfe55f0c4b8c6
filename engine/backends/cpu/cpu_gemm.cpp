// cpu_gemm.cpp: CPU GEMM. cpu_sgemm is a BLIS-style driver: op(A) and op(B) are packed into micro-panels
// (packing absorbs the transposes), blocked for L3 (mc rows of A), L1 (kc) and L2 (nc columns of B), and
// multiplied by a register-tiled micro-kernel chosen at run time (AVX-512, AVX2+FMA or portable; see
// gemm_kernels.h). Small problems skip packing and threads. cpu_dgemm is a simple, exact-order f64 loop for
// gradient checks. CpuBackend::gemm runs strided batches.
//
// Threads: C is cut into one independent sub-GEMM per thread (by rows or by columns), so threads share no
// buffers and never wait on each other until the end.
// Determinism: k is never split across threads, the k blocking does not depend on the thread count, and
// edge tiles compute exactly like full ones, so each element of C goes through the same sequence of
// operations whichever thread computes it; results are bitwise identical for any OMP_NUM_THREADS.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/gemm_kernels.h"
#include "engine/error.h"

namespace eng {

namespace gemm {
namespace {

const SgemmKernel* detect_kernel() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return &sgemm_kernel_avx512();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &sgemm_kernel_avx2();
#endif
  return &sgemm_kernel_generic();
}

const SgemmKernel* auto_kernel() {
  static const SgemmKernel* k = detect_kernel();
  return k;
}

std::atomic<const SgemmKernel*> g_pinned_kernel{nullptr};

bool cpu_has(const char* name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (!std::strcmp(name, "avx512")) return __builtin_cpu_supports("avx512f");
  if (!std::strcmp(name, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return !std::strcmp(name, "generic");
}

}  // namespace

const SgemmKernel& sgemm_active_kernel() {
  const SgemmKernel* k = g_pinned_kernel.load(std::memory_order_relaxed);
  return k ? *k : *auto_kernel();
}

bool sgemm_select_kernel(const char* name) {
  if (!name || !cpu_has(name)) return false;
  const SgemmKernel* k = nullptr;
#if defined(__x86_64__) || defined(__i386__)
  if (!std::strcmp(name, "avx512")) k = &sgemm_kernel_avx512();
  if (!std::strcmp(name, "avx2")) k = &sgemm_kernel_avx2();
#endif
  if (!std::strcmp(name, "generic")) k = &sgemm_kernel_generic();
  if (!k) return false;
  g_pinned_kernel.store(k, std::memory_order_relaxed);
  return true;
}

void sgemm_reset_kernel() { g_pinned_kernel.store(nullptr, std::memory_order_relaxed); }

}  // namespace gemm

namespace {

// Problems with at most this many multiply-adds use the direct kernel (no packing, one thread): packing and
// a parallel region cost more than they save there.
constexpr int64_t kSmallGemmWork = int64_t(1) << 16;
// Below this many multiply-adds a packed GEMM runs on one thread (starting a team costs a few microseconds).
constexpr int64_t kParallelGemmWork = int64_t(1) << 20;
// Batch items up to this size are computed whole by one thread each, in parallel over the batch.
constexpr int64_t kBatchItemSerialWork = int64_t(1) << 22;

// A 64-byte aligned scratch buffer that only grows; one per thread for the packed panels.
struct PackBuffer {
  float* data = nullptr;
  size_t capacity = 0;  // floats
  float* get(size_t n) {
    if (n > capacity) {
      std::free(data);
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      ENG_CHECK(data, "cpu_sgemm: cannot allocate {} bytes of packing buffer", bytes);
      capacity = n;
    }
    return data;
  }
  ~PackBuffer() { std::free(data); }
};

thread_local PackBuffer t_pack_a, t_pack_b;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

template <typename T>
void check_gemm_args(const char* fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
                     int64_t lda, const T* b, int64_t ldb, const T* c, int64_t ldc) {
  ENG_CHECK(m >= 0 && n >= 0 && k >= 0, "{}: negative size m={} n={} k={}", fn, m, n, k);
  if (m == 0 || n == 0) return;
  ENG_CHECK(c, "{}: C is null", fn);
  ENG_CHECK(ldc >= n, "{}: ldc={} is less than n={}", fn, ldc, n);
  if (k == 0) return;
  ENG_CHECK(a && b, "{}: A or B is null", fn);
  const int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
  ENG_CHECK(lda >= a_cols, "{}: lda={} is less than the {} columns of stored A", fn, lda, a_cols);
  ENG_CHECK(ldb >= b_cols, "{}: ldb={} is less than the {} columns of stored B", fn, ldb, b_cols);
}

// C = beta * C for the degenerate cases (k == 0 or alpha == 0); beta == 0 writes zeros without reading C.
template <typename T>
void scale_c(int64_t m, int64_t n, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; i++) {
    T* row = c + i * ldc;
    if (beta == T(0)) {
      std::fill(row, row + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; j++) row[j] *= beta;
    }
  }
}

// One thread's packed GEMM: loops mc (rows, L3) > kc (L1) > nc (columns, L2) > register tiles.
void sgemm_packed(const gemm::SgemmKernel& K, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  const int MR = K.mr, NR = K.nr;
  const int64_t MC = round_up(std::min(K.mc, round_up(m, MR)), MR);
  const int64_t KC = std::min(K.kc, k);
  const int64_t NC = round_up(std::min(K.nc, round_up(n, NR)), NR);
  float* a_pack = t_pack_a.get(size_t(MC * KC));
  float* b_pack = t_pack_b.get(size_t(KC * NC));
  for (int64_t ic = 0; ic < m; ic += MC) {
    const int64_t mcb = std::min(MC, m - ic);
    for (int64_t pc = 0; pc < k; pc += KC) {
      const int64_t kcb = std::min(KC, k - pc);
      // Later k blocks add onto what the earlier ones stored.
      const float beta_block = pc == 0 ? beta : 1.0f;
      K.pack_a(trans_a, trans_a ? a + pc * lda + ic : a + ic * lda + pc, lda, mcb, kcb, a_pack);
      for (int64_t jc = 0; jc < n; jc += NC) {
        const int64_t ncb = std::min(NC, n - jc);
        K.pack_b(trans_b, trans_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, ncb, kcb, b_pack);
        // An A micro-panel stays in L1 while the B block (in L2) streams past it.
        for (int64_t ir = 0; ir < mcb; ir += MR) {
          const int mr = int(std::min<int64_t>(MR, mcb - ir));
          for (int64_t jr = 0; jr < ncb; jr += NR) {
            const int nr = int(std::min<int64_t>(NR, ncb - jr));
            K.micro(kcb, a_pack + ir * kcb, b_pack + jr * kcb, c + (ic + ir) * ldc + jc + jr, ldc, mr, nr, alpha,
                    beta_block);
          }
        }
      }
    }
  }
}

// Threads: C is cut into one independent sub-GEMM per thread, by rows (each thread packs its own rows of A and
// all of B) or by columns (its own columns of B, all of A), whichever packs less twice; cuts fall on register
// tile edges. No barriers, no shared buffers; each thread's blocks sit in its own core's caches.
void sgemm_threaded(const gemm::SgemmKernel& K, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc, int nthreads) {
  const int64_t row_panels = (m + K.mr - 1) / K.mr, col_panels = (n + K.nr - 1) / K.nr;
  // Splitting rows duplicates the packing of B (k x n), splitting columns that of A (m x k).
  bool split_rows = n <= m;
  if (split_rows && row_panels < nthreads && col_panels > row_panels) split_rows = false;
  if (!split_rows && col_panels < nthreads && row_panels > col_panels) split_rows = true;
  const int64_t panels = split_rows ? row_panels : col_panels;
  const int nt = int(std::min<int64_t>(nthreads, panels));
  if (nt <= 1) {
    sgemm_packed(K, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t p0 = panels * tid / team, p1 = panels * (tid + 1) / team;
    if (split_rows) {
      const int64_t i0 = p0 * K.mr, i1 = std::min(m, p1 * K.mr);
      if (i1 > i0)
        sgemm_packed(K, trans_a, trans_b, i1 - i0, n, k, alpha, trans_a ? a + i0 : a + i0 * lda, lda, b, ldb, beta,
                     c + i0 * ldc, ldc);
    } else {
      const int64_t j0 = p0 * K.nr, j1 = std::min(n, p1 * K.nr);
      if (j1 > j0)
        sgemm_packed(K, trans_a, trans_b, m, j1 - j0, k, alpha, a, lda, trans_b ? b + j0 * ldb : b + j0, ldb, beta,
                     c + j0, ldc);
    }
  }
}

}  // namespace

void cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  check_gemm_args("cpu_sgemm", trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == 0.0f) {
    scale_c(m, n, beta, c, ldc);
    return;
  }
  const gemm::SgemmKernel& K = gemm::sgemm_active_kernel();
  const int64_t work = m * n * k;
  if (work <= kSmallGemmWork) {
    K.small(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const int nthreads = omp_in_parallel() || work < kParallelGemmWork ? 1 : omp_get_max_threads();
  if (nthreads > 1) {
    sgemm_threaded(K, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, nthreads);
  } else {
    sgemm_packed(K, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

const char* cpu_sgemm_kernel_name() { return gemm::sgemm_active_kernel().name; }

void cpu_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
               int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  check_gemm_args("cpu_dgemm", trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == 0.0) {
    scale_c(m, n, beta, c, ldc);
    return;
  }
  // op(B) copied to a contiguous k x n block; each row of C is summed over p in order 0..k-1, one row per
  // iteration, so the result does not depend on the threads.
  std::vector<double> bt(size_t(k * n));
  for (int64_t p = 0; p < k; p++)
    for (int64_t j = 0; j < n; j++) bt[size_t(p * n + j)] = trans_b ? b[j * ldb + p] : b[p * ldb + j];
  const bool parallel = !omp_in_parallel() && m * n * k >= kParallelGemmWork;
#pragma omp parallel if (parallel)
  {
    std::vector<double> acc(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; i++) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = 0; p < k; p++) {
        const double aip = trans_a ? a[p * lda + i] : a[i * lda + p];
        const double* brow = bt.data() + p * n;
        for (int64_t j = 0; j < n; j++) acc[size_t(j)] += aip * brow[j];
      }
      double* row = c + i * ldc;
      if (beta == 0.0) {
        for (int64_t j = 0; j < n; j++) row[j] = alpha * acc[size_t(j)];
      } else {
        for (int64_t j = 0; j < n; j++) row[j] = alpha * acc[size_t(j)] + beta * row[j];
      }
    }
  }
}

namespace {

template <typename T, typename Fn>
void gemm_batched(const GemmArgs& g, Fn fn) {
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  T* c = static_cast<T*>(g.c);
  const T alpha = T(g.alpha), beta = T(g.beta);
  auto item = [&](int64_t i) {
    fn(g.trans_a, g.trans_b, g.m, g.n, g.k, alpha, a + i * g.stride_a, g.lda, b + i * g.stride_b, g.ldb, beta,
       c + i * g.stride_c, g.ldc);
  };
  // Many small matrices: one whole matrix per thread (each GEMM is thread-count independent, so this is too).
  const bool over_batch = g.batch > 1 && !omp_in_parallel() && omp_get_max_threads() > 1 &&
                          g.m * g.n * g.k <= kBatchItemSerialWork;
  if (over_batch) {
    // Exceptions may not leave an OpenMP region: keep the first and rethrow it after.
    std::exception_ptr error;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < g.batch; i++) {
      try {
        item(i);
      } catch (...) {
#pragma omp critical(eng_gemm_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
  for (int64_t i = 0; i < g.batch; i++) item(i);
}

}  // namespace

void CpuBackend::gemm(const GemmArgs& g) {
  ENG_CHECK(g.batch >= 0, "cpu gemm: negative batch {}", g.batch);
  if (g.batch == 0) return;
  switch (g.dtype) {
    case DType::F32: gemm_batched<float>(g, cpu_sgemm); break;
    case DType::F64: gemm_batched<double>(g, cpu_dgemm); break;
    default: ENG_FAIL("cpu gemm: dtype {} is not supported (f32 and f64 only)", dtype_name(g.dtype));
  }
}

}  // namespace eng
