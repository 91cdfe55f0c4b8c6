// bench_cluster.cpp: stage one of MoCE at ImageNet scale on the CPU: a synthetic bf16 bank of 1,281,167 x 768 unit
// vectors drawn around 256 planted centres, M = 256, 10 epochs of the alternating optimisation (moce/cluster), then
// the balanced assignment of the whole bank; then the k-means peer (Lloyd, moce/cluster/kmeans.h) on the same bank.
// Prints the CPU and its fp32 FMA peak (one core by its own CPU time, times the threads), a GEMM peak measured in the
// same run (the engine's matmul on the step's own shape, samples of at least 0.25 s each), the seconds and GFLOP/s of
// each part against that GEMM peak, how many cores the process got (CPU time / wall: below the thread count the run
// was under load), the peak memory, and the recovery of the planted groups (NMI) as a sanity check.
// Usage: bench_cluster [--quick] [--n N] [--epochs E] [--lr LR] [--weight-decay WD] [--init random|kmeans++]
//                      [--kmeans-iters K]
//   (--quick: n = 65536, 2 epochs, for make bench; the SGD values default to ClusterConfig's, the paper's;
//    --kmeans-iters 0 skips the k-means peer, default 10)
#include <omp.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench/fma_peak.h"
#include "engine/allocator.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/cluster/assign.h"
#include "moce/cluster/centroids.h"
#include "moce/cluster/kmeans.h"
#include "moce/cluster/stats.h"

using namespace moce::cluster;
using eng::Tensor;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Row i: centre (i * 2654435761 mod 256) plus uniform noise of standard deviation sigma per coordinate, normalised,
// stored as bf16. Four noise values per Philox block, rows in parallel: a few seconds for 1.28M rows.
Tensor synthetic_bank(int64_t n, int64_t d, int64_t centres, double sigma, std::vector<int64_t>& labels) {
  eng::Generator gen(2023, 1);
  std::vector<float> c = eng::l2_normalize(gen.normal({centres, d}), 1).to_vector<float>();
  Tensor bank = Tensor::empty({n, d}, eng::DType::BF16);
  eng::bf16* out = bank.data<eng::bf16>();
  labels.assign(size_t(n), 0);
  const float half = float(sigma * 1.7320508075688772);  // uniform(-a, a) has std a / sqrt(3)
  parallel_for(0, n, 256, [&](int64_t i) {
    const int64_t g = int64_t((uint64_t(i) * 2654435761ull) % uint64_t(centres));
    labels[size_t(i)] = g;
    std::vector<float> row(static_cast<size_t>(d));
    double norm = 0;
    for (int64_t j = 0; j < d; j += 4) {
      eng::Philox4x32 r = eng::philox_block(7, 3, uint64_t(i) * uint64_t(d / 4 + 1) + uint64_t(j / 4));
      for (int64_t t = 0; t < 4 && j + t < d; t++) {
        const float u = eng::philox_u24(r.v[t]) * 2.0f - 1.0f;
        row[size_t(j + t)] = c[size_t(g * d + j + t)] + half * u;
        norm += double(row[size_t(j + t)]) * row[size_t(j + t)];
      }
    }
    const float inv = float(1.0 / std::sqrt(norm));
    for (int64_t j = 0; j < d; j++) out[i * d + j] = eng::bf16(row[size_t(j)] * inv);
  });
  return bank;
}

// CPU time of the whole process (all threads), seconds: against the wall clock it says how many cores the run got.
double cpu_s() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// "model name (family F model M)" of the first CPU in /proc/cpuinfo: the peak depends on it (Zen 4 executes a zmm
// FMA in two halves, Zen 5 in one), and a shared machine may move to another host between runs.
std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, name = "unknown CPU", family = "?", model = "?";
  auto value = [](const std::string& l) { return l.substr(l.find(':') + 2); };
  while (std::getline(f, line) && !line.empty()) {
    if (line.rfind("model name", 0) == 0) name = value(line);
    else if (line.rfind("cpu family", 0) == 0) family = value(line);
    else if (line.rfind("model\t", 0) == 0) model = value(line);
  }
  return name + " (family " + family + " model " + model + ")";
}

