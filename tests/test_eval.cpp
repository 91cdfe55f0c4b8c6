// test_eval.cpp: the MAE evaluation (moce/eval/): k-NN on hand-made and random features against an f64
// brute-force reference, the linear probe on separable data, PSNR against textbook values, the
// reconstruction (norm_pix un-normalisation against an f64 loop, pasting, grey masking), the PNG grid's
// size, and end-to-end runs on a tiny random-init model: the library call, and `moce eval-mae` on a
// checkpoint / weights file over image folders written here (and over Fashion-MNIST when installed).
#include <doctest/doctest.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include "data/idx.h"
#include "data/image.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/cmd/commands.h"
#include "moce/eval/report.h"
#include "tests/test_util.h"

using eng::Tensor;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using testutil::error_of;
using testutil::TempDir;

json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE_MESSAGE(f.good(), path << " missing");
  return json::parse(f);
}

Tensor feats(const std::vector<std::vector<float>>& rows) {
  std::vector<float> v;
  for (const auto& r : rows) v.insert(v.end(), r.begin(), r.end());
  return Tensor::from_vector(v, {int64_t(rows.size()), int64_t(rows[0].size())});
}
Tensor labels(const std::vector<int64_t>& l) { return Tensor::from_vector(l, {int64_t(l.size())}); }

// Brute-force k-NN in f64: the same rule as knn_classify (ties by index, then by class).
std::vector<int64_t> knn_reference(const Tensor& tr, const std::vector<int64_t>& trl, const Tensor& te, int64_t classes,
                                   int64_t k, double t) {
  const int64_t n = tr.size(0), m = te.size(0), d = tr.size(1);
  std::vector<float> a = tr.to_vector<float>(), b = te.to_vector<float>();
  auto norm = [d](const std::vector<float>& v, int64_t i) {
    double s = 0;
    for (int64_t j = 0; j < d; j++) s += double(v[size_t(i * d + j)]) * v[size_t(i * d + j)];
    return std::sqrt(s);
  };
  std::vector<int64_t> out;
  for (int64_t q = 0; q < m; q++) {
    std::vector<std::pair<double, int64_t>> sims;
    for (int64_t i = 0; i < n; i++) {
      double s = 0;
      for (int64_t j = 0; j < d; j++) s += double(a[size_t(i * d + j)]) * b[size_t(q * d + j)];
      sims.push_back({-s / (norm(a, i) * norm(b, q)), i});  // ascending = most similar first, then index
    }
    std::sort(sims.begin(), sims.end());
    std::vector<double> score(size_t(classes), 0);
    for (int64_t j = 0; j < std::min(k, n); j++) score[size_t(trl[size_t(sims[size_t(j)].second)])] += std::exp(-sims[size_t(j)].first / t);
    out.push_back(int64_t(std::max_element(score.begin(), score.end()) - score.begin()));
  }
  return out;
}

// Two classes a random-init encoder tells apart: dark noise (class 0) and bright noise (class 1).
data::LabelledImages two_class_images(int64_t n, int64_t size, uint64_t seed) {
  eng::Generator g(seed);
  Tensor u = g.uniform({n, 3, size, size}, 0.0, 0.5);
  std::vector<float> v = u.to_vector<float>();
  std::vector<int64_t> l(static_cast<size_t>(n));
  const int64_t per = 3 * size * size;
  for (int64_t i = 0; i < n; i++) {
    l[size_t(i)] = i % 2;
    if (i % 2) for (int64_t j = 0; j < per; j++) v[size_t(i * per + j)] += 0.5f;
  }
  return {Tensor::from_vector(v, {n, 3, size, size}), labels(l)};
}

// Writes images [N, 3, H, W] as PNGs into root/<class>/<i>.png.
void write_image_folder(const std::string& root, const data::LabelledImages& d) {
  std::vector<int64_t> l = d.labels.to_vector<int64_t>();
  for (int64_t i = 0; i < d.images.size(0); i++) {
    std::string dir = root + "/class" + std::to_string(l[size_t(i)]);
    fs::create_directories(dir);
    data::write_png(dir + "/" + std::to_string(1000 + i) + ".png", d.images.select(0, i));
  }
}

