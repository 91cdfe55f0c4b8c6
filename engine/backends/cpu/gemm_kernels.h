// gemm_kernels.h: internal interface between the SGEMM driver (cpu_gemm.cpp: blocking, packing, threads)
// and the instruction-set specific micro-kernels (gemm_kernels_avx512.cpp, gemm_kernels_avx2.cpp,
// gemm_kernels_generic.cpp). Not part of the engine's public API; tests and benchmarks use it to pin a kernel.
#pragma once
#include <cstdint>

namespace eng::gemm {

// Packed layouts (row-major C, "rows" = m, "cols" = n):
//   A micro-panel: mr_max rows x kc, stored [p][mr_max] (the mr_max values of one k step are adjacent);
//   B micro-panel: kc x nr_max cols, stored [p][nr_max].
// Rows/cols past the matrix edge are zero in the panels, so kernels always compute the full tile and only
// the store is clipped to mr x nr.
// C tile <- alpha * (A panel * B panel) + beta * C tile; beta == 0 writes without reading C.
using SgemmMicroKernel = void (*)(int64_t kc, const float* a_pack, const float* b_pack, float* c, int64_t ldc, int mr,
                                  int nr, float alpha, float beta);

// Direct (unpacked) kernel for small problems, same contract as cpu_sgemm. Single-threaded.
using SgemmSmallKernel = void (*)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                                  int64_t ldc);

// Packing routines (written once, compiled per instruction set so the copies vectorise).
// pack_a: rows [0, rows) of op(A) starting at `a` (already offset to the block), kc k steps -> ceil(rows / mr)
// consecutive micro-panels of mr * kc floats. pack_b likewise for columns of op(B), panels of kc * nr floats.
using SgemmPackA = void (*)(bool trans_a, const float* a, int64_t lda, int64_t rows, int64_t kc, float* dst);
using SgemmPackB = void (*)(bool trans_b, const float* b, int64_t ldb, int64_t cols, int64_t kc, float* dst);

// Micro-kernel reading A in place instead of from a packed panel: row i of the tile is a + i * lda (op(A) not
// transposed), i < mr; same arithmetic, in the same order, as `micro`, so results are bitwise equal. Optional
// (null where a kernel has none); the driver uses it when op(A) is row-major, saving the packing of A.
using SgemmMicroKernelDirectA = void (*)(int64_t kc, const float* a, int64_t lda, const float* b_pack, float* c,
                                         int64_t ldc, int mr, int nr, float alpha, float beta);

struct SgemmKernel {
  const char* name;
  int mr, nr;      // register tile of the micro-kernel
  int64_t kc;      // k block: an A micro-panel (mr x kc) stays in L1
  int64_t nc;      // column block: a packed B block (kc x nc) stays in L2
  int64_t mc;      // row block: a packed A block (mc x kc) stays in L3
  SgemmMicroKernel micro;
  SgemmSmallKernel small;
  SgemmPackA pack_a;
  SgemmPackB pack_b;
  SgemmMicroKernelDirectA micro_direct_a = nullptr;
  // The same for a transposed op(A): element (i, p) at a[p * lda + i] (null where a kernel has none).
  SgemmMicroKernelDirectA micro_direct_at = nullptr;
};

// Each returns its kernel table; only call one the CPU supports (see supported()).
const SgemmKernel& sgemm_kernel_avx512();
const SgemmKernel& sgemm_kernel_avx2();
const SgemmKernel& sgemm_kernel_generic();

// The kernel cpu_sgemm uses. Chosen once from the CPU's features unless overridden.
const SgemmKernel& sgemm_active_kernel();
// Pins the kernel by name ("avx512", "avx2", "generic"); returns false (and changes nothing) when the name is
// unknown or the CPU lacks the instructions. Meant for tests and benchmarks; not thread-safe against running GEMMs.
bool sgemm_select_kernel(const char* name);
// Restores the automatic choice.
void sgemm_reset_kernel();
// Reads row-major A in place where the kernel has micro_direct_a (the default), or always packs it (for
// benchmarks and tests; results are bitwise the same). Not thread-safe against running GEMMs.
void sgemm_set_direct_a(bool on);

}  // namespace eng::gemm
