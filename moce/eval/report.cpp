// report.cpp: evaluate_mae, which runs every evaluation and writes eval.json and reconstructions.png.
#include "moce/eval/report.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>

#include "data/image.h"
#include "data/transforms.h"
#include "engine/error.h"
#include "moce/common/clock.h"
#include "moce/common/run_folder.h"

namespace moce {

using nlohmann::json;

namespace {

// JSON has no infinity or NaN: such figures are written as null.
json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

// A progress line on stdout (when the options say verbose).
using Say = std::function<void(const std::string&)>;

json knn_report(const FeatureSet& ftr, const FeatureSet& fte, int64_t num_classes, const KnnOptions& knn_options,
                const Say& say) {
  auto tk = std::chrono::steady_clock::now();
  KnnResult knn = knn_classify(ftr.features, ftr.labels, fte.features, fte.labels, num_classes, knn_options);
  double s = seconds_since(tk);
  const int64_t k = std::min(knn_options.k, ftr.features.size(0));
  say(fmt::format("k-NN (k={}, T={}): top-1 {:.2f}% ({}/{})", k, knn_options.temperature, 100 * knn.top1, knn.correct,
                  knn.total));
  return {{"k", k},
          {"temperature", knn_options.temperature},
          {"similarity", "cosine on L2-normalised features; vote weight exp(sim / T)"},
          {"top1", knn.top1},
          {"correct", knn.correct},
          {"total", knn.total},
          {"seconds", s}};
}

json probe_report(const FeatureSet& ftr, const FeatureSet& fte, int64_t num_classes, const ProbeOptions& probe_options,
                  const Say& say) {
  ProbeResult pr = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes, probe_options);
  say(fmt::format("linear probe ({} epochs, {}): top-1 {:.2f}% (train {:.2f}%, loss {:.4f}) in {:.1f} s",
                  probe_options.epochs, probe_options.optimizer, 100 * pr.test_top1, 100 * pr.train_top1, pr.final_loss,
                  pr.seconds));
  return {{"standardise", "per-dimension train mean and population std (+1e-6 in the variance), "
                          "i.e. BatchNorm without affine at eval time"},
          {"optimizer", probe_options.optimizer},
          {"lr", probe_options.lr},
          {"schedule", "cosine to 0, no warm-up"},
          {"weight_decay", probe_options.weight_decay},
          {"momentum", probe_options.optimizer == "sgd" ? json(probe_options.momentum) : json(nullptr)},
          {"epochs", probe_options.epochs},
          {"batch_size", probe_options.batch_size},
          {"seed", probe_options.seed},
          {"steps", pr.steps},
          {"final_train_loss", num(pr.final_loss)},
          {"train_top1", pr.train_top1},
          {"top1", pr.test_top1},
          {"seconds", pr.seconds}};
}

// Features of both sets, then the k-NN and the linear probe on them, into j["features"], j["knn"], j["linear_probe"].
void feature_reports(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> train,
                     std::shared_ptr<const data::Dataset> test, const EvalMaeOptions& options, const Say& say, json& j) {
  auto t = std::chrono::steady_clock::now();
  say(fmt::format("features: {} training and {} test images ...", train->size(), test->size()));
  FeatureSet ftr = extract_features(model, train, options.extract);
  FeatureSet fte = extract_features(model, test, options.extract);
  double feat_s = seconds_since(t);
  int64_t num_classes = std::max<int64_t>(train->num_classes(), test->num_classes());
  for (const FeatureSet* f : {&ftr, &fte})
    for (int64_t v : f->labels.to_vector<int64_t>()) num_classes = std::max(num_classes, v + 1);
  j["features"] = {{"kind", "mean of the patch tokens after the encoder's final norm, no masking"},
                   {"pipeline", data::eval_pipeline(model.config().img_size).describe()},
                   {"dim", ftr.features.size(1)},
                   {"train_images", ftr.features.size(0)},
                   {"test_images", fte.features.size(0)},
                   {"num_classes", num_classes},
                   {"skipped_corrupt_images", ftr.skipped + fte.skipped},
                   {"seconds", feat_s}};
  say(fmt::format("features: {} x {} and {} x {} in {:.1f} s", ftr.features.size(0), ftr.features.size(1),
                  fte.features.size(0), fte.features.size(1), feat_s));
  if (options.run_knn) j["knn"] = knn_report(ftr, fte, num_classes, options.knn, say);
  if (options.run_probe) j["linear_probe"] = probe_report(ftr, fte, num_classes, options.probe, say);
}

// Reconstruction PSNR on the test set, and the picture grid written to `png`.
json reconstruction_report(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> test,
                           const ReconOptions& recon_options, const std::string& png, const Say& say) {
  auto t = std::chrono::steady_clock::now();
  ReconResult rr = evaluate_reconstruction(model, test, recon_options);
  double s = seconds_since(t);
  json recon = {{"mask_ratio", recon_options.mask_ratio},
                {"seed", recon_options.seed},
                {"images", rr.images},
                {"loss", num(rr.loss)},
                {"psnr_masked_db", num(rr.psnr_masked)},
                {"psnr_full_pasted_db", num(rr.psnr_full)},
                {"psnr_masked_mean_per_image_db", num(rr.psnr_masked_mean_image)},
                {"psnr_masked_zero_prediction_db", num(rr.psnr_masked_zero_pred)},
                {"psnr_full_pasted_mean_per_image_db", num(rr.psnr_full_mean_image)},
                {"mse_masked", rr.mse_masked},
                {"mse_full_pasted", rr.mse_full},
                {"skipped_corrupt_images", rr.skipped},
                {"seconds", s},
                {"how", std::string("pixels in [0, 1] after undoing the ImageNet normalisation, peak 1.0; psnr_*_db from the "
                                    "MSE pooled over the set, *_mean_per_image_db the mean of per-image PSNRs (capped at ") +
                            fmt::format("{}", kPsnrCapDb) + " dB)" +
                            (model.config().norm_pix_loss ? "; norm_pix_loss predictions mapped back with each removed "
                                                            "patch's TRUE mean and unbiased variance, as MAE's "
                                                            "visualisation, so the figure measures the patch's structure; "
                                                            "psnr_masked_zero_prediction_db is what predicting 0 (each "
                                                            "patch flat at its true mean) scores"
                                                          : "")}};
  if (rr.grid.defined()) {
    const int64_t tile = model.config().img_size * rr.grid_factor;
    data::write_png(png, titled_reconstruction_picture(rr.grid, tile));
    recon["png"] = {{"path", png},
                    {"images", std::min(recon_options.grid_images, rr.images)},
                    {"columns", reconstruction_columns()},
                    {"grayscale", rr.grid_gray ? "grey data: reconstructions shown as the mean of their 3 channels"
                                               : "colour data: as predicted"},
                    {"upscale", rr.grid_factor},
                    {"width", rr.grid.size(2)},
                    {"height", rr.grid.size(1) + kReconstructionTitleStrip}};
  }
  say(fmt::format("reconstruction (mask {}): PSNR {:.2f} dB on removed patches, {:.2f} dB whole image with visible "
                  "pasted{}; loss {:.4f}; {} images in {:.1f} s",
                  recon_options.mask_ratio, rr.psnr_masked, rr.psnr_full,
                  std::isfinite(rr.psnr_masked_zero_pred)
                      ? fmt::format(" (flat patches at their true mean: {:.2f} dB)", rr.psnr_masked_zero_pred)
                      : std::string(),
                  rr.loss, rr.images, s));
  return recon;
}

}  // namespace

