// checkpoint.h: training checkpoints (weights + optimizer state + RNG state + step + config) in one
// safetensors file.
//
// Layout: model weights under their own names (so a checkpoint also loads as a plain weights file),
// optimizer tensors under "optim.<name>", and in __metadata__ (each value a JSON text):
//   "format": "moce-checkpoint-v1", "step": 123, "config": {...}, "rng": {...}, "optimizer": {...}.
// Writing is atomic (temporary file, fsync, rename): a crash mid-write leaves the previous checkpoint intact.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace eng {

constexpr const char* kCheckpointFormat = "moce-checkpoint-v1";
constexpr const char* kOptimizerPrefix = "optim.";

struct Checkpoint {
  std::map<std::string, Tensor> weights;          // model parameters and buffers, by timm/MAE name
  std::map<std::string, Tensor> optimizer_state;  // e.g. "exp_avg.blocks.0.attn.qkv.weight" (stored with "optim.")
  int64_t step = 0;                               // optimizer steps taken
  nlohmann::json config = nlohmann::json::object();     // the configuration that made the run
  nlohmann::json rng = nlohmann::json::object();        // generator state(s), e.g. {"seed":..,"stream":..,"offset":..}
  nlohmann::json optimizer = nlohmann::json::object();  // optimizer hyper-parameters and scalar state
};

// Throws eng::Error (naming the file) if a weight name starts with "optim." or a tensor is undefined;
// the file at `path` is then left as it was.
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);

// Errors: "<file>: not a moce checkpoint" when the format key is missing, a wrong format version,
// metadata that is not valid JSON, plus everything load_safetensors reports.
Checkpoint load_checkpoint(const std::string& path);

// Checks that `loaded` has exactly the tensors of `expected` with the same shapes and dtypes; otherwise
// throws naming the first (by name) missing, unexpected or mismatched tensor and how many of each there are,
// e.g. when a checkpoint comes from another model.
void check_state_matches(const std::map<std::string, Tensor>& expected, const std::map<std::string, Tensor>& loaded,
                         const std::string& file);

}  // namespace eng
