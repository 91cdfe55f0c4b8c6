// search.cpp: MoCE's expert search (see the header).
#include "moce/search/search.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include <fmt/format.h>

#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "moce/cluster/assign.h"
#include "moce/common/device.h"
#include "moce/common/run_folder.h"
#include "moce/eval/features.h"
#include "moce/train/checkpoint.h"

namespace moce::search {

using eng::Tensor;
using nlohmann::json;

std::vector<int64_t> experts_of_cluster(const TrainedModel& model, int64_t cluster, std::vector<double>* gates) {
  ENG_CHECK(model.centroids.defined() && cluster >= 0 && cluster < model.centroids.size(0),
            "experts_of_cluster: cluster {} is not one of the model's centroids", cluster);
  eng::NoGradGuard no_grad;
  const Tensor c = model.centroids.slice(0, cluster, cluster + 1);  // [1, d]
  std::vector<int64_t> chosen;
  if (gates) gates->clear();
  for (const auto& layer : model.layers) {
    const Tensor w = layer->gate_weight.to(eng::Device::cpu());
    const Tensor g = eng::softmax(eng::linear(c.to(w.dtype()), w), 1);  // the gate without noise, [1, N]
    const std::vector<double> v = g.to_vector<double>();
    const int64_t best = int64_t(std::max_element(v.begin(), v.end()) - v.begin());
    chosen.push_back(best);
    if (gates) gates->push_back(v[size_t(best)]);
  }
  return chosen;
}

SearchResult search_experts(const TrainedModel& model, std::shared_ptr<const data::Dataset> ds,
                            const std::string& data_name, const SearchOptions& o) {
  ENG_CHECK(model.method == TrainMethod::Moce,
            "search needs a MoCE model (its clusters choose the experts); this is a {} model", train_method_name(model.method));
  ENG_CHECK(ds && ds->size() > 0, "search: --data {} holds no images", data_name);
  ENG_CHECK(o.batch > 0, "--batch must be positive, got {}", o.batch);
  const auto t0 = std::chrono::steady_clock::now();
  SearchResult r;
  r.data = data_name;
  r.pool = model.experts.cluster_pool;
  r.features_checkpoint = o.features_checkpoint.empty() ? model.run.value("init", std::string()) : o.features_checkpoint;
  if (!o.features_checkpoint.empty())
    ENG_CHECK(file_exists(o.features_checkpoint), "--features-checkpoint {}: no such file", o.features_checkpoint);
  ENG_CHECK(!r.features_checkpoint.empty() && file_exists(r.features_checkpoint),
            "search: the dense MAE of the clustering '{}' (the run's --init) is not there; pass --features-checkpoint "
            "FILE (the MAE the clusters were made with)", r.features_checkpoint);
  model::MaskedAutoencoder features = load_mae(r.features_checkpoint, "", false, 0);
  const int64_t d = model.centroids.size(1);
  ENG_CHECK(features.config().embed_dim == d,
            "--features-checkpoint {}: its features have {} dimensions, the model's centroids {} (not the MAE of this "
            "clustering)", r.features_checkpoint, features.config().embed_dim, d);
  move_to_device(features, o.device);
  const std::string pool = r.pool;
  FeatureFn fn = [&features, pool](const Tensor& images) { return pooled_features(features, images, pool); };
  FeatureSet fs = extract_features(fn, ds, data::eval_pipeline(features.config().img_size), {o.batch, o.workers},
                                   o.device);
  const std::vector<int32_t> ids = cluster::clusters_of_features(fs.features, model.centroids);
  r.images = int64_t(ids.size());
  ENG_CHECK(r.images > 0, "search: no image of --data {} could be read", data_name);
  r.votes.assign(size_t(model.centroids.size(0)), 0);
  for (int32_t id : ids) r.votes[size_t(id)]++;
  r.cluster = int64_t(std::max_element(r.votes.begin(), r.votes.end()) - r.votes.begin());  // first of the largest
  r.blocks = model.blocks;
  r.experts = experts_of_cluster(model, r.cluster, &r.gates);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

namespace {

// Cluster ids by votes, most first (ties: lower id first).
std::vector<int64_t> clusters_by_votes(const SearchResult& r) {
  std::vector<int64_t> order(r.votes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return r.votes[size_t(a)] > r.votes[size_t(b)]; });
  return order;
}

double share(const SearchResult& r, int64_t cluster) { return double(r.votes[size_t(cluster)]) / double(std::max<int64_t>(r.images, 1)); }

}  // namespace

json search_to_json(const SearchResult& r, const std::string& model_file) {
  json top = json::array(), layers = json::array();
  for (int64_t c : clusters_by_votes(r)) {
    if (r.votes[size_t(c)] == 0) break;
    top.push_back({{"cluster", c}, {"images", r.votes[size_t(c)]}, {"share", share(r, c)}});
  }
  for (size_t l = 0; l < r.blocks.size(); l++)
    layers.push_back({{"block", r.blocks[l]}, {"expert", r.experts[l]}, {"gate", r.gates[l]}});
  return {{"format", "moce-search"},
          {"rule", "moce: the cluster of most downstream images (argmax f.C), its gate's argmax at every MoE layer"},
          {"model", model_file},
          {"features_checkpoint", r.features_checkpoint},
          {"pool", r.pool},
          {"data", r.data},
          {"images", r.images},
          {"votes", r.votes},
          {"top_clusters", top},
          {"cluster", r.cluster},
          {"cluster_share", share(r, r.cluster)},
          {"experts", r.experts},
          {"layers", layers},
          {"seconds", r.seconds}};
}

std::string search_summary(const SearchResult& r, int64_t top) {
  std::string s = fmt::format("search: {} downstream images over {} clusters ({} features of {})\n", r.images,
                              r.votes.size(), r.pool, r.features_checkpoint);
  int64_t shown = 0;
  for (int64_t c : clusters_by_votes(r)) {
    if (shown++ == top || r.votes[size_t(c)] == 0) break;
    s += fmt::format("  cluster {:>4}: {:>7} images  {:5.1f}%\n", c, r.votes[size_t(c)], 100.0 * share(r, c));
  }
  s += fmt::format("chosen cluster {} ({:.1f}% of the images); experts", r.cluster, 100.0 * share(r, r.cluster));
  for (size_t l = 0; l < r.blocks.size(); l++)
    s += fmt::format("  block {}: expert {} (gate {:.3f})", r.blocks[l], r.experts[l], r.gates[l]);
  s += fmt::format("\nsearch took {:.2f} s\n", r.seconds);
  return s;
}

}  // namespace moce::search
