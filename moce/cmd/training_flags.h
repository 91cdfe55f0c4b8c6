// training_flags.h: the flags `moce pretrain` and `moce train` share (the loop's: data, schedule, checkpoints,
// device, resume, profiling), declared once so both list and read them the same way.
#pragma once
#include "moce/common/cli.h"
#include "moce/train/pretrain.h"

namespace moce {

// Adds the loop's flags; `default_base_lr` is the --base-lr default shown ("" for moce train: the init's x 0.1).
void add_training_flags(Args& a, const std::string& default_base_lr, const std::string& default_out,
                        const std::string& default_warmup);
// Reads them into the options (when not resuming) and the session (resume, --epochs, --device, stop, profiling).
void read_training_flags(const Args& a, PretrainOptions& o, PretrainSession& session);

}  // namespace moce
