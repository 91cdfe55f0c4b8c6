// cmd_pretrain.cpp: `moce pretrain`, MAE pre-training on an image folder, Fashion-MNIST or CIFAR-10 binary files:
// the flags, then moce::pretrain (moce/train/pretrain.h).
//
//   moce pretrain --data fashion-mnist --config mae_tiny_p4_32 --epochs 5 --out runs/pretrain
//   moce pretrain --resume runs/pretrain                      (continues bit for bit)
//   moce pretrain --resume runs/pretrain --epochs 10          (lengthens it: the cosine schedule is stretched from
//                                                              the current step on, which it says on stderr)
#include "moce/cmd/commands.h"
#include "moce/cmd/training_flags.h"

namespace moce {

int cmd_pretrain(int argc, char** argv) {
  Args a("pretrain", "Pre-train a masked autoencoder (MAE) on an image folder or Fashion-MNIST.");
  a.add("config", "mae_tiny_p4_32", "model config (mae_tiny_p4_32, mae_small_p4_32, mae_vit_base_patch16, ...)");
  add_training_flags(a, "1.5e-4", "runs/pretrain", "1");
  if (!a.parse(argc, argv, 2)) return 0;
  PretrainOptions o;
  PretrainSession session;
  read_training_flags(a, o, session);
  if (!a.given("resume")) o.config = a.str("config");
  return pretrain(o, session).status;
}

}  // namespace moce
