// pretrain_config.h: a pre-training run's options as JSON: the "run" entry of config.json and of the checkpoint,
// from where --resume takes them back.
#pragma once
#include <nlohmann/json.hpp>

#include "moce/train/pretrain.h"

namespace moce {

nlohmann::json options_to_json(const PretrainOptions& options);
// The one set of rules for a run's options, whether they came from the flags (read_training_flags) or from a saved
// run's config (--resume): every number in its range, named by its flag ("--base-lr -1: expected a finite number >=
// 0"), the warm-up within the run, --min-lr not above the learning rate. base_lr < 0 is moce train's "from --init"
// (resolved later) and then only -1 is accepted.
void validate_options(const PretrainOptions& options);
// Throws on a missing key; `precision` may be absent (runs saved before --precision existed were f32).
PretrainOptions options_from_json(const nlohmann::json& j);

}  // namespace moce
