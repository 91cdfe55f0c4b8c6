// training_flags.cpp: the flags of the training loop shared by `moce pretrain` and `moce train`.
#include "moce/cmd/training_flags.h"

#include <cstdio>

#include "engine/error.h"

namespace moce {

void add_training_flags(Args& a, const std::string& default_base_lr, const std::string& default_out,
                        const std::string& default_warmup) {
  a.add("data", "fashion-mnist", "training images: an ImageFolder root (root/<class>/<image>), fashion-mnist, or cifar10-bin:DIR")
      .add("epochs", "5", "epochs to train")
      .add("batch", "128", "images per micro-batch")
      .add("accum-iter", "1", "micro-batches per optimizer step (gradient accumulation)")
      .add("out", default_out, "run directory (config, metrics, checkpoints)")
      .add("base-lr", default_base_lr, default_base_lr.empty()
               ? "base learning rate (default: the --init run's times 0.1, the paper's rule; 1.5e-5 when it does not say); "
                 "lr = base_lr * batch * accum_iter / 256"
               : "base learning rate; lr = base_lr * batch * accum_iter / 256")
      .add("min-lr", "0", "learning rate at the end of the cosine schedule")
      .add("warmup-epochs", default_warmup, "epochs of linear warm-up")
      .add("weight-decay", "0.05", "AdamW weight decay (not on biases and norm weights, as MAE)")
      .add("mask-ratio", "0.75", "fraction of patches removed")
      .add("clip-grad", "0", "clip the gradient norm to this (0 = off)")
      .add("seed", "0", "seed of everything random (init, data order, augmentation, masks)")
      .add("workers", "2", "data loader threads")
      .add("limit", "0", "use only the first N training images (0 = all)")
      .add("save-every", "1", "write a checkpoint every N epochs (and always at the end)")
      .add("log-every", "20", "print a progress line every N optimizer steps")
      .add("device", "cpu", "cpu, or cuda / cuda:N: model, gradients and optimizer state on that GPU")
      .add("precision", "f32", "f32; tf32: f32 with TF32 tensor-core GEMMs (CUDA only); or bf16: mixed precision (bf16 activations and GEMM operands, f32 master weights, optimizer state and loss; CUDA only)")
      .add("stop-after", "0", "stop after this many epochs of the schedule, as if interrupted (0 = run to --epochs); go on with --resume")
      .add("resume", "", "continue the run in this directory from its last checkpoint (other flags except --epochs and --device are taken from it)")
      .add("profile-steps", "", "FIRST:LAST: bracket optimizer steps FIRST..LAST (0-based, inclusive) with cudaProfilerStart/Stop "
                                "for nsys --capture-range=cudaProfilerApi or ncu --profile-from-start off")
      .flag("no-norm-pix-loss", "regress raw pixels instead of per-patch normalised ones")
      .flag("strict", "fail on the first corrupt image instead of skipping it");
}

void read_training_flags(const Args& a, PretrainOptions& o, PretrainSession& session) {
  if (a.given("resume")) {
    session.resume = a.str("resume");
    if (a.given("epochs")) session.epochs = a.i64("epochs");
    if (a.given("device")) session.device = a.str("device");
  } else {
    o.device = a.str("device");  // checked first thing by pretrain()
    o.precision = a.str("precision");
    o.data = a.str("data");
    o.epochs = a.i64("epochs");
    o.batch = a.i64("batch");
    o.accum = a.i64("accum-iter");
    o.out = a.str("out");
    o.base_lr = a.str("base-lr").empty() ? -1.0 : a.f64("base-lr");
    o.min_lr = a.f64("min-lr");
    o.warmup_epochs = a.i64("warmup-epochs");
    o.weight_decay = a.f64("weight-decay");
    o.mask_ratio = a.f64("mask-ratio");
    o.clip = a.f64("clip-grad");
    o.seed = uint64_t(a.i64("seed"));
    o.workers = a.i64("workers");
    o.limit = a.i64("limit");
    o.save_every = a.i64("save-every");
    o.log_every = a.i64("log-every");
    o.norm_pix_loss = !a.on("no-norm-pix-loss");
    o.strict = a.on("strict");
  }
  session.stop_after = a.i64("stop-after");
  if (a.given("profile-steps")) {
    const std::string v = a.str("profile-steps");
    long long first = -1, last = -1;
    char tail = 0;
    ENG_CHECK(std::sscanf(v.c_str(), "%lld:%lld%c", &first, &last, &tail) == 2 && first >= 0 && last >= first,
              "--profile-steps expects FIRST:LAST with 0 <= FIRST <= LAST, got '{}'", printable_arg(v));
    session.profile_first = first;
    session.profile_last = last;
  }
}

}  // namespace moce
