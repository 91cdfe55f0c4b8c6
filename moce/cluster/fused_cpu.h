// moce/cluster/fused_cpu.h: the CPU fast path of one clustering step: SwAV's Sinkhorn in scaling form and the
// centroid loss's gradient with respect to the scores, each a few fused passes over the [B, M] scores instead of a
// chain of engine ops (what makes 10 epochs over 1.28M images fit the two-core budget). Checked against the engine-op
// path (sinkhorn.h, centroids.h) in tests/test_cluster.cpp; the engine-op path is what runs on CUDA.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "moce/cluster/parallel.h"

namespace moce::cluster {

constexpr int64_t kSinkhornChunk = 256;  // rows per partial column sum

// exp(x) for x <= 0 in f32 with plain multiplies and adds (no fma, no libm call, so it vectorises on baseline x86-64,
// where eng::exp_f32's fmaf is a library call): x = n ln2 + r with n rounded by the 1.5 * 2^23 trick and ln2 split
// in two (Cody-Waite), exp(r) by its degree-7 Taylor polynomial on |r| <= ln2 / 2 (truncation below 1e-8 relative),
// times 2^n built from the exponent bits; 0 below -87 (the true value is under 1.7e-38). Inputs above 0 are not for it.
inline float exp_nonpositive_f32(float x_in) {
  const float x = std::max(x_in, -87.0f);
  const float t = x * 1.44269504f + 12582912.0f;
  const float n = t - 12582912.0f;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, 4);
  return x_in < -87.0f ? 0.0f : p * scale;
}

// Q [B, M] = SwAV's distributed_sinkhorn of scores S [B, M] (both row-major f32), as Q_ij = B K_ij a_i b_j with
// K_ij = exp((S_ij - max_j S_ij) / eps) in (0, 1] (so no exp overflows) and f64 scaling vectors: a from the total
// normalisation, then per iteration b_j = 1 / (M sum_i K_ij a_i) (columns) and a_i = 1 / (B sum_j K_ij b_j) (rows).
// Column sums are added per fixed chunk of rows, chunks in order, so the result is the same for any thread count.
// Returns false when a column's mass underflows to zero (eps far below the score range): the caller then uses the
// log-domain sinkhorn_batch, which has no such limit.
bool sinkhorn_batch_cpu(const float* s, int64_t B, int64_t M, double eps, int iterations, float* q);

// The centroid loss -sum_ij Q_ij log softmax_j(S_i / tau) / B and its gradient with respect to the scores,
// G = (softmax(S / tau) - Q) / (tau B), row-major f32 [B, M]; the gradient for C is then G^T F (one GEMM). Row
// losses are added in row order (the same for any thread count).
double centroid_loss_grad_cpu(const float* s, const float* q, int64_t B, int64_t M, double tau, float* grad);

}  // namespace moce::cluster
