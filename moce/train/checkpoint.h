// checkpoint.h: the pre-training checkpoint of a run (weights + AdamW state + step + config + data/mask RNG
// position) and the loader that turns a checkpoint or a weights file back into a model for the other commands.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/io/checkpoint.h"
#include "engine/optim.h"
#include "model/mae.h"

namespace moce {

constexpr uint64_t kMaskStream = 0x6d61736b;  // "mask": the mask-noise stream of the run's seed

// A run folder keeps its two newest checkpoints: the last, and the one before it.
constexpr const char* kLastCheckpointName = "checkpoint-last.safetensors";
constexpr const char* kPrevCheckpointName = "checkpoint-prev.safetensors";

// Called just before a new checkpoint-last is written into `run_dir`: the current checkpoint-last, if any, becomes
// checkpoint-prev (replacing the older one) by a hard link renamed into place, so that at every moment a whole
// checkpoint-last exists (the new one then replaces its name atomically); where the file system has no hard links,
// by a rename. Errors name the files.
void keep_previous_checkpoint(const std::string& run_dir);

// The checkpoint `--resume run_dir` continues from: run_dir/checkpoint-last.safetensors, read and every tensor's
// checksum verified. When it is missing or damaged, the one-line error says so and, when checkpoint-prev loads, names
// it with its step and how to resume from it (rename it to checkpoint-last).
eng::Checkpoint load_run_checkpoint(const std::string& run_dir);

// Writes checkpoint-last.safetensors of a run (atomically, from host copies of the device tensors): the model, the
// optimizer, the run's config, and where its next session starts (epoch `next_epoch`).
// `extra`: tensors saved beside the model's (host tensors; MoCE's centroids).
void save_pretrain_checkpoint(const std::string& path, model::MaskedAutoencoder& model, const eng::AdamW& optimizer,
                              const nlohmann::json& config, uint64_t seed, int64_t next_epoch,
                              const std::map<std::string, eng::Tensor>& extra = {});

// The model a file describes: a moce checkpoint (format moce-checkpoint-v1) or a weights file; its config
// comes from the metadata "config" JSON (config["model"]), or from `config_name` when the file has none.
// With random_init the weights are not loaded (the same architecture at its seeded initialisation).
// `info` (optional) receives what was found: file, format, step, config source.
model::MaskedAutoencoder load_mae(const std::string& file, const std::string& config_name, bool random_init,
                                  uint64_t seed, nlohmann::json* info = nullptr);

}  // namespace moce
