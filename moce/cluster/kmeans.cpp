// kmeans.cpp: Lloyd's algorithm on the feature bank (streamed GEMM assignment, f64 sums, deterministic re-seeding).
#include "moce/cluster/kmeans.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/cluster/centroids.h"

namespace moce::cluster {

namespace {

// The starting centroids, f32 [M, d]: k-means++ seeding (shared with the Sinkhorn path) or M distinct random rows.
std::vector<float> initial_centroids(const FeatureBank& bank, const KmeansOptions& opt) {
  if (opt.init == "kmeans++")
    return init_kmeanspp(bank, opt.clusters, opt.seed, opt.kmeanspp_sample).contiguous().to_vector<float>();
  ENG_CHECK(opt.init == "random", "--init must be random or kmeans++, got '{}'", opt.init);
  eng::Generator gen(opt.seed, kStreamLloydInit);
  std::vector<int64_t> perm = gen.permutation(bank.n).to_vector<int64_t>();
  return bank.rows_f32(perm.data(), opt.clusters).to_vector<float>();
}

}  // namespace

KmeansResult kmeans_lloyd(const FeatureBank& bank, const KmeansOptions& opt, const KmeansCallback& on_iteration) {
  check_bank_for_clusters(bank, opt.clusters);
  ENG_CHECK(opt.max_iterations >= 1, "--kmeans-iters must be at least 1, got {}", opt.max_iterations);
  ENG_CHECK(opt.block >= 1, "k-means: the block must be at least 1 row, got {}", opt.block);
  eng::NoGradGuard ng;
  const int64_t n = bank.n, d = bank.d, M = opt.clusters;
  std::vector<float> c = initial_centroids(bank, opt);
  std::vector<int32_t> assign(static_cast<size_t>(n), -1), next(static_cast<size_t>(n));
  std::vector<double> dist(static_cast<size_t>(n)), sum(static_cast<size_t>(M * d));
  std::vector<int64_t> count(static_cast<size_t>(M)), offset(static_cast<size_t>(M + 1)), order;
  std::vector<float> half_norm(static_cast<size_t>(M));
  KmeansResult res;
  for (int it = 1; it <= opt.max_iterations; it++) {
    const auto t0 = std::chrono::steady_clock::now();
    eng::Tensor ct = eng::Tensor::from_vector(c, {M, d}).t().contiguous();  // [d, M]
    for (int64_t j = 0; j < M; j++) {
      double s = 0;
      for (int64_t k = 0; k < d; k++) s += double(c[size_t(j * d + k)]) * double(c[size_t(j * d + k)]);
      half_norm[size_t(j)] = float(s / 2);
    }
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (int64_t start = 0; start < n; start += opt.block) {
      const int64_t rows = std::min(opt.block, n - start);
      eng::Tensor f = bank.block_f32(start, rows);
      eng::Tensor a = eng::matmul(f, ct);
      const float* fp = f.data<float>();
      const float* ap = a.data<float>();
      parallel_for(0, rows, 64, [&](int64_t i) {
        const float* row = ap + i * M;
        int64_t best = 0;
        float best_v = row[0] - half_norm[0];
        for (int64_t j = 1; j < M; j++) {
          const float v = row[j] - half_norm[size_t(j)];
          if (v > best_v) { best_v = v; best = j; }
        }
        double ff = 0;
        for (int64_t k = 0; k < d; k++) ff += double(fp[i * d + k]) * double(fp[i * d + k]);
        next[size_t(start + i)] = int32_t(best);
        dist[size_t(start + i)] = std::max(0.0, ff - 2.0 * double(best_v));  // ||f||^2 - 2 f.c + ||c||^2
      });
      // The block's rows grouped by cluster, in row order (a stable counting sort), then each cluster's sum in
      // parallel over clusters: every cluster adds its members in bank order whatever the thread count.
      std::fill(offset.begin(), offset.end(), 0);
      for (int64_t i = 0; i < rows; i++) offset[size_t(next[size_t(start + i)] + 1)]++;
      for (int64_t j = 0; j < M; j++) offset[size_t(j + 1)] += offset[size_t(j)];
      order.resize(size_t(rows));
      {
        std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
        for (int64_t i = 0; i < rows; i++) order[size_t(fill[size_t(next[size_t(start + i)])]++)] = i;
      }
      parallel_for(0, M, 1, [&](int64_t j) {
        double* s = sum.data() + j * d;
        for (int64_t p = offset[size_t(j)]; p < offset[size_t(j + 1)]; p++) {
          const float* x = fp + order[size_t(p)] * d;
          for (int64_t k = 0; k < d; k++) s[k] += double(x[k]);
        }
        count[size_t(j)] += offset[size_t(j + 1)] - offset[size_t(j)];
      });
    }
    KmeansIteration st;
    st.iteration = it;
    for (int64_t i = 0; i < n; i++) {
      st.changed += next[size_t(i)] != assign[size_t(i)];
      st.inertia += dist[size_t(i)];
    }
    assign.swap(next);

    // Empty clusters: each takes the farthest remaining row of a cluster that keeps at least one (n >= M, so one
    // exists), in cluster order; the row leaves its old cluster's sum.
    std::vector<int64_t> empty;
    for (int64_t j = 0; j < M; j++)
      if (count[size_t(j)] == 0) empty.push_back(j);
    if (!empty.empty()) {
      std::vector<int64_t> far(static_cast<size_t>(n));
      std::iota(far.begin(), far.end(), int64_t(0));
      std::sort(far.begin(), far.end(), [&](int64_t x, int64_t y) {
        return dist[size_t(x)] != dist[size_t(y)] ? dist[size_t(x)] > dist[size_t(y)] : x < y;
      });
      size_t p = 0;
      for (int64_t j : empty) {
        while (p < far.size() && count[size_t(assign[size_t(far[p])])] <= 1) p++;
        ENG_CHECK(p < far.size(), "k-means: no row left to re-seed empty cluster {}", j);
        const int64_t r = far[p++];
        const int64_t old = assign[size_t(r)];
        for (int64_t k = 0; k < d; k++) {
          const double v = double(bank.value(r, k));
          sum[size_t(old * d + k)] -= v;
          sum[size_t(j * d + k)] = v;
        }
        count[size_t(old)]--;
        count[size_t(j)] = 1;
        assign[size_t(r)] = int32_t(j);
      }
      st.reseeded = int64_t(empty.size());
      res.reseeded_total += st.reseeded;
    }
    for (int64_t j = 0; j < M; j++)
      for (int64_t k = 0; k < d; k++)
        c[size_t(j * d + k)] = float(sum[size_t(j * d + k)] / double(count[size_t(j)]));
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res.iterations.push_back(st);
    if (on_iteration) on_iteration(st);
    if (st.changed == 0) {
      res.converged = true;
      break;
    }
  }
  res.centroids = eng::Tensor::from_vector(c, {M, d});
  res.assign = std::move(assign);
  return res;
}

}  // namespace moce::cluster
