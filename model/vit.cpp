// vit.cpp: the ViT classifier's config, forward pass, state dict, and its construction from an MAE.
#include "model/vit.h"

#include <unistd.h>

#include <cmath>

#include "engine/io/safetensors.h"
#include "model/mae.h"

namespace model {

std::string pool_name(VitPool pool) {
  switch (pool) {
    case VitPool::Token: return "token";
    case VitPool::Avg: return "avg";
    case VitPool::NormAvg: return "norm_avg";
  }
  ENG_FAIL("pool_name: unknown pooling {}", int(pool));
}

VitPool parse_pool(const std::string& name) {
  for (VitPool p : {VitPool::Token, VitPool::Avg, VitPool::NormAvg})
    if (pool_name(p) == name) return p;
  ENG_FAIL("unknown ViT pooling '{}'; known: token, avg, norm_avg", name);
}

void validate_encoder(const EncoderConfig& c, const std::string& who) {
  auto positive = [&](const char* field, int64_t v) { ENG_CHECK(v > 0, "{}: {} must be positive, got {}", who, field, v); };
  positive("img_size", c.img_size);
  positive("patch_size", c.patch_size);
  positive("in_chans", c.in_chans);
  positive("embed_dim", c.embed_dim);
  positive("depth", c.depth);
  positive("num_heads", c.num_heads);
  ENG_CHECK(c.img_size % c.patch_size == 0, "{}: img_size {} is not divisible by patch_size {}", who, c.img_size,
            c.patch_size);
  ENG_CHECK(c.embed_dim % c.num_heads == 0, "{}: embed_dim {} is not divisible by num_heads {}", who, c.embed_dim,
            c.num_heads);
  // Finite first: the width is an int64 cast of the product.
  ENG_CHECK(std::isfinite(c.mlp_ratio) && c.mlp_ratio > 0 && double(c.embed_dim) * c.mlp_ratio >= 1 &&
                double(c.embed_dim) * c.mlp_ratio < 9e18,
            "{}: mlp_ratio {} gives an MLP of no width for embed_dim {}", who, c.mlp_ratio, c.embed_dim);
}

double encoder_parameters(const EncoderConfig& c) {
  const double D = double(c.embed_dim), H = std::floor(D * c.mlp_ratio), p = double(c.patch_size);
  const double grid = double(c.img_size / c.patch_size), L = grid * grid;
  const double block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (H * D + H) + (D * H + D);
  return D * double(c.in_chans) * p * p + D + D + (1 + L) * D + double(c.depth) * block + 2 * D;
}

double block_activation_bytes(double tokens, double dim, double heads, double mlp_ratio, double depth) {
  // Per block: input, two norms, qkv (3), attention output and projection, MLP hidden (before and after GELU);
  // attention scores and probabilities per head.
  const double per_block = tokens * dim * (8 + 2 * mlp_ratio) + 2 * heads * tokens * tokens;
  return 4.0 * depth * per_block;
}

uint64_t machine_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

void check_fits_memory(double parameters, double activation_bytes, const std::string& who, const std::string& sizes) {
  const uint64_t memory = machine_memory_bytes();
  if (memory == 0) return;  // unknown: nothing to compare with
  const double need = 4.0 * parameters + activation_bytes;
  auto gib = [](double bytes) { return fmt::format("{:.3g} GiB", bytes / double(uint64_t(1) << 30)); };
  ENG_CHECK(need <= double(memory),
            "{}: too large for this machine: {:.3g} parameters ({} in f32) plus about {} of activations per image, "
            "but the machine has {} of memory ({})",
            who, parameters, gib(4.0 * parameters), gib(activation_bytes), gib(double(memory)), sizes);
}

void validate(const VitConfig& c, const std::string& where) {
  const std::string who = (where.empty() ? "" : where + ": ") + "ViT config " + c.name;
  validate_encoder(c, who);
  ENG_CHECK(c.num_classes >= 0, "{}: num_classes must be >= 0 (0: no head), got {}", who, c.num_classes);
  const double grid = double(c.img_size / c.patch_size), tokens = 1 + grid * grid;
  const double head = double(c.num_classes) * double(c.embed_dim) + double(c.num_classes);
  check_fits_memory(encoder_parameters(c) + head,
                    block_activation_bytes(tokens, double(c.embed_dim), double(c.num_heads), c.mlp_ratio, double(c.depth)),
                    who,
                    fmt::format("embed_dim {}, depth {}, img_size {}, patch_size {}, num_classes {}", c.embed_dim,
                                c.depth, c.img_size, c.patch_size, c.num_classes));
}

nlohmann::json encoder_config_to_json(const EncoderConfig& c) {
  return {{"name", c.name},           {"img_size", c.img_size},   {"patch_size", c.patch_size},
          {"in_chans", c.in_chans},   {"embed_dim", c.embed_dim}, {"depth", c.depth},
          {"num_heads", c.num_heads}, {"mlp_ratio", c.mlp_ratio}};
}

int64_t config_int(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  // nlohmann would truncate 4.5 to 4 and make 1e300 undefined behaviour.
  ENG_CHECK(v.is_number_integer(), "config key \"{}\" must be an integer, found {}", key, v.dump());
  return v.get<int64_t>();
}

void encoder_config_from_json(const nlohmann::json& j, EncoderConfig& c) {
  c.name = j.value("name", std::string("custom"));
  c.img_size = config_int(j, "img_size");
  c.patch_size = config_int(j, "patch_size");
  c.in_chans = config_int(j, "in_chans");
  c.embed_dim = config_int(j, "embed_dim");
  c.depth = config_int(j, "depth");
  c.num_heads = config_int(j, "num_heads");
  const nlohmann::json& ratio = j.at("mlp_ratio");
  ENG_CHECK(ratio.is_number(), "config key \"mlp_ratio\" must be a number, found {}", ratio.dump());
  c.mlp_ratio = ratio.get<double>();
}

nlohmann::json config_to_json(const VitConfig& c) {
  nlohmann::json j = encoder_config_to_json(c);
  j["num_classes"] = c.num_classes;
  j["global_pool"] = pool_name(c.pool);
  return j;
}

VitConfig vit_config_from_json(const nlohmann::json& j) {
  VitConfig c;
  try {
    encoder_config_from_json(j, c);
    c.num_classes = config_int(j, "num_classes");
    c.pool = parse_pool(j.at("global_pool").get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    ENG_FAIL("ViT config JSON: {}", e.what());
  }
  validate(c);
  return c;
}

VitConfig vit_config_from_encoder(const EncoderConfig& encoder, VitPool pool, int64_t num_classes) {
  VitConfig c;
  static_cast<EncoderConfig&>(c) = encoder;
  c.num_classes = num_classes;
  c.pool = pool;
  validate(c);
  return c;
}

VisionTransformer::VisionTransformer(const VitConfig& cfg, uint64_t seed) : cfg_(cfg) {
  validate(cfg);
  eng::Generator g(seed, /*stream=*/0);
  const int64_t D = cfg.embed_dim, p = cfg.patch_size;
  patch_weight = xavier_uniform(g, D, cfg.in_chans * p * p, {D, cfg.in_chans, p, p});
  patch_bias = trainable(Tensor::zeros({D}));
  cls_token = trainable(g.normal({1, 1, D}, 0.0, 0.02));
  for (int64_t i = 0; i < cfg.depth; i++) blocks.emplace_back(g, D, cfg.num_heads, cfg.mlp_ratio);
  pos_embed = trainable(g.normal({1, 1 + cfg.num_patches(), D}, 0.0, 0.02));
  if (cfg.pool == VitPool::Avg)
    fc_norm = LayerNorm(D);
  else
    norm = LayerNorm(D);
  if (cfg.num_classes > 0) {
    head.weight = trainable(g.normal({cfg.num_classes, D}, 0.0, 2e-5));
    head.bias = trainable(Tensor::zeros({cfg.num_classes}));
  }
}

Tensor VisionTransformer::forward_tokens(const Tensor& imgs) const {
  ENG_CHECK(imgs.dim() == 4 && imgs.size(1) == cfg_.in_chans && imgs.size(2) == cfg_.img_size &&
                imgs.size(3) == cfg_.img_size,
            "ViT {} expects images [N, {}, {}, {}], got {}", cfg_.name, cfg_.in_chans, cfg_.img_size, cfg_.img_size,
            eng::shape_str(imgs.shape()));
  const int64_t L = cfg_.num_patches();
  Tensor x = eng::add(embed_patches(imgs, patch_weight, patch_bias), pos_embed.slice(1, 1, L + 1));
  x = encode_tokens(x, cls_token, pos_embed.slice(1, 0, 1), blocks);
  return cfg_.pool == VitPool::Avg ? x : norm(x);
}

Tensor VisionTransformer::features(const Tensor& imgs) const {
  Tensor x = forward_tokens(imgs);
  if (cfg_.pool == VitPool::Token) return x.select(1, 0);
  Tensor mean_patches = eng::mean(x.slice(1, 1, x.size(1)), {1});
  return cfg_.pool == VitPool::Avg ? fc_norm(mean_patches) : mean_patches;
}

Tensor VisionTransformer::forward(const Tensor& imgs) const {
  Tensor f = features(imgs);
  return cfg_.num_classes > 0 ? head(f) : f;
}

void VisionTransformer::visit(const Visitor& f) {
  f("cls_token", cls_token);
  f("pos_embed", pos_embed);
  f("patch_embed.proj.weight", patch_weight);
  f("patch_embed.proj.bias", patch_bias);
  for (size_t i = 0; i < blocks.size(); i++) blocks[i].visit("blocks." + std::to_string(i) + ".", f);
  if (cfg_.pool == VitPool::Avg)
    fc_norm.visit("fc_norm.", f);
  else
    norm.visit("norm.", f);
  if (cfg_.num_classes > 0) head.visit("head.", f);
}

void VisionTransformer::load_state_dict(const std::map<std::string, Tensor>& weights, const std::string& file) {
  std::map<std::string, Tensor> mine = state_dict();
  for (const auto& [name, t] : weights)
    ENG_CHECK(mine.count(name) == 1, "{}: tensor '{}' is not part of ViT {} ({} pooling, {} classes)", file, name,
              cfg_.name, pool_name(cfg_.pool), cfg_.num_classes);
  load_tensors(mine, weights, file, cfg_.name);
}

VisionTransformer load_vit(const std::string& file) {
  eng::SafetensorsFile f = eng::load_safetensors(file);
  auto it = f.metadata.find("config");
  ENG_CHECK(it != f.metadata.end(), "{}: no ViT config in its metadata (not a ViT export)", file);
  nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  ENG_CHECK(j.is_object(), "{}: its metadata config is not a JSON object", file);
  VitConfig cfg;
  try {
    cfg = vit_config_from_json(j);
  } catch (const eng::Error& e) {
    ENG_FAIL("{}: {}", file, e.what());
  }
  VisionTransformer vit(cfg, 0);
  vit.load_state_dict(f.tensors, file);
  return vit;
}

VisionTransformer vit_from_mae(const MaskedAutoencoder& mae, VitPool pool, int64_t num_classes, uint64_t seed) {
  VisionTransformer vit(vit_config_from_encoder(mae.config(), pool, num_classes), seed);
  // A copy of the MAE's handles, to read its tensors through the (non-const) visit.
  MaskedAutoencoder source = mae;
  std::map<std::string, Tensor> from = source.state_dict();
  std::map<std::string, Tensor> encoder;
  vit.visit([&](const std::string& name, Tensor& t) {
    if (name.rfind("head.", 0) == 0 || name.rfind("fc_norm.", 0) == 0) return;  // fresh, as MAE's fine-tuning
    ENG_CHECK(from.count(name) == 1,
              "vit_from_mae: MAE {} has no tensor '{}' (a block whose MLP was replaced by set_mlp has no dense MLP)",
              mae.config().name, name);
    encoder.emplace(name, t);
  });
  load_tensors(encoder, from, "vit_from_mae (MAE " + mae.config().name + ")", vit.cfg_.name);
  return vit;
}

}  // namespace model
