// rank_blocks.cpp: per-block MLP gradient magnitudes of a dense MAE over seeded pre-training batches, ranked.
#include "moce/train/rank_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "data/loader.h"
#include "data/transforms.h"
#include "engine/error.h"
#include "engine/optim.h"
#include "engine/rng.h"
#include "moce/common/batch_feed.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/common/run_folder.h"
#include "moce/train/checkpoint.h"

namespace moce {

BlockGradientNorms block_mlp_gradient_norms(model::MaskedAutoencoder& mae, const eng::Tensor& images,
                                            const eng::Tensor& noise, double mask_ratio) {
  std::vector<std::vector<eng::Tensor>> mlp_params;
  for (size_t b = 0; b < mae.blocks.size(); b++) {
    model::Mlp* dense = dynamic_cast<model::Mlp*>(&mae.blocks[b].mlp());
    ENG_CHECK(dense, "rank-blocks: block {}'s MLP is not a dense MLP (a model with expert layers already)", b);
    mlp_params.push_back({dense->fc1.weight, dense->fc1.bias, dense->fc2.weight, dense->fc2.bias});
  }
  const model::MaeOutput out = mae.forward(images, noise, mask_ratio);
  out.loss.backward();
  BlockGradientNorms r;
  r.loss = out.loss.item();
  for (const auto& ps : mlp_params) {
    int64_t n = 0;
    for (const eng::Tensor& p : ps) {
      ENG_CHECK(p.grad().defined(), "rank-blocks: an MLP parameter got no gradient");
      n += p.numel();
    }
    r.norm.push_back(eng::grad_norm_tensor(ps).item());  // f64, in a fixed order: the same for any thread count
    r.params.push_back(n);
  }
  for (auto& [name, p] : mae.named_parameters()) p.zero_grad();
  return r;
}

RankBlocksResult rank_blocks(const RankBlocksOptions& o) {
  const auto say = o.print ? o.print : [](const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
  const eng::Device device = device_from_flag(o.device);  // first: a missing GPU before any file is read
  ENG_CHECK(!o.checkpoint.empty(), "rank-blocks: --checkpoint MAE_CKPT is required");
  ENG_CHECK(!o.data.empty(), "rank-blocks: --data is required (fashion-mnist, cifar10-bin:DIR or an image folder)");
  ENG_CHECK(o.batches > 0, "--batches must be positive, got {}", o.batches);
  ENG_CHECK(o.batch > 0, "--batch must be positive, got {}", o.batch);
  ENG_CHECK(o.workers >= 0, "--workers must be >= 0, got {}", o.workers);
  ENG_CHECK(o.mask_ratio > 0 && o.mask_ratio < 1, "--mask-ratio must be in (0, 1), got {}", o.mask_ratio);
  if (!o.out.empty()) {
    const std::filesystem::path parent = std::filesystem::path(o.out).parent_path();
    ENG_CHECK(parent.empty() || std::filesystem::is_directory(parent), "--out {}: the folder {} does not exist", o.out,
              parent.string());
  }
  nlohmann::json model_info;
  model::MaskedAutoencoder mae = [&] {
    try {
      return load_mae(o.checkpoint, "", false, o.seed, &model_info);
    } catch (const eng::Error& e) {
      ENG_FAIL("--checkpoint {}: not a dense MAE checkpoint ({})", o.checkpoint, e.what());
    }
  }();
  const int64_t depth = int64_t(mae.blocks.size());
  ENG_CHECK(o.top >= 1 && o.top <= depth, "--top must be in [1, {}] (the encoder's blocks), got {}", depth, o.top);
  const model::MaeConfig& cfg = mae.config();
  std::shared_ptr<const data::Dataset> ds;
  try {
    ds = open_dataset(o.data, true);
  } catch (const eng::Error& e) {
    ENG_FAIL("--data {}: {}", o.data, e.what());
  }
  ENG_CHECK(ds->size() > 0, "--data {}: the data set is empty", o.data);
  ENG_CHECK(ds->size() >= o.batch, "--data {}: {} images, fewer than one batch of --batch {}", o.data, ds->size(),
            o.batch);
  data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  lo.num_workers = int(o.workers);
  data::Loader loader(ds, data::mae_pretrain_pipeline(cfg.img_size), lo);
  const int64_t batches = std::min(o.batches, loader.batches_per_epoch());
  if (batches < o.batches)
    say(fmt::format("note: --data {} has {} batches of {}; using those, not --batches {}", o.data, batches, o.batch,
                    o.batches));
  move_to_device(mae, device);
  BatchFeed feed(loader, device);
  feed.start_epoch(0, batches);

  RankBlocksResult res;
  res.blocks.resize(size_t(depth));
  const int64_t L = cfg.num_patches();
  for (int64_t b = 0; b < batches; b++) {
    data::Batch batch;
    ENG_CHECK(feed.next(batch), "internal: the loader ended after {} of {} batches", b, batches);
    // The mask noise of micro-batch b of a pre-training run with this seed (train/pretrain.cpp).
    eng::Generator mask_rng(o.seed, kMaskStream, uint64_t(b) * uint64_t(o.batch * L));
    const eng::Tensor noise = mask_rng.uniform({batch.images.size(0), L}, 0.0, 1.0, eng::DType::F32, device);
    const BlockGradientNorms g = block_mlp_gradient_norms(mae, batch.images, noise, o.mask_ratio);
    ENG_CHECK(std::isfinite(g.loss), "--checkpoint {}: non-finite loss {} on batch {}", o.checkpoint, g.loss, b);
    res.mean_loss += g.loss / double(batches);
    for (int64_t k = 0; k < depth; k++) {
      res.blocks[size_t(k)].block = k;
      res.blocks[size_t(k)].params = g.params[size_t(k)];
      res.blocks[size_t(k)].norms.push_back(g.norm[size_t(k)]);
    }
  }
  res.batches = batches;
  for (BlockRank& r : res.blocks) {
    for (double v : r.norms) r.mean_norm += v / double(batches);
    r.mean_rms = r.mean_norm / std::sqrt(double(r.params));
    res.ranking.push_back(r.block);
  }
  std::stable_sort(res.ranking.begin(), res.ranking.end(), [&](int64_t a, int64_t b) {
    return res.blocks[size_t(a)].mean_norm > res.blocks[size_t(b)].mean_norm;
  });
  res.chosen.assign(res.ranking.begin(), res.ranking.begin() + o.top);
  std::sort(res.chosen.begin(), res.chosen.end());
  std::string ids;
  for (int64_t c : res.chosen) ids += (ids.empty() ? "" : ",") + std::to_string(c);
  res.moe_blocks_flag = "--moe-blocks " + ids;

  say(fmt::format("rank-blocks {}: {} blocks, {} batches of {} on {}, mean loss {:.4f}", cfg.name, depth, batches,
                  o.batch, device.str(), res.mean_loss));
  say(fmt::format("{:>4}  {:>5}  {:>14}  {:>12}  {:>8}", "rank", "block", "mlp grad norm", "grad rms", "params"));
  nlohmann::json blocks = nlohmann::json::array();
  for (size_t k = 0; k < res.ranking.size(); k++) {
    const BlockRank& r = res.blocks[size_t(res.ranking[k])];
    say(fmt::format("{:>4}  {:>5}  {:>14.6e}  {:>12.6e}  {:>8}", k + 1, r.block, r.mean_norm, r.mean_rms, r.params));
  }
  for (const BlockRank& r : res.blocks)
    blocks.push_back({{"block", r.block},
                      {"params", r.params},
                      {"mean_grad_norm", r.mean_norm},
                      {"mean_grad_rms", r.mean_rms},
                      {"grad_norm_per_batch", r.norms}});
  say("chosen: " + res.moe_blocks_flag);
  res.report = {{"format", "moce-rank-blocks"},
                {"model", model_info},
                {"config", cfg.name},
                {"data", o.data},
                {"batches", batches},
                {"batch", o.batch},
                {"seed", o.seed},
                {"mask_ratio", o.mask_ratio},
                {"device", device.str()},
                {"mean_loss", res.mean_loss},
                {"what", "per encoder block: the L2 norm of the gradient of its MLP (fc1, fc2 weights and biases) of "
                         "the MAE loss per batch, averaged over the batches; rms = norm / sqrt(params)"},
                {"blocks", blocks},
                {"ranking", res.ranking},
                {"top", o.top},
                {"moe_blocks", res.chosen},
                {"moe_blocks_flag", res.moe_blocks_flag}};
  if (!o.out.empty()) {
    write_json_file(o.out, res.report);
    say("report: " + o.out);
  }
  return res;
}

}  // namespace moce
