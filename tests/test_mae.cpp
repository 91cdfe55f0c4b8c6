// test_mae.cpp: the MAE model against a golden fixture computed by PyTorch (tests/fixtures/make_mae_fixture.py):
// same weights, images and mask noise -> same loss, prediction, mask and every parameter gradient (f32, 1e-5).
#include <doctest/doctest.h>

#include <cmath>

#include "engine/io/safetensors.h"
#include "engine/rng.h"
#include "model/mae.h"
#include "tests/test_util.h"

using namespace eng;
using testutil::max_rel;

namespace {

const char* kFixture = "tests/fixtures/mae_test_tiny.safetensors";

}  // namespace

TEST_SUITE("mae") {
  TEST_CASE("golden fixture: loss, prediction, mask and every gradient match PyTorch") {
    SafetensorsFile f = load_safetensors(kFixture);
    model::MaeConfig cfg = model::mae_config_from_json(nlohmann::json::parse(f.metadata.at("config")));
    double ratio = std::stod(f.metadata.at("mask_ratio"));
    model::MaskedAutoencoder mae(cfg, 0);
    std::map<std::string, Tensor> weights;
    for (auto& [name, t] : f.tensors)
      if (name.rfind("input.", 0) != 0 && name.rfind("output.", 0) != 0 && name.rfind("grad.", 0) != 0) weights[name] = t;
    mae.load_state_dict(weights, kFixture);  // official MAE names, no renaming
    model::MaeOutput out = mae.forward(f.tensors.at("input.imgs"), f.tensors.at("input.noise"), ratio);
    double want = f.tensors.at("output.loss").item();
    MESSAGE("loss ours " << out.loss.item() << " vs PyTorch " << want);
    CHECK(std::fabs(out.loss.item() - want) <= 1e-5 * std::fabs(want));
    CHECK(out.mask.to_vector<float>() == f.tensors.at("output.mask").to_vector<float>());
    CHECK(max_rel(out.pred, f.tensors.at("output.pred")) <= 1e-5);
    out.loss.backward();
    int checked = 0;
    for (auto& [name, p] : mae.named_parameters()) {
      auto it = f.tensors.find("grad." + name);
      REQUIRE_MESSAGE(it != f.tensors.end(), "fixture lacks grad." << name);
      REQUIRE_MESSAGE(p.grad().defined(), name << " got no gradient");
      double e = max_rel(p.grad(), it->second);
      CHECK_MESSAGE(e <= 1e-5, name << ": gradient rel err " << e);
      checked++;
    }
    CHECK(checked == int(mae.named_parameters().size()));
    CHECK(checked > 20);
  }

  TEST_CASE("patchify and unpatchify are inverse, in MAE's (i, j, c) order") {
    Tensor img = Tensor::arange(2 * 3 * 8 * 8, DType::F32).reshape({2, 3, 8, 8});
    Tensor p = model::patchify(img, 4);
    CHECK(p.shape() == Shape{2, 4, 48});
    // patch (0,1) of image 0, pixel (i=0, j=1), channel 2 -> element (0*4 + 1)*3 + 2
    CHECK(p.select(0, 0).select(0, 1).to_vector<float>()[5] == img.select(0, 0).select(0, 2).select(0, 0).to_vector<float>()[5]);
    CHECK(model::unpatchify(p, 4, 3).to_vector<float>() == img.to_vector<float>());
  }

  TEST_CASE("the reference workload has about 6.2M parameters") {
    model::MaskedAutoencoder mae(model::mae_config("mae_tiny_p4_32"), 1);
    int64_t n = mae.num_parameters();
    MESSAGE("mae_tiny_p4_32 parameters: " << n);
    CHECK(n > 6000000);
    CHECK(n < 6400000);
    CHECK_THROWS_WITH_AS(model::mae_config("mae_nope"), doctest::Contains("known: mae_tiny_p4_32"), Error);
  }

  TEST_CASE("sin-cos position embedding matches MAE's layout") {
    Tensor pe = model::sincos_pos_embed_2d(8, 2, true);  // [1, 5, 8]
    auto v = pe.to_vector<double>();
    for (int k = 0; k < 8; k++) CHECK(v[size_t(k)] == 0.0);  // class token row
    // position (i=1, j=0) is row 1 + 2 = 3: first half (column j = 0): sin 0, sin 0, cos 0, cos 0
    CHECK(v[3 * 8 + 0] == 0.0);
    CHECK(v[3 * 8 + 2] == doctest::Approx(1.0));
    // second half (row i = 1): sin(1 * 1), sin(1 / 100), cos(1), cos(1 / 100)
    CHECK(v[3 * 8 + 4] == doctest::Approx(std::sin(1.0)));
    CHECK(v[3 * 8 + 5] == doctest::Approx(std::sin(0.01)));
    CHECK(v[3 * 8 + 6] == doctest::Approx(std::cos(1.0)));
  }
}

TEST_SUITE("mae") {
  TEST_CASE("every named config builds and runs a training step (ViT-B/16 and ViT-L/16 at 224, batch 1)") {
    for (const std::string name : {"mae_small_p4_32", "mae_vit_base_patch16", "mae_vit_large_patch16"}) {
      model::MaeConfig cfg = model::mae_config(name);
      model::MaskedAutoencoder mae(cfg, 3);
      Generator g(4);
      Tensor imgs = g.normal({1, 3, cfg.img_size, cfg.img_size});
      model::MaeOutput out = mae.forward(imgs, g.uniform({1, cfg.num_patches()}), 0.75);
      out.loss.backward();
      double loss = out.loss.item();
      MESSAGE(name << ": " << mae.num_parameters() << " parameters, loss " << loss);
      CHECK(std::isfinite(loss));
      CHECK(mae.patch_weight.grad().defined());
      CHECK(mae.blocks.back().dense_mlp().fc2.weight.grad().defined());
    }
  }
}
