// moce/cluster/fused_cpu.h: the CPU fast path of one clustering step: SwAV's Sinkhorn in scaling form and the
// centroid loss's gradient with respect to the scores, each a few fused passes over the [B, M] scores instead of a
// chain of engine ops (what makes 10 epochs over 1.28M images fit the two-core budget). Checked against the engine-op
// path (sinkhorn.h, centroids.h) in tests/test_cluster.cpp; the engine-op path is what runs on CUDA.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/fast_math_f32.h"

namespace moce::cluster {

constexpr int64_t kSinkhornChunk = 256;  // rows per partial column sum

// Q [B, M] = SwAV's distributed_sinkhorn of scores S [B, M] (both row-major f32), as Q_ij = B K_ij a_i b_j with
// K_ij = exp((S_ij - max_j S_ij) / eps) in (0, 1] (so no exp overflows) and f64 scaling vectors: a from the total
// normalisation, then per iteration b_j = 1 / (M sum_i K_ij a_i) (columns) and a_i = 1 / (B sum_j K_ij b_j) (rows).
// Column sums are taken by one thread per column block in row order, so the result is the same for any thread count.
// Returns false when a column's mass underflows to zero (eps far below the score range): the caller then uses the
// log-domain sinkhorn_batch, which has no such limit.
inline bool sinkhorn_batch_cpu(const float* s, int64_t B, int64_t M, double eps, int iterations, float* q) {
  std::vector<float> k(size_t(B) * size_t(M));
  std::vector<double> a(static_cast<size_t>(B)), b(static_cast<size_t>(M), 1.0), rowmax(static_cast<size_t>(B));
  std::vector<double> rowk(static_cast<size_t>(B));
  const float inv_eps = float(1.0 / eps);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B; i++) {
    const float* si = s + i * M;
    float mx = si[0];
    for (int64_t j = 1; j < M; j++) mx = std::max(mx, si[j]);
    float* ki = k.data() + i * M;
    double sum = 0;
#pragma omp simd
    for (int64_t j = 0; j < M; j++) ki[j] = eng::exp_f32((si[j] - mx) * inv_eps);
    for (int64_t j = 0; j < M; j++) sum += ki[j];
    rowmax[size_t(i)] = double(mx) / eps;
    rowk[size_t(i)] = sum;
  }
  // Total normalisation: a_i = exp(rowmax_i - g) / sum_i' exp(rowmax_i' - g) rowk_i', g the largest rowmax.
  const double g = *std::max_element(rowmax.begin(), rowmax.end());
  double total = 0;
  for (int64_t i = 0; i < B; i++) total += std::exp(rowmax[size_t(i)] - g) * rowk[size_t(i)];
  for (int64_t i = 0; i < B; i++) a[size_t(i)] = std::exp(rowmax[size_t(i)] - g) / total;
  // Passes over K, rows in fixed chunks whose partial column sums are added in chunk order (any thread count gives
  // the same bits): one for the first column step, then per iteration one that does the row step and, in the same
  // pass, the next column step (or, after the last iteration, writes Q).
  const int64_t chunks = (B + kSinkhornChunk - 1) / kSinkhornChunk;
  std::vector<double> part(size_t(chunks) * size_t(M));
  auto column_step = [&]() {
    for (int64_t j = 0; j < M; j++) {
      double sum = 0;
      for (int64_t ch = 0; ch < chunks; ch++) sum += part[size_t(ch) * size_t(M) + size_t(j)];
      b[size_t(j)] = 1.0 / (double(M) * sum);
      if (!(sum > 0) || !std::isfinite(b[size_t(j)])) return false;
    }
    return true;
  };
  if (iterations > 0) {
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < chunks; ch++) {
      double* pc = part.data() + ch * M;
      std::fill(pc, pc + M, 0.0);
      for (int64_t i = ch * kSinkhornChunk; i < std::min(B, (ch + 1) * kSinkhornChunk); i++) {
        const float* ki = k.data() + i * M;
        const double ai = a[size_t(i)];
        for (int64_t j = 0; j < M; j++) pc[j] += double(ki[j]) * ai;
      }
    }
    if (!column_step()) return false;
  }
  for (int it = 0; it < std::max(iterations, 1); it++) {
    const bool last = it + 1 >= iterations;
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < chunks; ch++) {
      double* pc = part.data() + ch * M;
      if (!last) std::fill(pc, pc + M, 0.0);
      for (int64_t i = ch * kSinkhornChunk; i < std::min(B, (ch + 1) * kSinkhornChunk); i++) {
        const float* ki = k.data() + i * M;
        if (iterations > 0) {
          double sum = 0;
          for (int64_t j = 0; j < M; j++) sum += double(ki[j]) * b[size_t(j)];
          a[size_t(i)] = 1.0 / (double(B) * sum);
        }
        const double ai = a[size_t(i)];
        if (!last) {
          for (int64_t j = 0; j < M; j++) pc[j] += double(ki[j]) * ai;
        } else {
          const double scale = ai * double(B);
          for (int64_t j = 0; j < M; j++) q[i * M + j] = float(double(ki[j]) * scale * b[size_t(j)]);
        }
      }
    }
    if (!last && !column_step()) return false;
  }
  return true;
}

// The centroid loss -sum_ij Q_ij log softmax_j(S_i / tau) / B and its gradient with respect to the scores,
// G = (softmax(S / tau) - Q) / (tau B), row-major f32 [B, M]; the gradient for C is then G^T F (one GEMM). Row
// losses are added in row order (the same for any thread count).
inline double centroid_loss_grad_cpu(const float* s, const float* q, int64_t B, int64_t M, double tau, float* grad) {
  std::vector<double> row_loss(static_cast<size_t>(B));
  const float inv_tau = float(1.0 / tau);
  const float scale = float(1.0 / (tau * double(B)));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B; i++) {
    const float* si = s + i * M;
    const float* qi = q + i * M;
    float* gi = grad + i * M;
    float mx = si[0];
    for (int64_t j = 1; j < M; j++) mx = std::max(mx, si[j]);
#pragma omp simd
    for (int64_t j = 0; j < M; j++) gi[j] = eng::exp_f32((si[j] - mx) * inv_tau);
    double sum = 0;
    for (int64_t j = 0; j < M; j++) sum += gi[j];
    const double lse = std::log(sum);
    const float inv_sum = float(1.0 / sum);
    double loss = 0;
    for (int64_t j = 0; j < M; j++) {
      const double logp = double((si[j] - mx) * inv_tau) - lse;
      loss -= double(qi[j]) * logp;
      gi[j] = (gi[j] * inv_sum - qi[j]) * scale;
    }
    row_loss[size_t(i)] = loss;
  }
  double total = 0;
  for (double v : row_loss) total += v;
  return total / double(B);
}

}  // namespace moce::cluster
