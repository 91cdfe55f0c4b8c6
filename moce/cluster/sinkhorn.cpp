// sinkhorn.cpp: SwAV's batch Sinkhorn in the log domain on engine ops.
#include "moce/cluster/sinkhorn.h"

namespace moce::cluster {

eng::Tensor logsumexp_keepdim(const eng::Tensor& x, int64_t dim) {
  eng::Tensor m = eng::amax(x, {dim}, /*keepdim=*/true);
  return m + eng::log(eng::sum(eng::exp(x - m), {dim}, /*keepdim=*/true));
}

eng::Tensor sinkhorn_batch(const eng::Tensor& scores, double eps, int iterations) {
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
