// test_experts.cpp: the "experts" suite for moce/experts/ (its registry cases are in test_ops_experts.cpp):
// whole-image routing under the MoCE gate, N = 1 equal to the dense Mlp, the capacity's drops and count, seeded
// noise, the block seam's names, thread-count determinism, errors, and the golden fixture from PyTorch.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <memory>

#include <nlohmann/json.hpp>

#include "engine/io/safetensors.h"
#include "model/layers.h"
#include "model/mae.h"
#include "moce/experts/losses.h"
#include "moce/experts/moe_mlp.h"
#include "tests/test_util.h"

using eng::Shape;
using namespace moce::experts;
using eng::DType;
using eng::Tensor;
using testutil::error_of;
using testutil::max_rel;

// ---------------------------------------------------------------- the "experts" suite

namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to(DType::F64).to_vector<double>(), y = b.to(DType::F64).to_vector<double>();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); i++) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()) == 0;
}

MoeOptions options(GateKind gate, int64_t n, int64_t k, int64_t cluster_dim = 0) {
  MoeOptions o;
  o.gate = gate;
  o.num_experts = n;
  o.top_k = k;
  o.cluster_dim = cluster_dim;
  return o;
}

// Expert e of a layer as a dense Mlp (its slices of the stacked weights).
model::Mlp expert_mlp(const MoeMlp& m, int64_t e) {
  model::Mlp d;
  d.fc1.weight = m.experts.fc1_weight.select(0, e);
  d.fc1.bias = m.experts.fc1_bias.select(0, e);
  d.fc2.weight = m.experts.fc2_weight.select(0, e);
  d.fc2.bias = m.experts.fc2_bias.select(0, e);
  return d;
}

}  // namespace

