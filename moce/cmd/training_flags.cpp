// training_flags.cpp: the flags of the training loop shared by `moce pretrain` and `moce train`.
#include "moce/cmd/training_flags.h"

#include <cstdio>

#include "engine/error.h"
#include "moce/train/pretrain_config.h"

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
      .add("resume", "", "continue the run in this directory from its last checkpoint; its saved options are used, and "
                         "every other flag given is ignored with a note, except --epochs (a new total: the cosine schedule "
                         "is rebuilt over it from the current step, with a note), --device, --stop-after and --profile-steps")
      .add("profile-steps", "", "FIRST:LAST: bracket optimizer steps FIRST..LAST (0-based, inclusive) with cudaProfilerStart/Stop "
                                "for nsys --capture-range=cudaProfilerApi or ncu --profile-from-start off")
      .flag("no-norm-pix-loss", "regress raw pixels instead of per-patch normalised ones")
      .flag("strict", "fail on the first corrupt image instead of skipping it")
      .flag("force", "a new run (no --resume) replaces the records of another run in --out (config.json, metrics.jsonl, "
                     "checkpoints, weights, loss.png), which is otherwise refused");
}

// The flags a resumed run still reads; every other one would be silently replaced by the saved run's value.
static bool read_on_resume(const std::string& name) {
  return name == "resume" || name == "epochs" || name == "device" || name == "stop-after" || name == "profile-steps";
}

void read_training_flags(const Args& a, PretrainOptions& o, PretrainSession& session) {
  if (a.given("resume")) {
    session.resume = a.str("resume");
    if (a.given("epochs")) session.epochs = a.i64_at_least("epochs", 1);
    if (a.given("device")) session.device = a.str("device");
    for (const std::string& name : a.given_names())
      if (!read_on_resume(name))
        std::fprintf(stderr, "note: --%s is ignored with --resume: the run goes on with the options saved in its "
                     "checkpoint (a new run with another --out can change them)\n", name.c_str());
  } else {
    o.device = a.str("device");  // checked first thing by pretrain()
    o.precision = a.str("precision");
    o.data = a.str("data");
    o.epochs = a.i64("epochs");
    o.batch = a.i64("batch");
    o.accum = a.i64("accum-iter");
    o.out = a.str("out");
    o.base_lr = a.str("base-lr").empty() ? -1.0 : a.f64_at_least("base-lr", 0);
    o.min_lr = a.f64("min-lr");
    o.warmup_epochs = a.i64("warmup-epochs");
    o.weight_decay = a.f64("weight-decay");
    o.mask_ratio = a.f64("mask-ratio");
    o.clip = a.f64("clip-grad");
    o.seed = uint64_t(a.i64_at_least("seed", 0));
    o.workers = a.i64("workers");
    o.limit = a.i64("limit");
    o.save_every = a.i64("save-every");
    o.log_every = a.i64("log-every");
    o.norm_pix_loss = !a.on("no-norm-pix-loss");
    o.strict = a.on("strict");
    session.force = a.on("force");
    // The ranges (pretrain_config.h), here as well as in pretrain(): the flag parser and a resumed config share them.
    validate_options(o);
  }
  session.stop_after = a.i64_at_least("stop-after", 0);
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
