// pretrain.h: MAE pre-training, the `moce pretrain` subcommand.
//
// One run directory holds: config.json (everything that defines the run), metrics.jsonl (one JSON object
// per log interval and per epoch), checkpoint-last.safetensors (weights + AdamW state + step + config +
// data/mask RNG position, written atomically at the end of every --save-every epochs and at the end),
// weights.safetensors (the final model weights, MAE names) and loss.png (the loss curve, redrawn every epoch).
//
// Reproducibility: data order and augmentation are keyed by (seed, epoch, image index) and the mask noise
// by (seed, micro-batch number), so `--resume RUN_DIR` continues exactly: its losses equal those of an
// uninterrupted run, bit for bit.
#pragma once
#include <string>

namespace moce {

int cmd_pretrain(int argc, char** argv);

}  // namespace moce
