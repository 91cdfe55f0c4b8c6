// bench_cluster.cpp: stage one of MoCE at ImageNet scale on the CPU: a synthetic bf16 bank of 1,281,167 x 768 unit
// vectors drawn around 256 planted centres, M = 256, 10 epochs of the alternating optimisation (moce/cluster), then
// the balanced assignment of the whole bank. Prints the seconds, the GEMM work's GFLOP/s against a GEMM peak measured
// in the same run (the engine's matmul on the step's own shape), the peak memory, and the recovery of the planted
// groups (NMI) as a sanity check.
// Usage: bench_cluster [--quick] [--n N] [--epochs E] [--lr LR] [--weight-decay WD] [--init random|kmeans++]
//   (--quick: n = 65536, 2 epochs, for make bench; the SGD values default to ClusterConfig's, the paper's)
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/cluster/assign.h"
#include "moce/cluster/centroids.h"
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

// The best GFLOP/s of the engine's matmul on [rows, k] x [k, m] (NT, the scores' GEMM) over a few runs.
double gemm_peak_gflops(int64_t rows, int64_t k, int64_t m) {
  eng::NoGradGuard ng;
  eng::Generator gen(5);
  Tensor a = gen.uniform({rows, k}), b = gen.uniform({m, k});
  double best = 0;
  for (int rep = 0; rep < 8; rep++) {
    const double t0 = now();
    Tensor c = eng::matmul(a, b.t());
    const double t = now() - t0;
    if (rep > 0) best = std::max(best, 2.0 * double(rows) * double(k) * double(m) / t * 1e-9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 1281167, epochs = 10;
  const int64_t d = 768, M = 256;
  ClusterConfig cfg;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--quick")) n = 65536, epochs = 2;
    else if (!std::strcmp(argv[i], "--n") && i + 1 < argc) n = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--lr") && i + 1 < argc) cfg.lr = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--weight-decay") && i + 1 < argc) cfg.weight_decay = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--init") && i + 1 < argc) cfg.init = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_cluster [--quick] [--n N] [--epochs E] [--lr LR] [--weight-decay WD] [--init random|kmeans++]\n");
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
  const double peak = gemm_peak_gflops(cfg.batch, d, M);
  std::printf("GEMM peak (engine matmul, %lld x %lld x %lld, best of 7): %.1f GFLOP/s\n", (long long)cfg.batch,
              (long long)d, (long long)M, peak);
  eng::allocator_for(eng::Device::cpu()).reset_peak();
  t0 = now();
  CentroidResult cr = train_centroids(bank, cfg, eng::Device::cpu(), [](const EpochStats& e) {
    std::printf("epoch %lld: loss %.4f, %.1f s\n", (long long)e.epoch, e.mean_loss, e.seconds);
    std::fflush(stdout);
  });
  const double train_s = now() - t0;
  t0 = now();
  Assignment a = assign_balanced(bank, cr.centroids);
  const double assign_s = now() - t0;
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
  std::printf("cluster_train (%lld epochs): %.1f s, %.1f GFLOP/s (%.0f%% of the GEMM peak %.1f GFLOP/s)\n",
              (long long)epochs, train_s, train_gflop / train_s, 100.0 * train_gflop / train_s / peak, peak);
  std::printf("cluster_assign: %.1f s, %.1f GFLOP/s\n", assign_s, assign_gflop / assign_s);
  std::printf("cluster_total: %.1f s (goal: 120 s for 1,281,167 x 768, M = 256, 10 epochs)\n", train_s + assign_s);
  return 0;
}
