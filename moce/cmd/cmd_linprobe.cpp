// cmd_linprobe.cpp: `moce linprobe`, a linear probe on a ViT encoder's frozen features of a downstream task (class
// token with a non-affine batch norm, as MAE's main_linprobe.py, or the average pool): the flags, then
// moce::finetune::run_linprobe_command (moce/finetune/linprobe.h).
//
//   moce linprobe --model runs/moce/vit.safetensors --data DOWNSTREAM_DIR --test-data TEST_DIR --out runs/probe
//   moce linprobe --model runs/mae/weights.safetensors --data fashion-mnist --test-data fashion-mnist --pool avg --out runs/probe
#include "moce/cmd/commands.h"
#include "moce/cmd/downstream_flags.h"
#include "moce/common/cli.h"
#include "moce/finetune/linprobe.h"

namespace moce {

int cmd_linprobe(int argc, char** argv) {
  Args a("linprobe",
         "Linear probe of a ViT encoder on frozen features of a downstream task: the features standardised with the\n"
         "training statistics (BatchNorm1d without affine, as MAE's linear probe), a linear head trained on the\n"
         "training images, top-1 on the test images. Writes <out>/linprobe.json.");
  add_downstream_flags(a);
  a.add("pool", "token", "token (class token after the final norm, MAE's linear probe) or avg (mean of the patch tokens, fc_norm)")
      .add("epochs", "100", "probe epochs")
      .add("lr", "1e-2", "probe peak learning rate (cosine decay to 0)")
      .add("batch", "256", "probe batch size")
      .add("optimizer", "adamw", "adamw or sgd (momentum 0.9)")
      .add("seed", "0", "the head's initialisation and the shuffle")
      .add("eval-batch", "128", "images per batch of the feature pass");
  if (!a.parse(argc, argv, 2)) return 0;
  finetune::LinprobeCommand c;
  read_downstream_flags(a, c.model_file, c.heads, c.data, c.out);
  c.probe.capacity_factor = a.f64("capacity-factor");
  c.probe.pool = finetune::parse_probe_pool(a.str("pool"));
  c.probe.probe.epochs = a.i64_at_least("epochs", 1);
  c.probe.probe.lr = a.f64_at_least("lr", 0);
  c.probe.probe.batch_size = a.i64_at_least("batch", 1);
  c.probe.probe.optimizer = a.str("optimizer");
  c.probe.probe.seed = uint64_t(a.i64_at_least("seed", 0));
  c.probe.extract.batch_size = a.i64_at_least("eval-batch", 1);
  c.probe.extract.workers = int(a.i64_at_least("workers", 0));
  finetune::run_linprobe_command(c);
  return 0;
}

}  // namespace moce
