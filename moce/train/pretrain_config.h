// pretrain_config.h: a pre-training run's options as JSON: the "run" entry of config.json and of the checkpoint,
// from where --resume takes them back.
#pragma once
#include <nlohmann/json.hpp>

#include "moce/train/pretrain.h"

namespace moce {

nlohmann::json options_to_json(const PretrainOptions& options);
// Throws on a missing key; `precision` may be absent (runs saved before --precision existed were f32).
PretrainOptions options_from_json(const nlohmann::json& j);

}  // namespace moce
