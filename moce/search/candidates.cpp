// candidates.cpp: the candidate expert paths, their dense ViTs and their features in one pass (see the header).
#include "moce/search/candidates.h"

#include <cstdio>
#include <map>

#include <fmt/format.h>

#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "model/layers.h"
#include "moce/search/search.h"

namespace moce::search {

using eng::Tensor;

std::vector<Candidate> candidate_paths(const TrainedModel& model) {
  ENG_CHECK(model.method == TrainMethod::Moce && model.centroids.defined(),
            "the candidate sub-models are the paths MoCE's gates give its clusters; this is a {} model",
            train_method_name(model.method));
  std::vector<Candidate> out;
  std::map<std::vector<int64_t>, size_t> index_of;
  for (int64_t c = 0; c < model.centroids.size(0); c++) {
    std::vector<int64_t> path = experts_of_cluster(model, c);
    auto [it, fresh] = index_of.emplace(path, out.size());
    if (fresh) out.push_back({std::move(path), {}});
    out[it->second].clusters.push_back(c);
  }
  return out;
}

int64_t candidate_of_path(const std::vector<Candidate>& candidates, const std::vector<int64_t>& experts) {
  for (size_t i = 0; i < candidates.size(); i++)
    if (candidates[i].experts == experts) return int64_t(i);
  return -1;
}

std::string path_text(const std::vector<int64_t>& experts) {
  std::string s;
  for (size_t i = 0; i < experts.size(); i++) s += (i ? "," : "") + std::to_string(experts[i]);
  return s;
}

model::VisionTransformer dense_vit_of(const TrainedModel& model, const std::vector<int64_t>& experts,
                                      model::VitPool pool) {
  ENG_CHECK(experts.size() == model.layers.size(), "dense_vit_of: {} experts for {} MoE layers", experts.size(),
            model.layers.size());
  ENG_CHECK(pool == model::VitPool::Token || pool == model::VitPool::NormAvg,
            "--pool {}: the export keeps the encoder's final norm: token or norm_avg", model::pool_name(pool));
  // A copy of the MAE whose MoE blocks hold the chosen experts as dense MLPs (views of the stacked weights:
  // vit_from_mae copies the values); set_mlp on the copy leaves the model's own blocks alone.
  model::MaskedAutoencoder path = *model.mae;
  for (size_t l = 0; l < model.layers.size(); l++) {
    const experts::MoeMlp& layer = *model.layers[l];
    const int64_t e = experts[l];
    ENG_CHECK(e >= 0 && e < layer.options().num_experts, "dense_vit_of: expert {} of block {} is out of range", e,
              model.blocks[l]);
    auto mlp = std::make_shared<model::Mlp>();
    mlp->fc1.weight = layer.experts.fc1_weight.select(0, e);
    mlp->fc1.bias = layer.experts.fc1_bias.select(0, e);
    mlp->fc2.weight = layer.experts.fc2_weight.select(0, e);
    mlp->fc2.bias = layer.experts.fc2_bias.select(0, e);
    path.blocks[size_t(model.blocks[l])].set_mlp(mlp);
  }
  return model::vit_from_mae(path, pool, 0, 0);
}

CandidateFeatures candidate_features(const TrainedModel& model, const std::vector<Candidate>& candidates,
                                     std::shared_ptr<const data::Dataset> ds, const ExtractOptions& options,
                                     int64_t progress_every) {
  ENG_CHECK(!candidates.empty(), "candidate features: no candidate sub-model");
  ENG_CHECK(ds && ds->size() > 0, "candidate features: the downstream set holds no images");
  const CostClock clock;
  std::vector<model::VisionTransformer> vits;
  for (const Candidate& c : candidates) vits.push_back(dense_vit_of(model, c.experts, model::VitPool::NormAvg));
  CandidateFeatures out;
  // The blocks before the first MoE layer are the MAE's own in every candidate (dense_vit_of copies them unchanged).
  out.shared_blocks = model.blocks.empty() ? int64_t(vits[0].blocks.size()) : model.blocks.front();
  const model::VisionTransformer& first = vits[0];
  const std::vector<model::Block> shared(first.blocks.begin(), first.blocks.begin() + out.shared_blocks);
  const int64_t L = first.config().num_patches(), D = first.config().embed_dim, total = ds->size();
  const auto start = std::chrono::steady_clock::now();
  int64_t batches = 0, seen = 0;
  // One FeatureFn gives [B, C * D]: candidate c's features in columns [c D, (c + 1) D). The ops are those of
  // VisionTransformer::forward_tokens and features (norm_avg), split after the shared blocks.
  FeatureFn fn = [&](const Tensor& imgs) {
    Tensor x = eng::add(model::embed_patches(imgs, first.patch_weight, first.patch_bias), first.pos_embed.slice(1, 1, L + 1));
    const Tensor h = model::encode_tokens(x, first.cls_token, first.pos_embed.slice(1, 0, 1), shared);
    std::vector<Tensor> per;
    for (const model::VisionTransformer& vit : vits) {
      Tensor t = h;
      for (size_t b = size_t(out.shared_blocks); b < vit.blocks.size(); b++) t = vit.blocks[b](t);
      t = vit.norm(t);
      per.push_back(eng::mean(t.slice(1, 1, t.size(1)), {1}));
    }
    seen += imgs.size(0);
    if (progress_every > 0 && (++batches % progress_every == 0 || seen == total)) {
      const double s = seconds_since(start), rate = double(seen) / std::max(s, 1e-9);
      std::printf("candidate features: %lld/%lld images  %.1f img/s  ETA %.0f s  (%zu candidates)\n", (long long)seen,
                  (long long)total, rate, double(total - seen) / std::max(rate, 1e-9), vits.size());
      std::fflush(stdout);
    }
    return per.size() == 1 ? per[0] : eng::cat(per, 1);
  };
  FeatureSet fs = extract_features(fn, ds, data::eval_pipeline(first.config().img_size), options, eng::Device::cpu());
  for (size_t c = 0; c < vits.size(); c++) out.features.push_back(fs.features.narrow(1, int64_t(c) * D, D).contiguous());
  out.labels = fs.labels;
  out.skipped = fs.skipped;
  out.cost = clock.elapsed();
  return out;
}

}  // namespace moce::search
