// cmd_rank_blocks.cpp: `moce rank-blocks`, which encoder blocks of a dense MAE get expert layers: the blocks whose MLP
// gradient is largest over seeded pre-training batches (the paper's section 4.1, after Wu et al. 2022;
// moce/train/rank_blocks.h). Prints the table and the chosen `--moe-blocks`; --out writes the JSON.
//
//   moce rank-blocks --checkpoint runs/pretrain/checkpoint-last.safetensors --data fashion-mnist --out runs/rank.json
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/train/rank_blocks.h"

namespace moce {

int cmd_rank_blocks(int argc, char** argv) {
  Args a("rank-blocks",
         "Rank the encoder blocks of a dense MAE by the gradient magnitude of their MLP (fc1, fc2: L2 norm of the\n"
         "gradient of the MAE loss per batch, averaged over seeded batches of the pre-training pipeline and mask noise;\n"
         "also norm / sqrt(params)); print the table and the top blocks as --moe-blocks for `moce train`.");
  a.add("checkpoint", "", "the dense MAE: a pre-training checkpoint or weights file (safetensors with its config)")
      .add("data", "", "the images: fashion-mnist, cifar10-bin:DIR or an image folder (root/<class>/<image>), train split")
      .add("batches", "8", "batches to average over (fewer when the data has fewer)")
      .add("batch", "64", "images per batch")
      .add("top", "2", "blocks chosen (at most the encoder's depth)")
      .add("seed", "0", "seed of the data order, the augmentation and the mask noise (as moce pretrain's)")
      .add("mask-ratio", "0.75", "fraction of patches removed, as in pre-training")
      .add("workers", "2", "data loader threads")
      .add("device", "cpu", "cpu, or cuda / cuda:N")
      .add("out", "", "write the ranking as JSON to this file (atomically; its folder must exist)");
  if (!a.parse(argc, argv, 2)) return 0;
  RankBlocksOptions o;
  o.device = a.str("device");
  o.checkpoint = a.str("checkpoint");
  o.data = a.str("data");
  o.batches = a.i64("batches");
  o.batch = a.i64("batch");
  o.top = a.i64("top");
  o.seed = uint64_t(a.i64_at_least("seed", 0));
  o.mask_ratio = a.f64("mask-ratio");
  o.workers = a.i64_at_least("workers", 0);
  o.out = a.str("out");
  rank_blocks(o);
  return 0;
}

}  // namespace moce
