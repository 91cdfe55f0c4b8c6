// cpu_gemm.cpp: CPU GEMM. cpu_sgemm is a BLIS-style driver: op(A) and op(B) are packed into micro-panels
// (packing absorbs the transposes), blocked for L3 (mc rows of A), L1 (kc) and L2 (nc columns of B), and
// multiplied by a register-tiled micro-kernel chosen at run time (AVX-512, AVX2+FMA or portable; see
// gemm_kernels.h). Small problems skip packing and threads. cpu_dgemm is a simple, exact-order f64 loop for
// gradient checks. CpuBackend::gemm runs strided batches.
//
// Threads: for each k block, op(B) is packed once into a buffer all threads read, and the rows of C are cut into
// pieces that run on the help-first pool (cpu_pool.h); see sgemm_threaded.
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
#include "engine/backends/cpu/cpu_fused.h"
#include "engine/backends/cpu/cpu_pool.h"
#include "engine/backends/cpu/gemm_kernels.h"
#include "engine/elementwise_math.h"
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
std::atomic<bool> g_direct_a{true};
}  // namespace

namespace gemm {

void sgemm_set_direct_a(bool on) { g_direct_a.store(on, std::memory_order_relaxed); }

}  // namespace gemm

namespace {

// Problems with at most this many multiply-adds use the direct kernel (no packing, one thread): packing and
// a parallel region cost more than they save there.
constexpr int64_t kSmallGemmWork = int64_t(1) << 16;
// Below this many multiply-adds a packed GEMM runs on one thread (starting a team costs a few microseconds).
constexpr int64_t kParallelGemmWork = int64_t(1) << 20;
// Widest C for which a row-major A is read in place rather than packed (measured on the ViT shapes: +6..9% at
// n = 128..192, -2..4% at n = 384..768).
constexpr int64_t kDirectAMaxN = 256;
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

using GemmMicro = gemm::SgemmMicroKernelDirectA;

// The epilogue of one tile of C at (row, col), right after its last k block.
inline void tile_epilogue(const SgemmEpilogue& ep, float* tile, int64_t ldc, int64_t row, int64_t col, int mr, int nr) {
  if (ep.gelu_grad)
    cpu::gelu_grad_tile_f32(tile, ldc, mr, nr, ep.pre + row * ep.ldp + col, ep.ldp);
  else
    cpu::bias_gelu_tile_f32(tile, ldc, mr, nr, ep.bias ? ep.bias + col : nullptr, ep.gelu,
                            ep.pre ? ep.pre + row * ep.ldp + col : nullptr, ep.ldp);
}

// The kernel that reads op(A) in place, or null to pack it. Row-major A: when C is narrow (n <= kDirectAMaxN),
// where packing would be amortised over few column tiles (wider C keeps the packed panel, whose L1 layout wins
// when reused across many tiles). Transposed A (weight gradients dY^T X): the stored layout already has the 12
// values of a k step side by side, as a packed panel does, so it is read in place where its stride allows (below).
// Same bits either way.
GemmMicro direct_a_kernel(const gemm::SgemmKernel& K, bool trans_a, int64_t n, int64_t lda) {
  if (!g_direct_a.load(std::memory_order_relaxed)) return nullptr;
  // Transposed A is read in place unless its row stride is a multiple of 2 KiB or short: those alias in the
  // caches (measured on the weight-gradient shapes: +1..5% at lda 384, 576, 768; -4..13% at lda 128, 512).
  if (trans_a) return lda % 512 != 0 && lda >= 192 ? K.micro_direct_at : nullptr;
  return n <= kDirectAMaxN ? K.micro_direct_a : nullptr;
}

// One thread's packed GEMM: loops mc (rows, L3) > kc (L1) > nc (columns, L2) > register tiles.
void sgemm_packed(const gemm::SgemmKernel& K, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc, const SgemmEpilogue* ep) {
  const int MR = K.mr, NR = K.nr;
  const int64_t MC = round_up(std::min(K.mc, round_up(m, MR)), MR);
  const int64_t KC = std::min(K.kc, k);
  const int64_t NC = round_up(std::min(K.nc, round_up(n, NR)), NR);
  // op(A) is read in place where direct_a_kernel says so (no packing of A).
  const GemmMicro direct = direct_a_kernel(K, trans_a, n, lda);
  const bool direct_a = direct != nullptr;
  float* a_pack = direct_a ? nullptr : t_pack_a.get(size_t(MC * KC));
  float* b_pack = t_pack_b.get(size_t(KC * NC));
  for (int64_t ic = 0; ic < m; ic += MC) {
    const int64_t mcb = std::min(MC, m - ic);
    for (int64_t pc = 0; pc < k; pc += KC) {
      const int64_t kcb = std::min(KC, k - pc);
      // Later k blocks add onto what the earlier ones stored.
      const float beta_block = pc == 0 ? beta : 1.0f;
      if (!direct_a) K.pack_a(trans_a, trans_a ? a + pc * lda + ic : a + ic * lda + pc, lda, mcb, kcb, a_pack);
      for (int64_t jc = 0; jc < n; jc += NC) {
        const int64_t ncb = std::min(NC, n - jc);
        K.pack_b(trans_b, trans_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, ncb, kcb, b_pack);
        // An A micro-panel stays in L1 while the B block (in L2) streams past it.
        for (int64_t ir = 0; ir < mcb; ir += MR) {
          const int mr = int(std::min<int64_t>(MR, mcb - ir));
          for (int64_t jr = 0; jr < ncb; jr += NR) {
            const int nr = int(std::min<int64_t>(NR, ncb - jr));
            float* tile = c + (ic + ir) * ldc + jc + jr;
            if (direct_a)
              direct(kcb, trans_a ? a + pc * lda + ic + ir : a + (ic + ir) * lda + pc, lda, b_pack + jr * kcb, tile,
                     ldc, mr, nr, alpha, beta_block);
            else
              K.micro(kcb, a_pack + ir * kcb, b_pack + jr * kcb, tile, ldc, mr, nr, alpha, beta_block);
            // The epilogue runs on each tile right after its last k block, while the tile is still in L1.
            if (ep && pc + kcb == k) tile_epilogue(*ep, tile, ldc, ic + ir, jc + jr, mr, nr);
          }
        }
      }
    }
  }
}

// Threads: for each k block, op(B) (kc x n) is packed once into a buffer all threads read (its column panels are
// the pieces), then the rows of C are cut into pieces of a few register-tile rows; a piece packs its own rows of A
// (or reads them in place) and runs all its tiles against the shared B, column block by column block. Pieces go
// to the help-first pool (cpu_pool.h): a thread that is late finds them taken and nothing waits for it. The k
// blocking, the tiles and the k order per element are those of sgemm_packed, so results are the same bits for
// any thread count.
// Several problems that share the transposes, n, k, alpha and beta (the experts of a grouped_gemm: each its own rows
// of A, its own B and C) run as one: every k block packs all their Bs in one pool job and computes all their row
// pieces in the next, so E experts cost the pool waits of one GEMM, not E times as many (those waits made the
// 272-row GEMMs of an 8-expert layer 0.65x the speed of one 2176-row GEMM). One problem is the plain GEMM.
void sgemm_threaded(const gemm::SgemmKernel& K, bool trans_a, bool trans_b, int64_t n, int64_t k, float alpha,
                    float beta, const SgemmProblem* problems, int64_t count, int nthreads) {
  const int MR = K.mr, NR = K.nr;
  const int64_t KC = std::min(K.kc, k);
  const int64_t NC = round_up(std::min(K.nc, round_up(n, NR)), NR);
  const int64_t col_panels = (n + NR - 1) / NR;
  int64_t total_row_panels = 0;
  for (int64_t p = 0; p < count; p++) total_row_panels += (problems[p].m + MR - 1) / MR;
  // About eight row pieces per thread (each packs only its own rows of A), so a late thread still finds work and
  // the last pieces to finish are short.
  const int64_t panels_per_piece = std::max<int64_t>(1, total_row_panels / (8 * int64_t(nthreads)));
  // first_piece[p]: the index of problem p's first row piece; the last entry is the number of row pieces.
  std::vector<int64_t> first_piece(size_t(count) + 1, 0);
  for (int64_t p = 0; p < count; p++)
    first_piece[size_t(p) + 1] = first_piece[size_t(p)] + ((problems[p].m + MR - 1) / MR + panels_per_piece - 1) /
                                                              panels_per_piece;
  const int64_t row_pieces = first_piece[size_t(count)];
  const int64_t panels_per_pack = std::max<int64_t>(1, col_panels / (2 * int64_t(nthreads)));
  const int64_t packs_per_problem = (col_panels + panels_per_pack - 1) / panels_per_pack;
  const int64_t pack_pieces = count * packs_per_problem;
  // Two sets of B buffers: the pieces of k block b also pack block b + 1 into the other set (after the compute
  // pieces), so each k block costs one wait for the pool, not two.
  const size_t b_size = size_t(KC * col_panels * NR);
  float* b_buf = t_pack_b.get(2 * size_t(count) * b_size);
  auto b_of = [&](int64_t pc, int64_t p) { return b_buf + (size_t((pc / KC) % 2) * size_t(count) + size_t(p)) * b_size; };
  auto pack_piece = [&](int64_t pc, int64_t piece) {
    const SgemmProblem& P = problems[piece / packs_per_problem];
    const int64_t kcb = std::min(KC, k - pc);
    const float* b_block = trans_b ? P.b + pc : P.b + pc * P.ldb;
    float* dst = b_of(pc, piece / packs_per_problem);
    const int64_t q0 = (piece % packs_per_problem) * panels_per_pack, q1 = std::min(col_panels, q0 + panels_per_pack);
    const int64_t j0 = q0 * NR, cols = std::min(n, q1 * NR) - j0;
    K.pack_b(trans_b, trans_b ? b_block + j0 * P.ldb : b_block + j0, P.ldb, cols, kcb, dst + j0 * kcb);
  };
  cpu::run_pieces(pack_pieces, [&](int64_t piece) { pack_piece(0, piece); });
  for (int64_t pc = 0; pc < k; pc += KC) {
    const int64_t kcb = std::min(KC, k - pc);
    const float beta_block = pc == 0 ? beta : 1.0f;  // later k blocks add onto what the earlier ones stored
    const bool pack_next = pc + KC < k;
    cpu::run_pieces(row_pieces + (pack_next ? pack_pieces : 0), [&](int64_t piece) {
      if (piece >= row_pieces) {
        pack_piece(pc + KC, piece - row_pieces);
        return;
      }
      const int64_t p = int64_t(std::upper_bound(first_piece.begin(), first_piece.end(), piece) - first_piece.begin()) - 1;
      const SgemmProblem& P = problems[p];
      const float* a = P.a;
      const int64_t lda = P.lda, ldc = P.ldc;
      const GemmMicro direct = direct_a_kernel(K, trans_a, n, lda);
      const float* b_shared = b_of(pc, p);
      const int64_t i0 = (piece - first_piece[size_t(p)]) * panels_per_piece * MR,
                    i1 = std::min(P.m, i0 + panels_per_piece * MR);
      float* a_pack = nullptr;
      if (!direct) {
        a_pack = t_pack_a.get(size_t(round_up(i1 - i0, MR) * kcb));
        K.pack_a(trans_a, trans_a ? a + pc * lda + i0 : a + i0 * lda + pc, lda, i1 - i0, kcb, a_pack);
      }
      for (int64_t jc = 0; jc < n; jc += NC) {  // a B column block stays in L2 while the piece's rows pass
        const int64_t ncb = std::min(NC, n - jc);
        for (int64_t ir = i0; ir < i1; ir += MR) {
          const int mr = int(std::min<int64_t>(MR, i1 - ir));
          for (int64_t jr = jc; jr < jc + ncb; jr += NR) {
            const int nr = int(std::min<int64_t>(NR, jc + ncb - jr));
            float* tile = P.c + ir * ldc + jr;
            const float* bp = b_shared + jr * kcb;
            if (direct)
              direct(kcb, trans_a ? a + pc * lda + ir : a + ir * lda + pc, lda, bp, tile, ldc, mr, nr, alpha,
                     beta_block);
            else
              K.micro(kcb, a_pack + (ir - i0) * kcb, bp, tile, ldc, mr, nr, alpha, beta_block);
            if (P.ep && pc + kcb == k) tile_epilogue(*P.ep, tile, ldc, ir, jr, mr, nr);
          }
        }
      }
    });
  }
}

}  // namespace

