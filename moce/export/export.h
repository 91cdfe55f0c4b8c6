// export.h: the chosen path through a MoCE (or TokenMoE) model as a plain dense ViT encoder, written as safetensors
// with timm's names (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
// mlp.fc2}.*, norm.*), so that model/vit's load_vit and timm's VisionTransformer (num_classes=0) load it. Each MoE
// layer becomes the chosen expert's MLP (fc1.weight[e], ...); everything else is the model's encoder as it is. A dense
// MAE (moce pretrain, or moce train --method dense) exports the same way with no choice to make.
//
// The combine weight, stated: with top-1 the routed MoE layer outputs G_e(x) · expert_e(x) (the gate value, not
// renormalised: moce/experts/README.md); the exported MLP is expert_e(x) alone. So the export is the routed model
// with every chosen gate forced to one-hot (G_e = 1), not the routed model itself, which scales each MoE output by
// its G_e < 1. With --data the export reports the mean G_e over those images (and how often e is the top choice), the
// size of the difference; fine-tuning (the paper's use of the export) absorbs such a scale.
//
// The file's metadata: "format" = "moce-vit-export", "config" = the ViT config (model/vit.h config_to_json, what
// load_vit builds from), "export" = the source model file, its method, the chosen expert per MoE block, the pooling,
// the parameter counts, the search (with --experts auto) and the gate figures (with --data).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/vit.h"
#include "moce/search/candidates.h"
#include "moce/search/search.h"
#include "moce/train/expert_training.h"

namespace moce::exporter {

constexpr const char* kExportFormat = "moce-vit-export";

struct ExportOptions {
  std::string model_file;           // a moce train output (moce, tokenmoe, dense) or a dense MAE
  std::string out;                  // the .safetensors to write
  std::string experts = "auto";     // "auto" (MoCE: moce::search on --data) or "E1,E2" (one per MoE layer, block order)
  std::string data;                 // downstream training images: the search's, and the gate figures (optional)
  std::string classes;              // of --data, only these classes (as moce finetune's --classes; "" = all)
  std::string features_checkpoint;  // MoCE: the dense MAE of the clustering ("" = the run's --init)
  std::string pool = "token";       // the ViT's pooling: token (timm's default) or norm_avg (the MAE's features)
  std::string search_json;          // with auto: where search.json goes ("" = beside --out)
  int64_t limit = 0, per_class = 0, batch = 128;  // --limit, --per-class (of --data), images per pass
  int workers = 2;
  eng::Device device = eng::Device::cpu();
};

// Per MoE layer, with --data: how the routed model treats the chosen expert over those images.
struct GateFigures {
  int64_t block = 0, expert = 0;
  double mean_gate = 0;  // the mean over routing units of G_expert (what the export's MLP output is scaled by there)
  double top_share = 0;  // the share of units whose top choice is that expert
};

struct ExportResult {
  model::VitConfig config;
  TrainMethod method = TrainMethod::Dense;
  std::vector<int64_t> blocks, experts;  // the MoE blocks and their chosen experts (empty for a dense model)
  int64_t source_encoder_tensors = 0;    // elements of the source's encoder tensors (every expert and gate counted)
  int64_t source_tensors = 0;            // the whole source model (decoder and centroids too)
  int64_t export_tensors = 0;            // the export's (pos_embed counted, as timm's parameters do)
  std::optional<search::SearchResult> search;
  std::vector<GateFigures> gates;
  nlohmann::json metadata;  // the "export" entry written
};

// "E1,E2" -> one expert per MoE layer of `model`, each in [0, num_experts); errors name --experts.
std::vector<int64_t> parse_expert_list(const std::string& text, const TrainedModel& model);
// The dense ViT through the chosen experts: moce/search/candidates.h (the search methods score the same models).
using search::dense_vit_of;

// moce export: loads the model, chooses the experts (searching with "auto"), builds the ViT, measures the gate figures
// with --data, writes --out (and search.json with auto), prints the parameter counts. Every check of the flags and
// files comes before anything is written.
ExportResult run_export(const ExportOptions& o);

}  // namespace moce::exporter
