// linprobe.h: the linear probe of a ViT encoder on a downstream task, on frozen features (the quick signal).
//
// Features (moce/eval/features.h, the evaluation pipeline: resize to the model's size, normalise): `--pool token` the
// class token after the final norm, as MAE's main_linprobe.py; `--pool avg` the mean of the patch tokens under a fresh
// fc_norm (unit weight, zero bias: the ViT's avg pooling as the probe finds it). The probe (moce/eval/linear_probe.h)
// standardises them with the training statistics, which is MAE's BatchNorm1d(affine=False) before the head at
// evaluation, then trains the linear head; its top-1 on the test set is the result. A TokenMoE model's features come
// from its expert layers in evaluation mode (no gate noise) at `capacity_factor` (V-MoE's fine-tuning value 1.5).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "model/vit.h"
#include "moce/eval/features.h"
#include "moce/eval/linear_probe.h"
#include "moce/finetune/downstream.h"

namespace moce::finetune {

struct LinprobeOptions {
  model::VitPool pool = model::VitPool::Token;  // Token or Avg
  double capacity_factor = 1.5;                 // TokenMoE models only
  ProbeOptions probe;
  ExtractOptions extract;
};

struct LinprobeResult {
  ProbeResult probe;
  int64_t dim = 0;
  double feature_seconds = 0;
};

// The encoder's features of `task.train` and `task.test` (the validation split is not used), probed.
LinprobeResult linprobe(const model::VisionTransformer& encoder, const Downstream& task, const LinprobeOptions& o);
// "token" / "avg" (errors name --pool).
model::VitPool parse_probe_pool(const std::string& name);

// `moce linprobe`: the model file, the data, the probe, <out>/linprobe.json (checks before anything is written).
struct LinprobeCommand {
  std::string model_file;
  int64_t heads = 0;
  DownstreamOptions data;
  LinprobeOptions probe;
  std::string out;
};
nlohmann::json run_linprobe_command(const LinprobeCommand& c);

}  // namespace moce::finetune
