// test_vit.cpp: the expert seam of model::Block (a replaced MLP is called on the normalised input, added to the
// residual, and named under blocks.N.mlp.) and the plain ViT classifier (timm's names, bitwise the MAE encoder,
// gradient check in f64, config errors).
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/rng.h"
#include "model/mae.h"
#include "model/vit.h"
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


// A tiny ViT: 8x8 images of 3 channels, 4x4 patches (L = 4), width 8, 2 heads, MLP width 16.
model::VitConfig tiny_vit(model::VitPool pool, int64_t classes, int64_t depth = 2) {
  model::VitConfig c;
  c.name = "vit_test_tiny";
  c.img_size = 8, c.patch_size = 4, c.in_chans = 3, c.embed_dim = 8, c.depth = depth, c.num_heads = 2;
  c.mlp_ratio = 2.0, c.num_classes = classes, c.pool = pool;
  return c;
}

using NamedShapes = std::vector<std::pair<std::string, Shape>>;

// timm's VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2, num_classes=5,
// global_pool=...).state_dict(), written out by hand in its order.
NamedShapes timm_tiny_names(const std::string& final_norm) {
  NamedShapes v = {{"cls_token", {1, 1, 8}},
                   {"pos_embed", {1, 5, 8}},
                   {"patch_embed.proj.weight", {8, 3, 4, 4}},
                   {"patch_embed.proj.bias", {8}}};
  for (int i = 0; i < 2; i++) {
    std::string b = "blocks." + std::to_string(i) + ".";
    NamedShapes blk = {{b + "norm1.weight", {8}},         {b + "norm1.bias", {8}},
                       {b + "attn.qkv.weight", {24, 8}},  {b + "attn.qkv.bias", {24}},
                       {b + "attn.proj.weight", {8, 8}},  {b + "attn.proj.bias", {8}},
                       {b + "norm2.weight", {8}},         {b + "norm2.bias", {8}},
                       {b + "mlp.fc1.weight", {16, 8}},   {b + "mlp.fc1.bias", {16}},
                       {b + "mlp.fc2.weight", {8, 16}},   {b + "mlp.fc2.bias", {8}}};
    v.insert(v.end(), blk.begin(), blk.end());
  }
  v.push_back({final_norm + ".weight", {8}});
  v.push_back({final_norm + ".bias", {8}});
  v.push_back({"head.weight", {5, 8}});
  v.push_back({"head.bias", {5}});
  return v;
}

NamedShapes shapes_of(const std::vector<std::pair<std::string, Tensor>>& named) {
  NamedShapes v;
  for (const auto& [n, t] : named) v.emplace_back(n, t.shape());
  return v;
}

