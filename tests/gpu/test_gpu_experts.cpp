// test_gpu_experts.cpp: the expert layers of moce/experts/ on CUDA against the CPU at sizes beyond the registry's
// cases (which run on CUDA through "every registered op"): the MoCE and the TokenMoE layer, top-1 and top-2, with
// explicit gate noise (so both devices route alike), forward, auxiliary losses and every gradient within 1e-5.
#include <memory>

#include "model/layers.h"
#include "moce/experts/moe_mlp.h"
#include "tests/gpu/gpu_test_util.h"

using namespace gputest;
using namespace moce::experts;

namespace {

struct LayerRun {
  std::vector<Tensor> results;  // y, the losses, then the gradients of x and of every parameter
  std::vector<int64_t> loads;   // choices per expert, scaled to integers
  int64_t dropped = 0;
};

LayerRun run_layer(GateKind gate, int64_t k, Device dev) {
  const int64_t B = 8, T = 17, D = 32, H = 128, N = 8, DC = 16;
  eng::Generator g(41);
  model::Mlp cpu_dense(g, D, H);
  model::Mlp dense;
  dense.fc1.weight = on(cpu_dense.fc1.weight, dev);
  dense.fc1.bias = on(cpu_dense.fc1.bias, dev);
  dense.fc2.weight = on(cpu_dense.fc2.weight, dev);
  dense.fc2.bias = on(cpu_dense.fc2.bias, dev);
  MoeOptions o;
  o.gate = gate;
  o.num_experts = N;
  o.top_k = k;
  o.cluster_dim = DC;
  o.perturbation = 0.05;
  o.gate_init_std = 0.3;
  o.capacity_factor = 0.8;
  MoeMlp layer(dense, o);
  Tensor x = on(normal({B, T, D}, 42), dev).requires_grad_();
  layer.set_cluster_embeddings(on(normal({B, DC}, 43), dev));
  const int64_t units = gate == GateKind::Moce ? B : B * T;
  layer.set_gate_noise(on(normal({units, N}, 44, DType::F32, 1.0 / N), dev));
  Tensor y = layer(x);
  const MoeStats& s = layer.stats();
  LayerRun r;
  r.results = {y, s.importance_loss, s.load_loss};
  Tensor loss = eng::sum(y * on(normal({B, T, D}, 45), dev)) + s.importance_loss + s.load_loss;
  if (s.imbalance_loss.defined()) {
    r.results.push_back(s.imbalance_loss);
    loss = loss + s.imbalance_loss;
  }
  loss.backward();
  r.results.push_back(x.grad());
  layer.visit("", [&](const std::string&, Tensor& p) { r.results.push_back(p.grad()); });
  for (double share : s.expert_load) r.loads.push_back(int64_t(share * double(k * units) + 0.5));
  r.dropped = s.dropped;
  return r;
}

}  // namespace

TEST_SUITE("gpu experts") {
  TEST_CASE("MoCE and TokenMoE layers on cuda: the cpu's routing, outputs, losses and gradients (f32, 1e-5)") {
    GPU_TEST_OR_SKIP();
    for (GateKind gate : {GateKind::Moce, GateKind::Token}) {
      for (int64_t k : {1, 2}) {
        CAPTURE(gate_kind_name(gate));
        CAPTURE(k);
        LayerRun want = run_layer(gate, k, cpu()), got = run_layer(gate, k, cuda());
        CHECK(got.loads == want.loads);
        CHECK(got.dropped == want.dropped);
        if (gate == GateKind::Token) CHECK(want.dropped > 0);
        REQUIRE(got.results.size() == want.results.size());
        for (size_t i = 0; i < want.results.size(); i++) {
          CAPTURE(i);
          CHECK(rel_err(got.results[i].to(cpu()), want.results[i]) <= 1e-5);
        }
      }
    }
  }
}