std::vector<std::string> argv_of(std::vector<std::string> args) {
  args.insert(args.begin(), {"moce", "eval-mae"});
  return args;
}
int run_cmd(std::vector<std::string> args) {
  std::vector<std::string> a = argv_of(std::move(args));
  std::vector<char*> p;
  for (auto& s : a) p.push_back(s.data());
  return moce::cmd_eval_mae(int(p.size()), p.data());
}

}  // namespace

TEST_SUITE("eval") {

TEST_CASE("k-NN: hand-made two-cluster case, exact accuracy") {
  Tensor tr = feats({{1, 0.1f}, {1, 0.2f}, {0.9f, 0}, {0.1f, 1}, {0.2f, 1}, {0, 0.9f}});
  Tensor trl = labels({0, 0, 0, 1, 1, 1});
  // The last test point sits in cluster 0 but is labelled 1: it must be the one miss.
  Tensor te = feats({{2, 0.1f}, {0.05f, 3}, {0.3f, 1}, {1, 0}});
  Tensor tel = labels({0, 1, 1, 1});
  for (int64_t k : {1, 3, 20}) {
    moce::KnnResult r = moce::knn_classify(tr, trl, te, tel, 2, {k, 0.07, 256});
    CHECK(r.total == 4);
    CHECK(r.correct == 3);
    CHECK(r.top1 == doctest::Approx(0.75));
    CHECK(r.predictions == std::vector<int64_t>{0, 1, 1, 0});
  }
}

TEST_CASE("k-NN: ties go to the smaller training index, then the smaller class") {
  Tensor tr = feats({{1, 0}, {1, 0}, {0, 1}});
  Tensor trl = labels({1, 0, 0});
  Tensor te = feats({{1, 0}});
  // k = 1: rows 0 and 1 tie on similarity; row 0 (label 1) wins.
  CHECK(moce::knn_classify(tr, trl, te, labels({1}), 2, {1, 0.07, 8}).predictions[0] == 1);
  // k = 2: one vote each with the same weight; class 0 wins the tie.
  CHECK(moce::knn_classify(tr, trl, te, labels({0}), 2, {2, 0.07, 8}).predictions[0] == 0);
}

TEST_CASE("k-NN: random features match an f64 brute-force reference, any chunk size") {
  eng::Generator g(7);
  Tensor tr = g.normal({120, 12}), te = g.normal({37, 12});
  std::vector<int64_t> trl, tel;
  for (int64_t i = 0; i < 120; i++) trl.push_back((i * 7) % 4);
  for (int64_t i = 0; i < 37; i++) tel.push_back(i % 4);
  std::vector<int64_t> want = knn_reference(tr, trl, te, 4, 20, 0.07);
  for (int64_t chunk : {1, 5, 256}) {
    moce::KnnResult r = moce::knn_classify(tr, labels(trl), te, labels(tel), 4, {20, 0.07, chunk});
    CHECK(r.predictions == want);
  }
  CHECK(error_of([&] { moce::knn_classify(tr, labels(trl), te, labels(tel), 3); }).find("outside [0, 3)") != std::string::npos);
}

TEST_CASE("linear probe: separable clusters reach 100%, deterministically") {
  const int64_t d = 16, classes = 3;
  eng::Generator g(3);
  Tensor centres = g.normal({classes, d}, 0.0, 4.0);
  auto make = [&](int64_t n) {
    Tensor noise = g.normal({n, d}, 0.0, 0.5);
    std::vector<int64_t> l(static_cast<size_t>(n));
    std::vector<Tensor> rows;
    for (int64_t i = 0; i < n; i++) {
      l[size_t(i)] = i % classes;
      rows.push_back(centres.select(0, i % classes));
    }
    // Offset and scale the features so the standardisation matters.
    return std::make_pair(eng::add(eng::mul(eng::add(eng::stack(rows, 0), noise), 30.0), 100.0), labels(l));
  };
  auto [xtr, ytr] = make(300);
  auto [xte, yte] = make(150);
  moce::ProbeOptions po;
  po.epochs = 30;
  po.batch_size = 64;
  moce::ProbeResult a = moce::linear_probe(xtr, ytr, xte, yte, classes, po);
  CHECK(a.train_top1 == 1.0);
  CHECK(a.test_top1 == 1.0);
  CHECK(a.steps == 30 * 5);
  CHECK(a.final_loss < 0.1);
  moce::ProbeResult b = moce::linear_probe(xtr, ytr, xte, yte, classes, po);
  CHECK(a.final_loss == b.final_loss);  // bitwise
  po.optimizer = "sgd";
  po.lr = 0.1;
  moce::ProbeResult s = moce::linear_probe(xtr, ytr, xte, yte, classes, po);
  CHECK(s.test_top1 == 1.0);
  po.optimizer = "lbfgs";
  CHECK(error_of([&] { moce::linear_probe(xtr, ytr, xte, yte, classes, po); }).find("lbfgs") != std::string::npos);
}

TEST_CASE("PSNR: textbook values, infinite for a perfect match, masked pooling") {
  CHECK(std::isinf(moce::psnr_db(0.0)));
  CHECK(moce::psnr_db(0.01) == doctest::Approx(20.0).epsilon(1e-12));
  CHECK(moce::psnr_db(1.0) == doctest::Approx(0.0));
  CHECK(moce::psnr_db(0.01, 255.0) == doctest::Approx(20.0 * std::log10(255.0) + 20.0));

  Tensor a = Tensor::zeros({2, 3, 4, 4});
  moce::PsnrAccumulator perfect;
  perfect.add(a, a);
  CHECK(std::isinf(perfect.psnr()));
  CHECK(perfect.mean_image_psnr() == moce::kPsnrCapDb);

  // Error 0.25 (exact in binary) on half of the pixels, 0 on the rest.
  std::vector<float> b(96), w(96);
  for (size_t i = 0; i < 96; i++) {
    w[i] = (i / 8) % 2 ? 1.0f : 0.0f;
    b[i] = w[i] * 0.25f;
  }
  Tensor tb = Tensor::from_vector(b, {2, 3, 4, 4}), tw = Tensor::from_vector(w, {2, 3, 4, 4});
  moce::PsnrAccumulator masked, full;
  masked.add(tb, a, tw);
  full.add(tb, a);
  CHECK(masked.pixels() == 48.0);
  CHECK(masked.mse() == 0.0625);
  CHECK(masked.psnr() == doctest::Approx(10.0 * std::log10(16.0)));  // 12.04 dB
  CHECK(full.mse() == 0.03125);
  CHECK(full.psnr() == doctest::Approx(10.0 * std::log10(32.0)));  // 15.05 dB
  CHECK(full.mean_image_psnr() == doctest::Approx(10.0 * std::log10(32.0)));
}

TEST_CASE("reconstruction: norm_pix un-normalisation, pasting and grey masking") {
  model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 5);
  const auto& cfg = mae.config();
  REQUIRE(cfg.norm_pix_loss);
  const int64_t n = 3, s = cfg.img_size, p = cfg.patch_size, L = cfg.num_patches();
  eng::Generator g(11);
  Tensor imgs = data::normalize(g.uniform({n, 3, s, s}), data::imagenet_mean(), data::imagenet_std());
  Tensor noise = g.uniform({n, L});
  moce::Reconstruction r = moce::reconstruct(mae, imgs, noise, 0.75);
  model::MaeOutput out = mae.forward(imgs, noise, 0.75);
  CHECK(r.loss == doctest::Approx(out.loss.item()));

  // f64 reference for every pixel of the reconstruction.
  std::vector<float> x = imgs.to_vector<float>(), pred = out.pred.to_vector<float>(), mask = out.mask.to_vector<float>();
  std::vector<float> rec = r.recon.to_vector<float>(), pasted = r.pasted.to_vector<float>(),
                     masked = r.masked.to_vector<float>(), orig = r.original.to_vector<float>(),
                     zero = r.zero_pred.to_vector<float>();
  const auto& mean = data::imagenet_mean();
  const auto& sd = data::imagenet_std();
  const int64_t h = s / p, pd = p * p * 3;
  double max_err = 0, max_err_zero = 0;
  int64_t removed = 0;
  for (int64_t b = 0; b < n; b++)
    for (int64_t pi = 0; pi < h; pi++)
      for (int64_t pj = 0; pj < h; pj++) {
        const int64_t l = pi * h + pj;
        auto px = [&](int64_t c, int64_t i, int64_t j) { return size_t(((b * 3 + c) * s + pi * p + i) * s + pj * p + j); };
        double m = 0, v = 0;
        for (int64_t c = 0; c < 3; c++)
          for (int64_t i = 0; i < p; i++)
            for (int64_t j = 0; j < p; j++) m += x[px(c, i, j)];
        m /= double(pd);
        for (int64_t c = 0; c < 3; c++)
          for (int64_t i = 0; i < p; i++)
            for (int64_t j = 0; j < p; j++) v += (x[px(c, i, j)] - m) * (x[px(c, i, j)] - m);
        v /= double(pd - 1);
        const bool is_removed = mask[size_t(b * L + l)] == 1.0f;
        removed += is_removed;
        for (int64_t c = 0; c < 3; c++)
          for (int64_t i = 0; i < p; i++)
            for (int64_t j = 0; j < p; j++) {
              double q = pred[size_t((b * L + l) * pd + (i * p + j) * 3 + c)];  // MAE order (i, j, c)
              double want = std::clamp((q * std::sqrt(v + 1e-6) + m) * sd[size_t(c)] + mean[size_t(c)], 0.0, 1.0);
              max_err = std::max(max_err, std::abs(want - rec[px(c, i, j)]));
              double flat = std::clamp(m * sd[size_t(c)] + mean[size_t(c)], 0.0, 1.0);  // the zero prediction
              max_err_zero = std::max(max_err_zero, std::abs(flat - zero[px(c, i, j)]));
              float o = orig[px(c, i, j)];
              CHECK(pasted[px(c, i, j)] == (is_removed ? rec[px(c, i, j)] : o));
              CHECK(masked[px(c, i, j)] == (is_removed ? 0.5f : o));
            }
      }
  CHECK(max_err < 1e-5);
  CHECK(max_err_zero < 1e-5);
  CHECK(removed == n * (L - int64_t(double(L) * 0.25)));
  // The original comes back from the normalised input.
  std::vector<float> raw = data::unnormalize(imgs).to_vector<float>();
  for (size_t i = 0; i < raw.size(); i++) CHECK(orig[i] == doctest::Approx(std::clamp(raw[i], 0.0f, 1.0f)));
}

