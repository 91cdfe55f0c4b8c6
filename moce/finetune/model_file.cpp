// model_file.cpp: which kind of model file it is, the timm shape inference, and the classifier on a copy.
#include "moce/finetune/model_file.h"

#include <cmath>
#include <map>

#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "moce/train/checkpoint.h"

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

}  // namespace

EncoderFile load_encoder(const std::string& file, int64_t heads) {
  ENG_CHECK(!file.empty(), "--model: no model file given");
  ENG_CHECK(heads >= 0, "--heads {} must be positive (0: embed_dim / 64)", heads);
  eng::SafetensorsFile f = eng::load_safetensors(file);
  for (const auto& [name, t] : f.tensors)
    ENG_CHECK(name.find(".mlp.gate.") == std::string::npos,
              "{}: a MoCE / TokenMoE model ('{}'); export one path through it first (moce export)", file, name);
  auto format = f.metadata.find("format");
  if (format != f.metadata.end() && format->second == "moce-vit-export")
    return {model::load_vit(file), "moce-vit-export"};
  auto config = f.metadata.find("config");
  if (config != f.metadata.end()) {
    nlohmann::json j = nlohmann::json::parse(config->second, nullptr, /*allow_exceptions=*/false);
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
  model::VisionTransformer source = encoder;  // handles onto the same tensors, for the non-const visit
  std::map<std::string, Tensor> from = source.state_dict();
  ENG_CHECK(pool != model::VitPool::Token || from.count("norm.weight"),
            "{}: token pooling needs the encoder's final norm, and it has none (it pools by avg with fc_norm)", what);
  std::map<std::string, Tensor> copied;
  out.visit([&](const std::string& name, Tensor& t) {
    if (name.rfind("head.", 0) == 0) return;
    if (name.rfind("fc_norm.", 0) == 0 && !from.count(name)) return;  // fresh, as MAE's fine-tuning
    copied.emplace(name, t);
  });
  model::load_tensors(copied, from, what, cfg.name);
  return out;
}

}  // namespace moce::finetune
