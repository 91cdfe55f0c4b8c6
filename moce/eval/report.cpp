// report.cpp: evaluate_mae, which runs every evaluation and writes eval.json and reconstructions.png.
#include "moce/eval/report.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

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
  // Label k must mean the same class in both sets.
  const auto& tc = train->classes();
  const auto& sc = test->classes();
  for (size_t i = 0; i < std::min(tc.size(), sc.size()); i++)
    ENG_CHECK(tc[i] == sc[i], "train set {} and test set {} disagree on class {}: '{}' vs '{}'", train->describe(),
              test->describe(), i, tc[i], sc[i]);

  const model::MaeConfig& cfg = model.config();
  auto say = [&](const std::string& s) {
    if (options.verbose) {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
  };
  json j;
  j["inputs"] = options.inputs;
  j["model"] = model::config_to_json(cfg);
  j["train_data"] = {{"describe", train->describe()}, {"images", train->size()}};
  j["test_data"] = {{"describe", test->describe()}, {"images", test->size()}};

  if (options.run_knn || options.run_probe) {
    auto t = std::chrono::steady_clock::now();
    say(fmt::format("features: {} training and {} test images ...", train->size(), test->size()));
    FeatureSet ftr = extract_features(model, train, options.extract);
    FeatureSet fte = extract_features(model, test, options.extract);
    double feat_s = seconds_since(t);
    int64_t num_classes = std::max<int64_t>(train->num_classes(), test->num_classes());
    for (const FeatureSet* f : {&ftr, &fte})
      for (int64_t v : f->labels.to_vector<int64_t>()) num_classes = std::max(num_classes, v + 1);
    j["features"] = {{"kind", "mean of the patch tokens after the encoder's final norm, no masking"},
                     {"pipeline", data::eval_pipeline(cfg.img_size).describe()},
                     {"dim", ftr.features.size(1)},
                     {"train_images", ftr.features.size(0)},
                     {"test_images", fte.features.size(0)},
                     {"num_classes", num_classes},
                     {"skipped_corrupt_images", ftr.skipped + fte.skipped},
                     {"seconds", feat_s}};
    say(fmt::format("features: {} x {} and {} x {} in {:.1f} s", ftr.features.size(0), ftr.features.size(1),
                    fte.features.size(0), fte.features.size(1), feat_s));
    if (options.run_knn) {
      auto tk = std::chrono::steady_clock::now();
      KnnResult knn = knn_classify(ftr.features, ftr.labels, fte.features, fte.labels, num_classes, options.knn);
      double s = seconds_since(tk);
      j["knn"] = {{"k", std::min(options.knn.k, ftr.features.size(0))},
                  {"temperature", options.knn.temperature},
                  {"similarity", "cosine on L2-normalised features; vote weight exp(sim / T)"},
                  {"top1", knn.top1},
                  {"correct", knn.correct},
                  {"total", knn.total},
                  {"seconds", s}};
      say(fmt::format("k-NN (k={}, T={}): top-1 {:.2f}% ({}/{})", std::min(options.knn.k, ftr.features.size(0)),
                      options.knn.temperature, 100 * knn.top1, knn.correct, knn.total));
    }
    if (options.run_probe) {
      ProbeResult pr = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes, options.probe);
      j["linear_probe"] = {{"standardise", "per-dimension train mean and population std (+1e-6 in the variance), "
                                           "i.e. BatchNorm without affine at eval time"},
                           {"optimizer", options.probe.optimizer},
                           {"lr", options.probe.lr},
                           {"schedule", "cosine to 0, no warm-up"},
                           {"weight_decay", options.probe.weight_decay},
                           {"momentum", options.probe.optimizer == "sgd" ? json(options.probe.momentum) : json(nullptr)},
                           {"epochs", options.probe.epochs},
                           {"batch_size", options.probe.batch_size},
                           {"seed", options.probe.seed},
                           {"steps", pr.steps},
                           {"final_train_loss", num(pr.final_loss)},
                           {"train_top1", pr.train_top1},
                           {"top1", pr.test_top1},
                           {"seconds", pr.seconds}};
      say(fmt::format("linear probe ({} epochs, {}): top-1 {:.2f}% (train {:.2f}%, loss {:.4f}) in {:.1f} s",
                      options.probe.epochs, options.probe.optimizer, 100 * pr.test_top1, 100 * pr.train_top1,
                      pr.final_loss, pr.seconds));
    }
  }

  std::string png = options.out_dir + "/reconstructions.png";
  if (options.run_recon) {
    auto t = std::chrono::steady_clock::now();
    ReconResult rr = evaluate_reconstruction(model, test, options.recon);
    double s = seconds_since(t);
    json recon = {{"mask_ratio", options.recon.mask_ratio},
                  {"seed", options.recon.seed},
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
                              (cfg.norm_pix_loss ? "; norm_pix_loss predictions mapped back with each removed patch's TRUE "
                                                   "mean and unbiased variance, as MAE's visualisation, so the figure "
                                                   "measures the patch's structure; psnr_masked_zero_prediction_db is what "
                                                   "predicting 0 (each patch flat at its true mean) scores"
                                                 : "")}};
    if (rr.grid.defined()) {
      data::write_png(png, rr.grid);
      recon["png"] = {{"path", png},
                      {"images", std::min(options.recon.grid_images, rr.images)},
                      {"columns", {"original", "masked", "reconstruction", "reconstruction + visible"}},
                      {"upscale", rr.grid_factor},
                      {"width", rr.grid.size(2)},
                      {"height", rr.grid.size(1)}};
    }
    j["reconstruction"] = recon;
    say(fmt::format("reconstruction (mask {}): PSNR {:.2f} dB on removed patches, {:.2f} dB whole image with visible "
                    "pasted{}; loss {:.4f}; {} images in {:.1f} s",
                    options.recon.mask_ratio, rr.psnr_masked, rr.psnr_full,
                    std::isfinite(rr.psnr_masked_zero_pred)
                        ? fmt::format(" (flat patches at their true mean: {:.2f} dB)", rr.psnr_masked_zero_pred)
                        : std::string(),
                    rr.loss, rr.images, s));
  }
  write_json_file(options.out_dir + "/eval.json", j);
  return j;
}

}  // namespace moce
