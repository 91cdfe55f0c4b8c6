// test_rank_blocks.cpp: `moce rank-blocks` (moce/train/rank_blocks.h): a block's reported MLP gradient norm against
// the directional finite difference of the MAE loss along that gradient, in f64; the ranking and the chosen blocks;
// the same bits for 1 and 2 threads; bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/image.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/rng.h"
#include "model/mae.h"
#include "moce/cmd/commands.h"
#include "moce/train/rank_blocks.h"
#include "tests/test_util.h"

using eng::DType;
using eng::Tensor;
namespace fs = std::filesystem;

namespace {

// Two classes of 16x16 noise images, `per_class` each, as an image folder.
void write_folder(const std::string& root, int64_t per_class) {
  eng::Generator g(5);
  for (int64_t c = 0; c < 2; c++) {
    fs::create_directories(root + "/c" + std::to_string(c));
    for (int64_t i = 0; i < per_class; i++)
      data::write_png(root + "/c" + std::to_string(c) + "/" + std::to_string(i) + ".png",
                      g.uniform({3, 16, 16}, 0.3 * double(c), 0.7 + 0.3 * double(c)));
  }
}

void write_tiny_checkpoint(const std::string& path, uint64_t seed) {
  model::MaeConfig cfg = model::mae_config("mae_test_tiny");
  model::MaskedAutoencoder mae(cfg, seed);
  eng::Checkpoint ck;
  ck.weights = mae.state_dict();
  ck.config = {{"model", model::config_to_json(cfg)}};
  ck.step = 1;
  eng::save_checkpoint(path, ck);
}

double loss_of(const model::MaskedAutoencoder& mae, const Tensor& imgs, const Tensor& noise) {
  eng::NoGradGuard ng;
  return mae.forward(imgs, noise, 0.75).loss.item();
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

}  // namespace

TEST_SUITE("rank blocks") {
  TEST_CASE("a block's MLP gradient norm is the directional finite difference of the loss along it (f64)") {
    model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 3);
    mae.visit([](const std::string&, Tensor& t) {  // the whole model in f64, parameters still leaves
      const bool train = t.requires_grad();
      t = t.to(DType::F64).detach();
      if (train) t.requires_grad_(true);
    });
    eng::Generator g(9);
    const Tensor imgs = g.normal({3, 3, 16, 16}, 0.0, 1.0, DType::F64);
    const Tensor noise = g.uniform({3, mae.config().num_patches()}, 0.0, 1.0);
    const moce::BlockGradientNorms r = moce::block_mlp_gradient_norms(mae, imgs, noise, 0.75);
    REQUIRE(r.norm.size() == mae.blocks.size());
    CHECK(r.loss == doctest::Approx(loss_of(mae, imgs, noise)).epsilon(1e-15));
    for (auto& [name, p] : mae.named_parameters()) CHECK_MESSAGE(!p.grad().defined(), name << " kept its gradient");

    for (size_t b = 0; b < mae.blocks.size(); b++) {
      CAPTURE(b);
      model::Mlp& mlp = mae.blocks[b].dense_mlp();
      std::vector<Tensor> ps = {mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias};
      CHECK(r.params[b] == 16 * 64 * 2 + 64 + 16);
      // The direction: this block's gradient (autograd again), normalised over its four tensors.
      mae.forward(imgs, noise, 0.75).loss.backward();
      std::vector<std::vector<double>> dir;
      double n2 = 0;
      for (const Tensor& p : ps) {
        dir.push_back(p.grad().to_vector<double>());
        for (double v : dir.back()) n2 += v * v;
      }
      for (auto& [name, p] : mae.named_parameters()) p.zero_grad();
      const double h = 1e-5, gnorm = std::sqrt(n2);
      auto shift = [&](double s) {
        for (size_t k = 0; k < ps.size(); k++) {
          double* v = ps[k].data<double>();
          for (size_t i = 0; i < dir[k].size(); i++) v[i] += s * dir[k][i] / gnorm;
        }
      };
      shift(h);
      const double up = loss_of(mae, imgs, noise);
      shift(-2 * h);
      const double down = loss_of(mae, imgs, noise);
      shift(h);
      const double fd = (up - down) / (2 * h);
      // f64: rounding of the loss (~1e-16) over 2h gives ~1e-11, the truncation h^2 L''' less; 1e-7 is loose.
      CHECK(r.norm[b] > 1e-6);
      CHECK(r.norm[b] == doctest::Approx(fd).epsilon(1e-7));
      CHECK(r.norm[b] == doctest::Approx(gnorm).epsilon(1e-12));
    }
    CHECK(r.norm[0] != r.norm[1]);
  }

