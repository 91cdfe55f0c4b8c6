// moce/cluster/bank.h: the feature bank, n L2-normalised image features [n, d] in f32 or bf16 with each row's image
// index and path, held in memory or read in place from a mapped file; rows come out as f32 tensors batch by batch.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/tensor.h"
#include "moce/cluster/parallel.h"

namespace moce::cluster {

// bf16 (the upper half of an f32) to f32: the bits shifted, a loop the compiler vectorises.
inline void bf16_to_f32_row(const uint16_t* src, float* dst, int64_t count) {
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < count; i++) out[i] = uint32_t(src[i]) << 16;
}
void bf16_to_f32(const uint16_t* src, float* dst, int64_t count);

struct FeatureBank {
  // Row-major [n, d] of F32 or BF16. `owner` keeps the memory alive: a tensor's storage or a file mapping.
  const void* data = nullptr;
  eng::DType dtype = eng::DType::F32;
  int64_t n = 0, d = 0;
  std::shared_ptr<const void> owner;
  std::vector<int64_t> image_index;  // per row: the image's index in its data set
  std::vector<std::string> paths;    // per row: the image's path or id (may be empty: then the index names it)
  std::string checkpoint_identity;   // what made the features (the MAE checkpoint's name and digest)
  std::string pool = "mean";         // "mean" (patch tokens after the final norm) or "cls"
  std::string source;                // the bank's file when read from one, for error messages

  int64_t size() const { return n; }
  int64_t dim() const { return d; }
  // How a row is named in messages: its path, else its image index.
  std::string row_name(int64_t row) const;
  float value(int64_t row, int64_t col) const {
    const size_t i = size_t(row) * size_t(d) + size_t(col);
    if (dtype == eng::DType::BF16) return float(static_cast<const eng::bf16*>(data)[i]);
    return static_cast<const float*>(data)[i];
  }
  // Copies rows [start, start + count) converted to f32, [count, d].
  eng::Tensor block_f32(int64_t start, int64_t count) const;
  // Copies the given rows (in that order) converted to f32, [rows.size(), d].
  eng::Tensor rows_f32(const int64_t* rows, int64_t count) const;
  // Throws naming the first row that is not finite, and on an empty bank; the bank's own checks, run before clustering.
  void check() const;
};

// A bank over a [n, d] f32 or bf16 CPU tensor (kept alive by the bank), image indices 0..n-1 unless given.
FeatureBank bank_from_tensor(const eng::Tensor& features, std::vector<int64_t> image_index = {},
                             std::vector<std::string> paths = {});

}  // namespace moce::cluster
