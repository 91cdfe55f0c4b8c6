// expert_training.cpp: the method's part of `moce train` (see the header), and the loader of what it wrote.
#include "moce/train/expert_training.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "moce/cluster/io.h"
#include "moce/common/cli.h"
#include "moce/common/device.h"
#include "moce/experts/losses.h"
#include "moce/train/checkpoint.h"

namespace moce {

using eng::Tensor;
using nlohmann::json;

TrainMethod parse_train_method(const std::string& name) {
  if (name == "mae") return TrainMethod::Mae;
  if (name == "dense") return TrainMethod::Dense;
  if (name == "moce") return TrainMethod::Moce;
  if (name == "tokenmoe") return TrainMethod::TokenMoe;
  ENG_FAIL("--method {}: expected dense, moce or tokenmoe", name);
}

const char* train_method_name(TrainMethod m) {
  switch (m) {
    case TrainMethod::Mae: return "mae";
    case TrainMethod::Dense: return "dense";
    case TrainMethod::Moce: return "moce";
    case TrainMethod::TokenMoe: return "tokenmoe";
  }
  return "?";
}

json expert_options_to_json(const ExpertOptions& o) {
  return {{"moe_blocks", o.moe_blocks},        {"num_experts", o.num_experts},
          {"top_k", o.top_k},                  {"capacity_factor", o.capacity_factor},
          {"noise_std", o.noise_std},          {"perturbation", o.perturbation},
          {"imbalance", o.imbalance},          {"cluster_pool", o.cluster_pool},
          {"importance_weight", o.importance_weight},
          {"load_weight", o.load_weight},      {"imbalance_weight", o.imbalance_weight},
          {"distill_weight", o.distill_weight}};
}

ExpertOptions expert_options_from_json(const json& j) {
  ExpertOptions o;
  o.moe_blocks = j.at("moe_blocks").get<std::vector<int64_t>>();
  o.num_experts = j.at("num_experts");
  o.top_k = j.at("top_k");
  o.capacity_factor = j.at("capacity_factor");
  o.noise_std = j.at("noise_std");
  o.perturbation = j.at("perturbation");
  o.imbalance = j.at("imbalance");
  o.cluster_pool = j.value("cluster_pool", "mean");
  o.importance_weight = j.at("importance_weight");
  o.load_weight = j.at("load_weight");
  o.imbalance_weight = j.at("imbalance_weight");
  o.distill_weight = j.at("distill_weight");
  return o;
}

std::vector<int64_t> default_moe_blocks(TrainMethod m, int64_t depth) {
  std::vector<int64_t> blocks;
  if (m == TrainMethod::Moce) blocks = {depth - 2, depth - 1};
  if (m == TrainMethod::TokenMoe) blocks = {depth - 3, depth - 1};
  blocks.erase(std::remove_if(blocks.begin(), blocks.end(), [](int64_t b) { return b < 0; }), blocks.end());
  return blocks;  // a model of fewer blocks keeps those it has
}

std::vector<int64_t> parse_block_list(const std::string& text) {
  return parse_index_list(text, "--moe-blocks", "block numbers (0-based) separated by commas, e.g. 10,11");
}

std::vector<int64_t> check_expert_options(TrainMethod m, const ExpertOptions& o, int64_t depth) {
  if (!has_experts(m)) return {};
  std::vector<int64_t> blocks = o.moe_blocks.empty() ? default_moe_blocks(m, depth) : o.moe_blocks;
  std::set<int64_t> seen;
  for (int64_t b : blocks) {
    ENG_CHECK(b >= 0 && b < depth, "--moe-blocks: block {} is not one of the encoder's blocks 0..{}", b, depth - 1);
    ENG_CHECK(seen.insert(b).second, "--moe-blocks: block {} is listed twice", b);
  }
  ENG_CHECK(o.num_experts >= 1, "--experts must be at least 1, got {}", o.num_experts);
  ENG_CHECK(o.top_k >= 1 && o.top_k <= o.num_experts, "--top-k must be in 1..--experts ({}), got {}", o.num_experts,
            o.top_k);
  ENG_CHECK(o.capacity_factor > 0, "--capacity-factor must be positive, got {}", o.capacity_factor);
  ENG_CHECK(o.perturbation >= 0, "--perturbation must be >= 0, got {}", o.perturbation);
  ENG_CHECK(o.imbalance == "per-image" || o.imbalance == "per-expert",
            "--imbalance {}: expected per-image or per-expert", o.imbalance);
  for (double w : {o.importance_weight, o.load_weight, o.imbalance_weight, o.distill_weight})
    ENG_CHECK(w >= 0, "loss weights (--importance-weight, --load-weight, --imbalance-weight, --distill-weight) must be "
              ">= 0, got {}", w);
  return blocks;
}

std::vector<std::shared_ptr<experts::MoeMlp>> install_method_experts(model::MaskedAutoencoder& mae, TrainMethod m,
                                                                     const ExpertOptions& o, int64_t cluster_dim,
                                                                     uint64_t seed) {
  std::vector<int64_t> blocks = check_expert_options(m, o, int64_t(mae.blocks.size()));
  if (blocks.empty()) return {};
  experts::MoeOptions mo;
  mo.gate = m == TrainMethod::Moce ? experts::GateKind::Moce : experts::GateKind::Token;
  mo.num_experts = o.num_experts;
  mo.top_k = o.top_k;
  mo.cluster_dim = cluster_dim;
  mo.capacity_factor = o.capacity_factor;
  mo.noise_std = o.noise_std;
  mo.perturbation = o.perturbation;
  mo.seed = seed;
  mo.imbalance = o.imbalance == "per-expert" ? experts::ImbalanceReading::PerExpert : experts::ImbalanceReading::PerImage;
  return experts::install_moe_mlps(mae.blocks, blocks, mo);
}

// ---------------------------------------------------------------- cluster embeddings

ClusterEmbeddings::ClusterEmbeddings(const std::string& cluster_dir, const data::Dataset& ds) : dir_(cluster_dir) {
  ENG_CHECK(!cluster_dir.empty(), "--method moce needs --clusters CLUSTER_DIR (a `moce cluster` output folder)");
  const std::string assignments = cluster_dir + "/assignments.safetensors";
  const std::string centroids = cluster_dir + "/centroids.safetensors";
  for (const std::string& f : {assignments, centroids})
    ENG_CHECK(std::ifstream(f).good(), "--clusters {}: no {} there (not a `moce cluster` output folder?)", cluster_dir,
              f.substr(cluster_dir.size() + 1));
  cluster::ClusterLookup lookup(assignments);
  ENG_CHECK(lookup.size() == ds.size(),
            "--clusters {}: it clustered {} images, but the training data ({}) has {}; cluster the same data (and "
            "--limit)", cluster_dir, lookup.size(), ds.describe(), ds.size());
  cluster_.resize(size_t(ds.size()));
  for (int64_t i = 0; i < ds.size(); i++) cluster_[size_t(i)] = lookup.cluster_of_image(i);
  // Where the bank kept the images' paths, they must be this data set's, in order.
  std::ifstream paths(cluster_dir + "/bank.safetensors.paths");
  if (paths.good()) {
    std::string line;
    int64_t row = 0;
    while (std::getline(paths, line) && row < ds.size()) {
      ENG_CHECK(line.empty() || line == ds.id(row),
                "--clusters {}: its image {} is {}, but the training data's is {}; cluster the same data", cluster_dir,
                row, line, ds.id(row));
      row++;
    }
  }
  centroids_ = cluster::read_centroids(centroids).centroids;
  ENG_CHECK(centroids_.size(0) == lookup.clusters(), "--clusters {}: {} centroids but assignments to {} clusters",
            cluster_dir, centroids_.size(0), lookup.clusters());
}

void ClusterEmbeddings::to(eng::Device device) { centroids_ = centroids_.to(device); }

Tensor ClusterEmbeddings::for_batch(const Tensor& indices) const {
  std::vector<int64_t> idx = indices.to(eng::Device::cpu()).to_vector<int64_t>();
  std::vector<int64_t> ids(idx.size());
  for (size_t i = 0; i < idx.size(); i++) {
    ENG_CHECK(idx[i] >= 0 && idx[i] < int64_t(cluster_.size()), "internal: image {} outside the clustered data", idx[i]);
    ids[i] = cluster_[size_t(idx[i])];
  }
  Tensor id_tensor = Tensor::from_vector(ids, {int64_t(ids.size())}).to(centroids_.device());
  return eng::index_select(centroids_, 0, id_tensor);
}

// ---------------------------------------------------------------- the method's part of a run

// What one micro-batch left for the metrics: device scalars (read at the window's end) and the host figures.
struct ExpertTraining::Pending {
  Tensor aux, distill;
  std::vector<experts::MoeStats> layers;
};

ExpertTraining::ExpertTraining(model::MaskedAutoencoder& mae, TrainMethod method, const ExpertOptions& options,
                               const std::string& teacher_file, const std::string& cluster_dir,
                               const data::Dataset& ds, uint64_t seed)
    : method_(method), options_(options) {
  blocks_ = check_expert_options(method, options, int64_t(mae.blocks.size()));
  int64_t cluster_dim = 0;
  if (method == TrainMethod::Moce) {
    clusters_ = std::make_unique<ClusterEmbeddings>(cluster_dir, ds);
    cluster_dim = clusters_->dim();
  }
  layers_ = install_method_experts(mae, method, options, cluster_dim, seed);
  if (method == TrainMethod::Moce && options.distill_weight > 0) {
    teacher_ = std::make_unique<model::MaskedAutoencoder>(load_mae(teacher_file, "", false, seed));
    ENG_CHECK(model::config_to_json(teacher_->config()) == model::config_to_json(mae.config()),
              "{}: the distillation teacher's model config differs from the trained model's", teacher_file);
  }
}

ExpertTraining::~ExpertTraining() = default;

void ExpertTraining::to(eng::Device device) {
  if (clusters_) clusters_->to(device);
  if (teacher_) move_to_device(*teacher_, device);
}

void ExpertTraining::before_forward(const data::Batch& b, uint64_t micro) {
  Tensor embeddings = clusters_ ? clusters_->for_batch(b.indices) : Tensor();
  for (auto& layer : layers_) {
    layer->set_training(true);
    layer->set_step(micro);
    if (embeddings.defined()) layer->set_cluster_embeddings(embeddings);
  }
}

Tensor ExpertTraining::extra_loss(const model::MaeOutput& out, const Tensor& images, const Tensor& noise,
                                  double mask_ratio) {
  Pending p;
  Tensor total = experts::auxiliary_loss(
      layers_, {options_.importance_weight, options_.load_weight, options_.imbalance_weight});
  if (total.defined()) p.aux = total.detach();
  if (teacher_) {
    Tensor teacher_tokens;
    {
      eng::NoGradGuard frozen;
      teacher_tokens = teacher_->encode_masked(images, noise, mask_ratio).latent;
    }
    Tensor d = experts::distillation_loss(teacher_tokens, out.latent);
    p.distill = d.detach();
    Tensor term = eng::mul(d, options_.distill_weight);
    total = total.defined() ? eng::add(total, term) : term;
  }
  for (const auto& layer : layers_) p.layers.push_back(layer->stats());
  pending_.push_back(std::move(p));
  return total;
}

json ExpertTraining::take_window_metrics() {
  const double n = double(std::max<size_t>(pending_.size(), 1));
  double aux = 0, distill = 0;
  std::vector<LayerWindow> w(layers_.size());
  for (size_t l = 0; l < layers_.size(); l++) {
    w[l].block = blocks_[l];
    w[l].load.assign(size_t(options_.num_experts), 0.0);
  }
  auto value = [](const Tensor& t) { return t.defined() ? t.item() : 0.0; };
  for (const Pending& p : pending_) {
    aux += value(p.aux) / n;
    distill += value(p.distill) / n;
    for (size_t l = 0; l < p.layers.size(); l++) {
      const experts::MoeStats& s = p.layers[l];
      for (size_t e = 0; e < w[l].load.size() && e < s.expert_load.size(); e++) w[l].load[e] += s.expert_load[e] / n;
      w[l].gate_confidence += s.gate_confidence / n;
      w[l].dropped_fraction += s.dropped_fraction / n;
      w[l].importance_loss += value(s.importance_loss) / n;
      w[l].load_loss += value(s.load_loss) / n;
      w[l].imbalance_loss += value(s.imbalance_loss) / n;
    }
  }
  pending_.clear();
  json layers = json::array();
  std::string suffix;
  for (const LayerWindow& lw : w) {
    json j = {{"block", lw.block},
              {"load", lw.load},
              {"gate_confidence", lw.gate_confidence},
              {"importance_loss", lw.importance_loss},
              {"load_loss", lw.load_loss}};
    if (method_ == TrainMethod::Moce) j["imbalance_loss"] = lw.imbalance_loss;
    if (method_ == TrainMethod::TokenMoe) j["dropped_fraction"] = lw.dropped_fraction;
    layers.push_back(j);
    const double top_load = lw.load.empty() ? 0.0 : *std::max_element(lw.load.begin(), lw.load.end());
    suffix += fmt::format("  b{}: gate {:.2f} max-load {:.2f}", lw.block, lw.gate_confidence, top_load);
    if (method_ == TrainMethod::TokenMoe) suffix += fmt::format(" drop {:.1f}%", 100.0 * lw.dropped_fraction);
  }
  progress_ = suffix;
  json m = {{"aux_loss", aux}, {"layers", layers}};
  if (teacher_) m["distill_loss"] = distill;
  return m;
}

std::map<std::string, Tensor> ExpertTraining::extra_state() const {
  std::map<std::string, Tensor> extra;
  if (clusters_) extra[kCentroidsTensor] = clusters_->centroids().to(eng::Device::cpu());
  return extra;
}

std::string cluster_folder_pool(const std::string& cluster_dir) {
  std::ifstream in(cluster_dir + "/clusters.json");
  if (!in.good()) return "mean";
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j.value("pool", std::string("mean")) : std::string("mean");
}

// ---------------------------------------------------------------- loading what train wrote

TrainMethod method_of_model_file(const std::string& file) {
  eng::SafetensorsFile f = eng::load_safetensors(file);
  auto it = f.metadata.find("config");
  if (it == f.metadata.end()) return TrainMethod::Mae;
  json config = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object() || !config.contains("run") || !config["run"].is_object()) return TrainMethod::Mae;
  try {
    return parse_train_method(config["run"].value("method", std::string("mae")));
  } catch (const eng::Error& e) {
    ENG_FAIL("{}: {}", file, e.what());
  }
}

