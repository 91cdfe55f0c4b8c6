// moce/cluster/centroids.h: learnable cluster centroids C [M, d] (unit rows), their seeded initialisation, the
// centroid loss, and the paper's alternating optimisation (Sinkhorn for Q given C, one SGD step on C given Q).
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/rng.h"
#include "moce/cluster/bank.h"
#include "moce/cluster/fused_cpu.h"
#include "moce/cluster/sinkhorn.h"

namespace moce::cluster {

// Every parameter of stage one; defaults are the paper's (appendix A.1) and SwAV's.
struct ClusterConfig {
  int64_t clusters = 256;      // M
  int64_t epochs = 10;
  int64_t batch = 4096;        // images per step (the paper does not give one)
  double eps = 0.05;           // Sinkhorn's entropic regularisation (SwAV)
  int sinkhorn_iterations = 3; // SwAV
  double tau = 0.1;            // softmax temperature of the centroid loss (SwAV)
  double lr = 0.1, momentum = 0.9, weight_decay = 0.9;  // the paper's SGD
  std::string init = "random"; // "random" (Philox unit vectors) or "kmeans++" (from the bank)
  int64_t kmeanspp_sample = 16384;  // k-means++ runs on a seeded sample of this many rows (all when smaller)
  uint64_t seed = 0;
  bool cpu_fast_path = true;   // on the CPU, the fused passes of fused_cpu.h instead of the engine-op chain (same math)
  // Final balanced assignment (assign.h).
  double assign_eps = 0.05;
  double assign_tolerance = 1e-3;  // largest relative error of a cluster's soft mass against n / M
  int assign_max_iterations = 1000;
};

nlohmann::json config_to_json(const ClusterConfig& c);

// Philox streams, one per use, so that changing one draw never moves another.
constexpr uint64_t kStreamInit = 0x636c7573;  // "clus"
constexpr uint64_t kStreamShuffle = kStreamInit + 1;
constexpr uint64_t kStreamKmeans = kStreamInit + 2;

// M unit vectors of dimension d from normal draws, f32 [M, d].
eng::Tensor init_random_unit(int64_t clusters, int64_t dim, uint64_t seed);

// Checks that the bank can be clustered into `clusters` clusters (one-line errors naming the argument).
void check_bank_for_clusters(const FeatureBank& bank, int64_t clusters);

// k-means++ (Arthur & Vassilvitskii 2007) seeding on a seeded sample of the bank, distances 2 - 2 f.c of unit rows:
// the first centre uniform, each next one drawn with probability proportional to the squared distance to the nearest
// centre so far. Prefix sums in f64 in row order, so the draw is the same for any thread count. f32 [M, d].
eng::Tensor init_kmeanspp(const FeatureBank& bank, int64_t clusters, uint64_t seed, int64_t sample_size);

// The centroid loss of one batch: the cross-entropy between the (fixed) soft assignments Q [B, M] and
// softmax(F C^T / tau), averaged over the batch, as SwAV's swapped-prediction term. Differentiable in C (and F);
// engine ops only, so it runs on any backend and in f64 for the gradient check.
eng::Tensor centroid_loss_from_scores(const eng::Tensor& scores, const eng::Tensor& q, double tau);
eng::Tensor centroid_loss(const eng::Tensor& feats, const eng::Tensor& centroids, const eng::Tensor& q, double tau);

// What one epoch did, for the progress line and clusters.json.
struct EpochStats {
  int64_t epoch = 0;
  double mean_loss = 0;
  double seconds = 0;
};

// The learned centroids and their history.
struct CentroidResult {
  eng::Tensor centroids;  // f32 [M, d], unit rows, on the CPU
  std::vector<EpochStats> epochs;
};

using EpochCallback = std::function<void(const EpochStats&)>;

// The paper's alternating optimisation: every epoch a seeded shuffle of the bank in batches of cfg.batch (the last
// one smaller); per batch, scores A = F C^T; Q = sinkhorn_batch(A) with C fixed; one SGD step on C for
// centroid_loss with Q fixed; rows of C renormalised. SGD is eng::SGD, torch.optim.SGD's semantics (L2 weight decay
// added to the gradient before momentum: g += wd * C; buf = 0.9 buf + g; C -= lr * buf). The bank is read on the
// CPU and each batch sent to `device`, where the GEMMs, the Sinkhorn and the step run; on the CPU (cpu_fast_path) the
// Sinkhorn and the loss gradient are the fused passes of fused_cpu.h and the gradient for C is one GEMM G^T F.
CentroidResult train_centroids(const FeatureBank& bank, const ClusterConfig& cfg,
                               eng::Device device = eng::Device::cpu(), const EpochCallback& on_epoch = {});

}  // namespace moce::cluster
