// assign.cpp: the final balanced assignment and the plain argmax.
#include "moce/cluster/assign.h"

namespace moce::cluster {

namespace {

// The greedy capacity rounding of assign_balanced (see the header): kmat [n, M] holds K, log_c the log column scales,
// row_top each row's largest log plan entry (the order in which rows choose). Within a row the order of log(K_ij c_j)
// is that of the plan (r_i is common to the row).
std::vector<int32_t> round_plan_with_capacity(const std::vector<float>& kmat, const std::vector<double>& log_c,
                                              const std::vector<double>& row_top, int64_t n, int64_t M) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) order[size_t(i)] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return row_top[size_t(a)] > row_top[size_t(b)]; });
  const int64_t base = n / M;
  std::vector<int64_t> room(static_cast<size_t>(M), base);
  std::vector<int32_t> label(static_cast<size_t>(n), -1);
  // The best cluster of row i among those with room (log(0) = -inf for entries that underflowed: still below any
  // finite one, and the first cluster with room is taken when every entry with room is -inf).
  auto best_with_room = [&](int64_t i) {
    const float* k = kmat.data() + size_t(i) * size_t(M);
    int64_t best = -1;
    double best_v = 0;
    for (int64_t j = 0; j < M; j++) {
      if (room[size_t(j)] == 0) continue;
      const double v = std::log(double(k[j])) + log_c[size_t(j)];
      if (best < 0 || v > best_v) { best = j; best_v = v; }
    }
    return best;
  };
  std::vector<int64_t> left_over;
  for (int64_t i : order) {
    const int64_t j = base > 0 ? best_with_room(i) : -1;
    if (j < 0) { left_over.push_back(i); continue; }
    label[size_t(i)] = int32_t(j);
    room[size_t(j)]--;
  }
  std::fill(room.begin(), room.end(), 1);  // n mod M rows are left, each to a different cluster
  for (int64_t i : left_over) {
    const int64_t j = best_with_room(i);
    label[size_t(i)] = int32_t(j);
    room[size_t(j)]--;
  }
  return label;
}

}  // namespace

