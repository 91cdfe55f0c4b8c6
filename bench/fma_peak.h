// bench/fma_peak.h: the CPU's fp32 FMA peak, measured by the benchmark itself with loops of independent
// vfmadd231ps in assembly (zmm and ymm versions, on zeroed registers): all OpenMP threads at once against the wall
// clock (what bench_gemm divides by), and one thread against its own CPU time (one core's peak, which a loaded machine
// does not lower: descheduled time is not counted). Shared by bench_gemm and bench_cluster.
#pragma once
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace {

inline double fma_peak_now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#if defined(__x86_64__) || defined(__i386__)
// FMA throughput loops in assembly (so nothing but FMAs and the loop branch runs): independent chains on
// zeroed registers (no denormals), enough of them to cover FMA latency times issue width. Return flops done.
#define ENG_FMA16(w) \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "0\n vfmadd231ps %%" w "16, %%" w "17, %%" w "1\n"   \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "2\n vfmadd231ps %%" w "16, %%" w "17, %%" w "3\n"   \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "4\n vfmadd231ps %%" w "16, %%" w "17, %%" w "5\n"   \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "6\n vfmadd231ps %%" w "16, %%" w "17, %%" w "7\n"   \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "8\n vfmadd231ps %%" w "16, %%" w "17, %%" w "9\n"   \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "10\n vfmadd231ps %%" w "16, %%" w "17, %%" w "11\n" \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "12\n vfmadd231ps %%" w "16, %%" w "17, %%" w "13\n" \
  "vfmadd231ps %%" w "16, %%" w "17, %%" w "14\n vfmadd231ps %%" w "16, %%" w "17, %%" w "15\n"

inline __attribute__((target("avx512f"), noinline)) double fma_loop_avx512(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpxord %%zmm16, %%zmm16, %%zmm16\n vpxord %%zmm17, %%zmm17, %%zmm17\n"
      "vpxord %%zmm0, %%zmm0, %%zmm0\n vpxord %%zmm1, %%zmm1, %%zmm1\n vpxord %%zmm2, %%zmm2, %%zmm2\n"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n vpxord %%zmm4, %%zmm4, %%zmm4\n vpxord %%zmm5, %%zmm5, %%zmm5\n"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n vpxord %%zmm7, %%zmm7, %%zmm7\n vpxord %%zmm8, %%zmm8, %%zmm8\n"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n vpxord %%zmm10, %%zmm10, %%zmm10\n vpxord %%zmm11, %%zmm11, %%zmm11\n"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n vpxord %%zmm13, %%zmm13, %%zmm13\n vpxord %%zmm14, %%zmm14, %%zmm14\n"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n"
      "1:\n" ENG_FMA16("zmm") "dec %0\n jnz 1b\n vzeroupper\n"
      : "+r"(n)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "cc");
  return double(iters) * 16 * 16 * 2;
}
// AVX2 has 16 ymm registers: 14 chains plus the two sources.
inline __attribute__((target("avx2,fma"), noinline)) double fma_loop_avx2(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n vxorps %%ymm1, %%ymm1, %%ymm1\n vxorps %%ymm2, %%ymm2, %%ymm2\n"
      "vxorps %%ymm3, %%ymm3, %%ymm3\n vxorps %%ymm4, %%ymm4, %%ymm4\n vxorps %%ymm5, %%ymm5, %%ymm5\n"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n vxorps %%ymm7, %%ymm7, %%ymm7\n vxorps %%ymm8, %%ymm8, %%ymm8\n"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n vxorps %%ymm10, %%ymm10, %%ymm10\n vxorps %%ymm11, %%ymm11, %%ymm11\n"
      "vxorps %%ymm12, %%ymm12, %%ymm12\n vxorps %%ymm13, %%ymm13, %%ymm13\n vxorps %%ymm14, %%ymm14, %%ymm14\n"
      "vxorps %%ymm15, %%ymm15, %%ymm15\n"
      "1:\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm10\n vfmadd231ps %%ymm14, %%ymm15, %%ymm11\n"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm12\n vfmadd231ps %%ymm14, %%ymm15, %%ymm13\n"
      "dec %0\n jnz 1b\n vzeroupper\n"
      : "+r"(n)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "cc");
  return double(iters) * 14 * 8 * 2;
}
#endif

// fp32 FMA peak of all threads together, GFLOP/s: every thread runs the FMA loop at once; best of 5.
// use512: zmm loop (needs AVX-512F), else ymm loop (needs AVX2+FMA); 0 when the CPU lacks them.
inline double measure_peak_gflops(bool use512) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (use512 ? !__builtin_cpu_supports("avx512f") : !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
    return 0;
  const int64_t iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double flops = 0, t0 = 0, t1 = 0;
#pragma omp parallel reduction(+ : flops)
    {
#pragma omp barrier
#pragma omp single
      t0 = fma_peak_now_s();
      flops += use512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
#pragma omp barrier
#pragma omp single
      t1 = fma_peak_now_s();
    }
    best = std::max(best, flops / (t1 - t0) * 1e-9);
  }
  return best;
#else
  return 0;
#endif
}

// One core's fp32 FMA peak, GFLOP/s: the zmm loop (else the ymm one) on the calling thread, flops over the thread's
// CPU time, best of 3. measure_peak_gflops needs every core free (under load its threads take turns and it reads
// about one core's worth); this one does not, so cores x this is what the machine reaches when it is idle.
// 0 without AVX2+FMA.
inline double core_peak_gflops_cpu_time() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool z = __builtin_cpu_supports("avx512f");
  if (!z && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0;
  auto thread_s = [] {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  };
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    const double t0 = thread_s();
    const double flops = z ? fma_loop_avx512(20'000'000) : fma_loop_avx2(20'000'000);
    best = std::max(best, flops / (thread_s() - t0) * 1e-9);
  }
  return best;
#else
  return 0;
#endif
}

}  // namespace
