// mae.h: the masked autoencoder of He et al. (facebookresearch/mae, models_mae.py) on a ViT encoder.
//
// forward: patchify + embed, add fixed position embeddings, keep a random (1 - mask_ratio) subset of the
// patches per image (argsort of noise, as MAE), prepend the class token, encoder blocks, norm; decoder
// embedding, mask tokens restored to their places (ids_restore), decoder blocks, norm, prediction head;
// loss = mean squared error on removed patches only (mask 1 = removed), with norm_pix_loss normalising
// each target patch by its mean and unbiased variance.
// Parameter names are MAE's, so an official checkpoint converted to safetensors loads as is.
//
// Mixed precision (CUDA): set_compute_dtype(DType::BF16) makes forward() and encode_all() run in bf16: the images
// and the f32 master parameters are cast to bf16 by differentiable casts, every GEMM takes bf16 operands with f32
// accumulation, activations (and their gradients) are bf16, layer norm, attention's softmax statistics, GELU and
// every reduction compute in f32 or wider, and the prediction returns to f32 before the loss, which is f32.
// Parameters, their gradients and the optimizer state stay f32. The CPU backend has no bf16 arithmetic: there
// the forward stops with "bf16 mixed precision needs --device cuda".
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/layers.h"
#include "model/vit.h"

namespace model {

// The encoder's sizes (EncoderConfig, model/vit.h), the decoder's, and the loss.
struct MaeConfig : EncoderConfig {
  int64_t decoder_embed_dim = 128, decoder_depth = 4, decoder_num_heads = 4;
  bool norm_pix_loss = true;
  int64_t patch_dim() const { return patch_size * patch_size * in_chans; }
};

// Named configs: mae_tiny_p4_32, mae_small_p4_32, mae_vit_base_patch16, mae_vit_large_patch16,
// mae_vit_huge_patch14, and mae_test_tiny (for tests). Throws listing the names on an unknown one. Validated.
MaeConfig mae_config(const std::string& name);
// The one validation of an MAE config (the named ones, a file's, the constructor's): the encoder's rules
// (validate_encoder, model/vit.h), embed_dim and decoder_embed_dim divisible by 4 (the sin-cos position embedding),
// decoder_num_heads positive and dividing decoder_embed_dim, decoder_depth >= 0, and parameters plus one image's
// activations within the machine's memory, refused by arithmetic before anything is allocated. A one-line eng::Error
// naming the field; `where` (a file, a flag) starts it when given.
void validate(const MaeConfig& c, const std::string& where = "");
std::vector<std::string> mae_config_names();
// "f32" and "tf32" -> DType::F32, "bf16" -> DType::BF16: the dtype the model computes in, for a --precision option
// (tf32 is f32 whose GEMMs use TF32 tensor cores on CUDA, eng::set_cuda_tf32); throws naming the choices otherwise.
eng::DType parse_precision(const std::string& name);
nlohmann::json config_to_json(const MaeConfig& c);
// Read and validated; every error is one eng::Error line starting with `where` when given and naming the key.
MaeConfig mae_config_from_json(const nlohmann::json& j, const std::string& where = "");

// [N, C, H, W] -> [N, L, p*p*C] in MAE's loss order (i, j, c) per patch.
Tensor patchify(const Tensor& imgs, int64_t p);
// The inverse of patchify.
Tensor unpatchify(const Tensor& x, int64_t p, int64_t channels);

struct MaeOutput {
  Tensor loss;         // scalar, f32 (f64 for a model and images in f64)
  Tensor pred;         // [N, L, p*p*C], f32, in the (normalised, if norm_pix_loss) target space
  Tensor mask;         // [N, L], 1 = removed; f32 (f64 for f64 images)
  Tensor ids_restore;  // [N, L]
  Tensor latent;       // [N, 1 + keep, D]: the encoder's output (class token, then the visible patches), final norm
};

// The encoder half of forward(): the visible tokens through the encoder and its final norm.
struct MaeEncoding {
  Tensor latent;       // [N, 1 + keep, D], in the compute dtype
  Tensor mask;         // [N, L], 1 = removed
  Tensor ids_restore;  // [N, L]
};

class MaskedAutoencoder : public Module {
 public:
  MaskedAutoencoder(const MaeConfig& cfg, uint64_t seed);
  const MaeConfig& config() const { return cfg_; }

  // The dtype the forward pass computes in: F32 (the default) or BF16 (mixed precision on CUDA, see the top).
  // Not part of the config or the checkpoint: a run setting, like the device.
  void set_compute_dtype(eng::DType dt);
  eng::DType compute_dtype() const { return compute_dtype_; }

  // noise: [N, L] in [0, 1) (from a Philox generator in training, from a fixture in tests).
  MaeOutput forward(const Tensor& imgs, const Tensor& noise, double mask_ratio) const;
  // The masking and the encoder only (what forward() starts with): the same noise keeps the same patches, so a
  // second model (MoCE's distillation teacher) sees exactly the tokens this one saw.
  MaeEncoding encode_masked(const Tensor& imgs, const Tensor& noise, double mask_ratio) const;
  // Encoder on all patches (no masking): [N, 1 + L, D] after the final norm, f32 whatever the compute dtype.
  Tensor encode_all(const Tensor& imgs) const;
  // The class-token feature or the mean of patch tokens, [N, D] (MAE's linear probe uses the class token
  // with no final norm in some setups; here: mean of patch tokens after the final norm, stated).
  Tensor features(const Tensor& imgs) const;

  // The state dict (state_dict(), from Module) holds the parameters and the fixed position embeddings, by MAE name;
  // named_parameters() the parameters that train (not the fixed position embeddings), in a fixed order.
  void visit(const Visitor& f) override;
  // Copies values from `weights`, which must hold each of this model's names with its shape (values are converted
  // to the model's dtype; names the model lacks are ignored); errors name the file and the tensor.
  void load_state_dict(const std::map<std::string, Tensor>& weights, const std::string& file);

  // Called with the input images at the start of every encoder pass (forward, encode_masked, encode_all, features),
  // before anything is computed: a MoCE model in evaluation sets its gates' cluster embeddings from the images there.
  using InputHook = std::function<void(const Tensor& images)>;
  void set_input_hook(InputHook hook) { input_hook_ = std::move(hook); }

  // Pieces (public for tests and for MoCE, which reuses the encoder).
  Tensor embed_patches(const Tensor& imgs) const;  // [N, L, D] in the compute dtype, without position embeddings
  Tensor patch_proj_weight_2d() const;             // [D, C*p*p]

  MaeConfig cfg_;
  Tensor patch_weight, patch_bias;  // patch_embed.proj.weight [D, C, p, p], .bias [D]
  Tensor cls_token, pos_embed;      // [1, 1, D], [1, 1 + L, D] (fixed)
  std::vector<Block> blocks;
  LayerNorm norm;
  Linear decoder_embed;
  Tensor mask_token, decoder_pos_embed;  // [1, 1, Dd], [1, 1 + L, Dd] (fixed)
  std::vector<Block> decoder_blocks;
  LayerNorm decoder_norm;
  Linear decoder_pred;

 private:
  Tensor to_compute(const Tensor& x) const;             // a differentiable bf16 copy under bf16, else x
  void check_compute_device(const Tensor& imgs) const;  // bf16 needs a CUDA device
  eng::DType compute_dtype_ = eng::DType::F32;
  InputHook input_hook_;
};

}  // namespace model
