// model_file.cpp: which kind of model file it is, the timm shape inference, and the classifier on a copy.
#include "moce/finetune/model_file.h"

#include <cmath>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "moce/train/checkpoint.h"
#include "moce/train/expert_training.h"

namespace moce::finetune {

using eng::Tensor;

namespace {

const Tensor& need(const std::map<std::string, Tensor>& t, const std::string& name, size_t dims, const std::string& file) {
  auto it = t.find(name);
  ENG_CHECK(it != t.end(),
            "{}: not a ViT: no tensor '{}' (expected timm's ViT names: cls_token, pos_embed, patch_embed.proj.weight, "
            "blocks.N.*)",
            file, name);
  ENG_CHECK(it->second.dim() == int64_t(dims), "{}: tensor '{}' has shape {}, a ViT's has {} dimensions", file, name,
            eng::shape_str(it->second.shape()), dims);
  return it->second;
}

// A timm ViT's config from its tensors' shapes (see the header).
model::VisionTransformer timm_vit(std::map<std::string, Tensor> tensors, const std::string& file, int64_t heads) {
  for (auto it = tensors.begin(); it != tensors.end();)  // MAE's decoder: not part of the encoder
    it = (it->first.rfind("decoder_", 0) == 0 || it->first == "mask_token") ? tensors.erase(it) : std::next(it);
  model::VitConfig c;
  c.name = "timm";
  const Tensor& cls = need(tensors, "cls_token", 3, file);
  const Tensor& pos = need(tensors, "pos_embed", 3, file);
  const Tensor& pw = need(tensors, "patch_embed.proj.weight", 4, file);
  c.embed_dim = cls.size(2);
  c.in_chans = pw.size(1);
  c.patch_size = pw.size(2);
  ENG_CHECK(pw.size(0) == c.embed_dim && pw.size(3) == c.patch_size,
            "{}: patch_embed.proj.weight {} does not fit embed_dim {} (from cls_token) with square patches", file,
            eng::shape_str(pw.shape()), c.embed_dim);
  const int64_t patches = pos.size(1) - 1, grid = int64_t(std::llround(std::sqrt(double(std::max<int64_t>(patches, 0)))));
  ENG_CHECK(pos.size(0) == 1 && pos.size(2) == c.embed_dim && patches > 0 && grid * grid == patches,
            "{}: pos_embed {} is not [1, 1 + grid^2, {}] (one class token and a square grid of patches)", file,
            eng::shape_str(pos.shape()), c.embed_dim);
  c.img_size = grid * c.patch_size;
  c.depth = 0;
  while (tensors.count("blocks." + std::to_string(c.depth) + ".norm1.weight")) c.depth++;
  ENG_CHECK(c.depth > 0, "{}: not a ViT: no blocks.0.norm1.weight", file);
  const Tensor& fc1 = need(tensors, "blocks.0.mlp.fc1.weight", 2, file);
  c.mlp_ratio = double(fc1.size(0)) / double(c.embed_dim);
  if (heads <= 0) {
    ENG_CHECK(c.embed_dim % 64 == 0,
              "{}: embed_dim {} is not a multiple of 64, so the default --heads (embed_dim / 64) does not apply; pass "
              "--heads",
              file, c.embed_dim);
    heads = c.embed_dim / 64;
  }
  ENG_CHECK(c.embed_dim % heads == 0, "{}: --heads {} does not divide embed_dim {}", file, heads, c.embed_dim);
  c.num_heads = heads;
  c.pool = tensors.count("fc_norm.weight") ? model::VitPool::Avg : model::VitPool::Token;
  c.num_classes = tensors.count("head.weight") ? need(tensors, "head.weight", 2, file).size(0) : 0;
  try {
    model::validate(c);
  } catch (const eng::Error& e) {
    ENG_FAIL("{}: {}", file, e.what());
  }
  model::VisionTransformer vit(c, 0);
  vit.load_state_dict(tensors, file);
  return vit;
}

// Copies `from`'s values into every encoder tensor of `out`: all but the head, and fc_norm.* when `from` has none
// (it starts fresh, as MAE's fine-tuning). Names must match, expert layers' stacked tensors included.
void copy_encoder_tensors(model::VisionTransformer& out, const std::map<std::string, Tensor>& from,
                          const std::string& what) {
  std::map<std::string, Tensor> mine;
  out.visit([&](const std::string& name, Tensor& t) {
    if (name.rfind("head.", 0) == 0) return;
    if (name.rfind("fc_norm.", 0) == 0 && !from.count(name)) return;
    mine.emplace(name, t);
  });
  model::load_tensors(mine, from, what, out.cfg_.name);
}

// Fresh MoeMlp layers in `out`'s blocks where `like` has them, each with that layer's options (its capacity factor
// included) and its gate noise seeded from `seed`; the values are the caller's to copy.
void install_experts_like(model::VisionTransformer& out, const MoeLayers& like, uint64_t seed) {
  for (size_t i = 0; i < like.layers.size(); i++) {
    experts::MoeOptions o = like.layers[i]->options();
    o.seed = seed;  // install_moe_mlps adds the block index
    experts::install_moe_mlps(out.blocks, {like.blocks[i]}, o);
  }
}

// A `moce train --method tokenmoe` file: the trained MAE as load_trained_model builds it (the experts installed with
// the run's options, every tensor loaded), its encoder copied into a ViT holding the same expert layers.
model::VisionTransformer tokenmoe_vit(const std::string& file) {
  TrainedModel t = load_trained_model(file);
  model::VisionTransformer vit(model::vit_config_from_encoder(t.mae->config(), model::VitPool::Token, 0), 0);
  install_experts_like(vit, MoeLayers{t.blocks, t.layers}, 0);
  copy_encoder_tensors(vit, t.mae->state_dict(), file);
  for (auto& layer : moe_layers(vit).layers) layer->set_training(false);
  return vit;
}

}  // namespace

MoeLayers moe_layers(const model::VisionTransformer& vit) {
  MoeLayers out;
  for (size_t b = 0; b < vit.blocks.size(); b++)
    if (auto layer = std::dynamic_pointer_cast<experts::MoeMlp>(vit.blocks[b].mlp_ptr())) {
      out.blocks.push_back(int64_t(b));
      out.layers.push_back(layer);
    }
  return out;
}

ParameterCount count_parameters(const model::VisionTransformer& vit) {
  model::VisionTransformer v = vit;  // handles, for the non-const visit
  ParameterCount c;
  for (auto& [name, t] : v.named_parameters())
    if (name.rfind("head.", 0) != 0) c.all += t.numel();
  c.active_per_token = c.all;
  for (const auto& layer : moe_layers(vit).layers) {
    const experts::ExpertWeights& w = layer->experts;
    const int64_t n = layer->options().num_experts, k = layer->options().top_k;
    const int64_t per_expert =
        (w.fc1_weight.numel() + w.fc1_bias.numel() + w.fc2_weight.numel() + w.fc2_bias.numel()) / n;
    c.active_per_token -= (n - k) * per_expert;
  }
  return c;
}

void check_capacity_factor(double capacity_factor) {
  ENG_CHECK(std::isfinite(capacity_factor) && capacity_factor > 0,
            "--capacity-factor {} must be positive (a TokenMoE model's expert capacity factor; V-MoE fine-tunes at 1.5)",
            capacity_factor);
}

void set_moe_mode(const MoeLayers& moe, bool training, double capacity_factor) {
  for (const auto& layer : moe.layers) {
    layer->set_training(training);
    layer->set_capacity_factor(capacity_factor);
  }
}

nlohmann::json moe_json(const model::VisionTransformer& vit, double capacity_factor) {
  MoeLayers moe = moe_layers(vit);
  if (moe.empty()) return nullptr;
  const ParameterCount c = count_parameters(vit);
  const experts::MoeOptions& o = moe.layers[0]->options();
  return {{"gate", experts::gate_kind_name(o.gate)},
          {"blocks", moe.blocks},
          {"num_experts", o.num_experts},
          {"top_k", o.top_k},
          {"capacity_factor", capacity_factor},
          {"parameters", c.all},
          {"active_parameters_per_token", c.active_per_token}};
}

std::string moe_summary(const model::VisionTransformer& vit, double capacity_factor) {
  MoeLayers moe = moe_layers(vit);
  if (moe.empty()) return "";
  const ParameterCount c = count_parameters(vit);
  const experts::MoeOptions& o = moe.layers[0]->options();
  return fmt::format("TokenMoE: {} experts (top-{}) in blocks [{}], capacity factor {:g}; {} parameters with all "
                     "experts, {} active per token",
                     o.num_experts, o.top_k, fmt::join(moe.blocks, ", "), capacity_factor, c.all, c.active_per_token);
}

EncoderFile load_encoder(const std::string& file, int64_t heads) {
  ENG_CHECK(!file.empty(), "--model: no model file given");
  ENG_CHECK(heads >= 0, "--heads {} must be positive (0: embed_dim / 64)", heads);
  eng::SafetensorsFile f = eng::load_safetensors(file);
  auto config = f.metadata.find("config");
  nlohmann::json j;
  if (config != f.metadata.end()) j = nlohmann::json::parse(config->second, nullptr, /*allow_exceptions=*/false);
  std::string method;
  if (j.is_object() && j.contains("model") && j.contains("run") && j["run"].is_object() && j["run"].contains("method") &&
      j["run"]["method"].is_string())
    method = j["run"]["method"].get<std::string>();
  if (method == "tokenmoe") return {tokenmoe_vit(file), "tokenmoe"};
  for (const auto& [name, t] : f.tensors) {
    ENG_CHECK(name.find(".mlp.gate.") == std::string::npos || method != "moce",
              "{}: a MoCE model ('{}'): its gates read cluster embeddings; export one path through it first (moce "
              "export)",
              file, name);
    ENG_CHECK(name.find(".mlp.gate.") == std::string::npos,
              "{}: an expert model ('{}') that is not a moce train --method tokenmoe file; export one path through it "
              "first (moce export)",
              file, name);
  }
  auto format = f.metadata.find("format");
  if (format != f.metadata.end() && format->second == "moce-vit-export")
    return {model::load_vit(file), "moce-vit-export"};
  if (config != f.metadata.end()) {
    if (j.is_object() && j.contains("model")) {
      model::MaskedAutoencoder mae = load_mae(file, "", /*random_init=*/false, 0);
      return {model::vit_from_mae(mae, model::VitPool::Token, 0, 0), "mae"};
    }
    if (j.is_object() && j.contains("global_pool")) return {model::load_vit(file), "moce-vit-export"};
  }
  return {timm_vit(std::move(f.tensors), file, heads), "timm"};
}

model::VisionTransformer classifier_from_encoder(const model::VisionTransformer& encoder, int64_t num_classes,
                                                 model::VitPool pool, uint64_t seed, const std::string& what) {
  model::VitConfig cfg = encoder.config();
  cfg.pool = pool;
  cfg.num_classes = num_classes;
  model::VisionTransformer out(cfg, seed);
  install_experts_like(out, moe_layers(encoder), seed);
  model::VisionTransformer source = encoder;  // handles onto the same tensors, for the non-const visit
  std::map<std::string, Tensor> from = source.state_dict();
  ENG_CHECK(pool != model::VitPool::Token || from.count("norm.weight"),
            "{}: token pooling needs the encoder's final norm, and it has none (it pools by avg with fc_norm)", what);
  copy_encoder_tensors(out, from, what);
  return out;
}

}  // namespace moce::finetune
