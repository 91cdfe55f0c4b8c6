// losses.cpp: the auxiliary losses of the expert layers, as compositions of engine ops (see losses.h).
#include "moce/experts/losses.h"

#include <cmath>

#include "engine/error.h"

namespace moce::experts {

namespace {
void check_logits(const Tensor& t, const char* name) {
  ENG_CHECK(t.defined() && t.dim() == 2 && t.size(0) > 0 && t.size(1) > 0, "{}: expected [units, experts], got {}",
            name, t.defined() ? eng::shape_str(t.shape()) : std::string("an undefined tensor"));
}
// (std / mean)² along dim of a 2-D tensor, population std: one value per row (dim 1) or column (dim 0).
Tensor cv_squared_along(const Tensor& x, int64_t dim) {
  Tensor m = eng::mean(x, {dim});
  return eng::var(x, {dim}, /*unbiased=*/false) / eng::square(m);
}
}  // namespace

Tensor normal_cdf(const Tensor& x) { return (eng::erf(x * (1.0 / std::sqrt(2.0))) + 1.0) * 0.5; }

Tensor cv_squared(const Tensor& v) {
  ENG_CHECK(v.defined() && v.dim() == 1 && v.numel() > 0, "cv_squared: v must be a non-empty 1-D tensor");
  return cv_squared_along(v.unsqueeze(0), 1).squeeze(0);
}

Tensor importance_loss(const Tensor& clean_logits) {
  check_logits(clean_logits, "importance_loss: clean_logits");
  return cv_squared(eng::sum(eng::softmax(clean_logits, 1), {0}));
}

Tensor load_loss(const Tensor& clean_logits, const Tensor& noisy_logits, int64_t k, double sigma) {
  check_logits(clean_logits, "load_loss: clean_logits");
  ENG_CHECK(noisy_logits.defined() && noisy_logits.shape() == clean_logits.shape(),
            "load_loss: noisy_logits must have clean_logits' shape {}", eng::shape_str(clean_logits.shape()));
  ENG_CHECK(k >= 1 && k <= clean_logits.size(1), "load_loss: k = {} must be in [1, {}]", k, clean_logits.size(1));
  ENG_CHECK(sigma > 0 && std::isfinite(sigma), "load_loss: sigma = {} must be positive", sigma);
  Tensor threshold = eng::topk(noisy_logits, k, 1).values.slice(1, k - 1, k);  // [U, 1], the k-th largest
  // 1 − Φ(z) = Φ(−z): the same value without the cancellation near p = 0.
  Tensor p = normal_cdf((clean_logits - threshold) * (1.0 / sigma));
  return cv_squared(eng::mean(p, {0}));
}

Tensor imbalance_loss(const Tensor& gates, ImbalanceReading reading) {
  check_logits(gates, "imbalance_loss: gates");
  const int64_t dim = reading == ImbalanceReading::PerImage ? 1 : 0;
  return -eng::sum(cv_squared_along(gates, dim));
}

Tensor distillation_loss(const Tensor& teacher_tokens, const Tensor& student_tokens) {
  ENG_CHECK(teacher_tokens.defined() && student_tokens.defined() && teacher_tokens.shape() == student_tokens.shape(),
            "distillation_loss: teacher_tokens {} and student_tokens {} must have the same shape",
            teacher_tokens.defined() ? eng::shape_str(teacher_tokens.shape()) : "undefined",
            student_tokens.defined() ? eng::shape_str(student_tokens.shape()) : "undefined");
  return eng::mse_loss(student_tokens, teacher_tokens.detach());
}

}  // namespace moce::experts
