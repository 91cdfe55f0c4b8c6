// moce/cluster/kmeans.h: plain Euclidean k-means (Lloyd's algorithm) on the feature bank, the peer of the paper's
// Sinkhorn clustering on the same bank and the same M: what the balanced, learned centroids are compared against.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "moce/cluster/bank.h"

namespace moce::cluster {

constexpr uint64_t kStreamLloydInit = 0x636c7573 + 3;  // a Philox stream of its own (centroids.h has the first three)

struct KmeansOptions {
  int64_t clusters = 256;          // M
  int max_iterations = 50;         // --kmeans-iters
  std::string init = "kmeans++";   // "kmeans++" (init_kmeanspp on a sample) or "random" (M distinct bank rows)
  int64_t kmeanspp_sample = 16384;
  uint64_t seed = 0;
  int64_t block = 16384;           // bank rows per GEMM block of the assignment step
};

// What one Lloyd iteration did (one progress line, one entry of clusters.json).
struct KmeansIteration {
  int iteration = 0;
  int64_t changed = 0;   // rows whose cluster differs from the previous iteration's (all n in the first)
  double inertia = 0;    // sum of ||f - c||^2 over the rows, to the centroid each row was assigned to
  int64_t reseeded = 0;  // clusters that came out empty and were given a row
  double seconds = 0;
};

struct KmeansResult {
  eng::Tensor centroids;          // f32 [M, d]: the means of the last assignment (not normalised)
  std::vector<int32_t> assign;    // per bank row, the last assignment step's cluster
  std::vector<KmeansIteration> iterations;
  int64_t reseeded_total = 0;
  bool converged = false;         // an assignment step changed no row
};

using KmeansCallback = std::function<void(const KmeansIteration&)>;

// Lloyd on the bank rows: per iteration one streamed pass over the bank in blocks of opt.block rows, where
// A = F C^T is one GEMM per block and each row goes to argmax_j (A_ij - ||c_j||^2 / 2) = argmin_j ||f_i - c_j||^2
// (first maximum on ties), and in the same pass every row is added in f64 to its cluster's sum (each cluster's
// members in row order, clusters in parallel: the same sums for any thread count). Then c_j = sum_j / count_j; a
// cluster left empty gets the row farthest from its centroid (largest distance, lowest row on ties, taken from a
// cluster of at least two rows, which loses it). Stops after opt.max_iterations or when no row changed cluster.
KmeansResult kmeans_lloyd(const FeatureBank& bank, const KmeansOptions& opt, const KmeansCallback& on_iteration = {});

}  // namespace moce::cluster
