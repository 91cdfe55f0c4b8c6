// transforms.h: image transforms on f32 [C, H, W] CPU tensors (C = 3 after the datasets), as torchvision
// does them, and the Pipeline that runs a list of them with reproducible randomness.
//
// Resampling (Resize, RandomResizedCrop) is separable and follows PIL / torchvision with antialias=True:
// output pixel o has its centre at (o + 0.5) * in/out in input coordinates (half-pixel centres,
// align_corners=False), and its weights are the filter (bilinear: triangle, support 1; bicubic: Keys
// cubic with a = -0.5, support 2) stretched by in/out when downsampling, normalised to sum 1 over the
// taps that fall inside the input. So antialiasing IS used when shrinking (set antialias=false for plain
// 2- or 4-tap interpolation); when enlarging, both modes are ordinary bilinear/bicubic with edge clamping.
// Sums run in double and are rounded once to f32, so a constant image stays exactly constant.
//
// Randomness: the Pipeline gives step s of sample `index` in epoch `epoch` its own Philox counters,
//   Generator(seed, stream = kAugmentStreamTag | epoch, offset = index * kAugmentCountersPerSample
//                                                                + s * kAugmentCountersPerStep),
// so the augmentation of an image depends only on (seed, epoch, index), never on which worker thread
// made it or in which order. The stream tag keeps these counters apart from the loader's shuffle, which
// uses stream = epoch with the same seed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/rng.h"
#include "engine/tensor.h"

namespace data {

constexpr uint64_t kAugmentStreamTag = uint64_t(1) << 32;
constexpr uint64_t kAugmentCountersPerSample = 1024;
constexpr uint64_t kAugmentCountersPerStep = 64;  // so at most 16 steps per pipeline

enum class Interpolation { Bilinear, Bicubic };

class Transform {
 public:
  virtual ~Transform() = default;
  // `image` is f32 [C, H, W] on the CPU; the result is contiguous. Inputs are never modified; a step that
  // leaves the image unchanged (a flip not taken) may return the input itself.
  // Random transforms draw only from `gen`, at most kAugmentCountersPerStep counters.
  virtual eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const = 0;
  virtual std::string describe() const = 0;
};

// ---- the operations themselves, usable on their own ----------------------------------------------------
struct CropBox {
  int64_t top = 0, left = 0, height = 0, width = 0;
  bool operator==(const CropBox& o) const {
    return top == o.top && left == o.left && height == o.height && width == o.width;
  }
};
// torchvision's RandomResizedCrop.get_params: 10 attempts at an area fraction drawn uniformly from `scale`
// and a log-uniform aspect ratio from `ratio`, rounded (half to even, as Python's round) to whole pixels;
// the first that fits is placed uniformly at random; after 10 misses, the centre crop of the whole image
// clamped to `ratio`. Uses 2 counters per attempt plus 2 for the position (at most 22).
CropBox random_resized_crop_box(int64_t height, int64_t width, std::pair<double, double> scale,
                                std::pair<double, double> ratio, eng::Generator& gen);
// Resamples the window `box` of `image` to out_h x out_w (taps never reach outside the window).
eng::Tensor resized_crop(const eng::Tensor& image, const CropBox& box, int64_t out_h, int64_t out_w,
                         Interpolation interpolation = Interpolation::Bilinear, bool antialias = true);
eng::Tensor resize(const eng::Tensor& image, int64_t out_h, int64_t out_w,
                   Interpolation interpolation = Interpolation::Bilinear, bool antialias = true);
// Crops `box`; parts of the box outside the image are zero (torchvision pads CenterCrop that way).
eng::Tensor crop(const eng::Tensor& image, const CropBox& box);
eng::Tensor hflip(const eng::Tensor& image);
// The box torchvision's CenterCrop takes: top = round((H - h) / 2) (half to even), likewise left; negative
// when the crop is larger than the image.
CropBox center_crop_box(int64_t height, int64_t width, int64_t crop_h, int64_t crop_w);

// ImageNet statistics, the MAE default.
const std::vector<float>& imagenet_mean();  // {0.485, 0.456, 0.406}
const std::vector<float>& imagenet_std();   // {0.229, 0.224, 0.225}
// (x - mean[c]) / std[c] per channel of [C, H, W] or [N, C, H, W], computed in f32 as written.
eng::Tensor normalize(const eng::Tensor& images, const std::vector<float>& mean, const std::vector<float>& std);
// x * std[c] + mean[c]: back to [0, 1] pixels, for pictures of inputs and reconstructions.
eng::Tensor unnormalize(const eng::Tensor& images, const std::vector<float>& mean = imagenet_mean(),
                        const std::vector<float>& std = imagenet_std());

// ---- as Transform objects --------------------------------------------------------------------------------
class RandomResizedCrop : public Transform {
 public:
  RandomResizedCrop(int64_t height, int64_t width, std::pair<double, double> scale = {0.2, 1.0},
                    std::pair<double, double> ratio = {3.0 / 4.0, 4.0 / 3.0},
                    Interpolation interpolation = Interpolation::Bilinear, bool antialias = true);
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t height_, width_;
  std::pair<double, double> scale_, ratio_;
  Interpolation interpolation_;
  bool antialias_;
};

class RandomHorizontalFlip : public Transform {
 public:
  explicit RandomHorizontalFlip(double p = 0.5);  // flips when a uniform [0, 1) draw (1 counter) is < p
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;

