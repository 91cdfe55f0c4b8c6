// test_vit.cpp: the expert seam of model::Block (a replaced MLP is called on the normalised input, added to the
// residual, and named under blocks.N.mlp.) and the plain ViT classifier (timm's names, bitwise the MAE encoder,
// gradient check in f64, config errors).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/rng.h"
#include "model/mae.h"
#include "tests/test_util.h"

using namespace eng;

namespace {

// A stand-in expert layer: one bias-free linear map and a per-image scale ("side information" its owner sets
// before the forward call, as MoCE sets cluster ids). Remembers the input it was last called with.
struct ScaledLinearMlp : model::MlpLayer {
  model::Linear proj;
  Tensor image_scale;  // [B, 1, 1], set by the owner before each call
  mutable Tensor last_input;
  ScaledLinearMlp(Generator& g, int64_t dim) : proj(g, dim, dim, /*with_bias=*/false) {}
  Tensor operator()(const Tensor& x) const override {
    last_input = x;
    return eng::mul(proj(x), image_scale);
  }
  void visit(const std::string& prefix, const model::Visitor& f) override { proj.visit(prefix + "proj.", f); }
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && a.to_vector<double>() == b.to_vector<double>();
}

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::vector<std::string> v;
  for (const auto& [n, t] : named) v.push_back(n);
  return v;
}

}  // namespace

TEST_SUITE("vit") {
  TEST_CASE("seam: a replaced MLP gets the block's normalised input and its output is added to the residual") {
    Generator g(21);
    const int64_t D = 8;
    model::Block block(g, D, 2, 2.0);
    // Non-trivial norm2 parameters, so that "normalised input" is not just the raw layer norm.
    block.norm2.weight.copy_(g.uniform({D}, 0.5, 1.5));
    block.norm2.bias.copy_(g.normal({D}, 0.0, 0.1));
    auto expert = std::make_shared<ScaledLinearMlp>(g, D);
    expert->image_scale = Tensor::from_vector(std::vector<float>{1.0f, -2.0f, 0.5f}, {3, 1, 1});
    block.set_mlp(expert);
    CHECK(&block.mlp() == expert.get());

    Tensor x = g.normal({3, 5, D});
    Tensor y = block(x);
    // The reference, op by op: residual after attention, then + expert(norm2(.)).
    Tensor h = eng::add(x, block.attn(block.norm1(x)));
    Tensor normed = block.norm2(h);
    REQUIRE(expert->last_input.defined());
    CHECK(same_bits(expert->last_input, normed));
    CHECK(same_bits(y, eng::add(h, eng::mul(eng::linear(normed, expert->proj.weight), expert->image_scale))));
    // Row b of the batch is image b: the per-image scale of image 1 reaches only image 1's tokens.
    expert->image_scale = Tensor::from_vector(std::vector<float>{1.0f, 3.0f, 0.5f}, {3, 1, 1});
    Tensor y2 = block(x);
    CHECK(same_bits(y2.select(0, 0), y.select(0, 0)));
    CHECK(same_bits(y2.select(0, 2), y.select(0, 2)));
    CHECK_FALSE(same_bits(y2.select(0, 1), y.select(0, 1)));

    CHECK(testutil::error_of([&] { block.dense_mlp(); }).find("replaced by set_mlp") != std::string::npos);
    CHECK(testutil::error_of([&] { block.set_mlp(nullptr); }).find("mlp is null") != std::string::npos);
  }

  TEST_CASE("seam: a replaced MLP's parameters are named blocks.N.mlp.<its names>; the dense parts keep theirs") {
    model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 4);
    const int64_t D = mae.config().embed_dim;
    Generator g(5);
    auto expert = std::make_shared<ScaledLinearMlp>(g, D);
    expert->image_scale = Tensor::full({2, 1, 1}, 1.0);
    mae.blocks[1].set_mlp(expert);

    auto sd = mae.state_dict();
    CHECK(sd.count("blocks.1.mlp.proj.weight") == 1);
    CHECK(sd.at("blocks.1.mlp.proj.weight").same_storage(expert->proj.weight));
    CHECK(sd.count("blocks.1.mlp.fc1.weight") == 0);
    CHECK(sd.count("blocks.1.mlp.fc2.bias") == 0);
    for (const char* kept : {"blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.1.norm2.weight",
                             "blocks.1.attn.qkv.weight", "decoder_blocks.0.mlp.fc1.weight"})
      CHECK_MESSAGE(sd.count(kept) == 1, kept);
    auto names = names_of(mae.named_parameters());
    CHECK(std::count(names.begin(), names.end(), "blocks.1.mlp.proj.weight") == 1);
    CHECK(std::count(names.begin(), names.end(), "blocks.0.mlp.fc1.weight") == 1);
    // In visit order: the expert's parameters sit where the dense MLP's were.
    auto at = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) - names.begin(); };
    CHECK(at("blocks.1.norm2.bias") + 1 == at("blocks.1.mlp.proj.weight"));
    CHECK(at("blocks.1.mlp.proj.weight") + 1 == at("norm.weight"));

    // The forward pass runs through it and its parameters get gradients.
    Tensor imgs = g.normal({2, 3, 16, 16});
    model::MaeOutput out = mae.forward(imgs, g.uniform({2, mae.config().num_patches()}), 0.5);
    out.loss.backward();
    CHECK(expert->proj.weight.grad().defined());
    CHECK(mae.blocks[0].dense_mlp().fc1.weight.grad().defined());

    // A copy of the model shares the MLP module itself (as a copied Tensor shares its storage).
    model::MaskedAutoencoder copy = mae;
    CHECK(&copy.blocks[1].mlp() == expert.get());
    CHECK(&copy.blocks[0].mlp() == &mae.blocks[0].mlp());
  }
}
