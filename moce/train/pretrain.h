// pretrain.h: MAE pre-training, the library function under the `moce pretrain` subcommand (moce/cmd/cmd_pretrain.cpp).
//
// One run directory holds: config.json (everything that defines the run), metrics.jsonl (one JSON object
// per log interval and per epoch), checkpoint-last.safetensors (weights + AdamW state + step + config +
// data/mask RNG position, written atomically at the end of every --save-every epochs and at the end),
// weights.safetensors (the final model weights, MAE names) and loss.png (the loss curve, redrawn every epoch).
//
// The folder (moce/common/run_folder.h): every option is validated (validate_options, the saved config's too on
// resume) and the data opened before any file is touched; then the folder is locked (<out>/.lock, one run at a time)
// and a new run refuses another run's records there unless PretrainSession::force.
//
// Reproducibility: data order and augmentation are keyed by (seed, epoch, image index) and the mask noise
// by (seed, micro-batch number), so `--resume RUN_DIR` continues exactly: its losses equal those of an
// uninterrupted run on the same device, bit for bit.
//
// Devices: with --device cuda[:N] the model, its gradients and the AdamW state live on the GPU; batches reach it
// through pinned host buffers and asynchronous copies that overlap the previous step (moce/common/batch_feed.h); checkpoints
// are written from host copies and load onto whichever device the resumed run uses.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moce/train/expert_training.h"

namespace moce {

// What defines a run: saved in config.json and in the checkpoint, from where --resume takes it back.
struct PretrainOptions {
  std::string data = "fashion-mnist", config = "mae_tiny_p4_32", out = "runs/pretrain", device = "cpu";
  int64_t epochs = 5, batch = 128, accum = 1, save_every = 1, warmup_epochs = 1, workers = 2, limit = 0, log_every = 20;
  double base_lr = 1.5e-4, min_lr = 0, weight_decay = 0.05, mask_ratio = 0.75, clip = 0;
  uint64_t seed = 0;
  bool strict = false, norm_pix_loss = true;
  std::string precision = "f32";  // f32, tf32 (f32 with TF32 GEMMs) or bf16 mixed precision (CUDA only; model/mae.h)
  // `moce train` (moce/train/expert_training.h): "mae" is pre-training from scratch (moce pretrain); "dense", "moce"
  // and "tokenmoe" continue the MAE in `init` (its model config replaces `config`); base_lr < 0 then means the init
  // run's base learning rate times 0.1 (the paper's rule; MAE's 1.5e-4 when the file does not say).
  std::string method = "mae";
  std::string init, clusters;  // the dense MAE to continue; MoCE: the `moce cluster` output folder
  ExpertOptions experts;
};

// What one invocation does with the run.
struct PretrainSession {
  std::string resume;        // continue the run in this directory ("" = start a new run from the options)
  int64_t epochs = 0;        // with resume: a new total number of epochs (0 = the saved one)
  std::string device;        // with resume: train on this device instead of the saved one ("" = the saved one)
  int64_t stop_after = 0;    // stop after this many epochs of the schedule, as if interrupted (0 = run to the end)
  bool force = false;        // a new run may replace the records of another run in its --out folder (run_folder.h)
  // Optimizer steps (0-based, counted from the start of the run) to bracket with cudaProfilerStart/Stop, for
  // `nsys --capture-range=cudaProfilerApi` or `ncu --profile-from-start off`; -1 = none. CUDA only.
  int64_t profile_first = -1, profile_last = -1;
};

struct PretrainResult {
  int status = 0;                   // 0: finished or stopped as asked; 2: stopped on a non-finite loss or gradient
  std::vector<double> step_losses;  // the mean loss of every optimizer step this call ran, in order
  int64_t epochs_done = 0;          // epochs of the run completed so far (including those before a resume)
};

// Runs (or resumes) a pre-training run, or a `moce train` run (options.method); what `moce pretrain` and `moce train`
// do after parsing their flags. Bad input throws
// eng::Error with one line naming the flag or file; a non-finite loss or gradient prints its line on stderr and
// returns status 2 (the last good checkpoint is kept).
PretrainResult pretrain(const PretrainOptions& options, const PretrainSession& session = {});

}  // namespace moce
