// test_gpu_model.cpp: whole models on CUDA. The golden MAE fixture (tests/fixtures, computed by PyTorch) must
// match on the GPU as it does on the CPU; a short training run of a tiny transformer on CUDA must follow the
// CPU run's losses step by step and repeat bit for bit.
#include <cmath>

#include "engine/io/safetensors.h"
#include "engine/optim.h"
#include "model/mae.h"
#include "tests/gpu/gpu_test_util.h"

using namespace gputest;

namespace {

double max_rel(const Tensor& got, const Tensor& want) { return rel_err(got, want); }

const char* kFixture = "tests/fixtures/mae_test_tiny.safetensors";

// A pre-norm transformer block over 16 patch tokens of a 16x16 image, mean-pooled, linear head: linear, GELU,
// layer norm, attention (batched matmul + softmax), reshape/permute/select, mean, cross entropy, AdamW.
struct TinyNet {
  static constexpr int64_t P = 4, T = 16, D = 32, H = 2, C = 10;
  Tensor embed_w, embed_b, pos, ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b,
      head_w, head_b;
  TinyNet(uint64_t seed, Device dev) {
    eng::Generator g(seed);
    auto param = [&](Shape s, double std) { return g.normal(s, 0.0, std).to(dev).detach().requires_grad_(); };
    auto constant = [&](Shape s, double v) { return Tensor::full(s, v, DType::F32, dev).requires_grad_(); };
    embed_w = param({D, P * P}, 0.25);
    embed_b = constant({D}, 0.0);
    pos = param({T, D}, 0.02);
    ln1_w = constant({D}, 1.0);
    ln1_b = constant({D}, 0.0);
    qkv_w = param({3 * D, D}, 0.18);
    qkv_b = constant({3 * D}, 0.0);
    proj_w = param({D, D}, 0.18);
    proj_b = constant({D}, 0.0);
    ln2_w = constant({D}, 1.0);
    ln2_b = constant({D}, 0.0);
    fc1_w = param({4 * D, D}, 0.18);
    fc1_b = constant({4 * D}, 0.0);
    fc2_w = param({D, 4 * D}, 0.09);
    fc2_b = constant({D}, 0.0);
    head_w = param({C, D}, 0.18);
    head_b = constant({C}, 0.0);
  }
  Tensor forward(const Tensor& img) const {
    const int64_t B = img.size(0);
    Tensor patches = img.reshape({B, 4, P, 4, P}).permute({0, 1, 3, 2, 4}).reshape({B, T, P * P});
    Tensor x = eng::add(eng::linear(patches, embed_w, embed_b), pos);
    Tensor h = eng::layer_norm(x, ln1_w, ln1_b, 1e-6);
    Tensor qkv = eng::linear(h, qkv_w, qkv_b).reshape({B, T, 3, H, D / H}).permute({2, 0, 3, 1, 4});
    Tensor a = eng::attention(qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2));
    x = eng::add(x, eng::linear(a.transpose(1, 2).reshape({B, T, D}), proj_w, proj_b));
    h = eng::layer_norm(x, ln2_w, ln2_b, 1e-6);
    x = eng::add(x, eng::linear(eng::gelu(eng::linear(h, fc1_w, fc1_b)), fc2_w, fc2_b));
    return eng::linear(eng::mean(x, {1}), head_w, head_b);
  }
  std::vector<Tensor> params() const {
    return {embed_w, embed_b, pos,   ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b,
            ln2_w,   ln2_b,   fc1_w, fc1_b, fc2_w, fc2_b, head_w, head_b};
  }
};

// Synthetic, learnable data: labels are the argmax of a fixed random projection of the image.
struct Data {
  Tensor images, labels;
};
Data make_data(int64_t n) {
  Data d;
  d.images = normal({n, 1, 16, 16}, 500);
  Tensor proj = normal({256, TinyNet::C}, 501);
  d.labels = eng::argmax(eng::matmul(d.images.reshape({n, 256}), proj), 1);
  return d;
}

struct Run {
  std::vector<double> losses;
  std::vector<Tensor> params;
};

Run train(Device dev, const Data& data, int64_t steps, int64_t batch) {
  TinyNet net(7, dev);
  eng::AdamW opt(net.params(), eng::AdamWOptions{3e-3, 0.9, 0.999, 1e-8, 1e-4});
  const int64_t n = data.images.size(0);
  Tensor images = on(data.images, dev), labels = on(data.labels, dev);
  Tensor perm = on(eng::Generator(11, 1).permutation(n), dev);
  Run r;
  for (int64_t s = 0; s < steps; s++) {
    const int64_t start = (s * batch) % (n - batch + 1);
    Tensor idx = perm.slice(0, start, start + batch);
    Tensor loss = eng::cross_entropy(net.forward(eng::index_select(images, 0, idx)), eng::index_select(labels, 0, idx));
    opt.zero_grad();
    loss.backward();
    opt.step();
    r.losses.push_back(loss.item());
  }
  r.params = net.params();
  return r;
}

}  // namespace