TEST_SUITE("experts") {
  TEST_CASE("MoCE gate: every token of an image goes to the expert its cluster embedding picks, times its gate value") {
    eng::Generator g(3);
    model::Mlp dense(g, 6, 12);
    MoeOptions o = options(GateKind::Moce, 4, 1, 5);
    o.perturbation = 0.3;  // experts far apart, so a wrong expert shows
    o.gate_init_std = 1.0;
    MoeMlp layer(dense, o);
    const int64_t B = 7, T = 5;
    Tensor x = g.normal({B, T, 6});
    Tensor c = g.normal({B, 5});
    layer.set_cluster_embeddings(c);
    layer.set_training(false);  // no noise: the gate is softmax(W_g c) exactly
    Tensor y = layer(x);
    std::vector<float> logits = eng::matmul(c, layer.gate_weight.t()).to_vector<float>();
    std::vector<int64_t> count(4, 0);
    for (int64_t b = 0; b < B; b++) {
      int64_t best = 0;
      double z = 0;
      for (int64_t e = 0; e < 4; e++) {
        if (logits[size_t(b * 4 + e)] > logits[size_t(b * 4 + best)]) best = e;
        z += std::exp(double(logits[size_t(b * 4 + e)]));
      }
      const double gate = std::exp(double(logits[size_t(b * 4 + best)])) / z;
      count[size_t(best)]++;
      Tensor xb = x.slice(0, b, b + 1);
      Tensor want = expert_mlp(layer, best)(xb) * gate;
      CHECK(max_abs_diff(y.slice(0, b, b + 1), want) < 1e-5);
      for (int64_t other = 0; other < 4; other++)  // and not as any other expert would have it
        if (other != best) CHECK(max_abs_diff(y.slice(0, b, b + 1), expert_mlp(layer, other)(xb) * gate) > 1e-3);
    }
    for (int64_t e = 0; e < 4; e++) CHECK(layer.stats().expert_load[size_t(e)] == doctest::Approx(double(count[size_t(e)]) / B));
    CHECK(layer.stats().dropped == 0);
    CHECK(layer.stats().capacity == 0);
    CHECK(layer.stats().imbalance_loss.defined());
  }

  TEST_CASE("one expert (either gate) is the dense Mlp; equal unperturbed experts give the top gate value times it") {
    eng::Generator g(5);
    model::Mlp dense(g, 8, 16);
    Tensor x = g.normal({3, 4, 8});
    Tensor want = dense(x);
    for (GateKind gate : {GateKind::Moce, GateKind::Token}) {
      MoeOptions o = options(gate, 1, 1, 3);
      o.perturbation = 0;
      MoeMlp one(dense, o);
      one.set_cluster_embeddings(g.normal({3, 3}));
      CHECK(max_abs_diff(one(x), want) < 1e-6);
      CHECK(one.stats().gate_confidence == doctest::Approx(1.0));
    }
    MoeOptions o = options(GateKind::Moce, 4, 2, 3);
    o.perturbation = 0;
    o.gate_init_std = 0.5;
    MoeMlp four(dense, o);
    Tensor c = g.normal({3, 3});
    four.set_cluster_embeddings(c);
    four.set_training(false);
    Tensor y = four(x);
    std::vector<float> g2 = eng::sum(eng::topk(eng::softmax(eng::linear(c, four.gate_weight), 1), 2, 1).values, {1})
                                .to_vector<float>();
    for (int64_t b = 0; b < 3; b++) CHECK(max_abs_diff(y.slice(0, b, b + 1), want.slice(0, b, b + 1) * double(g2[size_t(b)])) < 1e-5);
  }

  TEST_CASE("TokenMoE capacity: ceil(tokens k cf / N) to a multiple of 4; choices over it are dropped, counted, and add 0") {
    CHECK(token_capacity(100, 1, 1.05, 8) == 16);  // ceil(13.125) = 14 -> 16
    CHECK(token_capacity(64, 2, 1.0, 8) == 16);
    CHECK(token_capacity(10, 1, 1.05, 4) == 4);    // ceil(2.625) = 3 -> 4
    CHECK(token_capacity(1, 1, 0.01, 8) == 4);
    // Every token's choice is expert 0: only the first C tokens (in token order) get through.
    eng::Generator g(7);
    model::Mlp dense(g, 4, 8);
    MoeOptions o = options(GateKind::Token, 2, 1);
    o.capacity_factor = 0.5;  // C = ceil(12 * 0.5 / 2) = 3 -> 4
    MoeMlp layer(dense, o);
    Tensor x = g.normal({2, 6, 4});
    // Zero gate weight and a noise favouring expert 0 for every token.
    layer.gate_weight.zero_();
    std::vector<float> noise(24, 0.f);
    for (int i = 0; i < 12; i++) noise[size_t(2 * i)] = 1.f;
    layer.set_gate_noise(Tensor::from_vector(noise, {12, 2}));
    Tensor y = layer(x).reshape({12, 4});
    const MoeStats& s = layer.stats();
    CHECK(s.capacity == 4);
    CHECK(s.dropped == 8);
    CHECK(s.dropped_fraction == doctest::Approx(8.0 / 12));
    CHECK(s.expert_load[0] == doctest::Approx(1.0));
    const double gate = std::exp(1.0) / (std::exp(1.0) + 1.0);
    Tensor kept = expert_mlp(layer, 0)(x.reshape({12, 4}).slice(0, 0, 4)) * gate;
    CHECK(max_abs_diff(y.slice(0, 0, 4), kept) < 1e-5);
    CHECK(max_abs_diff(y.slice(0, 4, 12), Tensor::zeros({8, 4})) == 0.0);
    // A new capacity factor (an evaluation's) holds from the next forward on: C = ceil(12 * 1.5 / 2) = 9 -> 12.
    layer.set_capacity_factor(1.5);
    Tensor y_all = layer(x).reshape({12, 4});
    CHECK(layer.stats().capacity == 12);
    CHECK(layer.stats().dropped == 0);
    CHECK(max_abs_diff(y_all, expert_mlp(layer, 0)(x.reshape({12, 4})) * gate) < 1e-5);
    CHECK(has(error_of([&] { layer.set_capacity_factor(0); }), "set_capacity_factor: capacity_factor = 0 must be positive"));
  }

  TEST_CASE("gate noise: Philox by step in training (same step, same draw), none in evaluation") {
    eng::Generator g(9);
    model::Mlp dense(g, 4, 8);
    MoeOptions o = options(GateKind::Token, 4, 1);
    o.capacity_factor = 10;
    MoeMlp layer(dense, o);
    Tensor x = g.normal({2, 3, 4});
    layer.set_step(5);
    Tensor a = layer(x), la = layer.stats().load_loss;
    Tensor b = layer(x), lb = layer.stats().load_loss;
    layer.set_step(6);
    Tensor lc = (layer(x), layer.stats().load_loss);
    CHECK(same_bits(a, b));
    CHECK(la.item() == lb.item());
    CHECK(lc.item() != la.item());
    layer.set_training(false);
    Tensor e1 = layer(x);
    layer.set_step(5);
    CHECK(same_bits(layer(x), e1));
  }

  TEST_CASE("the block seam: an MoE MLP's parameters appear as blocks.N.mlp.*, stacked [N, out, in]") {
    eng::Generator g(11);
    model::Block block(g, 8, 2, 4.0);
    MoeOptions o = options(GateKind::Moce, 3, 1, 5);
    auto moe = std::make_shared<MoeMlp>(block.dense_mlp(), o);
    block.set_mlp(moe);
    std::map<std::string, Shape> shapes;
    block.visit("blocks.11.", [&](const std::string& name, Tensor& t) { shapes[name] = t.shape(); });
    CHECK(shapes.at("blocks.11.mlp.fc1.weight") == Shape({3, 32, 8}));
    CHECK(shapes.at("blocks.11.mlp.fc1.bias") == Shape({3, 32}));
    CHECK(shapes.at("blocks.11.mlp.fc2.weight") == Shape({3, 8, 32}));
    CHECK(shapes.at("blocks.11.mlp.fc2.bias") == Shape({3, 8}));
    CHECK(shapes.at("blocks.11.mlp.gate.weight") == Shape({3, 5}));
    CHECK(shapes.count("blocks.11.attn.qkv.weight") == 1);
    moe->set_cluster_embeddings(g.normal({2, 5}));
    Tensor y = block(g.normal({2, 6, 8}));
    CHECK(y.shape() == Shape({2, 6, 8}));
  }

  TEST_CASE("install_moe_mlps: the listed blocks of a MAE become MoE layers under their names; bad lists are errors") {
    model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 3);
    const int64_t depth = int64_t(mae.blocks.size());
    const model::Mlp dense_last = mae.blocks[size_t(depth - 1)].dense_mlp();
    MoeOptions o = options(GateKind::Moce, 4, 1, 6);
    auto layers = install_moe_mlps(mae.blocks, {depth - 1, 0}, o);
    REQUIRE(layers.size() == 2);
    auto sd = mae.state_dict();
    const std::string last = "blocks." + std::to_string(depth - 1) + ".mlp.";
    CHECK(sd.at(last + "fc1.weight").shape() == Shape({4, dense_last.fc1.weight.size(0), dense_last.fc1.weight.size(1)}));
    CHECK(sd.at(last + "gate.weight").shape() == Shape({4, 6}));
    CHECK(sd.count("blocks.0.mlp.gate.weight") == 1);
    CHECK(sd.count(last + "experts.0.fc1.weight") == 0);
    // Each expert is the block's dense weight plus a small perturbation; the two blocks' perturbations differ.
    const double d = max_abs_diff(layers[0]->experts.fc1_weight.select(0, 2), dense_last.fc1.weight);
    CHECK(d > 0);
    CHECK(d < 0.01);
    CHECK(layers[0]->options().seed != layers[1]->options().seed);
    for (auto& l : layers) l->set_cluster_embeddings(eng::Generator(1).normal({2, 6}));
    model::MaeOutput out = mae.forward(eng::Generator(2).uniform({2, 3, 16, 16}), eng::Generator(3).uniform({2, 16}), 0.75);
    out.loss.backward();
    CHECK(layers[0]->experts.fc2_weight.grad().defined());
    CHECK(layers[1]->gate_weight.grad().defined());
    CHECK(has(error_of([&] { install_moe_mlps(mae.blocks, {0}, o); }), "block 0's MLP is not dense"));
    model::MaskedAutoencoder fresh(model::mae_config("mae_test_tiny"), 3);
    CHECK(has(error_of([&] { install_moe_mlps(fresh.blocks, {depth}, o); }), "out of range"));
    CHECK(has(error_of([&] { install_moe_mlps(fresh.blocks, {1, 1}, o); }), "block 1 listed twice"));
  }

  TEST_CASE("bitwise the same forward, losses and gradients with 1 and 2 threads (both gates, top-1 and top-2)") {
    testutil::ThreadCount guard;
    for (GateKind gate : {GateKind::Moce, GateKind::Token}) {
      for (int64_t k : {1, 2}) {
        std::vector<std::vector<Tensor>> runs;
        for (int threads : {1, 2}) {
          omp_set_num_threads(threads);
          eng::Generator g(13);
          model::Mlp dense(g, 16, 64);
          MoeOptions o = options(gate, 8, k, 6);
          o.seed = 21;
          MoeMlp layer(dense, o);
          Tensor x = g.normal({6, 17, 16}).requires_grad_();
          layer.set_cluster_embeddings(g.normal({6, 6}));
          layer.set_step(3);
          Tensor y = layer(x);
          const MoeStats& s = layer.stats();
          Tensor loss = eng::sum(eng::square(y)) + s.importance_loss + s.load_loss;
          if (s.imbalance_loss.defined()) loss = loss + s.imbalance_loss;
          loss.backward();
          runs.push_back({y, x.grad(), layer.gate_weight.grad(), layer.experts.fc1_weight.grad(),
                          layer.experts.fc2_bias.grad(), loss});
        }
        for (size_t i = 0; i < runs[0].size(); i++) CHECK(same_bits(runs[0][i], runs[1][i]));
      }
    }
  }

  TEST_CASE("errors name the argument") {
    eng::Generator g(15);
    model::Mlp dense(g, 4, 8);
    CHECK(has(error_of([&] { MoeMlp(dense, options(GateKind::Moce, 0, 1, 3)); }), "num_experts = 0"));
    CHECK(has(error_of([&] { MoeMlp(dense, options(GateKind::Moce, 4, 5, 3)); }), "top_k = 5"));
    CHECK(has(error_of([&] { MoeMlp(dense, options(GateKind::Moce, 4, 1, 0)); }), "cluster_dim = 0"));
    MoeOptions bad = options(GateKind::Token, 4, 1);
    bad.capacity_factor = 0;
    CHECK(has(error_of([&] { MoeMlp(dense, bad); }), "capacity_factor = 0"));
    bad = options(GateKind::Token, 4, 1);
    bad.perturbation = -1;
    CHECK(has(error_of([&] { MoeMlp(dense, bad); }), "perturbation = -1"));
    MoeMlp moce(dense, options(GateKind::Moce, 4, 1, 3));
    CHECK(has(error_of([&] { moce(g.normal({2, 3, 4})); }), "needs set_cluster_embeddings"));
    CHECK(has(error_of([&] { moce.set_cluster_embeddings(g.normal({2, 4})); }), "embeddings must be [B, 3]"));
    moce.set_cluster_embeddings(g.normal({3, 3}));
    CHECK(has(error_of([&] { moce(g.normal({2, 3, 4})); }), "needs set_cluster_embeddings([2, 3])"));
    CHECK(has(error_of([&] { moce(g.normal({3, 4})); }), "x must be [B, T, 4]"));
    MoeMlp token(dense, options(GateKind::Token, 4, 1));
    token.set_gate_noise(g.normal({5, 4}));
    CHECK(has(error_of([&] { token(g.normal({2, 3, 4})); }), "noise must be [6, 4]"));
    CHECK(has(error_of([] { token_capacity(0, 1, 1.0, 4); }), "tokens = 0"));
    CHECK(has(error_of([] { load_loss(Tensor::zeros({3, 4}), Tensor::zeros({3, 4}), 5, 1.0); }), "k = 5"));
    CHECK(has(error_of([] { load_loss(Tensor::zeros({3, 4}), Tensor::zeros({3, 4}), 1, 0.0); }), "sigma = 0"));
    CHECK(has(error_of([] { load_loss(Tensor::zeros({3, 4}), Tensor::zeros({4, 3}), 1, 1.0); }), "noisy_logits"));
    CHECK(has(error_of([] { importance_loss(Tensor::zeros({4})); }), "importance_loss: clean_logits"));
    CHECK(has(error_of([] { distillation_loss(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})); }), "same shape"));
    ExpertWeights w{Tensor::zeros({2, 3, 4}), Tensor::zeros({2, 3}), Tensor::zeros({2, 4, 3}), Tensor::zeros({2, 4})};
    Tensor x = Tensor::zeros({5, 1, 4});
    Tensor idx = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 0, 1}, {5, 1});
    CHECK(has(error_of([&] { expert_dispatch_combine(x, idx, Tensor::ones({5, 1}), w, 0); }), "index 2 out of range"));
    CHECK(has(error_of([&] { expert_dispatch_combine(x, idx.to(DType::F32), Tensor::ones({5, 1}), w, 0); }),
              "expert_index must be i64"));
    CHECK(has(error_of([&] { expert_dispatch_combine(x, idx, Tensor::ones({5, 2}), w, 0); }), "combine_weights must be"));
    w.fc2_weight = Tensor::zeros({2, 3, 4});
    CHECK(has(error_of([&] { expert_dispatch_combine(x, idx, Tensor::ones({5, 1}), w, 0); }), "fc2_weight must be [2, 4, 3]"));
  }

  TEST_CASE("golden fixture: a tiny MoCE and a tiny TokenMoE layer match PyTorch (outputs, losses, every gradient)") {
    const char* path = "tests/fixtures/moe_tiny.safetensors";
    eng::SafetensorsFile f = eng::load_safetensors(path);
    auto at = [&](const std::string& name) {
      auto it = f.tensors.find(name);
      REQUIRE_MESSAGE(it != f.tensors.end(), path << " lacks " << name);
      return it->second;
    };
    const auto cfg = nlohmann::json::parse(f.metadata.at("config"));
    const int64_t n = cfg.at("num_experts"), d = cfg.at("dim"), h = cfg.at("hidden");
    for (const std::string layer_name : {"moce", "token"}) {
      CAPTURE(layer_name);
      const bool moce = layer_name == "moce";
      eng::Generator g(0);
      model::Mlp dense(g, d, h);
      MoeOptions o = options(moce ? GateKind::Moce : GateKind::Token, n, 1, cfg.at("cluster_dim"));
      o.capacity_factor = cfg.at("capacity_factor");
      MoeMlp layer(dense, o);
      std::map<std::string, Tensor> mine;
      layer.visit(layer_name + ".", [&](const std::string& name, Tensor& t) { mine[name] = t; });
      model::load_tensors(mine, f.tensors, path, "MoeMlp");
      Tensor x = at("input." + layer_name + ".x").clone().requires_grad_();
      if (moce) layer.set_cluster_embeddings(at("input.moce.clusters"));
      layer.set_gate_noise(at("input." + layer_name + ".noise"));
      Tensor y = layer(x);
      const MoeStats& s = layer.stats();
      Tensor distill = distillation_loss(at("input." + layer_name + ".teacher"), x + y);
      std::map<std::string, Tensor> losses = {{"importance", s.importance_loss}, {"load", s.load_loss}, {"distill", distill}};
      if (moce) losses["imbalance"] = s.imbalance_loss;
      CHECK(s.imbalance_loss.defined() == moce);
      CHECK(max_rel(y, at("output." + layer_name + ".y")) <= 1e-5);
      Tensor total = eng::sum(y * at("input." + layer_name + ".dy"));
      for (auto& [name, loss] : losses) {
        const double want = at("output." + layer_name + "." + name).item();
        CHECK_MESSAGE(std::fabs(loss.item() - want) <= 1e-5 * std::fabs(want), name << ": ours " << loss.item() << " vs " << want);
        total = total + loss;
      }
      if (!moce) {
        CHECK(s.dropped == int64_t(at("output.token.dropped").item()));
        CHECK(s.dropped > 0);
      }
      total.backward();
      CHECK_MESSAGE(max_rel(x.grad(), at("grad." + layer_name + ".x")) <= 1e-5, "x: " << max_rel(x.grad(), at("grad." + layer_name + ".x")));
      for (auto& [name, t] : mine) {
        REQUIRE_MESSAGE(t.grad().defined(), name << " got no gradient");
        const double e = max_rel(t.grad(), at("grad." + name));
        CHECK_MESSAGE(e <= 1e-5, name << ": gradient rel err " << e);
      }
      CHECK(mine.size() == 5);
    }
  }
}
