// dataset.h: a dataset by the name a --data flag gives, shared by every subcommand.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "data/dataset.h"

namespace moce {

// A dataset by name:
//   "fashion-mnist"      Fashion-MNIST, split "train" (train) or "t10k" (test)
//   "cifar10-bin:DIR"    the CIFAR-10 binary batches in DIR (data_batch_*.bin or test_batch.bin)
//   anything else        an ImageFolder root (root/<class>/<image>)
std::shared_ptr<data::Dataset> open_dataset(const std::string& spec, bool train);
// The first `limit` samples of `ds` (ds itself when limit <= 0 or limit >= size).
std::shared_ptr<const data::Dataset> limit_dataset(std::shared_ptr<const data::Dataset> ds, int64_t limit);

}  // namespace moce
