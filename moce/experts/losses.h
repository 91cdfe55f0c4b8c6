// losses.h: the auxiliary losses of the expert layers (V-MoE's importance and load, MoCE's imbalance, distillation).
//
// Each is a differentiable composition of engine ops, so it runs on any backend and its backward is autograd's.
// "cv²" below is the squared coefficient of variation (std / mean)², std the population std (V-MoE's jnp.std).
#pragma once
#include "engine/ops.h"

namespace moce::experts {

using eng::Tensor;

// Φ(x) = ½ (1 + erf(x / √2)), the standard normal CDF, from the engine's erf (its backward is erf's).
Tensor normal_cdf(const Tensor& x);

// (std(v) / mean(v))² of a 1-D tensor, population std (V-MoE's _cv_squared, without its epsilon).
Tensor cv_squared(const Tensor& v);

// Importance loss (V-MoE): importance_e = Σ_u softmax(clean_logits)_{u,e}, L_imp = cv²(importance).
// clean_logits [U, N]: U = tokens for TokenMoE, images for MoCE.
Tensor importance_loss(const Tensor& clean_logits);

// Load loss (V-MoE): p_{u,e} = 1 − Φ((η_u − clean_{u,e}) / σ), η_u the k-th largest entry of noisy_logits row u
// (the threshold a fresh noise draw must beat for e to be among the top k; differentiable through both logits),
// p̄_e = mean_u p_{u,e}, L_load = cv²(p̄). clean and noisy logits [U, N]; sigma > 0 the noise std.
Tensor load_loss(const Tensor& clean_logits, const Tensor& noisy_logits, int64_t k, double sigma);

// Imbalance loss of MoCE (the paper's Eqn. 5), on the gate vectors G [B, N] before top-K (softmax of noisy logits).
// Two readings of "std(G(x)) / mean(G(x))":
//   PerImage (ours, default): L_imb = − Σ_i (std_e G_{i,e} / mean_e G_{i,e})², over the N entries of image i's gate,
//     summed over the B images. Minimising it makes each image's gate sharper ("it makes G(x) sharper").
//   PerExpert (the ablation's): L_imb = − Σ_e (std_i G_{i,e} / mean_i G_{i,e})², each expert's gate over the batch.
// Population std in both.
enum class ImbalanceReading { PerImage, PerExpert };
Tensor imbalance_loss(const Tensor& gates, ImbalanceReading reading = ImbalanceReading::PerImage);

// Distillation (our reading of the paper's one sentence): the mean over all elements of (student − teacher)², on the
// same visible tokens; the teacher's tokens (a frozen dense MAE, run by the caller) get no gradient.
Tensor distillation_loss(const Tensor& teacher_tokens, const Tensor& student_tokens);

}  // namespace moce::experts
