// moce/train/rank_blocks.h: `moce rank-blocks`, which encoder blocks' MLPs become expert layers. The paper (section
// 4.1): "Following Wu et al. (2022), layers with the greatest gradient magnitude are selected (which are the last two
// MLP layers in our experiments)". The dense MAE's pre-training loss (the pre-training pipeline and mask noise of
// train/pretrain.cpp, batch b keyed as micro-batch b of a run with this seed) is run forward and backward over
// seeded batches; for every encoder block the L2 norm of the gradient of its MLP (fc1 and fc2, weights and biases)
// is taken per batch and averaged over the batches, with the RMS (norm / sqrt(#params)) beside it. Blocks are
// ranked by the mean norm (ties: lower index) and the top ones chosen.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"
#include "model/mae.h"

namespace moce {

struct RankBlocksOptions {
  std::string checkpoint;  // a dense MAE: a pre-training checkpoint or weights file
  std::string data;        // fashion-mnist | cifar10-bin:DIR | an image folder
  int64_t batches = 8, batch = 64, top = 2, workers = 2;
  uint64_t seed = 0;
  double mask_ratio = 0.75;
  std::string device = "cpu";
  std::string out;  // the JSON report ("" = none)
  std::function<void(const std::string&)> print;  // each line of the table (default: stdout)
};

// One batch's figures: the MAE loss, and per encoder block its MLP's gradient L2 norm and parameter count.
struct BlockGradientNorms {
  double loss = 0;
  std::vector<double> norm;
  std::vector<int64_t> params;
};

// Forward and backward of the MAE loss on one batch (images on the model's device, noise [B, L] for the mask), the
// gradient norm of each encoder block's dense MLP, then every gradient cleared. Any floating dtype the model holds.
// Throws naming the block when its MLP is not dense.
BlockGradientNorms block_mlp_gradient_norms(model::MaskedAutoencoder& mae, const eng::Tensor& images,
                                            const eng::Tensor& noise, double mask_ratio);

struct BlockRank {
  int64_t block = 0, params = 0;
  double mean_norm = 0, mean_rms = 0;
  std::vector<double> norms;  // per batch
};

struct RankBlocksResult {
  std::vector<BlockRank> blocks;  // in block order
  std::vector<int64_t> ranking;   // block ids, largest mean norm first (ties: lower index)
  std::vector<int64_t> chosen;    // the top `top` of the ranking, by index
  std::string moe_blocks_flag;    // "--moe-blocks 10,11"
  int64_t batches = 0;            // batches used
  double mean_loss = 0;
  nlohmann::json report;          // what --out holds (format moce-rank-blocks)
};

// The whole command: checks (flags, the device, the checkpoint, the data, the --out folder) before any work, the
// batches, the table, the JSON.
RankBlocksResult rank_blocks(const RankBlocksOptions& options);

}  // namespace moce
