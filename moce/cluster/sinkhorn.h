// moce/cluster/sinkhorn.h: balanced Sinkhorn-Knopp for MoCE's data clustering, in SwAV's batch form (engine ops, so it
// runs on any backend) and in SeLa's whole-bank form (f64 scaling vectors streamed over the bank, see assign.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace moce::cluster {

// log(sum(exp(x))) along `dim` (kept), with the maximum taken out first so that nothing overflows.
inline eng::Tensor logsumexp_keepdim(const eng::Tensor& x, int64_t dim) {
  eng::Tensor m = eng::amax(x, {dim}, /*keepdim=*/true);
  return m + eng::log(eng::sum(eng::exp(x - m), {dim}, /*keepdim=*/true));
}

// SwAV's distributed_sinkhorn on one batch (facebookresearch/swav main_swav.py), for scores [B, M] (B images, M
// clusters): Q = exp(scores / eps) normalised to total 1; each iteration divides every cluster's column by its sum and
// by M, then every image's row by its sum and by B; at the end Q *= B, so each image's row sums to one and each
// cluster receives about B / M. The same arithmetic in the log domain (each division a subtraction of a log-sum-exp),
// so no exp overflows for any eps and the result is finite even where SwAV's gives NaN (swav#67). No gradient flows
// through it (SwAV runs it under no_grad). Deterministic: engine reductions have a fixed order.
inline eng::Tensor sinkhorn_batch(const eng::Tensor& scores, double eps = 0.05, int iterations = 3) {
  ENG_CHECK(scores.dim() == 2, "sinkhorn: scores must be [images, clusters], got {}", eng::shape_str(scores.shape()));
  ENG_CHECK(eps > 0, "sinkhorn: eps must be positive, got {}", eps);
  ENG_CHECK(iterations >= 0, "sinkhorn: iterations must be >= 0, got {}", iterations);
  eng::NoGradGuard no_grad;
  const int64_t B = scores.size(0), M = scores.size(1);
  ENG_CHECK(B > 0 && M > 0, "sinkhorn: empty scores {}", eng::shape_str(scores.shape()));
  const double log_b = std::log(double(B)), log_m = std::log(double(M));
  eng::Tensor logq = scores.detach() * (1.0 / eps);
  eng::Tensor total_max = eng::amax(logq);  // the whole-matrix normalisation, as SwAV's Q /= sum(Q)
  logq = logq - (total_max + eng::log(eng::sum(eng::exp(logq - total_max))));
  for (int it = 0; it < iterations; it++) {
    logq = logq - logsumexp_keepdim(logq, 0) - log_m;  // clusters: each column sums to 1 / M
    logq = logq - logsumexp_keepdim(logq, 1) - log_b;  // images: each row sums to 1 / B
  }
  return eng::exp(logq + log_b);
}

}  // namespace moce::cluster
