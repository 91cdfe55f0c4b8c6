// cmd_finetune.cpp: `moce finetune`, downstream fine-tuning with the paper's protocol (lr grid on a validation split,
// then several seeds at the best lr; SGD momentum 0.9, cosine decay, batch 64): the flags, then
// moce::finetune::run_finetune_command (moce/finetune/finetune.h).
//
//   moce finetune --model runs/moce/vit.safetensors --data fashion-mnist --test-data fashion-mnist
//                 --classes Sandal,Sneaker,"Ankle boot" --limit 600 --limit-test 300 --out runs/ft-footwear
//   moce finetune --model runs/mae/weights.safetensors --data DOWNSTREAM_DIR --test-fraction 0.2 --out runs/ft
//   moce finetune --model timm_vit.safetensors --heads 3 --data DIR --test-data TEST_DIR --out runs/ft-timm
#include "moce/cmd/commands.h"
#include "moce/cmd/downstream_flags.h"
#include "moce/common/cli.h"
#include "moce/finetune/finetune.h"

namespace moce {

int cmd_finetune(int argc, char** argv) {
  Args a("finetune",
         "Fine-tune a ViT encoder on a downstream task with the paper's protocol (MoCE A.5, after Ericsson et al.):\n"
         "for each lr of the grid, seed 0 on train minus val, scored on val; then --seeds runs on the whole training\n"
         "set at the best lr, scored on test: mean and standard deviation of top-1. SGD momentum 0.9, weight decay 0,\n"
         "cosine decay, avg pooling with fc_norm and a fresh head, random crop (padding size/8) + flip.\n"
         "Writes <out>/finetune.json and <out>/loss_curves.png.");
  add_downstream_flags(a);
  a.add("lrs", "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1,3e-1", "the learning-rate grid (the paper's)")
      .add("seeds", "3", "seeds of the final runs at the chosen lr")
      .add("steps", "120", "steps of every run (the paper: 2500; the default is sized for the whole grid x 3 seeds "
                           "of a 3-class task in about 20 minutes on 2 free cores: moce/finetune/README.md)")
      .add("batch", "64", "images per step")
      .add("eval-batch", "128", "images per batch when scoring")
      .flag("no-augment", "train without the random crop and flip")
      .add("log-every", "10", "a progress line every N steps");
  if (!a.parse(argc, argv, 2)) return 0;
  finetune::FinetuneCommand c;
  read_downstream_flags(a, c.model_file, c.heads, c.data, c.out);
  c.protocol.run.capacity_factor = a.f64("capacity-factor");
  c.protocol.lrs = finetune::parse_lr_grid(a.str("lrs"));
  c.protocol.seeds = a.i64("seeds");
  c.protocol.run.steps = a.i64("steps");
  c.protocol.run.batch = a.i64("batch");
  c.protocol.run.eval_batch = a.i64_at_least("eval-batch", 1);
  c.protocol.run.augment = !a.on("no-augment");
  c.protocol.run.workers = int(a.i64_at_least("workers", 0));
  c.protocol.run.log_every = a.i64_at_least("log-every", 1);
  finetune::run_finetune_command(c);
  return 0;
}

}  // namespace moce