TrainedModel load_trained_model(const std::string& file) {
  eng::SafetensorsFile f = eng::load_safetensors(file);
  json config;
  if (auto it = f.metadata.find("config"); it != f.metadata.end())
    config = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  ENG_CHECK(config.is_object() && config.contains("model"), "{}: no model config in its metadata (not a moce model)",
            file);
  TrainedModel t;
  model::MaeConfig cfg;
  try {
    cfg = model::mae_config_from_json(config.at("model"), "metadata config[\"model\"]");
    t.run = config.value("run", json::object());
    t.method = parse_train_method(t.run.value("method", std::string("mae")));
    if (t.method == TrainMethod::Mae) t.method = TrainMethod::Dense;
    if (has_experts(t.method)) t.experts = expert_options_from_json(t.run.at("experts"));
  } catch (const json::exception& e) {
    ENG_FAIL("{}: its metadata config is not a moce train config ({})", file, e.what());
  } catch (const eng::Error& e) {
    ENG_FAIL("{}: {}", file, e.what());
  }
  t.mae = std::make_unique<model::MaskedAutoencoder>(cfg, 0);
  int64_t cluster_dim = 0;
  if (t.method == TrainMethod::Moce) {
    auto it = f.tensors.find(kCentroidsTensor);
    ENG_CHECK(it != f.tensors.end() && it->second.dim() == 2, "{}: a MoCE model without its {} [M, d]", file,
              kCentroidsTensor);
    t.centroids = it->second.to(eng::DType::F32);
    cluster_dim = t.centroids.size(1);
  }
  t.blocks = check_expert_options(t.method, t.experts, int64_t(cfg.depth));
  t.layers = install_method_experts(*t.mae, t.method, t.experts, cluster_dim, 0);
  std::map<std::string, Tensor> weights;
  const std::string format = f.metadata.count("format") ? f.metadata.at("format") : std::string();
  for (auto& [name, tensor] : f.tensors) {
    if (name == kCentroidsTensor) continue;
    if (format == eng::kCheckpointFormat && name.rfind(eng::kOptimizerPrefix, 0) == 0) continue;
    weights.emplace(name, tensor);
  }
  t.mae->load_state_dict(weights, file);
  for (auto& layer : t.layers) layer->set_training(false);
  return t;
}

