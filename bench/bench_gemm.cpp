// bench_gemm.cpp: SGEMM throughput of the engine's CPU GEMM beside OpenBLAS's cblas_sgemm (when built with
// HAVE_OPENBLAS) in the same run, and as a fraction of the machine's fp32 peak, which is measured here with
// a tight FMA loop on every thread. Sizes: squares 256..2048 and the GEMMs of a ViT-Tiny MAE training step
// (forward, input-gradient and weight-gradient shapes of the encoder and decoder linears, and the batched
// attention products); and the grouped GEMM of an expert layer (E = 8, equal and skewed groups) against the plain
// GEMM of the same total shape. Prints medians of 7 timed runs after warm-up; the last lines read
// `name: value unit (ratio vs peer)`.
// Usage: bench_gemm [--quick]   (--quick: 3 timed runs, skips 2048)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "bench/fma_peak.h"
#include "engine/backends/cpu/cpu_backend.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Shape {
  std::string name;
  bool ta, tb;
  int64_t m, n, k, batch;
};

struct Result {
  Shape s;
  double ours, peer;
};

template <typename F>
double time_gflops(const Shape& s, int runs, F fn) {
  fn();
  fn();  // warm-up: page faults, packing buffers, thread pools
  std::vector<double> t;
  for (int r = 0; r < runs; r++) {
    const double t0 = now_s();
    fn();
    t.push_back(now_s() - t0);
  }
  return 2.0 * double(s.m) * double(s.n) * double(s.k) * double(s.batch) / median(t) * 1e-9;
}

// Uniform values in [-0.5, 0.5) from a fixed LCG, the same every run.
void fill_random(std::vector<std::vector<float>*> vs, uint32_t seed) {
  uint32_t x = seed;
  for (std::vector<float>* v : vs)
    for (float& e : *v) e = float((x = x * 1664525u + 1013904223u) >> 8) * (1.0f / 16777216.0f) - 0.5f;
}

// One f32 row-major GEMM of shape s on a, b, c with packed leading dims (no batch strides).
eng::GemmArgs gemm_of(const Shape& s, const float* a, const float* b, float* c) {
  eng::GemmArgs g;
  g.dtype = eng::DType::F32;
  g.trans_a = s.ta, g.trans_b = s.tb;
  g.m = s.m, g.n = s.n, g.k = s.k;
  g.a = a, g.b = b, g.c = c;
  g.lda = s.ta ? s.m : s.k, g.ldb = s.tb ? s.k : s.n, g.ldc = s.n;
  return g;
}

Result run_shape(const Shape& s, int runs) {
  const int64_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n, ldc = s.n;
  const int64_t sa = s.m * s.k, sb = s.k * s.n, sc = s.m * s.n;
  std::vector<float> a(size_t(sa * s.batch)), b(size_t(sb * s.batch)), c(size_t(sc * s.batch));
  fill_random({&a, &b, &c}, 12345);
  eng::CpuBackend backend;
  eng::GemmArgs g = gemm_of(s, a.data(), b.data(), c.data());
  g.stride_a = sa, g.stride_b = sb, g.stride_c = sc;
  g.batch = s.batch;
  Result r{s, 0, 0};
  r.ours = time_gflops(s, runs, [&] { backend.gemm(g); });
#ifdef HAVE_OPENBLAS
  r.peer = time_gflops(s, runs, [&] {
    for (int64_t i = 0; i < s.batch; i++)
      cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, int(s.m),
                  int(s.n), int(s.k), 1.0f, a.data() + i * sa, int(lda), b.data() + i * sb, int(ldb), 0.0f,
                  c.data() + i * sc, int(ldc));
  });
#endif
  return r;
}

// Grouped GEMM of an expert layer (CpuBackend::grouped_gemm, what grouped_matmul runs) against the plain GEMM of
// the same total shape in the same run. `s` is the plain problem; sizes split its rows (forward and input gradient,
// op NT / NN: m) or its inner dim (weight gradient, op TN: k) into consecutive groups, each with its own weight.
struct GroupedResult {
  std::string name;
  double grouped, plain;  // GFLOP/s of the median samples
  // Per-pair ratios grouped/plain speed (each pair: one grouped and one plain sample back to back, the order
  // alternating), their median and quartiles: a burst of other load moves both sides of a pair alike.
  double ratio_median, ratio_p25, ratio_p75;
};

