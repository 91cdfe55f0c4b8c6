// downstream_flags.h: the flags `moce finetune` and `moce linprobe` share (the model file, the downstream data and
// its splits, the output folder), declared once so both list and read them the same way.
#pragma once
#include <cstdint>
#include <string>

#include "moce/common/cli.h"
#include "moce/finetune/downstream.h"

namespace moce {

void add_downstream_flags(Args& a);
void read_downstream_flags(const Args& a, std::string& model_file, int64_t& heads, finetune::DownstreamOptions& data,
                           std::string& out);

}  // namespace moce