TEST_CASE("PNG grid: upscaling and size") {
  Tensor t = Tensor::from_vector(std::vector<float>{0.f, 1.f, 2.f, 3.f}, {1, 1, 2, 2});
  CHECK(moce::upscale_nearest(t, 2).to_vector<float>() ==
        std::vector<float>{0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3});
  CHECK(moce::upscale_factor(32) == 4);
  CHECK(moce::upscale_factor(16) == 8);
  CHECK(moce::upscale_factor(28) == 5);
  CHECK(moce::upscale_factor(224) == 1);
  moce::Reconstruction r;
  r.original = r.masked = r.recon = r.pasted = Tensor::full({5, 3, 16, 16}, 0.25);
  Tensor grid = moce::reconstruction_grid(r, 3, 8);
  CHECK(grid.shape() == eng::Shape{3, 3 * (128 + 2) + 2, 4 * (128 + 2) + 2});
}

TEST_CASE("evaluate_mae end to end on a tiny random-init model: figures, eval.json, PNG, determinism") {
  TempDir tmp("e2e");
  model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 1);
  auto tr = two_class_images(96, 16, 1), te = two_class_images(40, 16, 2);
  auto train = std::make_shared<data::TensorDataset>(tr.images, tr.labels);
  auto test = std::make_shared<data::TensorDataset>(te.images, te.labels);

  // Features come back in dataset order and equal the model's own features of the normalised images.
  moce::FeatureSet fs_ = moce::extract_features(mae, test, moce::ExtractOptions{16, 2});
  CHECK(fs_.features.shape() == eng::Shape{40, 16});
  CHECK(fs_.labels.to_vector<int64_t>() == te.labels.to_vector<int64_t>());
  {
    eng::NoGradGuard ng;
    Tensor direct = mae.features(data::normalize(te.images, data::imagenet_mean(), data::imagenet_std()));
    std::vector<float> a = fs_.features.to_vector<float>(), b = direct.to_vector<float>();
    double err = 0;
    for (size_t i = 0; i < a.size(); i++) err = std::max(err, double(std::abs(a[i] - b[i])));
    CHECK(err < 1e-5);
  }

  moce::EvalMaeOptions o;
  o.out_dir = tmp.file("out");
  o.extract = {32, 2};
  o.recon.batch_size = 32;
  o.probe.epochs = 20;
  o.verbose = false;
  json j = moce::evaluate_mae(mae, train, test, o);
  json disk = read_json(tmp.file("out/eval.json"));
  CHECK(disk["knn"]["top1"] == j["knn"]["top1"]);
  MESSAGE("tiny random-init: k-NN " << j["knn"]["top1"] << ", probe " << j["linear_probe"]["top1"] << ", PSNR masked "
                                   << j["reconstruction"]["psnr_masked_db"] << " dB, full "
                                   << j["reconstruction"]["psnr_full_pasted_db"] << " dB");
  CHECK(j["knn"]["top1"].get<double>() >= 0.9);
  CHECK(j["linear_probe"]["top1"].get<double>() >= 0.9);
  CHECK(j["knn"]["total"] == 40);
  double pm = j["reconstruction"]["psnr_masked_db"], pf = j["reconstruction"]["psnr_full_pasted_db"];
  CHECK(pm > 0);
  // Pasting the visible quarter back changes nothing on the removed pixels: MSE_full = MSE_masked * 3/4 exactly.
  CHECK(pf == doctest::Approx(pm + 10.0 * std::log10(4.0 / 3.0)));
  CHECK(j["reconstruction"]["images"] == 40);
  CHECK(j["reconstruction"]["psnr_masked_zero_prediction_db"].get<double>() > 0);
  data::Image png = data::decode_image(tmp.file("out/reconstructions.png"));
  CHECK(png.width == 4 * (128 + 2) + 2);
  CHECK(png.height == 8 * (128 + 2) + 2 + moce::kReconstructionTitleStrip);
  CHECK(j["reconstruction"]["png"]["width"] == png.width);
  CHECK(j["reconstruction"]["png"]["height"] == png.height);
  // The title strip on top: white with dark text pixels; the grid below starts with its white padding row.
  int64_t dark = 0;
  for (int64_t p = 0; p < png.width * moce::kReconstructionTitleStrip; p++) dark += png.pixels[size_t(3 * p)] < 128;
  CHECK(dark > 100);

  // The same inputs give the same figures, whatever the worker count.
  o.extract.workers = 0;
  o.recon.workers = 0;
  json j2 = moce::evaluate_mae(mae, train, test, o);
  CHECK(j2["knn"]["correct"] == j["knn"]["correct"]);
  CHECK(j2["linear_probe"]["final_train_loss"] == j["linear_probe"]["final_train_loss"]);
  CHECK(j2["reconstruction"]["psnr_masked_db"] == j["reconstruction"]["psnr_masked_db"]);
  // ... and whatever the OpenMP thread count (1 here against the default above).
  int threads = omp_get_max_threads();
  omp_set_num_threads(threads == 1 ? 2 : 1);
  json j3 = moce::evaluate_mae(mae, train, test, o);
  omp_set_num_threads(threads);
  CHECK(j3["knn"]["correct"] == j["knn"]["correct"]);
  CHECK(j3["linear_probe"]["final_train_loss"] == j["linear_probe"]["final_train_loss"]);
  CHECK(j3["reconstruction"]["psnr_masked_db"] == j["reconstruction"]["psnr_masked_db"]);
  CHECK(j3["reconstruction"]["loss"] == j["reconstruction"]["loss"]);
}