// The engine's matmul on [rows, k] x [k, m] (NT, the scores' GEMM), GFLOP/s: 5 samples, each as many back-to-back
// matmuls as fill 0.25 s, after a warm-up. One matmul of this shape is only about 5 ms, which a best-of-few single
// timing on a shared machine reads with a large spread; long samples and their median say what the GEMM sustains.
struct GemmPeak {
  double median = 0, best = 0, cores = 0;  // GFLOP/s; cores = CPU time / wall over the samples
};
GemmPeak gemm_peak_gflops(int64_t rows, int64_t k, int64_t m) {
  eng::NoGradGuard ng;
  eng::Generator gen(5);
  Tensor a = gen.uniform({rows, k}), b = gen.uniform({m, k});
  const double flop = 2.0 * double(rows) * double(k) * double(m);
  double sink = 0;
  for (int w = 0; w < 3; w++) sink += eng::matmul(a, b.t()).data<float>()[0];  // packing buffers, pool threads
  std::vector<double> rate;
  double wall = 0, cpu = 0;
  for (int sample = 0; sample < 5; sample++) {
    const double t0 = now(), c0 = cpu_s();
    int64_t reps = 0;
    do {
      sink += eng::matmul(a, b.t()).data<float>()[0];  // read back: the result is used
      reps++;
    } while (now() - t0 < 0.25);
    const double t = now() - t0;
    wall += t;
    cpu += cpu_s() - c0;
    rate.push_back(flop * double(reps) / t * 1e-9);
  }
  std::sort(rate.begin(), rate.end());
  GemmPeak p;
  p.median = rate[rate.size() / 2];
  p.best = rate.back();
  p.cores = sink != 0 ? cpu / wall : 0;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 1281167, epochs = 10, kmeans_iters = 10;
  const int64_t d = 768, M = 256;
  ClusterConfig cfg;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--quick")) n = 65536, epochs = 2;
    else if (!std::strcmp(argv[i], "--n") && i + 1 < argc) n = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--lr") && i + 1 < argc) cfg.lr = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--weight-decay") && i + 1 < argc) cfg.weight_decay = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--init") && i + 1 < argc) cfg.init = argv[++i];
    else if (!std::strcmp(argv[i], "--kmeans-iters") && i + 1 < argc) kmeans_iters = std::atoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_cluster [--quick] [--n N] [--epochs E] [--lr LR] [--weight-decay WD] "
                           "[--init random|kmeans++] [--kmeans-iters K]\n");
      return 2;
    }
  }
  std::printf("bank: %lld x %lld bf16 around %lld planted centres, M = %lld, %lld epochs\n", (long long)n, (long long)d,
              (long long)M, (long long)M, (long long)epochs);
  double t0 = now();
  std::vector<int64_t> labels;
  Tensor feats = synthetic_bank(n, d, M, 0.03, labels);
  FeatureBank bank = bank_from_tensor(feats);
  std::printf("synthetic bank made in %.1f s (%.2f GB)\n", now() - t0, double(feats.nbytes()) / 1e9);
  cfg.clusters = M;
  cfg.epochs = epochs;
  std::printf("SGD: lr %g, momentum %g, weight decay %g; init %s\n", cfg.lr, cfg.momentum, cfg.weight_decay,
              cfg.init.c_str());
  const int threads = omp_get_max_threads();
  const double core_peak = core_peak_gflops_cpu_time(), all_now = measure_peak_gflops(true);
  std::printf("CPU: %s, %d threads; fp32 FMA peak: %.1f GFLOP/s per core (its CPU time), so %.1f for %d cores; "
              "all threads at once by the wall clock now: %.1f (lower when others share the cores)\n",
              cpu_name().c_str(), threads, core_peak, core_peak * threads, threads, all_now);
  const GemmPeak gp = gemm_peak_gflops(cfg.batch, d, M);
  const double peak = gp.median;
  std::printf("GEMM peak (engine matmul, %lld x %lld x %lld, median of 5 samples of >= 0.25 s): %.1f GFLOP/s "
              "(best sample %.1f; %.0f%% of the %d-core FMA peak; %.2f cores busy, so %.1f per busy core)\n",
              (long long)cfg.batch, (long long)d, (long long)M, peak, gp.best, 100.0 * peak / (core_peak * threads),
              threads, gp.cores, gp.cores > 0 ? peak / gp.cores : 0.0);
  if (gp.best > 1.02 * core_peak * threads)
    std::printf("WARNING: the GEMM peak is above the FMA peak: a timing is wrong\n");
  eng::allocator_for(eng::Device::cpu()).reset_peak();
  double c0 = cpu_s();
  t0 = now();
  CentroidResult cr = train_centroids(bank, cfg, eng::Device::cpu(), [](const EpochStats& e) {
    std::printf("epoch %lld: loss %.4f, %.1f s\n", (long long)e.epoch, e.mean_loss, e.seconds);
    std::fflush(stdout);
  });
  const double train_s = now() - t0, train_cores = (cpu_s() - c0) / train_s;
  c0 = cpu_s();
  t0 = now();
  Assignment a = assign_balanced(bank, cr.centroids);
  const double assign_s = now() - t0, assign_cores = (cpu_s() - c0) / assign_s;
  const double train_gflop = 4.0 * double(n) * double(d) * double(M) * double(epochs) * 1e-9;  // scores + dC
  const double assign_gflop = 2.0 * double(n) * double(d) * double(M) * 1e-9;
  std::vector<int64_t> sizes = cluster_sizes(a.balanced, M);
  const auto [mn, mx] = std::minmax_element(sizes.begin(), sizes.end());
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("final assignment: %d scaling iterations (error %.2g), sizes %lld..%lld (n / M = %.0f)\n", a.iterations,
              a.marginal_error, (long long)*mn, (long long)*mx, double(n) / double(M));
  std::printf("NMI against the planted groups: balanced %.4f, plain argmax %.4f\n", nmi(a.balanced, labels),
              nmi(a.plain, labels));
  std::printf("peak memory: %.0f MiB RSS (engine allocator peak during clustering %.0f MiB)\n",
              double(ru.ru_maxrss) / 1024.0,
              double(eng::allocator_for(eng::Device::cpu()).stats().peak_bytes) / (1 << 20));
  std::printf("cluster_train (%lld epochs): %.1f s, %.1f GFLOP/s (%.0f%% of the GEMM peak %.1f GFLOP/s), %.2f cores busy\n",
              (long long)epochs, train_s, train_gflop / train_s, 100.0 * train_gflop / train_s / peak, peak, train_cores);
  std::printf("cluster_assign: %.1f s, %.1f GFLOP/s, %.2f cores busy\n", assign_s, assign_gflop / assign_s, assign_cores);
  std::printf("cluster_total: %.1f s (goal: 120 s for 1,281,167 x 768, M = 256, 10 epochs)\n", train_s + assign_s);
  if (kmeans_iters > 0) {
    KmeansOptions ko;
    ko.clusters = M;
    ko.max_iterations = int(kmeans_iters);
    ko.init = "kmeans++";
    c0 = cpu_s();
    t0 = now();
    KmeansResult km = kmeans_lloyd(bank, ko);
    const double km_s = now() - t0, km_cores = (cpu_s() - c0) / km_s;
    const double km_gflop = 2.0 * double(n) * double(d) * double(M) * double(km.iterations.size()) * 1e-9;
    const std::vector<int64_t> ks = cluster_sizes(km.assign, M);
    const auto [kmn, kmx] = std::minmax_element(ks.begin(), ks.end());
    std::printf("kmeans_peer (Lloyd, k-means++ seeds, %zu iterations%s, %lld re-seeded): %.1f s, %.1f GFLOP/s "
                "(%.0f%% of the GEMM peak), %.2f cores busy; sizes %lld..%lld, NMI %.4f, last inertia %.1f\n",
                km.iterations.size(), km.converged ? ", converged" : "", (long long)km.reseeded_total, km_s,
                km_gflop / km_s, 100.0 * km_gflop / km_s / peak, km_cores, (long long)*kmn, (long long)*kmx,
                nmi(km.assign, labels), km.iterations.back().inertia);
  }
  return 0;
}
