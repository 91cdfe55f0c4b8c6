// bank.cpp: the feature bank's conversions and checks.
#include "moce/cluster/bank.h"

namespace moce::cluster {

std::string FeatureBank::row_name(int64_t row) const {
    if (row < int64_t(paths.size()) && !paths[size_t(row)].empty()) return paths[size_t(row)];
    return "image " + std::to_string(row < int64_t(image_index.size()) ? image_index[size_t(row)] : row);
  }

eng::Tensor FeatureBank::block_f32(int64_t start, int64_t count) const {
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

eng::Tensor FeatureBank::rows_f32(const int64_t* rows, int64_t count) const {
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

void FeatureBank::check() const {
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

void bf16_to_f32(const uint16_t* src, float* dst, int64_t count) {
  constexpr int64_t kChunk = 1 << 16;
  parallel_for(0, (count + kChunk - 1) / kChunk, 1, [&](int64_t c) {
    bf16_to_f32_row(src + c * kChunk, dst + c * kChunk, std::min(kChunk, count - c * kChunk)); });
}

FeatureBank bank_from_tensor(const eng::Tensor& features, std::vector<int64_t> image_index,
                             std::vector<std::string> paths) {
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
