// test_routing_cmd.cpp: `moce routing` end to end on the tiny MoCE pipeline (tests/moce_fixture.h): the counts that
// collect_routing gathers against an independent recount (MoCE: every image's one choice is the argmax of the gate's
// softmax on the centroid of the cluster its dense feature falls in, computed here in f64 from the file's tensors;
// TokenMoE: every image contributes one choice per token), the files the command writes, and its bad input.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/io/safetensors.h"
#include "moce/common/dataset.h"
#include "moce/eval/features.h"
#include "moce/train/checkpoint.h"
#include "moce/train/routing_analysis.h"
#include "tests/moce_fixture.h"

using eng::Tensor;
using json = nlohmann::json;
using testutil::error_of;
using testutil::moce_fixture;
using testutil::run;
using testutil::TempDir;

TEST_SUITE("routing cmd") {
  TEST_CASE("MoCE: each image's choice is its cluster centroid's gate argmax (f64), as the command reports") {
    testutil::MoceFixture& f = moce_fixture();
    TempDir dir("routing_cmd");
    REQUIRE(f.train("moce", dir.file("moce"), {"--epochs", "1"}) == 0);
    const std::string weights = dir.file("moce") + "/weights.safetensors";

    moce::TrainedModel model = moce::load_trained_model(weights);
    auto ds = moce::open_dataset(f.data, false);
    moce::RoutingOptions o;
    o.batch = 16;  // batches that do not divide the 72 images
    o.workers = 1;
    o.verbose = false;
    std::vector<int32_t> clusters;
    moce::RoutingInput in = moce::collect_routing(model, ds, o, eng::Device::cpu(), &clusters);
    REQUIRE(in.layers.size() == 2);

    // Independently: the dense features of the fixture's MAE, their nearest centroid, the gate softmax in f64.
    model::MaskedAutoencoder dense = moce::load_mae(f.init(), "", false, 0);
    moce::FeatureSet fs = moce::extract_features(dense, ds);
    eng::SafetensorsFile w = eng::load_safetensors(weights);
    const Tensor c = w.tensors.at(moce::kCentroidsTensor);
    const int64_t m = c.size(0), d = c.size(1), n = ds->size();
    const std::vector<float> cv = c.to_vector<float>(), fv = fs.features.to_vector<float>();
    // argmax_j of the f64 dot product of x (d values) with row j of rows (count rows of d), first maximum on ties.
    auto argmax_dot = [d](const float* x, const std::vector<float>& rows, int64_t count) {
      int64_t best = 0;
      double best_dot = -1e300;
      for (int64_t j = 0; j < count; j++) {
        double dot = 0;
        for (int64_t k = 0; k < d; k++) dot += double(x[k]) * double(rows[size_t(j * d + k)]);
        if (dot > best_dot) best_dot = dot, best = j;
      }
      return best;
    };
    std::vector<std::vector<float>> gate_weights;
    for (const moce::RoutingLayer& layer : in.layers)
      gate_weights.push_back(w.tensors.at("blocks." + std::to_string(layer.block) + ".mlp.gate.weight").to_vector<float>());
    for (int64_t i = 0; i < n; i++) {
      const int64_t best = argmax_dot(&fv[size_t(i * d)], cv, m);
      CHECK(clusters[size_t(i)] == best);
      for (size_t l = 0; l < in.layers.size(); l++) {
        const int64_t e_n = in.layers[l].num_experts;
        const int64_t top = argmax_dot(&cv[size_t(best * d)], gate_weights[l], e_n);
        int64_t total = 0;
        for (int64_t e = 0; e < e_n; e++) total += in.layers[l].counts[size_t(i * e_n + e)];
        CHECK(total == 1);  // one image, one top-1 choice
        CHECK(in.layers[l].counts[size_t(i * e_n + top)] == 1);
      }
    }

    // The command: files and the printed figures' JSON.
    const std::string out = dir.file("routing");
    REQUIRE(run(moce::cmd_routing, "routing", {"--model", weights, "--data", f.data, "--out", out, "--workers", "1"}) == 0);
    json report = json::parse(testutil::read_text(out + "/routing.json"));
    REQUIRE(report["layers"].size() == 2);
    for (const json& layer : report["layers"]) {
      const std::string b = layer["block"].dump();
      CHECK(std::filesystem::exists(out + "/routing_heatmap_layer" + b + ".png"));
      CHECK(std::filesystem::exists(out + "/expert_samples_layer" + b + ".png"));
    }
  }

  TEST_CASE("TokenMoE: every image contributes one choice per token; bad input is one line") {
    testutil::MoceFixture& f = moce_fixture();
    TempDir dir("routing_cmd_tok");
    REQUIRE(f.train("tokenmoe", dir.file("tok"), {"--epochs", "1"}) == 0);
    moce::TrainedModel model = moce::load_trained_model(dir.file("tok") + "/weights.safetensors");
    auto ds = moce::open_dataset(f.data, false);
    moce::RoutingOptions o;
    o.workers = 1;
    o.verbose = false;
    moce::RoutingInput in = moce::collect_routing(model, ds, o, eng::Device::cpu());
    REQUIRE(in.layers.size() == 1);
    const int64_t tokens = 1 + model.mae->config().num_patches(), e_n = in.layers[0].num_experts;
    for (int64_t i = 0; i < ds->size(); i++) {
      int64_t total = 0;
      for (int64_t e = 0; e < e_n; e++) total += in.layers[0].counts[size_t(i * e_n + e)];
      CHECK(total == tokens);
    }
    CHECK(in.gate == "tokenmoe");

    auto routing_error = [&](std::vector<std::string> args) {
      return error_of([&] { run(moce::cmd_routing, "routing", args); });
    };
    CHECK(routing_error({"--data", f.data}).find("--model") != std::string::npos);
    CHECK(routing_error({"--model", dir.file("none.safetensors"), "--data", f.data}).find("no such file") != std::string::npos);
    REQUIRE(f.train("dense", dir.file("dense"), {"--epochs", "1"}) == 0);
    CHECK(routing_error({"--model", dir.file("dense") + "/weights.safetensors", "--data", f.data, "--out", dir.file("r")})
              .find("no expert layers") != std::string::npos);
  }
}
