// finetune.h: downstream fine-tuning with the paper's protocol (MoCE appendix A.5, after Ericsson et al. 2021).
//
// One run (finetune_once): a copy of the encoder with MAE's fine-tuning classifier (average of the patch tokens,
// fc_norm, a fresh linear head: model::VitPool::Avg, model_file.h classifier_from_encoder), every parameter trained by
// SGD (momentum 0.9, weight decay 0) with a per-step cosine decay from lr to 0 (no warm-up), batches of 64 drawn by
// the loader (seeded shuffle, epochs repeated until the fixed number of steps), light augmentation (random crop of
// the image padded by size / 8 zero pixels, horizontal flip; images first resized to the model's size), cross-entropy;
// then top-1 on the evaluation set (the evaluation pipeline: resize, normalise; no augmentation). The seed sets the
// head's initialisation, the shuffle and the augmentation; the same seed gives the same bits. A non-finite loss ends
// the run there as diverged (top-1 counted 0): in a learning-rate grid the largest rates may do that.
//
// The protocol (run_protocol): for each lr of the grid, fine-tune on train minus val with seed 0 and score on val;
// the best val top-1 wins (ties: the lower val loss, then the smaller lr); then per seed 0..S-1 fine-tune on the whole
// training set at that lr and score on test; the mean and the sample standard deviation (n - 1) of those test top-1.
//
// A TokenMoE model (model_file.h, kind "tokenmoe") fine-tunes whole: every expert and the gate train. In training
// its layers run in training mode (the gate noise, drawn per step from the run's seed) and the auxiliary losses
// (importance and load over tokens, weights 0.01 each: the paper's) are added to the cross-entropy, as in
// pre-training, so the routing stays balanced while the experts move; in evaluation the layers run without noise.
// Both at `capacity_factor` (V-MoE's fine-tuning value 1.5, against 1.05 in pre-training: fewer tokens dropped).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "model/vit.h"
#include "moce/finetune/downstream.h"

namespace moce::finetune {

// The paper's learning-rate grid.
const std::vector<double>& paper_lr_grid();  // 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1
// "1e-3,3e-2" -> {1e-3, 3e-2}; each must be a positive finite number (errors name --lrs).
std::vector<double> parse_lr_grid(const std::string& text);

struct RunOptions {
  double lr = 1e-2;
  uint64_t seed = 0;
  int64_t steps = 120;
  int64_t batch = 64;
  double momentum = 0.9, weight_decay = 0.0;
  bool augment = true;
  int workers = 2;
  int64_t eval_batch = 128;
  int64_t log_every = 10;  // a progress line every N steps (0: none)
  std::string tag;         // what the progress line calls this run ("lr 1e-3 seed 0 val")
  // TokenMoE models only (a dense ViT ignores them): the expert capacity factor of training and evaluation, and the
  // weights of the auxiliary losses added to the cross-entropy.
  double capacity_factor = 1.5;
  double importance_weight = 0.01, load_weight = 0.01;
  // For the ETA of a whole protocol: steps of the plan done before this run, all the plan's steps, and its start.
  int64_t plan_done = 0, plan_total = 0;
  std::chrono::steady_clock::time_point plan_start = std::chrono::steady_clock::now();
};

struct RunResult {
  double top1 = 0;         // on the evaluation set, in [0, 1]
  double eval_loss = 0;    // mean cross-entropy there
  double seconds = 0;      // wall time of the whole run (training and evaluation)
  double cpu_seconds = 0;  // process CPU time over the run (all threads)
  std::vector<double> losses;  // the training loss of every step (with a TokenMoE model: cross-entropy + auxiliary)
  std::vector<double> aux_losses;  // TokenMoE: the weighted auxiliary loss of every step (empty for a dense ViT)
  bool diverged = false;       // a non-finite loss stopped the run (at step losses.size())
};

// Fine-tunes a copy of `encoder` (left as it is) on `train` and scores it on `eval`; labels in [0, num_classes).
// The library call the expert search's early-stop and exhaustive methods make per candidate.
RunResult finetune_once(const model::VisionTransformer& encoder, std::shared_ptr<const data::Dataset> train,
                        std::shared_ptr<const data::Dataset> eval, int64_t num_classes, const RunOptions& options);

struct ProtocolOptions {
  std::vector<double> lrs = paper_lr_grid();
  int64_t seeds = 3;
  RunOptions run;  // steps, batch, augmentation, workers, logging (lr, seed and tag are set per run)
};

struct GridPoint {
  double lr = 0;
  RunResult val;  // seed 0 on train minus val, scored on val
};

struct ProtocolResult {
  std::vector<GridPoint> grid;
  double chosen_lr = 0;
  std::vector<RunResult> tests;  // seed s on the whole training set at chosen_lr, scored on test
  double mean_top1 = 0, std_top1 = 0;
  double seconds = 0;
};

// The grid point the protocol picks: the best val top-1; ties: the lower val loss, then the earlier entry.
size_t best_grid_point(const std::vector<GridPoint>& grid);

// Checks the options (a positive lr grid, steps, batch, seeds, capacity factor) before any training: one line naming
// the flag.
void check_protocol_options(const ProtocolOptions& o);
ProtocolResult run_protocol(const model::VisionTransformer& encoder, const Downstream& task, const ProtocolOptions& o);

// The whole `moce finetune` command: the model file, the data, the protocol, then <out>/finetune.json and
// <out>/loss_curves.png (every check before anything is written).
struct FinetuneCommand {
  std::string model_file;
  int64_t heads = 0;  // timm files: attention heads (0 = embed_dim / 64)
  DownstreamOptions data;
  ProtocolOptions protocol;
  std::string out;
};
nlohmann::json run_finetune_command(const FinetuneCommand& c);

// The fields of a run in finetune.json (without its per-step losses).
nlohmann::json run_json(const RunResult& r);

}  // namespace moce::finetune