TEST_CASE("moce eval-mae on a checkpoint and a weights file over image folders") {
  TempDir tmp("cmd");
  write_image_folder(tmp.file("train"), two_class_images(48, 16, 3));
  write_image_folder(tmp.file("test"), two_class_images(20, 16, 4));
  model::MaeConfig cfg = model::mae_config("mae_test_tiny");
  model::MaskedAutoencoder mae(cfg, 9);
  eng::Checkpoint ck;
  ck.weights = mae.state_dict();
  ck.config = {{"model", model::config_to_json(cfg)}};
  ck.step = 12;
  ck.optimizer_state["exp_avg.cls_token"] = Tensor::zeros({1, 1, 16});
  eng::save_checkpoint(tmp.file("ck.safetensors"), ck);
  std::vector<std::string> common = {"--train-data", tmp.file("train"), "--test-data", tmp.file("test"),
                                     "--probe-epochs", "10", "--grid", "4", "--workers", "1"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), common.begin(), common.end());
    return extra;
  };

  REQUIRE(run_cmd(with({"--checkpoint", tmp.file("ck.safetensors"), "--out", tmp.file("a")})) == 0);
  json a = read_json(tmp.file("a/eval.json"));
  CHECK(a["inputs"]["loaded"]["format"] == eng::kCheckpointFormat);
  CHECK(a["inputs"]["loaded"]["step"] == 12);
  CHECK(a["inputs"]["loaded"]["config_source"] == "file metadata");
  CHECK(a["model"]["name"] == "mae_test_tiny");
  CHECK(a["knn"]["total"] == 20);
  CHECK(a["train_data"]["images"] == 48);
  CHECK(fs::exists(tmp.file("a/reconstructions.png")));
  CHECK(data::decode_image(tmp.file("a/reconstructions.png")).height == 4 * 130 + 2 + moce::kReconstructionTitleStrip);

  // A bare weights file needs --config; then it gives the same figures as the checkpoint.
  eng::save_safetensors(tmp.file("w.safetensors"), mae.state_dict());
  std::string err = error_of([&] { run_cmd(with({"--checkpoint", tmp.file("w.safetensors"), "--out", tmp.file("b")})); });
  CHECK(err.find("w.safetensors") != std::string::npos);
  CHECK(err.find("--config") != std::string::npos);
  REQUIRE(run_cmd(with({"--checkpoint", tmp.file("w.safetensors"), "--config", "mae_test_tiny", "--out", tmp.file("b")})) == 0);
  json b = read_json(tmp.file("b/eval.json"));
  CHECK(b["knn"]["correct"] == a["knn"]["correct"]);
  CHECK(b["reconstruction"]["psnr_masked_db"] == a["reconstruction"]["psnr_masked_db"]);

  // --random-init with the checkpoint's config and the model's seed is the same model again.
  REQUIRE(run_cmd(with({"--checkpoint", tmp.file("ck.safetensors"), "--random-init", "--seed", "9", "--out", tmp.file("c")})) == 0);
  json c = read_json(tmp.file("c/eval.json"));
  CHECK(c["knn"]["correct"] == a["knn"]["correct"]);  // k-NN does not depend on the seed; the masks do
  CHECK(c["inputs"]["random_init"] == true);

  // Wrong model: a file of another architecture names the file and the tensor.
  model::MaskedAutoencoder other(model::mae_config("mae_test_tiny"), 1);
  auto sd = other.state_dict();
  sd.erase("norm.weight");
  eng::save_safetensors(tmp.file("broken.safetensors"), sd);
  err = error_of([&] { run_cmd(with({"--checkpoint", tmp.file("broken.safetensors"), "--config", "mae_test_tiny", "--out", tmp.file("d")})); });
  CHECK(err.find("broken.safetensors") != std::string::npos);
  CHECK(err.find("norm.weight") != std::string::npos);
  err = error_of([&] { run_cmd(with({"--checkpoint", tmp.file("ck.safetensors"), "--config", "mae_tiny_p4_32", "--out", tmp.file("d")})); });
  CHECK(err.find("mae_test_tiny") != std::string::npos);
  CHECK(error_of([&] { run_cmd(with({"--out", tmp.file("d")})); }).find("--checkpoint") != std::string::npos);
  CHECK(error_of([&] { run_cmd(with({"--checkpoint", tmp.file("ck.safetensors"), "--mask-ratio", "1", "--out", tmp.file("d")})); })
            .find("--mask-ratio") != std::string::npos);
}

TEST_CASE("moce eval-mae on Fashion-MNIST (28x28 resized to the model's 16x16)") {
  if (data::fashion_mnist_dir().empty()) {
    MESSAGE("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  TempDir tmp("fashion");
  REQUIRE(run_cmd({"--random-init", "--config", "mae_test_tiny", "--seed", "2", "--limit-train", "400", "--limit-test", "200",
                   "--probe-epochs", "100", "--out", tmp.file("out")}) == 0);
  json j = read_json(tmp.file("out/eval.json"));
  CHECK(j["features"]["train_images"] == 400);
  CHECK(j["features"]["test_images"] == 200);
  CHECK(j["features"]["num_classes"] == 10);
  // Even a random encoder's features carry the clothing classes well above chance (10%).
  CHECK(j["knn"]["top1"].get<double>() > 0.4);
  CHECK(j["linear_probe"]["top1"].get<double>() > 0.4);
  MESSAGE("Fashion-MNIST, random-init mae_test_tiny, 400/200 images: k-NN " << j["knn"]["top1"] << ", probe "
                                                                             << j["linear_probe"]["top1"] << ", PSNR "
                                                                             << j["reconstruction"]["psnr_masked_db"]);
}

}  // TEST_SUITE
