// model_file.h: the ViT encoder in any model file the downstream commands take, and the classifier (or feature
// extractor) built on a copy of it.
//
// Four kinds of file, told apart by their metadata and names:
//   moce-vit-export  `moce export` output (metadata "format"), loaded with model::load_vit;
//   mae              a dense MAE of `moce pretrain` / `moce train --method dense` (checkpoint or weights; metadata
//                    config["model"]), through moce::load_mae and model::vit_from_mae;
//   timm             a ViT safetensors with timm's names and no metadata of ours: the sizes come from the shapes
//                    (embed_dim from cls_token, depth from blocks.N, patch size and channels from
//                    patch_embed.proj.weight, img size from pos_embed's grid, mlp_ratio from blocks.0.mlp.fc1.weight,
//                    global pool avg when fc_norm.* is there, the head's classes from head.weight); the number of
//                    heads cannot be read from shapes, so it is `heads` (default embed_dim / 64). MAE's decoder
//                    tensors (decoder_*, mask_token) are ignored, so an official MAE checkpoint converted to
//                    safetensors also loads.
//   tokenmoe         a TokenMoE model of `moce train --method tokenmoe` (checkpoint or weights; metadata config
//                    "run"."method" = tokenmoe), read as moce::load_trained_model reads it: a ViT whose blocks in
//                    "run"."experts" hold experts::MoeMlp layers (installed through the Block MLP seam with the
//                    training options), every tensor (experts, gate) loaded. There is no single path to export: every
//                    token picks its expert, so the whole MoE model is what transfers (the paper's Table 3 TokenMoE).
// A MoCE model is refused (its gates read cluster embeddings, which a downstream image does not have: `moce export`
// picks its path first), and so is any other file with gate tensors.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/vit.h"
#include "moce/experts/moe_mlp.h"

namespace moce::finetune {

struct EncoderFile {
  model::VisionTransformer vit;  // as the file describes it (its pooling, its head if any)
  std::string kind;              // "moce-vit-export", "mae", "timm" or "tokenmoe"
};

// Every error names the file (and the flag --heads where it is the cause).
EncoderFile load_encoder(const std::string& file, int64_t heads = 0);

// The expert layers of a ViT's blocks (those whose MLP is an experts::MoeMlp), in block order; empty for a dense ViT.
// The layers are the ViT's own (handles): setting their mode or capacity factor changes that model.
struct MoeLayers {
  std::vector<int64_t> blocks;
  std::vector<std::shared_ptr<experts::MoeMlp>> layers;
  bool empty() const { return layers.empty(); }
};
MoeLayers moe_layers(const model::VisionTransformer& vit);

// Parameters of the encoder (head excluded): all of them (every expert), and those one token goes through (the K of
// each layer's E experts it is routed to, the gate, and everything dense).
struct ParameterCount {
  int64_t all = 0, active_per_token = 0;
};
ParameterCount count_parameters(const model::VisionTransformer& vit);

// --capacity-factor must be a positive finite number (one line naming the flag).
void check_capacity_factor(double capacity_factor);
// Every layer in training mode (gate noise) or evaluation mode (none), at this capacity factor.
void set_moe_mode(const MoeLayers& moe, bool training, double capacity_factor);
// What finetune.json / linprobe.json record of the expert layers: null for a dense ViT, else {gate, blocks,
// num_experts, top_k, capacity_factor, parameters, active_parameters_per_token}.
nlohmann::json moe_json(const model::VisionTransformer& vit, double capacity_factor);

// The line the commands print for a TokenMoE model ("" for a dense one): experts, top-K, blocks, capacity factor and
// the parameter counts.
std::string moe_summary(const model::VisionTransformer& vit, double capacity_factor);

// A new ViT with `encoder`'s sizes, `pool` and a fresh head of `num_classes` (0: none, the pooled features), its own
// tensors (training it leaves `encoder` alone). The encoder's tensors (patch embedding, cls_token, pos_embed, blocks)
// are copied; so are norm.* / fc_norm.* when the encoder has the ones `pool` uses, else they start fresh (unit
// weight, zero bias: MAE's fine-tuning starts fc_norm fresh). The head is initialised as model/vit's (N(0, 2e-5),
// zero bias) from `seed`. Expert layers are carried over: the same blocks get fresh MoeMlp layers with the encoder's
// options (gate noise seeded from `seed`), their experts and gate copied like the rest. Token pooling needs the
// encoder's final norm; `what` names the source in that error.
model::VisionTransformer classifier_from_encoder(const model::VisionTransformer& encoder, int64_t num_classes,
                                                 model::VitPool pool, uint64_t seed, const std::string& what = "encoder");

}  // namespace moce::finetune