 private:
  double p_;
};

// torchvision's RandomCrop(size, padding): the image padded with `padding` zero pixels on every side, then a
// size x size window at a uniformly random position (2 counters: top, then left). The light augmentation of the
// downstream fine-tuning (moce finetune), as CIFAR training recipes do it.
class RandomCrop : public Transform {
 public:
  RandomCrop(int64_t size, int64_t padding);
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t size_, padding_;
};

// Resizes to exactly height x width.
class Resize : public Transform {
 public:
  Resize(int64_t height, int64_t width, Interpolation interpolation = Interpolation::Bilinear, bool antialias = true);
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t height_, width_;
  Interpolation interpolation_;
  bool antialias_;
};

// torchvision's Resize(int): the shorter side becomes `size`, the longer keeps the aspect ratio
// (int(size * long / short), truncated as torchvision does).
class ResizeShorter : public Transform {
 public:
  explicit ResizeShorter(int64_t size, Interpolation interpolation = Interpolation::Bilinear, bool antialias = true);
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t size_;
  Interpolation interpolation_;
  bool antialias_;
};

class CenterCrop : public Transform {
 public:
  CenterCrop(int64_t height, int64_t width);
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;

 private:
  int64_t height_, width_;
};

class Normalize : public Transform {
 public:
  explicit Normalize(std::vector<float> mean = imagenet_mean(), std::vector<float> std = imagenet_std());
  eng::Tensor apply(const eng::Tensor& image, eng::Generator& gen) const override;
  std::string describe() const override;
  const std::vector<float>& mean() const { return mean_; }
  const std::vector<float>& std() const { return std_; }

 private:
  std::vector<float> mean_, std_;
};

// ---- Pipeline --------------------------------------------------------------------------------------------
// The generator that step `step` of sample `index` in `epoch` draws from (see the top of this file).
eng::Generator augment_generator(uint64_t seed, int64_t epoch, int64_t index, size_t step);

class Pipeline {
 public:
  Pipeline() = default;
  explicit Pipeline(std::vector<std::shared_ptr<const Transform>> steps);
  Pipeline& add(std::shared_ptr<const Transform> step);
  // Runs every step in order. Deterministic given (seed, epoch, index); thread-safe (steps are const).
  eng::Tensor apply(const eng::Tensor& image, uint64_t seed, int64_t epoch, int64_t index) const;
  size_t size() const { return steps_.size(); }
  std::string describe() const;  // "RandomResizedCrop(...) -> RandomHorizontalFlip(0.5) -> Normalize(...)"

 private:
  std::vector<std::shared_ptr<const Transform>> steps_;
};

// MAE pre-training: RandomResizedCrop(size, scale (0.2, 1)) -> RandomHorizontalFlip(0.5) -> Normalize(ImageNet).
// (The MAE paper's code resizes with PIL bicubic; pass Interpolation::Bicubic for that.)
Pipeline mae_pretrain_pipeline(int64_t size, Interpolation interpolation = Interpolation::Bilinear);
// Evaluation: ResizeShorter(int(size / crop_fraction)) -> CenterCrop(size) -> Normalize(ImageNet). MAE uses
// crop_fraction 224/256 for ImageNet; for images already at `size` the default 1 leaves them unchanged.
Pipeline eval_pipeline(int64_t size, double crop_fraction = 1.0,
                       Interpolation interpolation = Interpolation::Bilinear);

}  // namespace data