// ---------------------------------------------------------------- routing outside training

Tensor pooled_features(const model::MaskedAutoencoder& mae, const Tensor& images, const std::string& pool) {
  if (pool == "cls") return mae.encode_all(images).select(1, 0);
  ENG_CHECK(pool == "mean", "cluster pool '{}': expected mean or cls", pool);
  return mae.features(images);
}

struct MoceRouter::State {
  std::unique_ptr<model::MaskedAutoencoder> features;  // the dense MAE that made the clusters
  Tensor centroids;                                     // [M, d] on the device
  std::string pool;
  std::vector<std::shared_ptr<experts::MoeMlp>> layers;
  std::vector<int32_t> last;
};

MoceRouter::MoceRouter(TrainedModel& model, const std::string& feature_checkpoint, eng::Device device)
    : state_(std::make_shared<State>()) {
  ENG_CHECK(model.method == TrainMethod::Moce, "MoceRouter: the model is not a MoCE model");
  feature_checkpoint_ = feature_checkpoint.empty() ? model.run.value("init", std::string()) : feature_checkpoint;
  ENG_CHECK(!feature_checkpoint_.empty() && std::ifstream(feature_checkpoint_).good(),
            "the MoCE model routes an image by its dense MAE feature: its run's --init '{}' is not there; pass "
            "--features-checkpoint FILE (the MAE the clusters were made with)", feature_checkpoint_);
  state_->features = std::make_unique<model::MaskedAutoencoder>(load_mae(feature_checkpoint_, "", false, 0));
  move_to_device(*state_->features, device);
  state_->centroids = model.centroids.to(device);
  state_->pool = model.experts.cluster_pool;
  state_->layers = model.layers;
  std::weak_ptr<State> weak = state_;
  model.mae->set_input_hook([weak](const Tensor& images) {
    auto st = weak.lock();
    if (!st) return;
    eng::NoGradGuard no_grad;
    Tensor f = pooled_features(*st->features, images, st->pool);
    std::vector<int32_t> ids = cluster::clusters_of_features(f.to(eng::Device::cpu()), st->centroids.to(eng::Device::cpu()));
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    Tensor id_tensor = Tensor::from_vector(ids64, {int64_t(ids64.size())}).to(st->centroids.device());
    Tensor embeddings = eng::index_select(st->centroids, 0, id_tensor);
    for (auto& layer : st->layers) layer->set_cluster_embeddings(embeddings);
    st->last = std::move(ids);
  });
}

MoceRouter::~MoceRouter() = default;

const std::vector<int32_t>& MoceRouter::last_clusters() const { return state_->last; }

}  // namespace moce
