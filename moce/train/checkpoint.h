// checkpoint.h: the pre-training checkpoint of a run (weights + AdamW state + step + config + data/mask RNG
// position) and the loader that turns a checkpoint or a weights file back into a model for the other commands.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/optim.h"
#include "model/mae.h"

namespace moce {

constexpr uint64_t kMaskStream = 0x6d61736b;  // "mask": the mask-noise stream of the run's seed

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