  TEST_CASE("the command: ranking by the mean norm, the chosen blocks by index, the JSON; the same bits on 1 and 2 "
            "threads") {
    testutil::TempDir dir("rank_blocks");
    write_folder(dir.file("data"), 10);
    write_tiny_checkpoint(dir.file("ckpt.safetensors"), 4);
    std::vector<std::string> lines;
    auto run = [&](int threads, int64_t workers, const std::string& out) {
      testutil::ThreadCount tc(threads);
      moce::RankBlocksOptions o;
      o.checkpoint = dir.file("ckpt.safetensors");
      o.data = dir.file("data");
      o.batches = 3;
      o.batch = 6;
      o.top = 1;
      o.workers = workers;
      o.out = out;
      o.print = [&](const std::string& s) { lines.push_back(s); };
      return moce::rank_blocks(o);
    };
    const moce::RankBlocksResult one = run(1, 0, dir.file("rank.json"));
    REQUIRE(one.blocks.size() == 2);
    CHECK(one.batches == 3);
    for (const moce::BlockRank& b : one.blocks) {
      REQUIRE(b.norms.size() == 3);
      CHECK(b.mean_norm == doctest::Approx((b.norms[0] + b.norms[1] + b.norms[2]) / 3).epsilon(1e-15));
      CHECK(b.mean_rms == doctest::Approx(b.mean_norm / std::sqrt(double(b.params))).epsilon(1e-15));
      CHECK(b.norms[0] != b.norms[1]);  // different batches
    }
    for (size_t k = 0; k + 1 < one.ranking.size(); k++)
      CHECK(one.blocks[size_t(one.ranking[k])].mean_norm >= one.blocks[size_t(one.ranking[k + 1])].mean_norm);
    CHECK(one.chosen == std::vector<int64_t>{one.ranking[0]});
    CHECK(one.moe_blocks_flag == "--moe-blocks " + std::to_string(one.ranking[0]));
    CHECK(lines.back() == "report: " + dir.file("rank.json"));
    CHECK(std::find(lines.begin(), lines.end(), "chosen: " + one.moe_blocks_flag) != lines.end());
    const nlohmann::json j = nlohmann::json::parse(std::ifstream(dir.file("rank.json")));
    CHECK(j == one.report);
    CHECK(j["format"] == "moce-rank-blocks");
    CHECK(j["ranking"] == one.ranking);
    CHECK(!testutil::atomic_temporary_left(dir.file("rank.json")));

    const moce::RankBlocksResult two = run(2, 2, "");
    for (size_t b = 0; b < 2; b++) CHECK(same_bits(one.blocks[b].norms, two.blocks[b].norms));
    CHECK(one.mean_loss == two.mean_loss);

    // The subcommand as the binary calls it, --top 2 of 2: both blocks.
    std::vector<std::string> args = {"moce", "rank-blocks", "--checkpoint", dir.file("ckpt.safetensors"), "--data",
                                     dir.file("data"), "--batches", "1", "--batch", "4", "--top", "2", "--out",
                                     dir.file("cmd.json")};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    CHECK(moce::cmd_rank_blocks(int(argv.size()), argv.data()) == 0);
    const nlohmann::json c = nlohmann::json::parse(std::ifstream(dir.file("cmd.json")));
    CHECK(c["moe_blocks_flag"] == "--moe-blocks 0,1");
    CHECK(c["batches"] == 1);
  }

  TEST_CASE("bad input: one line naming the flag or the file") {
    using testutil::error_of;
    testutil::TempDir dir("rank_blocks_bad");
    write_folder(dir.file("data"), 3);
    fs::create_directories(dir.file("empty/c0"));
    write_tiny_checkpoint(dir.file("ckpt.safetensors"), 4);
    eng::save_safetensors(dir.file("other.safetensors"), {{"centroids", Tensor::ones({4, 8})}}, {});
    moce::RankBlocksOptions o;
    o.checkpoint = dir.file("ckpt.safetensors");
    o.data = dir.file("data");
    o.batch = 2;
    o.print = [](const std::string&) {};
    auto err = [&](const std::function<void(moce::RankBlocksOptions&)>& edit) {
      moce::RankBlocksOptions x = o;
      edit(x);
      return error_of([&] { moce::rank_blocks(x); });
    };
    CHECK(err([](moce::RankBlocksOptions&) {}) == "");
    CHECK(err([](moce::RankBlocksOptions& x) { x.top = 0; }) == "--top must be in [1, 2] (the encoder's blocks), got 0");
    CHECK(err([](moce::RankBlocksOptions& x) { x.top = 3; }) == "--top must be in [1, 2] (the encoder's blocks), got 3");
    const std::string other = err([&](moce::RankBlocksOptions& x) { x.checkpoint = dir.file("other.safetensors"); });
    CHECK_MESSAGE(other.rfind("--checkpoint " + dir.file("other.safetensors") + ": not a dense MAE checkpoint", 0) == 0,
                  other);
    const std::string empty = err([&](moce::RankBlocksOptions& x) { x.data = dir.file("empty"); });
    CHECK_MESSAGE(empty.rfind("--data " + dir.file("empty") + ": ImageFolder: class folder", 0) == 0, empty);
    CHECK_MESSAGE(empty.find("has no image files") != std::string::npos, empty);
    CHECK(err([&](moce::RankBlocksOptions& x) { x.batch = 7; }) ==
          "--data " + dir.file("data") + ": 6 images, fewer than one batch of --batch 7");
    CHECK(err([&](moce::RankBlocksOptions& x) { x.out = dir.file("no/such/rank.json"); }) ==
          "--out " + dir.file("no/such/rank.json") + ": the folder " + dir.file("no/such") + " does not exist");
    CHECK(err([](moce::RankBlocksOptions& x) { x.batches = 0; }) == "--batches must be positive, got 0");
    CHECK(err([](moce::RankBlocksOptions& x) { x.mask_ratio = 1; }) == "--mask-ratio must be in (0, 1), got 1");
  }
}