json evaluate_mae(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> train,
                  std::shared_ptr<const data::Dataset> test, const EvalMaeOptions& options) {
  ENG_CHECK(!options.out_dir.empty(), "evaluate_mae: no output directory");
  {
    std::error_code ec;
    std::filesystem::create_directories(options.out_dir, ec);
    ENG_CHECK(std::filesystem::is_directory(options.out_dir), "--out {}: cannot create the directory{}", options.out_dir,
              ec ? " (" + ec.message() + ")" : std::string());
  }
  const RunLock lock(options.out_dir);  // one evaluation writing the folder at a time
  // Label k must mean the same class in both sets.
  const auto& tc = train->classes();
  const auto& sc = test->classes();
  for (size_t i = 0; i < std::min(tc.size(), sc.size()); i++)
    ENG_CHECK(tc[i] == sc[i], "train set {} and test set {} disagree on class {}: '{}' vs '{}'", train->describe(),
              test->describe(), i, tc[i], sc[i]);

  const Say say = [&](const std::string& s) {
    if (options.verbose) {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
  };
  json j;
  j["inputs"] = options.inputs;
  j["model"] = model::config_to_json(model.config());
  j["train_data"] = {{"describe", train->describe()}, {"images", train->size()}};
  j["test_data"] = {{"describe", test->describe()}, {"images", test->size()}};
  if (options.run_knn || options.run_probe) feature_reports(model, train, test, options, say, j);
  if (options.run_recon)
    j["reconstruction"] = reconstruction_report(model, test, options.recon, options.out_dir + "/reconstructions.png", say);
  write_json_file(options.out_dir + "/eval.json", j);
  return j;
}

}  // namespace moce
