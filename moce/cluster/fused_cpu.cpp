// fused_cpu.cpp: the CPU fast path of one training step (Sinkhorn in scaling form, the loss gradient by hand).
#include "moce/cluster/fused_cpu.h"

namespace moce::cluster {

bool sinkhorn_batch_cpu(const float* s, int64_t B, int64_t M, double eps, int iterations, float* q) {
  std::vector<float> k(size_t(B) * size_t(M));
  std::vector<double> a(static_cast<size_t>(B)), b(static_cast<size_t>(M), 1.0), rowmax(static_cast<size_t>(B));
  std::vector<double> rowk(static_cast<size_t>(B));
  const float inv_eps = float(1.0 / eps);
  parallel_for(0, B, 64, [&](int64_t i) {
    const float* si = s + i * M;
    float mx = si[0];
    for (int64_t j = 1; j < M; j++) mx = std::max(mx, si[j]);
    float* ki = k.data() + i * M;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < M; j++) {
      ki[j] = exp_nonpositive_f32((si[j] - mx) * inv_eps);
      sum += ki[j];
    }
    rowmax[size_t(i)] = double(mx) / eps;
    rowk[size_t(i)] = sum;
  });
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
    parallel_for(0, chunks, 1, [&](int64_t ch) {
      double* pc = part.data() + ch * M;
      std::fill(pc, pc + M, 0.0);
      for (int64_t i = ch * kSinkhornChunk; i < std::min(B, (ch + 1) * kSinkhornChunk); i++) {
        const float* ki = k.data() + i * M;
        const double ai = a[size_t(i)];
        for (int64_t j = 0; j < M; j++) pc[j] += double(ki[j]) * ai;
      }
    });
    if (!column_step()) return false;
  }
  for (int it = 0; it < std::max(iterations, 1); it++) {
    const bool last = it + 1 >= iterations;
    parallel_for(0, chunks, 1, [&](int64_t ch) {
      double* pc = part.data() + ch * M;
      if (!last) std::fill(pc, pc + M, 0.0);
      for (int64_t i = ch * kSinkhornChunk; i < std::min(B, (ch + 1) * kSinkhornChunk); i++) {
        const float* ki = k.data() + i * M;
        if (iterations > 0) {
          double sum = 0;
#pragma omp simd reduction(+ : sum)
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
    });
    if (!last && !column_step()) return false;
  }
  return true;
}

double centroid_loss_grad_cpu(const float* s, const float* q, int64_t B, int64_t M, double tau, float* grad) {
  std::vector<double> row_loss(static_cast<size_t>(B));
  const float inv_tau = float(1.0 / tau);
  const float scale = float(1.0 / (tau * double(B)));
  parallel_for(0, B, 64, [&](int64_t i) {
    const float* si = s + i * M;
    const float* qi = q + i * M;
    float* gi = grad + i * M;
    float mx = si[0];
    for (int64_t j = 1; j < M; j++) mx = std::max(mx, si[j]);
    float sum = 0, qdot = 0, qsum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < M; j++) {
      gi[j] = exp_nonpositive_f32((si[j] - mx) * inv_tau);
      sum += gi[j];
    }
    const float inv_sum = 1.0f / sum;
    // loss_i = -sum_j q_ij ((s_ij - mx) / tau - log sum) = log(sum) sum_j q_ij - sum_j q_ij (s_ij - mx) / tau
#pragma omp simd reduction(+ : qdot, qsum)
    for (int64_t j = 0; j < M; j++) {
      qdot += qi[j] * ((si[j] - mx) * inv_tau);
      qsum += qi[j];
      gi[j] = (gi[j] * inv_sum - qi[j]) * scale;
    }
    row_loss[size_t(i)] = std::log(double(sum)) * double(qsum) - double(qdot);
  });
  double total = 0;
  for (double v : row_loss) total += v;
  return total / double(B);
}

}  // namespace moce::cluster
