// mae.cpp: configs, patchify, random masking, the MAE forward pass and its state dict.
#include "model/mae.h"

#include <cmath>

namespace model {

using eng::DType;
using eng::Shape;

MaeConfig mae_config(const std::string& name) {
  MaeConfig c;
  c.name = name;
  if (name == "mae_tiny_p4_32") {
    // the reference workload: 6.2M parameters
  } else if (name == "mae_small_p4_32") {
    c.embed_dim = 384, c.depth = 12, c.num_heads = 6, c.decoder_embed_dim = 256, c.decoder_depth = 4, c.decoder_num_heads = 8;
  } else if (name == "mae_vit_base_patch16") {
    c.img_size = 224, c.patch_size = 16, c.embed_dim = 768, c.depth = 12, c.num_heads = 12;
    c.decoder_embed_dim = 512, c.decoder_depth = 8, c.decoder_num_heads = 16;
  } else if (name == "mae_vit_large_patch16") {
    c.img_size = 224, c.patch_size = 16, c.embed_dim = 1024, c.depth = 24, c.num_heads = 16;
    c.decoder_embed_dim = 512, c.decoder_depth = 8, c.decoder_num_heads = 16;
  } else if (name == "mae_vit_huge_patch14") {
    c.img_size = 224, c.patch_size = 14, c.embed_dim = 1280, c.depth = 32, c.num_heads = 16;
    c.decoder_embed_dim = 512, c.decoder_depth = 8, c.decoder_num_heads = 16;
  } else if (name == "mae_test_tiny") {
    c.img_size = 16, c.patch_size = 4, c.embed_dim = 16, c.depth = 2, c.num_heads = 2;
    c.decoder_embed_dim = 8, c.decoder_depth = 1, c.decoder_num_heads = 2;
  } else {
    std::string all;
    for (const auto& n : mae_config_names()) all += (all.empty() ? "" : ", ") + n;
    ENG_FAIL("unknown model config '{}'; known: {}", name, all);
  }
  validate(c, "--config " + name);
  return c;
}

void validate(const MaeConfig& c, const std::string& where) {
  const std::string who = (where.empty() ? "" : where + ": ") + "MAE config " + c.name;
  validate_encoder(c, who);
  ENG_CHECK(c.embed_dim % 4 == 0, "{}: embed_dim {} is not divisible by 4 (the sin-cos position embedding)", who,
            c.embed_dim);
  ENG_CHECK(c.decoder_embed_dim > 0, "{}: decoder_embed_dim must be positive, got {}", who, c.decoder_embed_dim);
  ENG_CHECK(c.decoder_embed_dim % 4 == 0,
            "{}: decoder_embed_dim {} is not divisible by 4 (the sin-cos position embedding)", who, c.decoder_embed_dim);
  ENG_CHECK(c.decoder_depth >= 0, "{}: decoder_depth must be >= 0, got {}", who, c.decoder_depth);
  ENG_CHECK(c.decoder_num_heads > 0, "{}: decoder_num_heads must be positive, got {}", who, c.decoder_num_heads);
  ENG_CHECK(c.decoder_embed_dim % c.decoder_num_heads == 0,
            "{}: decoder_embed_dim {} is not divisible by decoder_num_heads {}", who, c.decoder_embed_dim,
            c.decoder_num_heads);
  // In double: the sizes have only been checked positive, and their products may not fit 64 bits.
  const double Dd = double(c.decoder_embed_dim), Hd = std::floor(Dd * c.mlp_ratio);
  const double grid = double(c.img_size / c.patch_size), L = grid * grid;
  const double patch_dim = double(c.patch_size) * double(c.patch_size) * double(c.in_chans);
  const double decoder_block = 4 * Dd + (3 * Dd * Dd + 3 * Dd) + (Dd * Dd + Dd) + (Hd * Dd + Hd) + (Dd * Hd + Dd);
  const double decoder = (double(c.embed_dim) * Dd + Dd) + Dd + (1 + L) * Dd + double(c.decoder_depth) * decoder_block +
                         2 * Dd + (Dd * patch_dim + patch_dim);
  // Training sees a quarter of the patches in the encoder; the evaluation's encode_all sees them all: count all.
  const double activations =
      block_activation_bytes(1 + L, double(c.embed_dim), double(c.num_heads), c.mlp_ratio, double(c.depth)) +
      block_activation_bytes(1 + L, Dd, double(c.decoder_num_heads), c.mlp_ratio, double(c.decoder_depth));
  check_fits_memory(encoder_parameters(c) + decoder, activations, who,
                    fmt::format("embed_dim {}, depth {}, decoder_embed_dim {}, decoder_depth {}, img_size {}, "
                                "patch_size {}",
                                c.embed_dim, c.depth, c.decoder_embed_dim, c.decoder_depth, c.img_size, c.patch_size));
}

std::vector<std::string> mae_config_names() {
  return {"mae_tiny_p4_32", "mae_small_p4_32", "mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14",
          "mae_test_tiny"};
}

eng::DType parse_precision(const std::string& name) {
  if (name == "f32" || name == "tf32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  ENG_FAIL("unknown precision '{}'; known: f32, tf32, bf16 (tf32 and bf16 need a CUDA device)", name);
}

nlohmann::json config_to_json(const MaeConfig& c) {
  nlohmann::json j = encoder_config_to_json(c);
  j["decoder_embed_dim"] = c.decoder_embed_dim;
  j["decoder_depth"] = c.decoder_depth;
  j["decoder_num_heads"] = c.decoder_num_heads;
  j["norm_pix_loss"] = c.norm_pix_loss;
  return j;
}

MaeConfig mae_config_from_json(const nlohmann::json& j, const std::string& where) {
  const std::string prefix = where.empty() ? "" : where + ": ";
  ENG_CHECK(j.is_object(), "{}MAE config is a JSON {}, not an object", prefix, j.type_name());
  MaeConfig c;
  try {
    encoder_config_from_json(j, c);
    c.decoder_embed_dim = config_int(j, "decoder_embed_dim");
    c.decoder_depth = config_int(j, "decoder_depth");
    c.decoder_num_heads = config_int(j, "decoder_num_heads");
    c.norm_pix_loss = j.at("norm_pix_loss").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    ENG_FAIL("{}MAE config: {}", prefix, e.what());
  } catch (const eng::Error& e) {
    ENG_FAIL("{}MAE config: {}", prefix, e.what());
  }
  validate(c, where);
  return c;
}

Tensor patchify(const Tensor& imgs, int64_t p) {
  ENG_CHECK(imgs.dim() == 4 && imgs.size(2) == imgs.size(3) && imgs.size(2) % p == 0,
            "patchify: expected square images [N, C, H, W] with H divisible by {}, got {}", p, eng::shape_str(imgs.shape()));
  int64_t N = imgs.size(0), C = imgs.size(1), h = imgs.size(2) / p;
  // nchpwq -> nhwpqc
  return imgs.reshape({N, C, h, p, h, p}).permute({0, 2, 4, 3, 5, 1}).reshape({N, h * h, p * p * C});
}

Tensor unpatchify(const Tensor& x, int64_t p, int64_t C) {
  int64_t N = x.size(0), L = x.size(1);
  int64_t h = int64_t(std::lround(std::sqrt(double(L))));
  ENG_CHECK(h * h == L && x.size(2) == p * p * C, "unpatchify: {} does not hold square {}x{} patches of {} channels",
            eng::shape_str(x.shape()), p, p, C);
  return x.reshape({N, h, h, p, p, C}).permute({0, 5, 1, 3, 2, 4}).reshape({N, C, h * p, h * p});
}

MaskedAutoencoder::MaskedAutoencoder(const MaeConfig& cfg, uint64_t seed) : cfg_(cfg) {
  validate(cfg);  // whoever built the config: a zero patch size must not reach a division
  eng::Generator g(seed, /*stream=*/0);
  int64_t D = cfg.embed_dim, Dd = cfg.decoder_embed_dim, L = cfg.num_patches(), p = cfg.patch_size;
  // MAE initialises the patch projection like a Linear over its flattened [D, C*p*p] view.
  patch_weight = xavier_uniform(g, D, cfg.in_chans * p * p, {D, cfg.in_chans, p, p});
  patch_bias = trainable(Tensor::zeros({D}));
  cls_token = trainable(g.normal({1, 1, D}, 0.0, 0.02));
  pos_embed = sincos_pos_embed_2d(D, cfg.grid(), true);
  for (int64_t i = 0; i < cfg.depth; i++) blocks.emplace_back(g, D, cfg.num_heads, cfg.mlp_ratio);
  norm = LayerNorm(D);
  decoder_embed = Linear(g, D, Dd);
  mask_token = trainable(g.normal({1, 1, Dd}, 0.0, 0.02));
  decoder_pos_embed = sincos_pos_embed_2d(Dd, cfg.grid(), true);
  for (int64_t i = 0; i < cfg.decoder_depth; i++) decoder_blocks.emplace_back(g, Dd, cfg.decoder_num_heads, cfg.mlp_ratio);
  decoder_norm = LayerNorm(Dd);
  decoder_pred = Linear(g, Dd, cfg.patch_dim());
  (void)L;
}

Tensor MaskedAutoencoder::patch_proj_weight_2d() const { return patch_weight.reshape({cfg_.embed_dim, -1}); }

void MaskedAutoencoder::set_compute_dtype(eng::DType dt) {
  ENG_CHECK(dt == DType::F32 || dt == DType::BF16,
            "model {}: compute dtype {} is not supported (f32, or bf16 for mixed precision on cuda)", cfg_.name,
            eng::dtype_name(dt));
  compute_dtype_ = dt;
}

Tensor MaskedAutoencoder::to_compute(const Tensor& x) const {
  return compute_dtype_ == DType::BF16 && x.dtype() != DType::BF16 ? x.to(DType::BF16) : x;
}

void MaskedAutoencoder::check_compute_device(const Tensor& imgs) const {
  // The CPU backend stores and converts bf16 but has no bf16 kernels; say so before the first op fails.
  ENG_CHECK(compute_dtype_ != DType::BF16 || imgs.device().is_cuda(), "bf16 mixed precision needs --device cuda");
}

Tensor MaskedAutoencoder::embed_patches(const Tensor& imgs) const {
  ENG_CHECK(imgs.dim() == 4 && imgs.size(1) == cfg_.in_chans && imgs.size(2) == cfg_.img_size &&
                imgs.size(3) == cfg_.img_size,
            "model {} expects images [N, {}, {}, {}], got {}", cfg_.name, cfg_.in_chans, cfg_.img_size, cfg_.img_size,
            eng::shape_str(imgs.shape()));
  check_compute_device(imgs);
  // Under bf16 the images are rounded once, before the patch copy (half its bytes).
  return model::embed_patches(to_compute(imgs), patch_weight, patch_bias);
}

MaeEncoding MaskedAutoencoder::encode_masked(const Tensor& imgs, const Tensor& noise, double mask_ratio) const {
  int64_t N = imgs.size(0), L = cfg_.num_patches(), D = cfg_.embed_dim;
  ENG_CHECK(noise.shape() == (Shape{N, L}), "MAE forward: noise must be [{}, {}], got {}", N, L, eng::shape_str(noise.shape()));
  ENG_CHECK(mask_ratio >= 0.0 && mask_ratio < 1.0, "mask ratio {} outside [0, 1)", mask_ratio);
  check_compute_device(imgs);
  if (input_hook_) input_hook_(imgs);
  int64_t keep = int64_t(double(L) * (1.0 - mask_ratio));
  Tensor pos_patches = to_compute(pos_embed.slice(1, 1, L + 1));
  Tensor x = eng::add(embed_patches(imgs), pos_patches);

  // random_masking: sort the noise; the first `keep` are kept. ids_restore undoes the shuffle.
  Tensor ids_shuffle = eng::argsort(noise, 1);
  Tensor ids_restore = eng::argsort(ids_shuffle, 1);
  Tensor ids_keep = ids_shuffle.slice(1, 0, keep);
  x = eng::gather(x, 1, ids_keep.unsqueeze(-1).expand({N, keep, D}));
  const eng::Device dev = imgs.device();
  // In the images' dtype (f32 in training; f64 for the gradient checks of tests), as the loss it weighs.
  const DType mask_dt = imgs.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor mask_sorted = eng::cat({Tensor::zeros({N, keep}, mask_dt, dev), Tensor::ones({N, L - keep}, mask_dt, dev)}, 1);
  Tensor mask = eng::gather(mask_sorted, 1, ids_restore);

  // The class token and its (zero) position embedding are added in f32, then rounded once under bf16.
  return {norm(encode_tokens(x, cls_token, pos_embed.slice(1, 0, 1), blocks)), mask, ids_restore};
}

MaeOutput MaskedAutoencoder::forward(const Tensor& imgs, const Tensor& noise, double mask_ratio) const {
  int64_t N = imgs.size(0), L = cfg_.num_patches(), Dd = cfg_.decoder_embed_dim;
  MaeEncoding enc = encode_masked(imgs, noise, mask_ratio);
  const Tensor& mask = enc.mask;
  const Tensor& ids_restore = enc.ids_restore;
  const int64_t keep = enc.latent.size(1) - 1;

  // decoder
  Tensor x = decoder_embed(enc.latent);
  Tensor tokens = to_compute(mask_token).expand({N, L - keep, Dd});
  Tensor x_ = eng::cat({x.slice(1, 1, keep + 1), tokens}, 1);
  x_ = eng::gather(x_, 1, ids_restore.unsqueeze(-1).expand({N, L, Dd}));
  x = eng::add(eng::cat({x.slice(1, 0, 1), x_}, 1), to_compute(decoder_pos_embed));
  for (const Block& b : decoder_blocks) x = b(x);
  x = decoder_pred(decoder_norm(x)).slice(1, 1, L + 1);
  if (compute_dtype_ == DType::BF16) x = x.to(DType::F32);  // the loss and its reductions in f32

  // loss on removed patches only
  Tensor target = patchify(imgs, cfg_.patch_size);
  if (cfg_.norm_pix_loss) {
    Tensor m = eng::mean(target, {-1}, true);
    Tensor v = eng::var(target, {-1}, true, true);
    target = eng::div(eng::sub(target, m), eng::sqrt(eng::add(v, 1e-6)));
  }
  Tensor per_patch = eng::mean(eng::square(eng::sub(x, target)), {-1});
  Tensor loss = eng::div(eng::sum(eng::mul(per_patch, mask)), eng::sum(mask));
  return {loss, x, mask, ids_restore, enc.latent};
}

Tensor MaskedAutoencoder::encode_all(const Tensor& imgs) const {
  int64_t L = cfg_.num_patches();
  check_compute_device(imgs);
  if (input_hook_) input_hook_(imgs);
  Tensor x = eng::add(embed_patches(imgs), to_compute(pos_embed.slice(1, 1, L + 1)));
  x = norm(encode_tokens(x, cls_token, pos_embed.slice(1, 0, 1), blocks));
  return compute_dtype_ == DType::BF16 ? x.to(DType::F32) : x;
}

Tensor MaskedAutoencoder::features(const Tensor& imgs) const {
  Tensor x = encode_all(imgs);
  return eng::mean(x.slice(1, 1, x.size(1)), {1});
}

void MaskedAutoencoder::visit(const Visitor& f) {
  f("cls_token", cls_token);
  f("pos_embed", pos_embed);
  f("patch_embed.proj.weight", patch_weight);
  f("patch_embed.proj.bias", patch_bias);
  for (size_t i = 0; i < blocks.size(); i++) blocks[i].visit("blocks." + std::to_string(i) + ".", f);
  norm.visit("norm.", f);
  decoder_embed.visit("decoder_embed.", f);
  f("mask_token", mask_token);
  f("decoder_pos_embed", decoder_pos_embed);
  for (size_t i = 0; i < decoder_blocks.size(); i++) decoder_blocks[i].visit("decoder_blocks." + std::to_string(i) + ".", f);
  decoder_norm.visit("decoder_norm.", f);
  decoder_pred.visit("decoder_pred.", f);
}

void MaskedAutoencoder::load_state_dict(const std::map<std::string, Tensor>& weights, const std::string& file) {
  load_tensors(state_dict(), weights, file, cfg_.name);
}

}  // namespace model
