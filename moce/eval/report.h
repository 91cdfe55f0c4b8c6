// eval.h: evaluation of a pre-trained MAE, the `moce eval-mae` subcommand and the library under it.
//
//   features        the encoder without masking over a dataset (model.features: mean of the patch tokens
//                   after the final norm), in dataset order, no gradient.
//   k-NN            cosine similarity to every training feature, the k nearest vote with weight
//                   exp(sim / T) (Wu et al. 2018 "InstDisc", as DINO's eval_knn: k = 20, T = 0.07).
//   linear probe    a linear classifier on frozen, standardised features (train mean / std; MAE puts a
//                   BatchNorm without affine before its head, which is the same map at eval time).
//   reconstruction  PSNR (peak 1.0) of the MAE's reconstruction in pixel space, over the removed patches
//                   and over the whole image with the visible patches pasted back; a PNG grid of examples.
//
// Everything is deterministic: fixed data order, mask noise keyed by (seed, image index), k-NN ties broken
// by the training index and then the class index, the probe's shuffle from a Philox generator.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/transforms.h"
#include "engine/tensor.h"
#include "model/mae.h"

namespace moce {

// A dataset by name, shared with the other subcommands:
//   "fashion-mnist"      Fashion-MNIST, split "train" (train) or "t10k" (test)
//   "cifar10-bin:DIR"    the CIFAR-10 binary batches in DIR (data_batch_*.bin or test_batch.bin)
//   anything else        an ImageFolder root (root/<class>/<image>)
std::shared_ptr<data::Dataset> open_dataset(const std::string& spec, bool train);
// The first `limit` samples of `ds` (ds itself when limit <= 0 or limit >= size).
std::shared_ptr<const data::Dataset> limit_dataset(std::shared_ptr<const data::Dataset> ds, int64_t limit);

// ---- features ------------------------------------------------------------------------------------------
struct FeatureSet {
  eng::Tensor features;  // f32 [N, D], CPU, row i = sample i of the dataset (in order)
  eng::Tensor labels;    // i64 [N]
  int64_t skipped = 0;   // corrupt images the loader replaced (see data/loader.h)
};

struct ExtractOptions {
  int64_t batch_size = 128;
  int workers = 2;
};

// Maps a batch of pipeline outputs [B, 3, H, W] to features [B, D]; called under NoGradGuard.
using FeatureFn = std::function<eng::Tensor(const eng::Tensor& images)>;

// Runs `fn` over `ds` through `pipeline` (shuffle off, drop_last off) and stacks the results (on the CPU). The
// images reach `fn` on `device`; on a GPU through BatchFeed (moce/device.h), so the next batch is loaded and
// copied while `fn`'s kernels run.
FeatureSet extract_features(const FeatureFn& fn, std::shared_ptr<const data::Dataset> ds, const data::Pipeline& pipeline,
                            const ExtractOptions& options = {}, eng::Device device = eng::Device::cpu());
// The MAE's features (model.features) with the evaluation pipeline at the model's image size
// (data::eval_pipeline, which also resizes images of another size, e.g. Fashion-MNIST's 28x28).
FeatureSet extract_features(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                            const ExtractOptions& options = {});

// ---- k-NN ------------------------------------------------------------------------------------------------
struct KnnOptions {
  int64_t k = 20;
  double temperature = 0.07;
  int64_t chunk_rows = 256;  // test rows per similarity matmul
};

struct KnnResult {
  double top1 = 0;  // fraction in [0, 1]
  int64_t correct = 0, total = 0;
  std::vector<int64_t> predictions;  // one per test row
};

// Features [N, D] (any float dtype; L2-normalised here), labels i64 in [0, num_classes).
// Neighbours: the k largest similarities, ties by the smaller training index; class score = sum of
// exp(sim / T) over the neighbours of that class (in f64); prediction = the highest score, ties by the
// smaller class index. k is capped at the number of training rows.
KnnResult knn_classify(const eng::Tensor& train_features, const eng::Tensor& train_labels,
                       const eng::Tensor& test_features, const eng::Tensor& test_labels, int64_t num_classes,
                       const KnnOptions& options = {});

// ---- linear probe ------------------------------------------------------------------------------------------
struct ProbeOptions {
  int64_t epochs = 100;
  int64_t batch_size = 256;
  std::string optimizer = "adamw";  // "adamw" or "sgd" (with momentum)
  double lr = 1e-2;                 // peak; cosine decay to 0 over the run, no warm-up
  double weight_decay = 0.0;
  double momentum = 0.9;            // sgd only
  uint64_t seed = 0;                // head init and the per-epoch shuffle
};

struct ProbeResult {
  double train_top1 = 0, test_top1 = 0;  // fractions in [0, 1]
  double final_loss = 0;                 // mean training loss of the last epoch
  int64_t steps = 0;
  double seconds = 0;
};

// Standardises both sets with the training features' mean and (population) standard deviation per
// dimension (+1e-6), then trains logits = x W^T + b (W ~ N(0, 0.01), b = 0) with cross-entropy.
// Epoch e visits the training rows in the order Generator(seed, stream = 1 + e).permutation(N); the last
// batch of an epoch may be smaller.
ProbeResult linear_probe(const eng::Tensor& train_features, const eng::Tensor& train_labels,
                         const eng::Tensor& test_features, const eng::Tensor& test_labels, int64_t num_classes,
                         const ProbeOptions& options = {});

// ---- reconstruction -------------------------------------------------------------------------------------------
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
};

ReconResult evaluate_reconstruction(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                                    const ReconOptions& options = {});

// ---- the whole evaluation --------------------------------------------------------------------------------------
struct EvalMaeOptions {
  std::string out_dir;            // receives eval.json and reconstructions.png (created if missing)
  KnnOptions knn;
  ProbeOptions probe;
  ReconOptions recon;
  ExtractOptions extract;
  bool run_knn = true, run_probe = true, run_recon = true;
  nlohmann::json inputs = nlohmann::json::object();  // what the caller wants recorded (checkpoint, flags)
  bool verbose = true;                               // progress lines on stdout
};

// Features of both sets, k-NN, linear probe, reconstruction PSNR and the PNG; writes <out>/eval.json
// (atomically) and <out>/reconstructions.png, and returns the JSON it wrote.
nlohmann::json evaluate_mae(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> train,
                            std::shared_ptr<const data::Dataset> test, const EvalMaeOptions& options);

// The model a file describes: a moce checkpoint (format moce-checkpoint-v1) or a weights file; its config
// comes from the metadata "config" JSON (config["model"]), or from `config_name` when the file has none.
// With random_init the weights are not loaded (the same architecture at its seeded initialisation).
// `info` (optional) receives what was found: file, format, step, config source.
model::MaskedAutoencoder load_mae(const std::string& file, const std::string& config_name, bool random_init,
                                  uint64_t seed, nlohmann::json* info = nullptr);

// `moce eval-mae ...` (argv[1] is "eval-mae"; flags from argv[2]).
int cmd_eval_mae(int argc, char** argv);

}  // namespace moce
