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
inline void bf16_to_f32(const uint16_t* src, float* dst, int64_t count) {
  constexpr int64_t kChunk = 1 << 16;
  parallel_for(0, (count + kChunk - 1) / kChunk, 1, [&](int64_t c) {
    bf16_to_f32_row(src + c * kChunk, dst + c * kChunk, std::min(kChunk, count - c * kChunk)); });
}

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
  std::string row_name(int64_t row) const {
    if (row < int64_t(paths.size()) && !paths[size_t(row)].empty()) return paths[size_t(row)];
    return "image " + std::to_string(row < int64_t(image_index.size()) ? image_index[size_t(row)] : row);
  }
  float value(int64_t row, int64_t col) const {
    const size_t i = size_t(row) * size_t(d) + size_t(col);
    if (dtype == eng::DType::BF16) return float(static_cast<const eng::bf16*>(data)[i]);
    return static_cast<const float*>(data)[i];
  }
  // Copies rows [start, start + count) converted to f32, [count, d].
  eng::Tensor block_f32(int64_t start, int64_t count) const {
    ENG_CHECK(start >= 0 && count >= 0 && start + count <= n, "feature bank: rows [{}, {}) out of range (n = {})", start,
              start + count, n);
    eng::Tensor out = eng::Tensor::empty({count, d});
    float* o = out.data<float>();
    const int64_t total = count * d;
    if (dtype == eng::DType::BF16) {
      bf16_to_f32(static_cast<const uint16_t*>(data) + start * d, o, total);
    } else {
      const float* src = static_cast<const float*>(data) + start * d;
      std::memcpy(o, src, size_t(total) * sizeof(float));
    }
    return out;
  }
  // Copies the given rows (in that order) converted to f32, [rows.size(), d].
  eng::Tensor rows_f32(const int64_t* rows, int64_t count) const {
    eng::Tensor out = eng::Tensor::empty({count, d});
    float* o = out.data<float>();
    parallel_for(0, count, 64, [&](int64_t r) {
      const int64_t row = rows[r];
      if (dtype == eng::DType::BF16) {
        bf16_to_f32_row(static_cast<const uint16_t*>(data) + row * d, o + r * d, d);
      } else {
        const float* src = static_cast<const float*>(data) + row * d;
        for (int64_t j = 0; j < d; j++) o[r * d + j] = src[j];
      }
    });
    return out;
  }
  // Throws naming the first row that is not finite, and on an empty bank; the bank's own checks, run before clustering.
  void check() const {
    ENG_CHECK(n > 0 && d > 0, "feature bank{}: is empty ({} images x {} dims)", source.empty() ? "" : " " + source, n, d);
    ENG_CHECK(dtype == eng::DType::F32 || dtype == eng::DType::BF16, "feature bank{}: features must be f32 or bf16, not {}",
              source.empty() ? "" : " " + source, eng::dtype_name(dtype));
    ENG_CHECK(image_index.empty() || int64_t(image_index.size()) == n, "feature bank: {} image indices for {} rows",
              image_index.size(), n);
    ENG_CHECK(paths.empty() || int64_t(paths.size()) == n, "feature bank: {} paths for {} rows", paths.size(), n);
    std::vector<uint8_t> bad(size_t(n), 0);
    parallel_for(0, n, 64, [&](int64_t r) {
      for (int64_t j = 0; j < d; j++)
        if (!std::isfinite(value(r, j))) { bad[size_t(r)] = 1; break; }
    });
    for (int64_t r = 0; r < n; r++)
      ENG_CHECK(!bad[size_t(r)], "feature bank{}: the feature of {} (row {}) is not finite", source.empty() ? "" : " " + source,
                row_name(r), r);
  }
};

// A bank over a [n, d] f32 or bf16 CPU tensor (kept alive by the bank), image indices 0..n-1 unless given.
inline FeatureBank bank_from_tensor(const eng::Tensor& features, std::vector<int64_t> image_index = {},
                                    std::vector<std::string> paths = {}) {
  ENG_CHECK(features.dim() == 2, "feature bank: features must be [images, dims], got {}", eng::shape_str(features.shape()));
  eng::Tensor f = features.contiguous();
  ENG_CHECK(f.device().is_cpu(), "feature bank: features must be on the CPU");
  FeatureBank b;
  b.dtype = f.dtype();
  ENG_CHECK(b.dtype == eng::DType::F32 || b.dtype == eng::DType::BF16, "feature bank: features must be f32 or bf16, not {}",
            eng::dtype_name(b.dtype));
  b.n = f.size(0);
  b.d = f.size(1);
  b.data = f.raw_data();
  b.owner = f.storage();
  if (image_index.empty())
    for (int64_t i = 0; i < b.n; i++) image_index.push_back(i);
  b.image_index = std::move(image_index);
  b.paths = std::move(paths);
  return b;
}

}  // namespace moce::cluster
