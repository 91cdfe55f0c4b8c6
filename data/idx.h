// idx.h: the IDX format (MNIST, Fashion-MNIST), plain or gzipped.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace data {

struct IdxArray {
  std::vector<int64_t> dims;   // e.g. {60000, 28, 28} for images, {60000} for labels
  std::vector<uint8_t> bytes;  // unsigned-byte payload, row-major
};

// Reads an IDX file of unsigned bytes (type 0x08); `.gz` files are inflated with zlib.
// Errors name the file and what is wrong (missing, truncated, bad magic, unsupported type).
IdxArray read_idx(const std::string& path);

// Fashion-MNIST as Debian's dataset-fashion-mnist installs it.
std::string fashion_mnist_dir();  // the folder, or "" when it is not installed

struct LabelledImages {
  eng::Tensor images;  // f32 [N, C, H, W] in [0, 1]
  eng::Tensor labels;  // i64 [N]
};

// Loads split "train" or "t10k" of an MNIST-style folder; `limit` > 0 keeps the first `limit` images.
LabelledImages load_mnist_split(const std::string& dir, const std::string& split, int64_t limit = 0);

}  // namespace data