// Every tensor of a model replaced by fresh N(0, std) values (so that no norm is an identity and no bias zero),
// in dtype dt; trainable ones stay leaves that require grad.
template <typename Model>
void randomise(Model& m, Generator& g, double std, DType dt) {
  m.visit([&](const std::string&, Tensor& t) {
    const bool train = t.requires_grad();
    t = g.normal(t.shape(), 0.0, std, DType::F64).to(dt).detach();
    if (train) t.requires_grad_(true);
  });
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

TEST_SUITE("vit") {
  TEST_CASE("state-dict names, shapes and order are timm's for token and avg pooling") {
    for (model::VitPool pool : {model::VitPool::Token, model::VitPool::Avg, model::VitPool::NormAvg}) {
      CAPTURE(model::pool_name(pool));
      model::VisionTransformer vit(tiny_vit(pool, 5), 1);
      NamedShapes want = timm_tiny_names(pool == model::VitPool::Avg ? "fc_norm" : "norm");
      NamedShapes got = shapes_of(vit.named_parameters());  // every tensor trains, pos_embed too (as in timm)
      CHECK(got == want);
      auto sd = vit.state_dict();
      CHECK(sd.size() == want.size());
      for (const auto& [n, shape] : want) CHECK_MESSAGE((sd.count(n) == 1 && sd.at(n).shape() == shape), n);
      int64_t count = 0;
      for (const auto& [n, shape] : want) count += eng::shape_numel(shape);
      CHECK(vit.num_parameters() == count);
    }
    // num_classes = 0: no head, and the model gives its features.
    model::VisionTransformer bare(tiny_vit(model::VitPool::Token, 0), 1);
    NamedShapes want = timm_tiny_names("norm");
    want.resize(want.size() - 2);
    CHECK(shapes_of(bare.named_parameters()) == want);
    Generator g(2);
    Tensor imgs = g.normal({2, 3, 8, 8});
    CHECK(bare.forward(imgs).shape() == Shape{2, 8});
    CHECK(same_bits(bare.forward(imgs), bare.features(imgs)));
    model::VisionTransformer cls(tiny_vit(model::VitPool::Avg, 5), 1);
    CHECK(cls.forward(imgs).shape() == Shape{2, 5});
  }

  TEST_CASE("vit_from_mae: tokens and features are bitwise the MAE encoder's; the copy is the ViT's own") {
    model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 3);
    Generator g(8);
    Tensor pos = mae.pos_embed;
    randomise(mae, g, 0.3, DType::F32);
    mae.pos_embed = pos;  // keep the fixed sin-cos values
    mae.decoder_pos_embed = model::sincos_pos_embed_2d(mae.config().decoder_embed_dim, mae.config().grid(), true);
    Tensor imgs = g.normal({3, 3, 16, 16});

    model::VisionTransformer vit = model::vit_from_mae(mae, model::VitPool::NormAvg, 0, 1);
    CHECK(vit.config().embed_dim == mae.config().embed_dim);
    CHECK(same_bits(vit.forward_tokens(imgs), mae.encode_all(imgs)));
    CHECK(same_bits(vit.features(imgs), mae.features(imgs)));
    CHECK(same_bits(vit.forward(imgs), mae.features(imgs)));
    CHECK(same_bits(vit.pos_embed, mae.pos_embed));
    CHECK(vit.pos_embed.requires_grad());

    model::VisionTransformer token = model::vit_from_mae(mae, model::VitPool::Token, 4, 1);
    CHECK(same_bits(token.features(imgs), mae.encode_all(imgs).select(1, 0)));
    CHECK(token.forward(imgs).shape() == Shape{3, 4});

    // avg: the MAE's norm is dropped, fc_norm starts as the identity layer norm, the head is fresh.
    model::VisionTransformer avg = model::vit_from_mae(mae, model::VitPool::Avg, 4, 1);
    CHECK(avg.state_dict().count("norm.weight") == 0);
    CHECK(avg.fc_norm.weight.to_vector<float>() == std::vector<float>(16, 1.0f));
    CHECK(avg.fc_norm.bias.to_vector<float>() == std::vector<float>(16, 0.0f));
    CHECK(same_bits(avg.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight));
    CHECK(same_bits(avg.patch_weight, mae.patch_weight));

    // Its own tensors: changing the ViT leaves the MAE alone.
    CHECK_FALSE(vit.blocks[0].dense_mlp().fc1.weight.same_storage(mae.blocks[0].dense_mlp().fc1.weight));
    CHECK(&vit.blocks[0].mlp() != &mae.blocks[0].mlp());
    Tensor before = mae.encode_all(imgs);
    vit.blocks[0].dense_mlp().fc1.weight.fill_(0.0);
    vit.cls_token.fill_(1.0);
    CHECK(same_bits(mae.encode_all(imgs), before));
    CHECK_FALSE(same_bits(vit.forward_tokens(imgs), before));

    // An MAE whose block holds another kind of MLP has no dense weights to copy.
    mae.blocks[0].set_mlp(std::make_shared<ScaledLinearMlp>(g, 16));
    std::string msg = testutil::error_of([&] { model::vit_from_mae(mae, model::VitPool::Token, 0, 1); });
    CHECK_MESSAGE(msg.find("no tensor 'blocks.0.mlp.fc1.weight'") != std::string::npos, msg);
  }

  TEST_CASE("gradient check in f64: cross-entropy of the head against central finite differences") {
    for (model::VitPool pool : {model::VitPool::Token, model::VitPool::Avg, model::VitPool::NormAvg}) {
      CAPTURE(model::pool_name(pool));
      model::VisionTransformer vit(tiny_vit(pool, 3, /*depth=*/1), 2);
      Generator g(30);
      randomise(vit, g, 0.5, DType::F64);
      Tensor imgs = g.normal({2, 3, 8, 8}, 0.0, 1.0, DType::F64);
      Tensor labels = Tensor::from_vector(std::vector<int64_t>{2, 0}, {2});
      auto loss_value = [&] {
        NoGradGuard ng;
        return eng::cross_entropy(vit.forward(imgs), labels).item();
      };
      eng::cross_entropy(vit.forward(imgs), labels).backward();
      int params = 0;
      double worst = 0;
      for (auto& [name, p] : vit.named_parameters()) {
        REQUIRE_MESSAGE(p.grad().defined(), name << " got no gradient");
        std::vector<double> analytic = p.grad().to_vector<double>();
        double* v = p.data<double>();
        const int64_t n = p.numel(), picks = std::min<int64_t>(n, 5);
        double diff2 = 0, norm2 = 0;
        for (int64_t k = 0; k < picks; k++) {
          const int64_t i = (k * (n - 1)) / std::max<int64_t>(picks - 1, 1);  // spread over the tensor, both ends
          const double eps = 1e-6, keep = v[i];
          v[i] = keep + eps;
          double up = loss_value();
          v[i] = keep - eps;
          double down = loss_value();
          v[i] = keep;
          double fd = (up - down) / (2 * eps);
          diff2 += (fd - analytic[size_t(i)]) * (fd - analytic[size_t(i)]);
          norm2 += analytic[size_t(i)] * analytic[size_t(i)];
        }
        double rel = std::sqrt(diff2 / std::max(norm2, 1e-300));
        CHECK_MESSAGE(norm2 > 1e-16, name << ": checked gradients are all zero");
        CHECK_MESSAGE(rel <= 1e-6, name << ": gradient rel err " << rel);
        worst = std::max(worst, rel);
        params++;
      }
      MESSAGE(model::pool_name(pool) << ": worst gradient rel err " << worst);
      CHECK(params == int(vit.named_parameters().size()));
      CHECK(params == 20);
    }
  }

  TEST_CASE("config: validation with one-line errors, JSON round trip") {
    auto error_for = [](const std::function<void(model::VitConfig&)>& edit) {
      model::VitConfig c = tiny_vit(model::VitPool::Token, 5);
      edit(c);
      return testutil::error_of([&] { model::validate(c); });
    };
    CHECK(error_for([](model::VitConfig&) {}) == "");
    CHECK(error_for([](model::VitConfig& c) { c.patch_size = 3; }) ==
          "ViT config vit_test_tiny: img_size 8 is not divisible by patch_size 3");
    CHECK(error_for([](model::VitConfig& c) { c.num_heads = 3; }) ==
          "ViT config vit_test_tiny: embed_dim 8 is not divisible by num_heads 3");
    CHECK(error_for([](model::VitConfig& c) { c.depth = 0; }) == "ViT config vit_test_tiny: depth must be positive, got 0");
    CHECK(error_for([](model::VitConfig& c) { c.img_size = -8; }) ==
          "ViT config vit_test_tiny: img_size must be positive, got -8");
    CHECK(error_for([](model::VitConfig& c) { c.num_classes = -1; }).find("num_classes must be >= 0") != std::string::npos);
    CHECK(error_for([](model::VitConfig& c) { c.mlp_ratio = 0.0; }).find("mlp_ratio 0") != std::string::npos);
    CHECK(testutil::error_of([] { model::VisionTransformer(tiny_vit(model::VitPool::Token, 5, 0), 1); })
              .find("depth must be positive") != std::string::npos);
    CHECK(testutil::error_of([] { model::parse_pool("cls"); }) == "unknown ViT pooling 'cls'; known: token, avg, norm_avg");

    model::VitConfig c = tiny_vit(model::VitPool::Avg, 7);
    nlohmann::json j = model::config_to_json(c);
    CHECK(j.at("global_pool") == "avg");
    model::VitConfig back = model::vit_config_from_json(j);
    CHECK(model::config_to_json(back) == j);
    CHECK(back.pool == model::VitPool::Avg);
    CHECK(back.num_classes == 7);
    nlohmann::json missing = j;
    missing.erase("num_heads");
    CHECK(testutil::error_of([&] { model::vit_config_from_json(missing); }).find("num_heads") != std::string::npos);
    nlohmann::json bad = j;
    bad["patch_size"] = 5;
    CHECK(testutil::error_of([&] { model::vit_config_from_json(bad); }).find("not divisible by patch_size 5") !=
          std::string::npos);
    bad = j;
    bad["global_pool"] = "max";
    CHECK(testutil::error_of([&] { model::vit_config_from_json(bad); }).find("unknown ViT pooling 'max'") !=
          std::string::npos);

    model::VitConfig from_mae = model::vit_config_from_encoder(model::mae_config("mae_tiny_p4_32"), model::VitPool::Token, 10);
    CHECK(from_mae.embed_dim == 192);
    CHECK(from_mae.depth == 12);
    CHECK(from_mae.num_patches() == 64);
  }

  TEST_CASE("load_state_dict: round trip, and errors that name the file and the tensor") {
    model::VisionTransformer a(tiny_vit(model::VitPool::Token, 5), 1), b(tiny_vit(model::VitPool::Token, 5), 2);
    Generator g(3);
    randomise(a, g, 0.3, DType::F32);
    Tensor imgs = g.normal({2, 3, 8, 8});
    CHECK_FALSE(same_bits(a.forward(imgs), b.forward(imgs)));
    b.load_state_dict(a.state_dict(), "a.safetensors");
    CHECK(same_bits(a.forward(imgs), b.forward(imgs)));
    CHECK_FALSE(b.head.weight.same_storage(a.head.weight));

    auto weights = a.state_dict();
    weights.erase("blocks.1.attn.proj.bias");
    CHECK(testutil::error_of([&] { b.load_state_dict(weights, "w.safetensors"); }) ==
          "w.safetensors: tensor 'blocks.1.attn.proj.bias' missing (is this a checkpoint of model vit_test_tiny?)");
    weights = a.state_dict();
    weights["head.weight"] = Tensor::zeros({4, 8});
    CHECK(testutil::error_of([&] { b.load_state_dict(weights, "w.safetensors"); }) ==
          "w.safetensors: tensor 'head.weight' has shape [4, 8], model vit_test_tiny expects [5, 8]");
    weights = a.state_dict();
    weights["fc_norm.weight"] = Tensor::ones({8});
    CHECK(testutil::error_of([&] { b.load_state_dict(weights, "w.safetensors"); }) ==
          "w.safetensors: tensor 'fc_norm.weight' is not part of ViT vit_test_tiny (token pooling, 5 classes)");
    // A failed load changes nothing.
    CHECK(same_bits(a.forward(imgs), b.forward(imgs)));
  }

  TEST_CASE("seam in the ViT: a replaced MLP is named under blocks.N.mlp. and trains") {
    model::VisionTransformer vit(tiny_vit(model::VitPool::Avg, 5), 1);
    Generator g(6);
    auto expert = std::make_shared<ScaledLinearMlp>(g, 8);
    expert->image_scale = Tensor::full({2, 1, 1}, 0.5);
    vit.blocks[1].set_mlp(expert);
    auto names = names_of(vit.named_parameters());
    CHECK(std::count(names.begin(), names.end(), "blocks.1.mlp.proj.weight") == 1);
    CHECK(std::count(names.begin(), names.end(), "blocks.1.mlp.fc1.weight") == 0);
    CHECK(std::count(names.begin(), names.end(), "blocks.0.mlp.fc1.weight") == 1);
    Tensor labels = Tensor::from_vector(std::vector<int64_t>{1, 4}, {2});
    eng::cross_entropy(vit.forward(g.normal({2, 3, 8, 8})), labels).backward();
    CHECK(expert->proj.weight.grad().defined());
  }
}

TEST_SUITE("vit") {
  TEST_CASE("the same logits and gradients, bit for bit, with 1 and 2 threads") {
    model::VitConfig c = tiny_vit(model::VitPool::Avg, 10);
    c.img_size = 32, c.embed_dim = 64, c.num_heads = 4, c.mlp_ratio = 4.0;  // 64 patches: big enough to split
    auto run = [&](int threads) {
      const int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      model::VisionTransformer vit(c, 7);
      Generator g(9);
      randomise(vit, g, 0.1, DType::F32);
      Tensor labels = Tensor::from_vector(std::vector<int64_t>{0, 3, 9, 5}, {4});
      Tensor logits = vit.forward(g.normal({4, 3, 32, 32}));
      eng::cross_entropy(logits, labels).backward();
      std::vector<std::vector<float>> out = {logits.to_vector<float>()};
      for (auto& [name, p] : vit.named_parameters()) out.push_back(p.grad().to_vector<float>());
      omp_set_num_threads(saved);
      return out;
    };
    auto one = run(1), two = run(2);
    CHECK(one.size() == 1 + 32);  // the logits and the gradients of 4 + 2 x 12 + 2 + 2 parameters
    CHECK(one == two);
  }
}
