// vit.h: a plain ViT classifier with timm's names (timm/models/vision_transformer.py, VisionTransformer).
//
// forward: patch embedding (patchify + linear, stored as the conv weight patch_embed.proj.weight [D, C, p, p]),
// + pos_embed (a parameter, [1, 1 + L, D]), the class token in front, the blocks (model::Block, so a block's MLP
// can be replaced through the expert seam), the final norm, pooling, and a linear head (none when num_classes = 0:
// the model then gives its pooled features). Pooling, and which norm it uses (timm's names):
//   token    the class token after the final `norm` (timm global_pool='token', its default);
//   avg      the mean of the patch tokens, then `fc_norm`, with no final norm (timm global_pool='avg'; MAE's
//            fine-tuning, main_finetune.py --global_pool);
//   norm_avg the final `norm`, then the mean of the patch tokens: what MaskedAutoencoder::features gives (eval-mae,
//            the clustering) (timm global_pool='avg', fc_norm=False).
// A ViT built with vit_from_mae computes, from the same images, bitwise the MAE encoder's tokens and features.
// The model computes in its parameters' dtype (f32; f64 for gradient checks); no bf16 mode yet.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/layers.h"

namespace model {

class MaskedAutoencoder;

// The sizes of a ViT encoder: what the ViT's config and the MAE's (model/mae.h) share.
struct EncoderConfig {
  std::string name;
  int64_t img_size = 32, patch_size = 4, in_chans = 3;
  int64_t embed_dim = 192, depth = 12, num_heads = 3;
  double mlp_ratio = 4.0;
  int64_t grid() const { return img_size / patch_size; }
  int64_t num_patches() const { return grid() * grid(); }
};
// Its fields as JSON keys of the same names; reading throws nlohmann's exception on a missing or mistyped key and an
// eng::Error on a size that is not an integer (4.5, 1e300) or an mlp_ratio that is not a finite number (a missing
// "name" reads as "custom").
nlohmann::json encoder_config_to_json(const EncoderConfig& c);
void encoder_config_from_json(const nlohmann::json& j, EncoderConfig& c);
// j[key] as an integer; an eng::Error naming the key for any other JSON value (nlohmann's exception when missing).
int64_t config_int(const nlohmann::json& j, const char* key);

// Config validation, shared by the ViT's and the MAE's validate (one per config type, used by the named configs,
// by every loader of a file's config and by the constructors): every size positive, img_size divisible by
// patch_size, embed_dim by num_heads, an MLP width (embed_dim * mlp_ratio, finite) of at least 1. `who` starts the
// message ("ViT config x", or "<file>: MAE config x").
void validate_encoder(const EncoderConfig& c, const std::string& who);
// The parameter count of a ViT encoder of these sizes (patch embedding, class token, position embeddings, blocks,
// final norm), in double so that absurd sizes cannot overflow; validate_encoder first.
double encoder_parameters(const EncoderConfig& c);
// A rough f32 activation size of one image through `depth` blocks of width `dim` over `tokens` tokens (the block's
// inputs, qkv, attention matrix, MLP hidden), in bytes.
double block_activation_bytes(double tokens, double dim, double heads, double mlp_ratio, double depth);
// This machine's physical memory in bytes (sysconf); 0 when it cannot be read.
uint64_t machine_memory_bytes();
// Refuses, by arithmetic and before anything is allocated, a model whose f32 parameters plus one image's activations
// exceed the machine's memory; the message gives both figures and the sizes (`sizes`) that made them.
void check_fits_memory(double parameters, double activation_bytes, const std::string& who, const std::string& sizes);

enum class VitPool { Token, Avg, NormAvg };
std::string pool_name(VitPool pool);  // "token", "avg", "norm_avg"
VitPool parse_pool(const std::string& name);  // throws naming the choices

struct VitConfig : EncoderConfig {
  int64_t num_classes = 0;  // 0: no head
  VitPool pool = VitPool::Token;
  VitConfig() { name = "custom"; }
};

// Throws a one-line eng::Error naming the field: sizes positive, num_classes >= 0, img_size divisible by patch_size,
// embed_dim divisible by num_heads, an MLP width (embed_dim * mlp_ratio) of at least 1, parameters and one image's
// activations within the machine's memory. `where` (a file, a flag) starts the message when given.
void validate(const VitConfig& c, const std::string& where = "");
nlohmann::json config_to_json(const VitConfig& c);
VitConfig vit_config_from_json(const nlohmann::json& j);  // validated; errors name the missing or bad key
// The encoder sizes of another config (an MaeConfig), with this pooling and head; validated.
VitConfig vit_config_from_encoder(const EncoderConfig& encoder, VitPool pool, int64_t num_classes);

class VisionTransformer : public Module {
 public:
  // Initialised as timm and MAE's fine-tuning: weights as the MAE's layers (xavier-uniform, zero biases, unit
  // norms), cls_token and pos_embed N(0, 0.02), head weight N(0, 2e-5) (main_finetune.py) with a zero bias.
  VisionTransformer(const VitConfig& cfg, uint64_t seed);
  const VitConfig& config() const { return cfg_; }

  // imgs [N, C, S, S] -> logits [N, num_classes], or the pooled features [N, D] when num_classes = 0.
  Tensor forward(const Tensor& imgs) const;
  // All tokens [N, 1 + L, D] after the final norm (no norm under avg pooling).
  Tensor forward_tokens(const Tensor& imgs) const;
  // The pooled features [N, D] that the head takes.
  Tensor features(const Tensor& imgs) const;

  // By timm name: cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.* or fc_norm.*, head.*, in that order;
  // every one trains (pos_embed too, as in timm), so named_parameters() lists them all.
  void visit(const Visitor& f) override;
  // Copies values from `weights`, which must hold exactly this model's names with its shapes (errors name the file
  // and the tensor; nothing is copied unless all match).
  void load_state_dict(const std::map<std::string, Tensor>& weights, const std::string& file);

  VitConfig cfg_;
  Tensor patch_weight, patch_bias;  // patch_embed.proj.weight [D, C, p, p], .bias [D]
  Tensor cls_token, pos_embed;      // [1, 1, D], [1, 1 + L, D]
  std::vector<Block> blocks;
  LayerNorm norm;     // token and norm_avg pooling
  LayerNorm fc_norm;  // avg pooling
  Linear head;        // num_classes > 0
};

// A ViT from a safetensors file whose metadata "config" is a ViT config (config_to_json; `moce export` writes one):
// built from that config and loaded with the file's tensors (exactly the model's names). Errors name the file.
VisionTransformer load_vit(const std::string& file);

// A ViT whose encoder (patch embedding, cls_token, pos_embed values, blocks, norm) is a copy of the MAE's: its own
// tensors, so training one leaves the other alone. Under avg pooling the MAE's norm is dropped and fc_norm starts
// fresh, as MAE's fine-tuning does; the head is fresh (from `seed`). The MAE's blocks must have dense MLPs.
VisionTransformer vit_from_mae(const MaskedAutoencoder& mae, VitPool pool, int64_t num_classes, uint64_t seed);

}  // namespace model