void cpu_sgemm_fused(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                     int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                     const SgemmEpilogue* ep) {
  check_gemm_args("cpu_sgemm", trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
  if (m == 0 || n == 0) return;
  if (ep && !ep->bias && !ep->gelu && !ep->gelu_grad) ep = nullptr;
  if (ep && ep->pre) ENG_CHECK(ep->ldp >= n, "cpu_sgemm: epilogue ldp={} is less than n={}", ep->ldp, n);
  ENG_CHECK(!ep || !ep->gelu_grad || ep->pre, "cpu_sgemm: GELU-gradient epilogue without its pre-activation");
  auto whole_epilogue = [&] {
    if (ep) tile_epilogue(*ep, c, ldc, 0, 0, int(m), int(n));
  };
  if (k == 0 || alpha == 0.0f) {
    scale_c(m, n, beta, c, ldc);
    whole_epilogue();
    return;
  }
  const gemm::SgemmKernel& K = gemm::sgemm_active_kernel();
  const int64_t work = m * n * k;
  if (work <= kSmallGemmWork) {
    K.small(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    whole_epilogue();  // C is small and still in cache
    return;
  }
  const int nthreads = cpu::in_parallel_region() || omp_in_parallel() || work < kParallelGemmWork ? 1 : cpu::max_threads();
  if (nthreads > 1) {
    const SgemmProblem one{m, a, lda, b, ldb, c, ldc, ep};
    sgemm_threaded(K, trans_a, trans_b, n, k, alpha, beta, &one, 1, nthreads);
  } else {
    sgemm_packed(K, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
  }
}

void cpu_sgemm_grouped(bool trans_a, bool trans_b, int64_t n, int64_t k, float alpha, float beta,
                       const std::vector<SgemmProblem>& problems) {
  // Problems the packed driver would run alone run together; the rest (tiny ones take the small-GEMM kernel, whose
  // bits differ; k = 0 or alpha = 0 only scale C) go one by one, so each keeps its lone bits.
  std::vector<SgemmProblem> packed;
  const bool threads = !cpu::in_parallel_region() && !omp_in_parallel() && cpu::max_threads() > 1;
  for (const SgemmProblem& p : problems) {
    check_gemm_args("cpu_sgemm", trans_a, trans_b, p.m, n, k, p.a, p.lda, p.b, p.ldb, p.c, p.ldc);
    const int64_t work = p.m * n * k;
    if (threads && work > kSmallGemmWork && k > 0 && alpha != 0.0f && n > 0)
      packed.push_back(p);
    else
      cpu_sgemm_fused(trans_a, trans_b, p.m, n, k, alpha, p.a, p.lda, p.b, p.ldb, beta, p.c, p.ldc, p.ep);
  }
  if (packed.empty()) return;
  int64_t work = 0;
  for (SgemmProblem& p : packed) {
    work += p.m * n * k;
    if (p.ep && !p.ep->bias && !p.ep->gelu && !p.ep->gelu_grad) p.ep = nullptr;  // as cpu_sgemm_fused
  }
  const gemm::SgemmKernel& K = gemm::sgemm_active_kernel();
  if (work < kParallelGemmWork) {
    for (const SgemmProblem& p : packed)
      sgemm_packed(K, trans_a, trans_b, p.m, n, k, alpha, p.a, p.lda, p.b, p.ldb, beta, p.c, p.ldc, p.ep);
    return;
  }
  sgemm_threaded(K, trans_a, trans_b, n, k, alpha, beta, packed.data(), int64_t(packed.size()), cpu::max_threads());
}

SgemmEpilogue sgemm_epilogue_for(const GemmArgs& g, const float* c) {
  const bool gelu = g.epilogue == GemmEpilogue::BiasGelu, gelu_grad = g.epilogue == GemmEpilogue::GeluGrad;
  SgemmEpilogue ep;  // pre_gelu has C's layout: the same offset as this batch item's C
  ep.bias = gelu_grad || g.epilogue == GemmEpilogue::None ? nullptr : static_cast<const float*>(g.bias);
  ep.gelu = gelu;
  ep.gelu_grad = gelu_grad;
  ep.pre = (gelu || gelu_grad) && g.pre_gelu ? static_cast<float*>(g.pre_gelu) + (c - static_cast<const float*>(g.c))
                                             : nullptr;
  ep.ldp = g.ldc;
  return ep;
}

void cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cpu_sgemm_fused(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, nullptr);
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
  const int64_t rows_per_piece = m * n * k >= kParallelGemmWork ? std::max<int64_t>(1, (m + 15) / 16) : m;
  cpu::run_pieces((m + rows_per_piece - 1) / rows_per_piece, [&](int64_t piece) {
    std::vector<double> acc(static_cast<size_t>(n));
    for (int64_t i = piece * rows_per_piece; i < std::min(m, (piece + 1) * rows_per_piece); i++) {
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
  });
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
  // Many small matrices: whole matrices as pieces on the pool (each GEMM is thread-count independent, so this is
  // too); the pool rethrows the first exception.
  if (g.batch > 1 && g.m * g.n * g.k <= kBatchItemSerialWork) {
    cpu::run_pieces(g.batch, item);
    return;
  }
  for (int64_t i = 0; i < g.batch; i++) item(i);
}

}  // namespace

// f64 epilogue, after the whole product: the exact-order reference path for gradient checks.
static void dgemm_epilogue(double* c, int64_t ldc, int64_t m, int64_t n, const double* bias, bool gelu, double* pre,
                           bool gelu_grad) {
  for (int64_t i = 0; i < m; i++) {
    double* row = c + i * ldc;
    for (int64_t j = 0; j < n; j++) {
      if (gelu_grad) {
        row[j] *= gelu_exact_grad<double>(pre[i * ldc + j]);
        continue;
      }
      double v = row[j] + (bias ? bias[j] : 0.0);
      if (gelu) {
        if (pre) pre[i * ldc + j] = v;
        v = gelu_exact<double>(v);
      }
      row[j] = v;
    }
  }
}

bool CpuBackend::supports_gemm_epilogue(GemmEpilogue e) const {
  return e == GemmEpilogue::None || e == GemmEpilogue::Bias || e == GemmEpilogue::BiasGelu ||
         e == GemmEpilogue::GeluGrad;
}

void CpuBackend::gemm(const GemmArgs& g) {
  ENG_CHECK(g.batch >= 0, "cpu gemm: negative batch {}", g.batch);
  if (g.batch == 0) return;
  const bool gelu = g.epilogue == GemmEpilogue::BiasGelu, gelu_grad = g.epilogue == GemmEpilogue::GeluGrad;
  if (g.epilogue == GemmEpilogue::Bias) ENG_CHECK(g.bias, "cpu gemm: Bias epilogue without a bias");
  if (gelu_grad) ENG_CHECK(g.pre_gelu, "cpu gemm: GeluGrad epilogue without pre_gelu");
  switch (g.dtype) {
    case DType::F32:
      if (g.epilogue == GemmEpilogue::None) {
        gemm_batched<float>(g, cpu_sgemm);
      } else {
        gemm_batched<float>(g, [&](bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                                   int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
          const SgemmEpilogue ep = sgemm_epilogue_for(g, c);
          cpu_sgemm_fused(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, &ep);
        });
      }
      break;
    case DType::F64:
      gemm_batched<double>(g, cpu_dgemm);
      if (g.epilogue != GemmEpilogue::None)
        for (int64_t i = 0; i < g.batch; i++)
          dgemm_epilogue(static_cast<double*>(g.c) + i * g.stride_c, g.ldc, g.m, g.n,
                         gelu_grad ? nullptr : static_cast<const double*>(g.bias), gelu,
                         (gelu || gelu_grad) && g.pre_gelu ? static_cast<double*>(g.pre_gelu) + i * g.stride_c : nullptr,
                         gelu_grad);
      break;
    default: ENG_FAIL("cpu gemm: dtype {} is not supported (f32 and f64 only)", dtype_name(g.dtype));
  }
}

}  // namespace eng
