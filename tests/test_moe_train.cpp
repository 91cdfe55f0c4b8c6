// test_moe_train.cpp: `moce train` end to end on a small generated image folder: a dense MAE pre-trained here, its
// clusters, then MoCE, TokenMoE and dense continued from it. Checks that the files hold the method's model (stacked
// expert names and shapes, the centroids equal to the cluster folder's), that the loss the loop optimises is the MAE
// loss plus the weighted auxiliary and distillation terms it reports, that every metrics line's expert loads are
// shares of the batch, the learning-rate rule (the init's base lr x 0.1), that --resume continues bit for bit, that
// load_trained_model gives back the trained weights, and the bad inputs as one-line errors.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "engine/io/safetensors.h"
#include "moce/cluster/io.h"
#include "moce/cmd/commands.h"
#include "moce/train/expert_training.h"
#include "tests/moce_fixture.h"

using eng::Tensor;
using json = nlohmann::json;

namespace {

using testutil::error_of;
using testutil::TempDir;

using testutil::read_jsonl;
using testutil::read_text;
using testutil::run;
using Fixture = testutil::MoceFixture;

Fixture& fixture() { return testutil::moce_fixture(); }

}  // namespace

TEST_SUITE("moe train") {
  TEST_CASE("moce: the files hold the MoCE model, its centroids, and the losses the loop optimised") {
    Fixture& f = fixture();
    TempDir out("moe_train_moce");
    const std::string run_dir = out.file("run");
    REQUIRE(f.train("moce", run_dir) == 0);

    // The weights: stacked experts in the last two blocks (both of mae_test_tiny's), the gate on the centroids.
    eng::SafetensorsFile w = eng::load_safetensors(run_dir + "/weights.safetensors");
    const Tensor centroids = moce::cluster::read_centroids(f.clusters + "/centroids.safetensors").centroids;
    for (int b : {0, 1}) {
      const std::string p = "blocks." + std::to_string(b) + ".mlp.";
      REQUIRE(w.tensors.count(p + "fc1.weight"));
      CHECK(w.tensors.at(p + "fc1.weight").shape() == eng::Shape{8, 64, 16});
      CHECK(w.tensors.at(p + "fc2.weight").shape() == eng::Shape{8, 16, 64});
      CHECK(w.tensors.at(p + "gate.weight").shape() == eng::Shape{8, centroids.size(1)});
    }
    REQUIRE(w.tensors.count(moce::kCentroidsTensor));
    CHECK(w.tensors.at(moce::kCentroidsTensor).to_vector<float>() == centroids.to_vector<float>());

    // The learning-rate rule: the init run's base lr (1e-3) times 0.1.
    json config = json::parse(read_text(run_dir + "/config.json"));
    CHECK(config["run"]["base_lr"].get<double>() == doctest::Approx(1e-4).epsilon(1e-12));
    CHECK(config["run"]["method"] == "moce");

    // Every step's line: loss = mae_loss + aux_loss + 0.01 distill_loss (each a window mean: the sum is linear), the
    // loads are shares of the choices, the confidence a max of a softmax over 8 experts.
    int step_lines = 0;
    for (const json& j : read_jsonl(run_dir + "/metrics.jsonl")) {
      if (!j.contains("step")) continue;
      step_lines++;
      const double want = j["mae_loss"].get<double>() + j["aux_loss"].get<double>() + 0.01 * j["distill_loss"].get<double>();
      CHECK(j["loss"].get<double>() == doctest::Approx(want).epsilon(1e-6));
      CHECK(j["distill_loss"].get<double>() > 0);
      REQUIRE(j["layers"].size() == 2);
      for (const json& layer : j["layers"]) {
        double total = 0;
        for (double s : layer["load"]) total += s;
        CHECK(total == doctest::Approx(1.0).epsilon(1e-9));
        CHECK(layer["gate_confidence"].get<double>() >= 1.0 / 8 - 1e-9);
        CHECK(layer["gate_confidence"].get<double>() <= 1.0);
        CHECK(layer["imbalance_loss"].get<double>() <= 0);  // − Σ cv², never positive
      }
    }
    CHECK(step_lines == 6);

    // load_trained_model gives the trained weights back under the method's names.
    moce::TrainedModel t = moce::load_trained_model(run_dir + "/weights.safetensors");
    CHECK(t.method == moce::TrainMethod::Moce);
    CHECK(t.blocks == std::vector<int64_t>{0, 1});
    REQUIRE(t.layers.size() == 2);
    CHECK(t.layers[1]->experts.fc1_weight.to_vector<float>() == w.tensors.at("blocks.1.mlp.fc1.weight").to_vector<float>());
    CHECK(t.centroids.to_vector<float>() == centroids.to_vector<float>());
  }

  TEST_CASE("moce and tokenmoe: --resume continues bit for bit (losses and weights)") {
    Fixture& f = fixture();
    for (const std::string method : {"moce", "tokenmoe"}) {
      CAPTURE(method);
      TempDir out("moe_train_resume");
      REQUIRE(f.train(method, out.file("whole")) == 0);
      REQUIRE(f.train(method, out.file("split"), {"--stop-after", "1"}) == 0);
      REQUIRE(run(moce::cmd_train, "train", {"--resume", out.file("split")}) == 0);
      auto epochs = [](const std::string& dir) {
        std::vector<std::string> hex;
        for (const json& j : read_jsonl(dir + "/metrics.jsonl"))
          if (j.contains("train_loss_hex")) hex.push_back(j["train_loss_hex"]);
        return hex;
      };
      CHECK(epochs(out.file("whole")).size() == 2);
      CHECK(epochs(out.file("whole")) == epochs(out.file("split")));
      CHECK(read_text(out.file("whole") + "/weights.safetensors") == read_text(out.file("split") + "/weights.safetensors"));
    }
  }

  TEST_CASE("tokenmoe and dense: their models, metrics and learning rates") {
    Fixture& f = fixture();
    TempDir out("moe_train_token");
    REQUIRE(f.train("tokenmoe", out.file("tok")) == 0);
    eng::SafetensorsFile w = eng::load_safetensors(out.file("tok") + "/weights.safetensors");
    // mae_test_tiny has 2 blocks: of the last two even-numbered (1-based) MLPs only block 1 (0-based) exists.
    CHECK(w.tensors.count("blocks.1.mlp.gate.weight") == 1);
    CHECK(w.tensors.at("blocks.1.mlp.gate.weight").shape() == eng::Shape{8, 16});  // the gate reads tokens
    CHECK(w.tensors.count("blocks.0.mlp.gate.weight") == 0);
    CHECK(w.tensors.count(moce::kCentroidsTensor) == 0);
    for (const json& j : read_jsonl(out.file("tok") + "/metrics.jsonl")) {
      if (!j.contains("step")) continue;
      CHECK(!j.contains("distill_loss"));
      const json& layer = j["layers"][0];
      CHECK(layer["dropped_fraction"].get<double>() >= 0);
      CHECK(layer["dropped_fraction"].get<double>() < 1);
      CHECK(j["loss"].get<double>() == doctest::Approx(j["mae_loss"].get<double>() + j["aux_loss"].get<double>()).epsilon(1e-6));
    }

    REQUIRE(f.train("dense", out.file("dense"), {"--base-lr", "2e-4"}) == 0);
    json config = json::parse(read_text(out.file("dense") + "/config.json"));
    CHECK(config["run"]["base_lr"].get<double>() == 2e-4);  // given: taken as it is
    eng::SafetensorsFile d = eng::load_safetensors(out.file("dense") + "/weights.safetensors");
    CHECK(d.tensors.at("blocks.1.mlp.fc1.weight").shape() == eng::Shape{64, 16});  // still the dense MLP
    for (const json& j : read_jsonl(out.file("dense") + "/metrics.jsonl"))
      if (j.contains("step")) CHECK(j["loss"].get<double>() == j["mae_loss"].get<double>());
  }

  TEST_CASE("bad input: one line naming the flag or file") {
    Fixture& f = fixture();
    TempDir out("moe_train_bad");
    auto train_error = [&](std::vector<std::string> args) {
      return error_of([&] { run(moce::cmd_train, "train", args); });
    };
    const std::string o = out.file("x");
    // (--batch 24 where the check sits after the loader's: the default 128 is more than the folder's 72 images.)
    CHECK(train_error({"--method", "moce", "--init", f.init(), "--data", f.data, "--out", o}).find("needs --clusters") !=
          std::string::npos);
    CHECK(train_error({"--method", "moe", "--init", f.init(), "--data", f.data, "--out", o}).find("--method moe") !=
          std::string::npos);
    CHECK(train_error({"--method", "dense", "--data", f.data, "--out", o}).find("--init") != std::string::npos);
    CHECK(train_error({"--method", "dense", "--init", out.file("none.safetensors"), "--data", f.data, "--out", o})
              .find("no such file") != std::string::npos);
    CHECK(train_error({"--method", "tokenmoe", "--init", f.init(), "--data", f.data, "--out", o, "--moe-blocks", "1,7",
                       "--batch", "24"})
              .find("block 7") != std::string::npos);
    CHECK(train_error({"--method", "tokenmoe", "--init", f.init(), "--data", f.data, "--out", o, "--moe-blocks", "a"})
              .find("--moe-blocks a") != std::string::npos);
    CHECK(train_error({"--method", "tokenmoe", "--init", f.init(), "--data", f.data, "--out", o, "--top-k", "9",
                       "--batch", "24"})
              .find("--top-k") != std::string::npos);
    // Clusters of other data (fewer images): named, with the counts.
    CHECK(train_error({"--method", "moce", "--init", f.init(), "--clusters", f.clusters, "--data", f.data, "--limit",
                       "48", "--out", o, "--batch", "24"})
              .find("it clustered 72 images") != std::string::npos);
    // A trained MoE model is not a dense MAE to continue.
    REQUIRE(f.train("tokenmoe", out.file("tok"), {"--epochs", "1"}) == 0);
    CHECK(train_error({"--method", "dense", "--init", out.file("tok") + "/weights.safetensors", "--data", f.data,
                       "--out", o})
              .find("continue a dense MAE") != std::string::npos);
  }
}
