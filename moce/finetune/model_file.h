// model_file.h: the ViT encoder in any model file the downstream commands take, and the classifier (or feature
// extractor) built on a copy of it.
//
// Three kinds of file, told apart by their metadata and names:
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
// A MoCE or TokenMoE model (stacked experts) is refused: `moce export` picks its path first.
#pragma once
#include <cstdint>
#include <string>

#include "model/vit.h"

namespace moce::finetune {

struct EncoderFile {
  model::VisionTransformer vit;  // as the file describes it (its pooling, its head if any)
  std::string kind;              // "moce-vit-export", "mae" or "timm"
};

// Every error names the file (and the flag --heads where it is the cause).
EncoderFile load_encoder(const std::string& file, int64_t heads = 0);

// A new ViT with `encoder`'s sizes, `pool` and a fresh head of `num_classes` (0: none, the pooled features), its own
// tensors (training it leaves `encoder` alone). The encoder's tensors (patch embedding, cls_token, pos_embed, blocks)
// are copied; so are norm.* / fc_norm.* when the encoder has the ones `pool` uses, else they start fresh (unit
// weight, zero bias: MAE's fine-tuning starts fc_norm fresh). The head is initialised as model/vit's (N(0, 2e-5),
// zero bias) from `seed`. Token pooling needs the encoder's final norm; `what` names the source in that error.
model::VisionTransformer classifier_from_encoder(const model::VisionTransformer& encoder, int64_t num_classes,
                                                 model::VitPool pool, uint64_t seed, const std::string& what = "encoder");

}  // namespace moce::finetune
