// moce/cluster/assign.h: the final balanced hard assignment of the whole bank (Sinkhorn on the full n x M problem by
// f64 scaling vectors, SeLa's form), the plain argmax of A = F C^T beside it, and the cluster of a new feature.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "moce/cluster/bank.h"

namespace moce::cluster {

struct AssignOptions {
  double eps = 0.05;         // the plan is diag(r) K diag(c) with K = exp(A / eps)
  double tolerance = 1e-3;   // stop when every cluster's soft mass is within this relative error of n / M
  int max_iterations = 1000;
  int64_t block = 16384;     // rows per GEMM block when the bank is scored
};

struct Assignment {
  std::vector<int32_t> balanced;     // the plan rounded under equal capacities (sizes floor(n/M) or that + 1), per row
  std::vector<int32_t> plan_argmax;  // argmax_j of the balanced plan, per bank row (balanced only in its soft mass)
  std::vector<int32_t> plain;        // argmax_j of A, per bank row
  std::vector<double> row_scale;     // r (the last one; with the per-row max taken out of K, see below)
  std::vector<double> col_scale;     // c
  std::vector<float> row_max;        // max_j A_ij / eps, taken out of row i of K
  int iterations = 0;
  double marginal_error = 0;         // max_j |M * (soft mass of j) - 1| at the last iteration
  bool converged = false;
};

// Rows of the partial column sums, fixed in size so that the sum order does not depend on the thread count.
constexpr int64_t kAssignChunk = 2048;

// Balanced assignment of every bank row to one of the M centroids (C: [M, d] f32 CPU). K_ij = exp(A_ij / eps - max_j
// A_ij / eps) is held once in f32 [n, M] (1.3 GB for 1.28M x 256; never n x M in f64); the scaling vectors r (n) and
// c (M) are f64. Each iteration is one pass over K: r_i = (1/n) / sum_j K_ij c_j, and in the same pass the column
// masses s_j = sum_i r_i K_ij (per chunk of kAssignChunk rows, chunks added in order); then the column error
// max_j |M c_j s_j - 1| (SeLa's |c / c_new - 1|) and c_j = (1/M) / s_j. The row max taken out of K only rescales r_i,
// so no exp overflows for any eps. Hard labels, two of them: plan_argmax = argmax_j K_ij c_j (first maximum on ties),
// whose sizes are far from equal on real features (the soft plan is balanced, its argmax need not be: Fashion-MNIST,
// M = 32, sizes 0 to 1590); and `balanced`, the plan rounded greedily under capacities: rows in decreasing order of
// their largest plan entry log(r_i K_ij c_j) (ties: lower row first), each takes the cluster of largest plan entry
// that still has room, every cluster holding floor(n / M) rows, then the n mod M rows left over take their best
// cluster among those not yet given an extra row. Sizes are then exactly floor(n / M) or floor(n / M) + 1.
// Sequential and O(n M), so the same for any thread count.
Assignment assign_balanced(const FeatureBank& bank, const eng::Tensor& centroids, const AssignOptions& opt = {});

// The cluster of each new feature (rows of feats [N, d], any scale): argmax_j f . c_j, the paper's A_task = F C^T.
std::vector<int32_t> clusters_of_features(const eng::Tensor& feats, const eng::Tensor& centroids);
int32_t cluster_of_feature(const std::vector<float>& feature, const eng::Tensor& centroids);

}  // namespace moce::cluster
