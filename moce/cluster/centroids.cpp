// centroids.cpp: centroid initialisation, the centroid loss, and the alternating optimisation.
#include "moce/cluster/centroids.h"

namespace moce::cluster {

nlohmann::json config_to_json(const ClusterConfig& c) {
  return {{"clusters", c.clusters}, {"epochs", c.epochs}, {"batch", c.batch}, {"eps", c.eps},
          {"sinkhorn_iterations", c.sinkhorn_iterations}, {"tau", c.tau}, {"lr", c.lr}, {"momentum", c.momentum},
          {"weight_decay", c.weight_decay}, {"init", c.init}, {"kmeanspp_sample", c.kmeanspp_sample},
          {"seed", c.seed}, {"assign_eps", c.assign_eps}, {"assign_tolerance", c.assign_tolerance},
          {"assign_max_iterations", c.assign_max_iterations}};
}

eng::Tensor init_random_unit(int64_t clusters, int64_t dim, uint64_t seed) {
  eng::NoGradGuard ng;
  eng::Generator gen(seed, kStreamInit);
  return eng::l2_normalize(gen.normal({clusters, dim}), 1);
}

void check_bank_for_clusters(const FeatureBank& bank, int64_t clusters) {
  ENG_CHECK(bank.n > 0, "feature bank{}: is empty (no images to cluster)", bank.source.empty() ? "" : " " + bank.source);
  ENG_CHECK(clusters >= 1, "--clusters must be at least 1, got {}", clusters);
  ENG_CHECK(clusters <= bank.n, "--clusters {} is larger than the number of images in the bank ({})", clusters, bank.n);
}

eng::Tensor init_kmeanspp(const FeatureBank& bank, int64_t clusters, uint64_t seed, int64_t sample_size) {
  check_bank_for_clusters(bank, clusters);
  eng::NoGradGuard ng;
  eng::Generator gen(seed, kStreamKmeans);
  const int64_t n = bank.n, d = bank.d;
  std::vector<int64_t> rows;
  if (sample_size <= 0 || sample_size >= n) {
    for (int64_t i = 0; i < n; i++) rows.push_back(i);
  } else {
    std::vector<int64_t> perm = gen.permutation(n).to_vector<int64_t>();
    rows.assign(perm.begin(), perm.begin() + std::max(sample_size, clusters));
  }
  const int64_t s = int64_t(rows.size());
  eng::Tensor pts = bank.rows_f32(rows.data(), s);
  const float* p = pts.data<float>();
  eng::Tensor centres = eng::Tensor::empty({clusters, d});
  float* c = centres.data<float>();
  std::vector<double> dist(size_t(s), std::numeric_limits<double>::infinity());
  auto draw = [&]() { return eng::philox_uniform_f64(gen.seed(), gen.stream(), gen.advance(1), 0.0, 1.0); };
  int64_t pick = std::min<int64_t>(int64_t(draw() * double(s)), s - 1);
  for (int64_t k = 0; k < clusters; k++) {
    std::copy(p + pick * d, p + (pick + 1) * d, c + k * d);
    const float* ck = c + k * d;
    parallel_for(0, s, 64, [&](int64_t i) {
      double dot = 0;
      for (int64_t j = 0; j < d; j++) dot += double(p[i * d + j]) * double(ck[j]);
      dist[size_t(i)] = std::min(dist[size_t(i)], std::max(0.0, 2.0 - 2.0 * dot));
    });
    if (k + 1 == clusters) break;
    double total = 0;
    for (double v : dist) total += v;
    const double u = draw() * total;
    double acc = 0;
    pick = -1;
    for (int64_t i = 0; i < s; i++) {
      acc += dist[size_t(i)];
      if (dist[size_t(i)] > 0 && acc > u) { pick = i; break; }
    }
    if (pick < 0)  // every point sits on a centre (duplicates): take the first one not yet picked as is
      for (int64_t i = s - 1; i >= 0; i--)
        if (dist[size_t(i)] > 0) { pick = i; break; }
    if (pick < 0) pick = std::min<int64_t>(int64_t(draw() * double(s)), s - 1);
  }
  return eng::l2_normalize(centres, 1);
}

eng::Tensor centroid_loss_from_scores(const eng::Tensor& scores, const eng::Tensor& q, double tau) {
  const double b = double(scores.size(0));
  return eng::sum(q * eng::log_softmax(scores * (1.0 / tau), 1)) * (-1.0 / b);
}

eng::Tensor centroid_loss(const eng::Tensor& feats, const eng::Tensor& centroids, const eng::Tensor& q, double tau) {
  eng::Tensor scores = eng::matmul(feats, centroids.t());
  return centroid_loss_from_scores(scores, q, tau);
}

CentroidResult train_centroids(const FeatureBank& bank, const ClusterConfig& cfg,
                               eng::Device device, const EpochCallback& on_epoch) {
  check_bank_for_clusters(bank, cfg.clusters);
  ENG_CHECK(cfg.batch >= 1, "--batch must be at least 1, got {}", cfg.batch);
  ENG_CHECK(cfg.epochs >= 0, "--epochs must be >= 0, got {}", cfg.epochs);
  ENG_CHECK(cfg.tau > 0, "--tau must be positive, got {}", cfg.tau);
  eng::Tensor c0;
  if (cfg.init == "random") c0 = init_random_unit(cfg.clusters, bank.d, cfg.seed);
  else if (cfg.init == "kmeans++") c0 = init_kmeanspp(bank, cfg.clusters, cfg.seed, cfg.kmeanspp_sample);
  else ENG_FAIL("--init must be random or kmeans++, got '{}'", cfg.init);
  eng::Tensor c = c0.to(device).clone();
  c.requires_grad_(true);
  eng::SGD opt({c}, eng::SGDOptions{cfg.lr, cfg.momentum, cfg.weight_decay, false});
  eng::Generator shuffle(cfg.seed, kStreamShuffle);
  CentroidResult result;
  for (int64_t epoch = 0; epoch < cfg.epochs; epoch++) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int64_t> perm = shuffle.permutation(bank.n).to_vector<int64_t>();
    std::vector<eng::Tensor> losses;  // read back once per epoch: no host sync per step on a GPU
    for (int64_t start = 0; start < bank.n; start += cfg.batch) {
      const int64_t count = std::min(cfg.batch, bank.n - start);
      eng::Tensor f = bank.rows_f32(perm.data() + start, count).to(device);
      if (device.is_cpu() && cfg.cpu_fast_path) {
        eng::NoGradGuard ng;
        eng::Tensor scores = eng::matmul(f, c.detach().t()).contiguous();
        eng::Tensor q = eng::Tensor::empty({count, cfg.clusters});
        if (!sinkhorn_batch_cpu(scores.data<float>(), count, cfg.clusters, cfg.eps, cfg.sinkhorn_iterations,
                                q.data<float>()))
          q = sinkhorn_batch(scores, cfg.eps, cfg.sinkhorn_iterations).contiguous();
        eng::Tensor g = eng::Tensor::empty({count, cfg.clusters});
        const double loss = centroid_loss_grad_cpu(scores.data<float>(), q.data<float>(), count, cfg.clusters, cfg.tau,
                                                   g.data<float>());
        c.set_grad(eng::matmul(g.t(), f));
        opt.step();
        c.copy_(eng::l2_normalize(c.detach(), 1));
        losses.push_back(eng::Tensor::scalar(loss, eng::DType::F64));
        continue;
      }
      eng::Tensor scores = eng::matmul(f, c.t());
      eng::Tensor q = sinkhorn_batch(scores.detach(), cfg.eps, cfg.sinkhorn_iterations);
      eng::Tensor loss = centroid_loss_from_scores(scores, q, cfg.tau);
      opt.zero_grad();
      loss.backward();
      opt.step();
      {
        eng::NoGradGuard ng;
        c.copy_(eng::l2_normalize(c.detach(), 1));
        losses.push_back(loss.detach());
      }
    }
    double sum = 0;
    for (const eng::Tensor& l : losses) sum += l.item();
    EpochStats st;
    st.epoch = epoch + 1;
    st.mean_loss = losses.empty() ? 0.0 : sum / double(losses.size());
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ENG_CHECK(std::isfinite(st.mean_loss), "clustering: the centroid loss is not finite in epoch {} ({})", st.epoch,
              st.mean_loss);
    result.epochs.push_back(st);
    if (on_epoch) on_epoch(st);
  }
  result.centroids = c.detach().to(eng::Device::cpu()).contiguous();
  return result;
}

}  // namespace moce::cluster
