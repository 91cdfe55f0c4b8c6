// reconstruction.h: how well a pre-trained MAE reconstructs what it did not see: PSNR (peak 1.0) of its
// reconstruction in pixel space, over the removed patches and over the whole image with the visible patches pasted
// back, and a PNG grid of examples. Deterministic: the mask noise of an image is keyed by (seed, image index).
#pragma once
#include <cstdint>
#include <memory>

#include "data/dataset.h"
#include "data/image.h"
#include "engine/tensor.h"
#include "model/mae.h"

namespace moce {

// Pictures of one batch, all f32 [N, 3, H, W] in [0, 1].
struct Reconstruction {
  eng::Tensor original;  // the input, un-normalised
  eng::Tensor masked;    // the input with the removed patches grey (0.5)
  eng::Tensor recon;     // the model's prediction for every patch
  eng::Tensor pasted;    // the prediction on removed patches, the input on visible ones
  eng::Tensor mask;      // 1 on the pixels of removed patches, 0 elsewhere
  // norm_pix_loss only (else undefined): what a model predicting 0 would get, i.e. every patch flat at its
  // own true mean. The baseline that the borrowed patch statistics give for free.
  eng::Tensor zero_pred;
  double loss = 0;       // the MAE loss of the batch (in the model's target space)
};

// Runs model.forward(images, noise, mask_ratio) on ImageNet-normalised images. With norm_pix_loss the
// prediction is mapped back with each target patch's own mean and unbiased variance,
// pred * sqrt(var + 1e-6) + mean (as MAE's visualisation does; note this borrows the removed patch's
// true mean and variance, so the PSNR is that of the patch's structure, not of its brightness),
// then unpatchified, un-normalised with the ImageNet statistics and clamped to [0, 1].
Reconstruction reconstruct(const model::MaskedAutoencoder& model, const eng::Tensor& images, const eng::Tensor& noise,
                           double mask_ratio);

// 10 log10(peak^2 / mse) in dB; +infinity when mse == 0.
double psnr_db(double mse, double peak = 1.0);
// Per-image PSNRs are capped here when averaged, so one perfect image does not make the mean infinite.
constexpr double kPsnrCapDb = 100.0;

// Squared error between two picture batches [N, C, H, W] over the pixels where `weight` (same shape, 0/1;
// undefined = everywhere) is 1, pooled over images (sums in f64).
class PsnrAccumulator {
 public:
  void add(const eng::Tensor& a, const eng::Tensor& b, const eng::Tensor& weight = eng::Tensor());
  double mse() const { return count_ > 0 ? sum_sq_ / count_ : 0.0; }
  double psnr() const { return psnr_db(mse()); }  // of the pooled MSE
  double mean_image_psnr() const { return images_ > 0 ? sum_image_psnr_ / double(images_) : 0.0; }  // capped per image
  int64_t images() const { return images_; }
  double pixels() const { return count_; }

 private:
  double sum_sq_ = 0, count_ = 0, sum_image_psnr_ = 0;
  int64_t images_ = 0;
};

// Nearest-neighbour upscaling of [N, C, H, W] by an integer factor.
eng::Tensor upscale_nearest(const eng::Tensor& images, int64_t factor);
// The factor that brings `size` to at least `target` pixels (1 when already there).
int64_t upscale_factor(int64_t size, int64_t target = 128);
// One row per image: original | masked | reconstruction | reconstruction with visible patches pasted,
// for the first min(count, N) images, upscaled by `factor`; [3, H', W'] via data::make_grid (padding 2).
eng::Tensor reconstruction_grid(const Reconstruction& r, int64_t count, int64_t factor);
// The titles of reconstruction_grid's four columns, in order.
const std::vector<std::string>& reconstruction_columns();
// The grid as a picture with a strip of column titles on top (each title centred over its column, in the plot font
// at the largest scale, up to 2, that fits the column).
constexpr int64_t kReconstructionTitleStrip = 18;  // pixels of the title strip
data::Image titled_reconstruction_picture(const eng::Tensor& grid, int64_t factor_tile);
// True when every pixel of the [N, 3, H, W] pictures has equal channels (within 2/255): grey data (Fashion-MNIST,
// replicated to 3 channels). Its reconstructions are then shown as the mean of their channels, in grey, because the
// per-channel colour the model adds to a grey input is noise, not content.
bool is_grayscale(const eng::Tensor& pictures);
eng::Tensor channel_mean_as_gray(const eng::Tensor& pictures);

struct ReconOptions {
  double mask_ratio = 0.75;
  uint64_t seed = 0;       // mask noise of image i: Generator(seed, kEvalMaskStream, i * L).uniform({L})
  int64_t batch_size = 128;
  int workers = 2;
  int64_t grid_images = 8;  // images in the PNG grid (the first ones of the set); 0 = no grid
};
constexpr uint64_t kEvalMaskStream = 0x6576616c6d61736bULL;  // "evalmask"

struct ReconResult {
  double loss = 0;                    // mean MAE loss over the batches, weighted by images
  double psnr_masked = 0;             // pooled over the removed patches of every image (dB)
  double psnr_full = 0;               // whole images with the visible patches pasted back (dB)
  double psnr_masked_mean_image = 0;  // mean of per-image PSNRs (capped at kPsnrCapDb)
  double psnr_full_mean_image = 0;
  double mse_masked = 0, mse_full = 0;
  double psnr_masked_zero_pred = 0;   // the zero-prediction baseline on the removed patches (norm_pix_loss; else NaN)
  int64_t images = 0, skipped = 0;
  eng::Tensor grid;  // [3, H', W'] when grid_images > 0
  int64_t grid_factor = 1;
  bool grid_gray = false;  // grey data: the grid's reconstructions are the mean of their channels
};

ReconResult evaluate_reconstruction(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                                    const ReconOptions& options = {});

}  // namespace moce
