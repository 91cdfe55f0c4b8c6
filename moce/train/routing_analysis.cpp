// routing_analysis.cpp: the routing counts of a trained MoE model over a data set (see the header).
#include "moce/train/routing_analysis.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "moce/common/batch_feed.h"
#include "moce/eval/features.h"

namespace moce {

using eng::Tensor;

RoutingInput collect_routing(TrainedModel& model, std::shared_ptr<const data::Dataset> ds, const RoutingOptions& o,
                             eng::Device device, std::vector<int32_t>* clusters_out) {
  ENG_CHECK(has_experts(model.method), "routing: a {} model has no expert layers to analyse",
            train_method_name(model.method));
  ENG_CHECK(ds && ds->size() > 0, "routing: the data set is empty");
  ENG_CHECK(o.batch > 0, "--batch must be positive, got {}", o.batch);
  std::unique_ptr<MoceRouter> router;
  if (model.method == TrainMethod::Moce) router = std::make_unique<MoceRouter>(model, o.features_checkpoint, device);
  for (auto& layer : model.layers) layer->set_training(false);

  const int64_t n = ds->size(), experts = model.experts.num_experts;
  RoutingInput in;
  in.gate = model.method == TrainMethod::Moce ? "moce" : "tokenmoe";
  in.class_names = ds->classes();
  in.dataset = ds.get();
  in.strip_images = o.strip_images;
  in.heatmap_rows = o.heatmap_rows;
  in.labels.resize(size_t(n));
  for (int64_t i = 0; i < n; i++) in.labels[size_t(i)] = ds->label(i);
  for (size_t l = 0; l < model.layers.size(); l++) {
    RoutingLayer layer;
    layer.block = model.blocks[l];
    layer.num_experts = experts;
    layer.counts.assign(size_t(n * experts), 0);
    layer.confidence.assign(size_t(n), 0.0);
    layer.gate_mean.assign(size_t(experts), 0.0);
    in.layers.push_back(std::move(layer));
  }
  if (clusters_out) clusters_out->assign(size_t(n), -1);

  data::Loader loader(ds, data::eval_pipeline(model.mae->config().img_size), eval_loader_options(o.batch, o.workers));
  BatchFeed feed(loader, device);
  feed.start_epoch(0, loader.batches_per_epoch());
  const auto t0 = std::chrono::steady_clock::now();
  data::Batch b;
  int64_t done = 0, batches = 0;
  std::vector<int64_t> units_seen(model.layers.size(), 0);  // the divisor of each layer's gate_mean
  while (feed.next(b)) {
    feed.prefetch();
    {
      eng::NoGradGuard no_grad;
      model.mae->encode_all(b.images);
    }
    const std::vector<int64_t> index = b.indices.to(eng::Device::cpu()).to_vector<int64_t>();
    const int64_t bs = int64_t(index.size());
    for (size_t l = 0; l < model.layers.size(); l++) {
      const experts::MoeStats& s = model.layers[l]->stats();
      const std::vector<int64_t> choice = s.choices.to(eng::Device::cpu()).to_vector<int64_t>();
      const std::vector<double> conf = s.unit_confidence.to(eng::Device::cpu()).to_vector<double>();
      const int64_t units = s.choices.size(0), k = s.choices.size(1), per_image = units / bs;
      ENG_CHECK(units == per_image * bs, "internal: {} routing units for {} images", units, bs);
      RoutingLayer& layer = in.layers[l];
      for (int64_t u = 0; u < units; u++) {
        const int64_t img = index[size_t(u / per_image)];
        for (int64_t j = 0; j < k; j++) layer.counts[size_t(img * experts + choice[size_t(u * k + j)])]++;
        layer.confidence[size_t(img)] += conf[size_t(u)] / double(per_image);  // TokenMoE: the mean over tokens
      }
      const std::vector<double> gates = s.gates.to(eng::Device::cpu()).to_vector<double>();  // [U, N], summed in f64
      for (int64_t u = 0; u < units; u++)
        for (int64_t e = 0; e < experts; e++) layer.gate_mean[size_t(e)] += gates[size_t(u * experts + e)];
      units_seen[l] += units;
    }
    if (clusters_out && router)
      for (int64_t i = 0; i < bs; i++) (*clusters_out)[size_t(index[size_t(i)])] = router->last_clusters()[size_t(i)];
    done += bs;
    if (o.verbose && (++batches % 20 == 0 || done == n)) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("routing: %lld/%lld images  %.1f img/s\n", (long long)done, (long long)n, double(done) / std::max(s, 1e-9));
      std::fflush(stdout);
    }
  }
  ENG_CHECK(done == n, "routing: the loader gave {} of {} images", done, n);
  for (size_t l = 0; l < in.layers.size(); l++)
    for (double& g : in.layers[l].gate_mean) g /= double(std::max<int64_t>(units_seen[l], 1));
  return in;
}

}  // namespace moce