Assignment assign_balanced(const FeatureBank& bank, const eng::Tensor& centroids, const AssignOptions& opt) {
  ENG_CHECK(bank.n > 0, "feature bank{}: is empty (no images to assign)", bank.source.empty() ? "" : " " + bank.source);
  ENG_CHECK(centroids.dim() == 2, "centroids must be [clusters, dims], got {}", eng::shape_str(centroids.shape()));
  const int64_t n = bank.n, M = centroids.size(0);
  ENG_CHECK(centroids.size(1) == bank.d, "feature bank{} has dimension {} but the centroids have {}",
            bank.source.empty() ? "" : " " + bank.source, bank.d, centroids.size(1));
  ENG_CHECK(M <= n, "--clusters {} is larger than the number of images in the bank ({})", M, n);
  ENG_CHECK(opt.eps > 0, "--assign-eps must be positive, got {}", opt.eps);
  eng::NoGradGuard ng;
  eng::Tensor ct = centroids.to(eng::Device::cpu()).to(eng::DType::F32).t().contiguous();  // [d, M]
  Assignment out;
  out.plain.resize(size_t(n));
  out.plan_argmax.resize(size_t(n));
  out.row_max.resize(size_t(n));
  std::vector<float> kmat(size_t(n) * size_t(M));
  const float inv_eps = float(1.0 / opt.eps);
  for (int64_t start = 0; start < n; start += opt.block) {
    const int64_t count = std::min(opt.block, n - start);
    eng::Tensor a = eng::matmul(bank.block_f32(start, count), ct);
    const float* ap = a.data<float>();
    parallel_for(0, count, 64, [&](int64_t i) {
      const float* row = ap + i * M;
      int64_t best = 0;
      for (int64_t j = 1; j < M; j++)
        if (row[j] > row[best]) best = j;
      const float mx = row[best] * inv_eps;
      float* k = kmat.data() + size_t(start + i) * size_t(M);
      for (int64_t j = 0; j < M; j++) k[j] = std::exp(row[j] * inv_eps - mx);
      out.plain[size_t(start + i)] = int32_t(best);
      out.row_max[size_t(start + i)] = mx;
    });
  }
  const int64_t chunks = (n + kAssignChunk - 1) / kAssignChunk;
  std::vector<double> partial(size_t(chunks) * size_t(M));
  std::vector<double> r(static_cast<size_t>(n)), c(static_cast<size_t>(M), 1.0), mass(static_cast<size_t>(M));
  const double row_target = 1.0 / double(n), col_target = 1.0 / double(M);
  for (int it = 0; it < opt.max_iterations; it++) {
    parallel_for(0, chunks, 1, [&](int64_t ch) {
      double* part = partial.data() + size_t(ch) * size_t(M);
      std::fill(part, part + M, 0.0);
      const int64_t end = std::min(n, (ch + 1) * kAssignChunk);
      for (int64_t i = ch * kAssignChunk; i < end; i++) {
        const float* k = kmat.data() + size_t(i) * size_t(M);
        double s = 0;
        for (int64_t j = 0; j < M; j++) s += double(k[j]) * c[size_t(j)];
        const double ri = row_target / s;
        r[size_t(i)] = ri;
        for (int64_t j = 0; j < M; j++) part[j] += ri * double(k[j]);
      }
    });
    std::fill(mass.begin(), mass.end(), 0.0);
    for (int64_t ch = 0; ch < chunks; ch++)
      for (int64_t j = 0; j < M; j++) mass[size_t(j)] += partial[size_t(ch) * size_t(M) + size_t(j)];
    double err = 0;
    for (int64_t j = 0; j < M; j++) {
      ENG_CHECK(mass[size_t(j)] > 0 && std::isfinite(mass[size_t(j)]),
                "balanced assignment: cluster {} receives no mass at eps {} (its centroid is far from every feature); "
                "raise --assign-eps", j, opt.eps);
      err = std::max(err, std::abs(double(M) * c[size_t(j)] * mass[size_t(j)] - 1.0));
      c[size_t(j)] = col_target / mass[size_t(j)];
    }
    out.iterations = it + 1;
    out.marginal_error = err;
    if (err <= opt.tolerance) {
      out.converged = true;
      break;
    }
  }
  std::vector<double> log_c(static_cast<size_t>(M)), row_top(static_cast<size_t>(n));
  for (int64_t j = 0; j < M; j++) log_c[size_t(j)] = std::log(c[size_t(j)]);
  parallel_for(0, n, 64, [&](int64_t i) {
    const float* k = kmat.data() + size_t(i) * size_t(M);
    int64_t best = 0;
    double best_v = double(k[0]) * c[0];
    for (int64_t j = 1; j < M; j++) {
      const double v = double(k[j]) * c[size_t(j)];
      if (v > best_v) { best_v = v; best = j; }
    }
    out.plan_argmax[size_t(i)] = int32_t(best);
    row_top[size_t(i)] = std::log(r[size_t(i)]) + std::log(best_v);  // the row's largest log plan entry
  });
  out.balanced = round_plan_with_capacity(kmat, log_c, row_top, n, M);
  out.row_scale = std::move(r);
  out.col_scale = std::move(c);
  return out;
}

std::vector<int32_t> clusters_of_features(const eng::Tensor& feats, const eng::Tensor& centroids) {
  ENG_CHECK(feats.dim() == 2 && centroids.dim() == 2 && feats.size(1) == centroids.size(1),
            "features {} do not match the centroids {} (dimension)", eng::shape_str(feats.shape()),
            eng::shape_str(centroids.shape()));
  eng::NoGradGuard ng;
  eng::Tensor a = eng::matmul(feats.to(eng::DType::F32), centroids.to(feats.device()).to(eng::DType::F32).t());
  std::vector<int64_t> idx = eng::argmax(a, 1).to_vector<int64_t>();
  return std::vector<int32_t>(idx.begin(), idx.end());
}

int32_t cluster_of_feature(const std::vector<float>& feature, const eng::Tensor& centroids) {
  return clusters_of_features(eng::Tensor::from_vector(feature, {1, int64_t(feature.size())}), centroids)[0];
}

}  // namespace moce::cluster
