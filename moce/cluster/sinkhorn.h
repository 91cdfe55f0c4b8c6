// moce/cluster/sinkhorn.h: balanced Sinkhorn-Knopp for MoCE's data clustering, in SwAV's batch form (engine ops, so it
// runs on any backend) and in SeLa's whole-bank form (f64 scaling vectors streamed over the bank, see assign.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace moce::cluster {

// log(sum(exp(x))) along `dim` (kept), with the maximum taken out first so that nothing overflows.
eng::Tensor logsumexp_keepdim(const eng::Tensor& x, int64_t dim);

// SwAV's distributed_sinkhorn on one batch (facebookresearch/swav main_swav.py), for scores [B, M] (B images, M
// clusters): Q = exp(scores / eps) normalised to total 1; each iteration divides every cluster's column by its sum and
// by M, then every image's row by its sum and by B; at the end Q *= B, so each image's row sums to one and each
// cluster receives about B / M. The same arithmetic in the log domain (each division a subtraction of a log-sum-exp),
// so no exp overflows for any eps and the result is finite even where SwAV's gives NaN (swav#67). No gradient flows
// through it (SwAV runs it under no_grad). Deterministic: engine reductions have a fixed order.
eng::Tensor sinkhorn_batch(const eng::Tensor& scores, double eps = 0.05, int iterations = 3);

}  // namespace moce::cluster
