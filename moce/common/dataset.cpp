// dataset.cpp: opening a dataset by name, and its first N samples.
#include "moce/common/dataset.h"

#include <numeric>
#include <vector>

#include "engine/error.h"

namespace moce {

std::shared_ptr<data::Dataset> open_dataset(const std::string& spec, bool train) {
  ENG_CHECK(!spec.empty(), "empty dataset name (use fashion-mnist, cifar10-bin:DIR or an image folder)");
  if (spec == "fashion-mnist") return data::fashion_mnist(train ? "train" : "t10k");
  const std::string cifar = "cifar10-bin:";
  if (spec.compare(0, cifar.size(), cifar) == 0) return data::CifarBinary::cifar10(spec.substr(cifar.size()), train);
  return std::make_shared<data::ImageFolder>(spec);
}

std::shared_ptr<const data::Dataset> limit_dataset(std::shared_ptr<const data::Dataset> ds, int64_t limit) {
  if (limit <= 0 || limit >= ds->size()) return ds;
  std::vector<int64_t> idx(static_cast<size_t>(limit));
  std::iota(idx.begin(), idx.end(), int64_t(0));
  return std::make_shared<data::SubsetDataset>(ds, std::move(idx));
}

}  // namespace moce