GroupedResult run_grouped(const std::string& name, const Shape& s, const std::vector<int64_t>& sizes, int runs) {
  const int64_t E = int64_t(sizes.size());
  const bool split_k = s.ta;  // dW = dY^T X: the groups split the rows of dY and X, i.e. k
  // The operand split by rows is shared; the per-group one (the weights, or the weight gradients) is E times larger.
  const int64_t a_size = s.m * s.k, b_size = split_k ? s.k * s.n : E * s.k * s.n, c_size = split_k ? E * s.m * s.n : s.m * s.n;
  std::vector<float> a(static_cast<size_t>(a_size)), b(static_cast<size_t>(b_size)), c(static_cast<size_t>(c_size));
  fill_random({&a, &b}, 4242);
  eng::CpuBackend backend;
  const eng::GemmArgs plain = gemm_of(s, a.data(), b.data(), c.data());
  const int64_t lda = plain.lda, ldb = plain.ldb, ldc = plain.ldc;
  std::vector<eng::GemmArgs> groups;
  int64_t at = 0;
  for (int64_t e = 0; e < E; e++) {
    const int64_t g_rows = sizes[size_t(e)];
    eng::GemmArgs g = plain;
    if (split_k) {  // dW[e] (m x n) = (its rows of dY, stored k x m)^T (its rows of X)
      g.k = g_rows;
      g.a = a.data() + at * lda;
      g.b = b.data() + at * ldb;
      g.c = c.data() + e * s.m * s.n;
    } else {  // C[rows] = A[rows] op(W[e])
      g.m = g_rows;
      g.a = a.data() + at * lda;
      g.b = b.data() + e * s.k * s.n;
      g.c = c.data() + at * ldc;
    }
    at += g_rows;
    if (split_k || g_rows > 0) groups.push_back(g);
  }
  GroupedResult r{name, 0, 0, 0, 0, 0};
  for (int rep = 0; rep < 2; rep++) {  // warm-up
    backend.gemm(plain);
    backend.grouped_gemm(groups);
  }
  // One sample repeats the call until about 20 ms have passed (a single call is a few ms: too short for the timer
  // and the scheduler of a shared machine).
  double t0 = now_s();
  int reps = 0;
  while (now_s() - t0 < 0.02) backend.gemm(plain), reps++;
  reps = std::max(reps, 1);
  const auto sample = [&](bool grouped_call) {
    const double t = now_s();
    for (int i = 0; i < reps; i++) grouped_call ? backend.grouped_gemm(groups) : backend.gemm(plain);
    return (now_s() - t) / reps;
  };
  std::vector<double> tg, tp, ratios;
  for (int rep = 0; rep < runs; rep++) {
    double g, p;
    if (rep % 2 == 0) {
      p = sample(false);
      g = sample(true);
    } else {
      g = sample(true);
      p = sample(false);
    }
    tg.push_back(g);
    tp.push_back(p);
    ratios.push_back(p / g);
  }
  const double flops = 2.0 * double(s.m) * double(s.n) * double(s.k);
  r.plain = flops / median(tp) * 1e-9;
  r.grouped = flops / median(tg) * 1e-9;
  std::sort(ratios.begin(), ratios.end());
  r.ratio_median = median(ratios);
  r.ratio_p25 = ratios[size_t((ratios.size() - 1) / 4)];
  r.ratio_p75 = ratios[size_t(3 * (ratios.size() - 1) / 4)];
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && !std::strcmp(argv[1], "--quick");
  const int runs = quick ? 3 : 7;
  const char* kernel = eng::cpu_sgemm_kernel_name();
  const int threads = omp_get_max_threads();
  // The peak is the better of the zmm and ymm FMA loops (on some cores 512-bit FMAs issue at half rate).
  const double peak512 = measure_peak_gflops(true), peak256 = measure_peak_gflops(false);
  const double peak = std::max(peak512, peak256);
  std::printf("bench_gemm: kernel %s, %d OpenMP threads, %d timed runs (median) after 2 warm-up runs\n", kernel,
              threads, runs);
  std::printf("measured fp32 FMA peak, all threads: zmm loop %.1f GFLOP/s, ymm loop %.1f GFLOP/s\n", peak512,
              peak256);
  // The all-threads loop reads about one core's worth when others share the cores; one core by its own CPU time
  // does not depend on the load, so threads x it says whether "of peak" below is against a loaded peak.
  const double core = core_peak_gflops_cpu_time();
  std::printf("one core by its CPU time: %.1f GFLOP/s, so %.1f for %d threads%s\n", core, core * threads, threads,
              peak < 0.9 * core * threads ? " (the peak above was measured under load: \"of peak\" reads too high)" : "");
#ifdef HAVE_OPENBLAS
  std::printf("peer: OpenBLAS %s, %d threads\n", openblas_get_config(), openblas_get_num_threads());
#else
  std::printf("peer: none (built without OpenBLAS)\n");
#endif

  // ViT-Tiny MAE step: encoder width 192 (MLP 768), 17 tokens x 128 images = 2176 rows; decoder width 128
  // (MLP 512), 65 tokens x 128 = 8320 rows. Linear weights are [out, in], so forward is X W^T (tb), the
  // input gradient dY W (nn) and the weight gradient dY^T X (ta, k = rows).
  std::vector<Shape> shapes = {
      {"square 256", false, false, 256, 256, 256, 1},
      {"square 512", false, false, 512, 512, 512, 1},
      {"square 1024", false, false, 1024, 1024, 1024, 1},
      {"square 2048", false, false, 2048, 2048, 2048, 1},
      {"enc qkv fwd", false, true, 2176, 576, 192, 1},
      {"enc qkv dX", false, false, 2176, 192, 576, 1},
      {"enc qkv dW", true, false, 576, 192, 2176, 1},
      {"enc fc1 fwd", false, true, 2176, 768, 192, 1},
      {"enc fc1 dW", true, false, 768, 192, 2176, 1},
      {"enc fc2 fwd", false, true, 2176, 192, 768, 1},
      {"enc fc2 dX", false, false, 2176, 768, 192, 1},
      {"dec qkv fwd", false, true, 8320, 384, 128, 1},
      {"dec fc1 fwd", false, true, 8320, 512, 128, 1},
      {"dec fc1 dW", true, false, 512, 128, 8320, 1},
      {"dec fc2 fwd", false, true, 8320, 128, 512, 1},
      {"dec fc2 dX", false, false, 8320, 512, 128, 1},
      {"enc attn QK^T x384", false, true, 17, 17, 64, 384},
      {"enc attn PV x384", false, false, 17, 64, 17, 384},
      {"dec attn QK^T x512", false, true, 65, 65, 32, 512},
  };
  if (quick) shapes.erase(shapes.begin() + 3);

  std::vector<Result> results;
  std::printf("\n%-22s %5s %5s %5s %4s %10s %10s %8s %8s\n", "shape", "m", "n", "k", "op", "ours", "openblas",
              "ratio", "of peak");
  for (const auto& s : shapes) {
    const Result r = run_shape(s, runs);
    results.push_back(r);
    const std::string op = std::string(s.ta ? "T" : "N") + (s.tb ? "T" : "N");
    std::printf("%-22s %5lld %5lld %5lld %4s %10.1f %10.1f %7.2fx %7.0f%%\n", s.name.c_str(), (long long)s.m,
                (long long)s.n, (long long)s.k, op.c_str(), r.ours, r.peer, r.peer > 0 ? r.ours / r.peer : 0.0,
                peak > 0 ? 100 * r.ours / peak : 0.0);
    std::fflush(stdout);
  }

  // Expert layers (grouped_matmul) on the encoder MLP of mae_tiny_p4_32 at batch 128 (2176 rows, 192 <-> 768) with
  // E = 8 experts: equal groups, and a skewed split with an empty expert.
  const std::vector<int64_t> equal(8, 272), skewed = {870, 435, 326, 218, 152, 109, 66, 0};
  const std::vector<std::pair<std::string, Shape>> expert_shapes = {
      {"enc_fc1_fwd", {"", false, true, 2176, 768, 192, 1}}, {"enc_fc1_dX", {"", false, false, 2176, 192, 768, 1}},
      {"enc_fc1_dW", {"", true, false, 768, 192, 2176, 1}},  {"enc_fc2_fwd", {"", false, true, 2176, 192, 768, 1}},
      {"enc_fc2_dX", {"", false, false, 2176, 768, 192, 1}}, {"enc_fc2_dW", {"", true, false, 192, 768, 2176, 1}},
  };
  std::vector<GroupedResult> grouped;
  std::printf("\n%-28s %5s %5s %5s %4s %10s %10s %8s %14s\n", "grouped (E = 8)", "m", "n", "k", "op", "grouped", "plain",
              "ratio", "quartiles");
  for (const auto& [name, s] : expert_shapes) {
    for (int split = 0; split < 2; split++) {
      const GroupedResult r = run_grouped(name + (split ? "_skewed" : "_equal"), s, split ? skewed : equal, 3 * runs);
      grouped.push_back(r);
      const std::string op = std::string(s.ta ? "T" : "N") + (s.tb ? "T" : "N");
      std::printf("%-28s %5lld %5lld %5lld %4s %10.1f %10.1f %7.2fx   %.2f-%.2fx\n", r.name.c_str(), (long long)s.m,
                  (long long)s.n, (long long)s.k, op.c_str(), r.grouped, r.plain, r.ratio_median, r.ratio_p25,
                  r.ratio_p75);
      std::fflush(stdout);
    }
  }

  std::printf("\n");
  std::printf("fp32 peak (%d threads): %.1f GFLOP/s (measured FMA loop)\n", threads, peak);
  for (const auto& r : results) {
    std::string key = r.s.name;
    std::replace(key.begin(), key.end(), ' ', '_');
    std::printf("sgemm %s: %.1f GFLOP/s (%.2fx openblas, %.0f%% of peak)\n", key.c_str(), r.ours,
                r.peer > 0 ? r.ours / r.peer : 0.0, peak > 0 ? 100 * r.ours / peak : 0.0);
  }
  for (const auto& r : grouped)
    std::printf("grouped_gemm E8 %s: %.1f GFLOP/s (%.2fx the plain GEMM of the same total shape, median of per-pair "
                "ratios, quartiles %.2f-%.2fx; plain %.1f GFLOP/s)\n",
                r.name.c_str(), r.grouped, r.ratio_median, r.ratio_p25, r.ratio_p75, r.plain);
  return 0;
}
