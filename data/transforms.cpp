// transforms.cpp: separable PIL-style resampling, crops, flips, normalisation, and the Pipeline.
#include "data/transforms.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace data {

namespace {

// The image as a contiguous f32 CPU [C, H, W] tensor, or an error naming the transform.
eng::Tensor checked_chw(const eng::Tensor& image, const char* who) {
  ENG_CHECK(image.defined(), "{}: undefined image tensor", who);
  ENG_CHECK(image.dim() == 3, "{}: expected an image [C, H, W], got {}", who, eng::shape_str(image.shape()));
  ENG_CHECK(image.dtype() == eng::DType::F32 && image.device().is_cpu(), "{}: expected an f32 CPU tensor, got {}",
            who, image.str());
  ENG_CHECK(image.size(1) > 0 && image.size(2) > 0, "{}: empty image {}", who, eng::shape_str(image.shape()));
  return image.contiguous();
}

// Uniform double in [0, 1) from one counter (53 bits).
double draw_uniform(eng::Generator& gen) { return double(gen.next_u64() >> 11) * (1.0 / 9007199254740992.0); }
// Uniform integer in [0, n) from one counter (top bits of a 64x64 product: no modulo bias worth naming).
int64_t draw_below(eng::Generator& gen, int64_t n) {
  return int64_t((unsigned __int128)gen.next_u64() * (unsigned __int128)uint64_t(n) >> 64);
}

double filter_support(Interpolation ip) { return ip == Interpolation::Bilinear ? 1.0 : 2.0; }
double filter_weight(Interpolation ip, double x) {
  x = std::fabs(x);
  if (ip == Interpolation::Bilinear) return x < 1.0 ? 1.0 - x : 0.0;
  const double a = -0.5;  // PIL's bicubic (and torchvision's antialiased bicubic)
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// For each output position along one axis: the first input tap (relative to the window) and its weights.
struct AxisTaps {
  int64_t max_taps = 0;
  std::vector<int64_t> first, count;
  std::vector<double> weights;  // out_len x max_taps, zero-padded
};

AxisTaps axis_taps(int64_t in_len, int64_t out_len, Interpolation ip, bool antialias) {
  const double scale = double(in_len) / double(out_len);
  const double stretch = (antialias && scale > 1.0) ? scale : 1.0;
  const double support = filter_support(ip) * stretch;
  AxisTaps t;
  t.max_taps = int64_t(std::ceil(support)) * 2 + 1;
  t.first.resize(size_t(out_len));
  t.count.resize(size_t(out_len));
  t.weights.assign(size_t(out_len * t.max_taps), 0.0);
  for (int64_t o = 0; o < out_len; o++) {
    const double center = (double(o) + 0.5) * scale;
    // Truncation toward zero then clamping, as PIL and torch do.
    const int64_t lo = std::max<int64_t>(int64_t(center - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(int64_t(center + support + 0.5), in_len);
    const int64_t n = std::min(hi - lo, t.max_taps);
    double* w = &t.weights[size_t(o * t.max_taps)];
    double total = 0.0;
    for (int64_t k = 0; k < n; k++) {
      w[k] = filter_weight(ip, (double(lo + k) - center + 0.5) / stretch);
      total += w[k];
    }
    ENG_CHECK(total != 0.0, "resample: no weight for output {} of {} (input {})", o, out_len, in_len);
    for (int64_t k = 0; k < n; k++) w[k] /= total;
    t.first[size_t(o)] = lo;
    t.count[size_t(o)] = n;
  }
  return t;
}

eng::Tensor resample(const eng::Tensor& img, const CropBox& box, int64_t out_h, int64_t out_w, Interpolation ip,
                     bool antialias, const char* who) {
  const int64_t c = img.size(0), h = img.size(1), w = img.size(2);
  ENG_CHECK(out_h > 0 && out_w > 0, "{}: output size {}x{} must be positive", who, out_h, out_w);
  ENG_CHECK(box.height > 0 && box.width > 0 && box.top >= 0 && box.left >= 0 && box.top + box.height <= h &&
                box.left + box.width <= w,
            "{}: crop box (top {}, left {}, {}x{}) does not fit in the {}x{} image", who, box.top, box.left,
            box.height, box.width, h, w);
  const AxisTaps tx = axis_taps(box.width, out_w, ip, antialias);
  const AxisTaps ty = axis_taps(box.height, out_h, ip, antialias);
  const float* src = img.data<float>();
  // Horizontal pass over the rows of the window, kept in double, then the vertical pass.
  std::vector<double> rows(size_t(c * box.height * out_w));
  for (int64_t k = 0; k < c; k++) {
    for (int64_t y = 0; y < box.height; y++) {
      const float* in = src + (k * h + box.top + y) * w + box.left;
      double* out = &rows[size_t((k * box.height + y) * out_w)];
      for (int64_t o = 0; o < out_w; o++) {
        const double* wt = &tx.weights[size_t(o * tx.max_taps)];
        const float* p = in + tx.first[size_t(o)];
        double s = 0.0;
        for (int64_t t = 0; t < tx.count[size_t(o)]; t++) s += wt[t] * double(p[t]);
        out[o] = s;
      }
    }
  }
  eng::Tensor result = eng::Tensor::empty({c, out_h, out_w});
  float* dst = result.data<float>();
  std::vector<double> acc(static_cast<size_t>(out_w));
  for (int64_t k = 0; k < c; k++) {
    for (int64_t o = 0; o < out_h; o++) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const double* wt = &ty.weights[size_t(o * ty.max_taps)];
      for (int64_t t = 0; t < ty.count[size_t(o)]; t++) {
        const double* row = &rows[size_t((k * box.height + ty.first[size_t(o)] + t) * out_w)];
        for (int64_t x = 0; x < out_w; x++) acc[size_t(x)] += wt[t] * row[x];
      }
      float* out = dst + (k * out_h + o) * out_w;
      for (int64_t x = 0; x < out_w; x++) out[x] = float(acc[size_t(x)]);
    }
  }
  return result;
}

const char* interp_name(Interpolation ip) { return ip == Interpolation::Bilinear ? "bilinear" : "bicubic"; }

void check_stats(const std::vector<float>& mean, const std::vector<float>& std, int64_t channels, const char* who) {
  ENG_CHECK(int64_t(mean.size()) == channels && int64_t(std.size()) == channels,
            "{}: {} means and {} stds for {} channels", who, mean.size(), std.size(), channels);
  for (float s : std) ENG_CHECK(s > 0.0f && std::isfinite(s), "{}: std {} must be positive", who, s);
}

// Applies f(x, mean[c], std[c]) over [C, H, W] or [N, C, H, W].
template <typename F>
eng::Tensor per_channel(const eng::Tensor& images, const std::vector<float>& mean, const std::vector<float>& std,
                        const char* who, F f) {
  ENG_CHECK(images.defined() && (images.dim() == 3 || images.dim() == 4),
            "{}: expected [C, H, W] or [N, C, H, W], got {}", who,
            images.defined() ? eng::shape_str(images.shape()) : "undefined");
  ENG_CHECK(images.dtype() == eng::DType::F32 && images.device().is_cpu(), "{}: expected an f32 CPU tensor, got {}",
            who, images.str());
  const int64_t n = images.dim() == 4 ? images.size(0) : 1;
  const int64_t c = images.size(-3), hw = images.size(-2) * images.size(-1);
  check_stats(mean, std, c, who);
  eng::Tensor in = images.contiguous();
  eng::Tensor out = eng::Tensor::empty(images.shape());
  const float* s = in.data<float>();
  float* d = out.data<float>();
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < c; k++) {
      const float m = mean[size_t(k)], sd = std[size_t(k)];
      const int64_t base = (i * c + k) * hw;
      for (int64_t p = 0; p < hw; p++) d[base + p] = f(s[base + p], m, sd);
    }
  return out;
}

}  // namespace

// ---- operations ------------------------------------------------------------------------------------------

CropBox random_resized_crop_box(int64_t height, int64_t width, std::pair<double, double> scale,
                                std::pair<double, double> ratio, eng::Generator& gen) {
  ENG_CHECK(height > 0 && width > 0, "RandomResizedCrop: empty {}x{} image", height, width);
  const double area = double(height) * double(width);
  const double log_r0 = std::log(ratio.first), log_r1 = std::log(ratio.second);
  for (int attempt = 0; attempt < 10; attempt++) {
    const double target_area = area * (scale.first + (scale.second - scale.first) * draw_uniform(gen));
    const double aspect = std::exp(log_r0 + (log_r1 - log_r0) * draw_uniform(gen));
    const int64_t w = int64_t(std::nearbyint(std::sqrt(target_area * aspect)));
    const int64_t h = int64_t(std::nearbyint(std::sqrt(target_area / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      CropBox box;
      box.height = h;
      box.width = w;
      box.top = draw_below(gen, height - h + 1);
      box.left = draw_below(gen, width - w + 1);
      return box;
    }
  }
  // Fallback: the whole image, clamped to the allowed aspect ratios, centred.
  const double in_ratio = double(width) / double(height);
  const double rmin = std::min(ratio.first, ratio.second), rmax = std::max(ratio.first, ratio.second);
  CropBox box;
  if (in_ratio < rmin) {
    box.width = width;
    box.height = int64_t(std::nearbyint(double(width) / rmin));
  } else if (in_ratio > rmax) {
    box.height = height;
    box.width = int64_t(std::nearbyint(double(height) * rmax));
  } else {
    box.width = width;
    box.height = height;
  }
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

eng::Tensor resized_crop(const eng::Tensor& image, const CropBox& box, int64_t out_h, int64_t out_w,
                         Interpolation interpolation, bool antialias) {
  eng::Tensor img = checked_chw(image, "resized_crop");
  return resample(img, box, out_h, out_w, interpolation, antialias, "resized_crop");
}

eng::Tensor resize(const eng::Tensor& image, int64_t out_h, int64_t out_w, Interpolation interpolation,
                   bool antialias) {
  eng::Tensor img = checked_chw(image, "resize");
  CropBox all{0, 0, img.size(1), img.size(2)};
  return resample(img, all, out_h, out_w, interpolation, antialias, "resize");
}

eng::Tensor crop(const eng::Tensor& image, const CropBox& box) {
  eng::Tensor img = checked_chw(image, "crop");
  ENG_CHECK(box.height > 0 && box.width > 0, "crop: empty box {}x{}", box.height, box.width);
  const int64_t c = img.size(0), h = img.size(1), w = img.size(2);
  eng::Tensor out = eng::Tensor::zeros({c, box.height, box.width});
  const float* s = img.data<float>();
  float* d = out.data<float>();
  const int64_t x0 = std::max<int64_t>(box.left, 0), x1 = std::min(box.left + box.width, w);
  for (int64_t k = 0; k < c; k++)
    for (int64_t y = 0; y < box.height; y++) {
      const int64_t sy = box.top + y;
      if (sy < 0 || sy >= h || x0 >= x1) continue;
      std::copy(s + (k * h + sy) * w + x0, s + (k * h + sy) * w + x1, d + (k * box.height + y) * box.width + (x0 - box.left));
    }
  return out;
}

eng::Tensor hflip(const eng::Tensor& image) {
  eng::Tensor img = checked_chw(image, "hflip");
  const int64_t rows = img.size(0) * img.size(1), w = img.size(2);
  eng::Tensor out = eng::Tensor::empty(img.shape());
  const float* s = img.data<float>();
  float* d = out.data<float>();
  for (int64_t r = 0; r < rows; r++) std::reverse_copy(s + r * w, s + (r + 1) * w, d + r * w);
  return out;
}

CropBox center_crop_box(int64_t height, int64_t width, int64_t crop_h, int64_t crop_w) {
  CropBox box;
  box.height = crop_h;
  box.width = crop_w;
  // torchvision pads a too-small image by (crop - size) // 2 before cropping: the same as a negative offset.
  box.top = crop_h > height ? -((crop_h - height) / 2) : int64_t(std::nearbyint(double(height - crop_h) / 2.0));
  box.left = crop_w > width ? -((crop_w - width) / 2) : int64_t(std::nearbyint(double(width - crop_w) / 2.0));
  return box;
}

const std::vector<float>& imagenet_mean() {
  static const std::vector<float> m = {0.485f, 0.456f, 0.406f};
  return m;
}
const std::vector<float>& imagenet_std() {
  static const std::vector<float> s = {0.229f, 0.224f, 0.225f};
  return s;
}

eng::Tensor normalize(const eng::Tensor& images, const std::vector<float>& mean, const std::vector<float>& std) {
  return per_channel(images, mean, std, "normalize", [](float x, float m, float s) { return (x - m) / s; });
}

eng::Tensor unnormalize(const eng::Tensor& images, const std::vector<float>& mean, const std::vector<float>& std) {
  return per_channel(images, mean, std, "unnormalize", [](float x, float m, float s) { return x * s + m; });
}

// ---- Transform objects -----------------------------------------------------------------------------------

RandomResizedCrop::RandomResizedCrop(int64_t height, int64_t width, std::pair<double, double> scale,
                                     std::pair<double, double> ratio, Interpolation interpolation, bool antialias)
    : height_(height), width_(width), scale_(scale), ratio_(ratio), interpolation_(interpolation),
      antialias_(antialias) {
  ENG_CHECK(height > 0 && width > 0, "RandomResizedCrop: size {}x{} must be positive", height, width);
  ENG_CHECK(scale.first > 0 && scale.first <= scale.second && scale.second <= 1.0,
            "RandomResizedCrop: scale ({}, {}) must satisfy 0 < lo <= hi <= 1", scale.first, scale.second);
  ENG_CHECK(ratio.first > 0 && ratio.first <= ratio.second, "RandomResizedCrop: ratio ({}, {}) must satisfy 0 < lo <= hi",
            ratio.first, ratio.second);
}

eng::Tensor RandomResizedCrop::apply(const eng::Tensor& image, eng::Generator& gen) const {
  eng::Tensor img = checked_chw(image, "RandomResizedCrop");
  CropBox box = random_resized_crop_box(img.size(1), img.size(2), scale_, ratio_, gen);
  return resample(img, box, height_, width_, interpolation_, antialias_, "RandomResizedCrop");
}

std::string RandomResizedCrop::describe() const {
  return fmt::format("RandomResizedCrop({}x{}, scale=({}, {}), ratio=({:.4g}, {:.4g}), {}{})", height_, width_,
                     scale_.first, scale_.second, ratio_.first, ratio_.second, interp_name(interpolation_),
                     antialias_ ? ", antialias" : "");
}

RandomHorizontalFlip::RandomHorizontalFlip(double p) : p_(p) {
  ENG_CHECK(p >= 0.0 && p <= 1.0, "RandomHorizontalFlip: p = {} is not a probability", p);
}

eng::Tensor RandomHorizontalFlip::apply(const eng::Tensor& image, eng::Generator& gen) const {
  // Always draw, so the counters used do not depend on p.
  return draw_uniform(gen) < p_ ? hflip(image) : checked_chw(image, "RandomHorizontalFlip");
}

std::string RandomHorizontalFlip::describe() const { return fmt::format("RandomHorizontalFlip({})", p_); }

RandomCrop::RandomCrop(int64_t size, int64_t padding) : size_(size), padding_(padding) {
  ENG_CHECK(size > 0 && padding >= 0, "RandomCrop: size {} must be positive and padding {} non-negative", size, padding);
}

eng::Tensor RandomCrop::apply(const eng::Tensor& image, eng::Generator& gen) const {
  eng::Tensor img = checked_chw(image, "RandomCrop");
  const int64_t h = img.size(1) + 2 * padding_, w = img.size(2) + 2 * padding_;
  ENG_CHECK(h >= size_ && w >= size_, "RandomCrop: a {}x{} window does not fit a {}x{} image padded by {}", size_, size_,
            img.size(1), img.size(2), padding_);
  CropBox box;
  box.top = draw_below(gen, h - size_ + 1) - padding_;
  box.left = draw_below(gen, w - size_ + 1) - padding_;
  box.height = box.width = size_;
  return crop(img, box);  // outside the image is zero: the padding
}

std::string RandomCrop::describe() const { return fmt::format("RandomCrop({}, padding {})", size_, padding_); }

Resize::Resize(int64_t height, int64_t width, Interpolation interpolation, bool antialias)
    : height_(height), width_(width), interpolation_(interpolation), antialias_(antialias) {
  ENG_CHECK(height > 0 && width > 0, "Resize: size {}x{} must be positive", height, width);
}

eng::Tensor Resize::apply(const eng::Tensor& image, eng::Generator&) const {
  return resize(image, height_, width_, interpolation_, antialias_);
}

std::string Resize::describe() const {
  return fmt::format("Resize({}x{}, {}{})", height_, width_, interp_name(interpolation_), antialias_ ? ", antialias" : "");
}

ResizeShorter::ResizeShorter(int64_t size, Interpolation interpolation, bool antialias)
    : size_(size), interpolation_(interpolation), antialias_(antialias) {
  ENG_CHECK(size > 0, "ResizeShorter: size {} must be positive", size);
}

eng::Tensor ResizeShorter::apply(const eng::Tensor& image, eng::Generator&) const {
  eng::Tensor img = checked_chw(image, "ResizeShorter");
  const int64_t h = img.size(1), w = img.size(2);
  int64_t oh = size_, ow = size_;
  if (h <= w) {
    ow = int64_t(double(size_) * double(w) / double(h));
  } else {
    oh = int64_t(double(size_) * double(h) / double(w));
  }
  if (oh == h && ow == w) return img;
  return resize(img, oh, ow, interpolation_, antialias_);
}

std::string ResizeShorter::describe() const {
  return fmt::format("ResizeShorter({}, {}{})", size_, interp_name(interpolation_), antialias_ ? ", antialias" : "");
}

CenterCrop::CenterCrop(int64_t height, int64_t width) : height_(height), width_(width) {
  ENG_CHECK(height > 0 && width > 0, "CenterCrop: size {}x{} must be positive", height, width);
}

eng::Tensor CenterCrop::apply(const eng::Tensor& image, eng::Generator&) const {
  eng::Tensor img = checked_chw(image, "CenterCrop");
  return crop(img, center_crop_box(img.size(1), img.size(2), height_, width_));
}

std::string CenterCrop::describe() const { return fmt::format("CenterCrop({}x{})", height_, width_); }

Normalize::Normalize(std::vector<float> mean, std::vector<float> std) : mean_(std::move(mean)), std_(std::move(std)) {
  check_stats(mean_, std_, int64_t(mean_.size()), "Normalize");
}

eng::Tensor Normalize::apply(const eng::Tensor& image, eng::Generator&) const {
  return normalize(checked_chw(image, "Normalize"), mean_, std_);
}

std::string Normalize::describe() const {
  auto list = [](const std::vector<float>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); i++) s += (i ? ", " : "") + fmt::format("{}", v[i]);
    return s;
  };
  return fmt::format("Normalize(mean=[{}], std=[{}])", list(mean_), list(std_));
}

// ---- Pipeline --------------------------------------------------------------------------------------------

eng::Generator augment_generator(uint64_t seed, int64_t epoch, int64_t index, size_t step) {
  return eng::Generator(seed, kAugmentStreamTag | uint64_t(epoch),
                        uint64_t(index) * kAugmentCountersPerSample + uint64_t(step) * kAugmentCountersPerStep);
}

Pipeline::Pipeline(std::vector<std::shared_ptr<const Transform>> steps) {
  for (auto& s : steps) add(std::move(s));
}

Pipeline& Pipeline::add(std::shared_ptr<const Transform> step) {
  ENG_CHECK(step != nullptr, "Pipeline: null transform");
  ENG_CHECK(steps_.size() < kAugmentCountersPerSample / kAugmentCountersPerStep,
            "Pipeline: at most {} steps (each has its own block of random counters)",
            kAugmentCountersPerSample / kAugmentCountersPerStep);
  steps_.push_back(std::move(step));
  return *this;
}

eng::Tensor Pipeline::apply(const eng::Tensor& image, uint64_t seed, int64_t epoch, int64_t index) const {
  ENG_CHECK(epoch >= 0 && uint64_t(epoch) < kAugmentStreamTag && index >= 0,
            "Pipeline: epoch {} and index {} must be non-negative (epoch < 2^32)", epoch, index);
  eng::Tensor x = image;
  for (size_t s = 0; s < steps_.size(); s++) {
    eng::Generator gen = augment_generator(seed, epoch, index, s);
    const uint64_t start = gen.offset();
    x = steps_[s]->apply(x, gen);
    ENG_CHECK(gen.offset() - start <= kAugmentCountersPerStep, "Pipeline: {} drew {} random counters, more than {}",
              steps_[s]->describe(), gen.offset() - start, kAugmentCountersPerStep);
  }
  return x;
}

std::string Pipeline::describe() const {
  if (steps_.empty()) return "(no transforms)";
  std::string s;
  for (size_t i = 0; i < steps_.size(); i++) s += (i ? " -> " : "") + steps_[i]->describe();
  return s;
}

Pipeline mae_pretrain_pipeline(int64_t size, Interpolation interpolation) {
  Pipeline p;
  p.add(std::make_shared<RandomResizedCrop>(size, size, std::make_pair(0.2, 1.0),
                                            std::make_pair(3.0 / 4.0, 4.0 / 3.0), interpolation));
  p.add(std::make_shared<RandomHorizontalFlip>(0.5));
  p.add(std::make_shared<Normalize>());
  return p;
}

Pipeline eval_pipeline(int64_t size, double crop_fraction, Interpolation interpolation) {
  ENG_CHECK(crop_fraction > 0.0 && crop_fraction <= 1.0, "eval_pipeline: crop_fraction {} must be in (0, 1]",
            crop_fraction);
  Pipeline p;
  p.add(std::make_shared<ResizeShorter>(int64_t(double(size) / crop_fraction), interpolation));
  p.add(std::make_shared<CenterCrop>(size, size));
  p.add(std::make_shared<Normalize>());
  return p;
}

}  // namespace data