TEST_SUITE("gpu model") {
  TEST_CASE("golden MAE fixture on cuda: loss, prediction, mask and every gradient match PyTorch") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    eng::SafetensorsFile f = eng::load_safetensors(kFixture);
    model::MaeConfig cfg = model::mae_config_from_json(nlohmann::json::parse(f.metadata.at("config")));
    const double ratio = std::stod(f.metadata.at("mask_ratio"));
    model::MaskedAutoencoder mae(cfg, 0);
    // Every tensor of the model onto the GPU (trainable ones stay leaves that require grad).
    mae.visit([&](const std::string&, Tensor& t) {
      const bool trainable = t.requires_grad();
      t = t.to(cuda()).detach();
      if (trainable) t.requires_grad_(true);
    });
    std::map<std::string, Tensor> weights;
    for (auto& [name, t] : f.tensors)
      if (name.rfind("input.", 0) != 0 && name.rfind("output.", 0) != 0 && name.rfind("grad.", 0) != 0) weights[name] = t;
    mae.load_state_dict(weights, kFixture);
    model::MaeOutput out;
    try {
      out = mae.forward(on(f.tensors.at("input.imgs"), cuda()), on(f.tensors.at("input.noise"), cuda()), ratio);
    } catch (const eng::Error& e) {
      FAIL("MAE forward on cuda threw: " << std::string(e.what())
                                         << " (model code must create its tensors on the input's device, e.g. "
                                            "Tensor::zeros(shape, dtype, imgs.device()))");
      return;
    }
    // The fixture holds the CPU to 1e-5; the GPU adds its own f32 reordering (~1e-6 of the CPU result).
    const double tol = 2e-5;
    const double want = f.tensors.at("output.loss").item();
    MESSAGE("loss on cuda " << out.loss.item() << " vs PyTorch " << want);
    CHECK(out.loss.device() == cuda());
    CHECK(std::fabs(out.loss.item() - want) <= tol * std::fabs(want));
    CHECK(out.mask.to_vector<float>() == f.tensors.at("output.mask").to_vector<float>());
    CHECK(max_rel(out.pred, f.tensors.at("output.pred")) <= tol);
    out.loss.backward();
    int checked = 0;
    for (auto& [name, p] : mae.named_parameters()) {
      auto it = f.tensors.find("grad." + name);
      REQUIRE_MESSAGE(it != f.tensors.end(), "fixture lacks grad." << name);
      REQUIRE_MESSAGE(p.grad().defined(), name << " got no gradient");
      CHECK(p.grad().device() == cuda());
      const double e = max_rel(p.grad(), it->second);
      CHECK_MESSAGE(e <= tol, name << ": gradient rel err " << e);
      checked++;
    }
    CHECK(checked > 20);
  }

  TEST_CASE("a short training run on cuda follows the cpu run's losses and repeats bit for bit") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    const Data data = make_data(512);
    const int64_t steps = 25, batch = 32;
    Run c = train(cpu(), data, steps, batch);
    Run g = train(cuda(), data, steps, batch);
    Run g2 = train(cuda(), data, steps, batch);
    // Same init, data and order; the devices differ only in f32 rounding (~1e-7 relative per op), which Adam's
    // normalised steps carry forward without blowing up over 25 steps: 1e-3 relative leaves a wide margin.
    double worst = 0;
    for (int64_t s = 0; s < steps; s++) {
      const double e = std::fabs(g.losses[size_t(s)] - c.losses[size_t(s)]) / std::max(1.0, std::fabs(c.losses[size_t(s)]));
      worst = std::max(worst, e);
    }
    MESSAGE("losses cpu " << c.losses.front() << " -> " << c.losses.back() << ", cuda " << g.losses.front() << " -> "
                          << g.losses.back() << "; largest step difference " << worst);
    CHECK(worst <= 1e-3);
    CHECK(std::fabs(g.losses[0] - c.losses[0]) <= 1e-5 * std::fabs(c.losses[0]));  // before any update
    double first = 0, last = 0;
    for (int64_t s = 0; s < 5; s++) {
      first += g.losses[size_t(s)];
      last += g.losses[size_t(steps - 1 - s)];
    }
    CHECK(last < first);  // it learns
    CHECK(g.losses == g2.losses);
    for (size_t i = 0; i < g.params.size(); i++) CHECK(same_bits(g.params[i], g2.params[i]));
    // With TF32 the GEMM inputs lose 13 mantissa bits; informational only (its own bound is tested per op).
    eng::set_cuda_tf32(true);
    Run t = train(cuda(), data, steps, batch);
    eng::set_cuda_tf32(false);
    MESSAGE("with TF32: final loss " << t.losses.back() << " (f32 " << g.losses.back() << ")");
  }
}
