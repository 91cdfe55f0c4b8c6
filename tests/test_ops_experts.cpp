// test_ops_experts.cpp: registry cases for the expert layers of moce/experts/ (naive f64 references and central
// finite differences; on CUDA against the CPU in the GPU suite): Φ, the four auxiliary losses, the top-K dispatch
// and combine with and without capacity, and both gates through the whole layer.
#include <algorithm>
#include <cmath>
#include <functional>

#include "model/layers.h"
#include "moce/experts/losses.h"
#include "moce/experts/moe_mlp.h"
#include "tests/op_registry.h"

using namespace optest;
using namespace moce::experts;
using eng::Tensor;

namespace {

InputSpec values(Shape s, Kind k = Kind::Normal) { return InputSpec{s, k}; }
InputSpec index_in(Shape s, int64_t hi) { return InputSpec{s, Kind::Index, hi, false}; }
InputSpec constant(Shape s, Kind k = Kind::Normal) { return InputSpec{s, k, 0, false}; }

HostArray scalar_host(double v) {
  HostArray o = make_host({});
  o.v = {v};
  return o;
}
double phi(double x) { return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))); }
double cv2(const std::vector<double>& v) {
  double m = 0, s = 0;
  for (double a : v) m += a;
  m /= double(v.size());
  for (double a : v) s += (a - m) * (a - m);
  return s / double(v.size()) / (m * m);
}
std::vector<std::vector<double>> softmax_rows(const HostArray& l) {
  std::vector<std::vector<double>> p(size_t(l.size(0)), std::vector<double>(size_t(l.size(1))));
  for (int64_t u = 0; u < l.size(0); u++) {
    double mx = -1e300, z = 0;
    for (int64_t e = 0; e < l.size(1); e++) mx = std::max(mx, l.at({u, e}));
    for (int64_t e = 0; e < l.size(1); e++) z += p[size_t(u)][size_t(e)] = std::exp(l.at({u, e}) - mx);
    for (double& a : p[size_t(u)]) a /= z;
  }
  return p;
}

HostArray importance_ref(const HostArray& l) {
  auto p = softmax_rows(l);
  std::vector<double> imp(size_t(l.size(1)), 0.0);
  for (auto& row : p)
    for (size_t e = 0; e < row.size(); e++) imp[e] += row[e];
  return scalar_host(cv2(imp));
}

HostArray load_ref(const HostArray& clean, const HostArray& noisy, int64_t k, double sigma) {
  const int64_t U = clean.size(0), N = clean.size(1);
  std::vector<double> pbar(size_t(N), 0.0);
  for (int64_t u = 0; u < U; u++) {
    std::vector<double> row(static_cast<size_t>(N));
    for (int64_t e = 0; e < N; e++) row[size_t(e)] = noisy.at({u, e});
    std::sort(row.begin(), row.end(), std::greater<double>());
    const double eta = row[size_t(k - 1)];
    for (int64_t e = 0; e < N; e++) pbar[size_t(e)] += (1.0 - phi((eta - clean.at({u, e})) / sigma)) / double(U);
  }
  return scalar_host(cv2(pbar));
}

HostArray imbalance_ref(const HostArray& g, bool per_image) {
  const int64_t B = g.size(0), N = g.size(1);
  double total = 0;
  if (per_image) {
    for (int64_t i = 0; i < B; i++) {
      std::vector<double> v;
      for (int64_t e = 0; e < N; e++) v.push_back(g.at({i, e}));
      total += cv2(v);
    }
  } else {
    for (int64_t e = 0; e < N; e++) {
      std::vector<double> v;
      for (int64_t i = 0; i < B; i++) v.push_back(g.at({i, e}));
      total += cv2(v);
    }
  }
  return scalar_host(-total);
}

// Naive top-K dispatch and combine: choices in k-major order fill their expert's slots; one over capacity adds 0.
HostArray dispatch_ref(const std::vector<HostArray>& in, int64_t capacity) {
  const HostArray &x = in[0], &idx = in[1], &comb = in[2], &w1 = in[3], &b1 = in[4], &w2 = in[5], &b2 = in[6];
  const int64_t U = x.size(0), L = x.size(1), D = x.size(2), K = idx.size(1), N = w1.size(0), H = w1.size(1);
  HostArray out = make_host(x.shape);
  std::vector<int64_t> fill(size_t(N), 0);
  for (int64_t k = 0; k < K; k++) {
    for (int64_t u = 0; u < U; u++) {
      const int64_t e = int64_t(idx.at({u, k}));
      if (capacity > 0 && ++fill[size_t(e)] > capacity) continue;
      for (int64_t l = 0; l < L; l++) {
        std::vector<double> h(static_cast<size_t>(H));
        for (int64_t j = 0; j < H; j++) {
          double a = b1.at({e, j});
          for (int64_t i = 0; i < D; i++) a += w1.at({e, j, i}) * x.at({u, l, i});
          h[size_t(j)] = a * phi(a);
        }
        for (int64_t o = 0; o < D; o++) {
          double a = b2.at({e, o});
          for (int64_t j = 0; j < H; j++) a += w2.at({e, o, j}) * h[size_t(j)];
          out.at({u, l, o}) += comb.at({u, k}) * a;
        }
      }
    }
  }
  return out;
}

ExpertWeights weights_of(const std::vector<Tensor>& x, size_t first) {
  return ExpertWeights{x[first], x[first + 1], x[first + 2], x[first + 3]};
}
std::vector<InputSpec> dispatch_inputs(int64_t U, int64_t L, int64_t D, int64_t K, int64_t N, int64_t H) {
  return {values({U, L, D}), index_in({U, K}, N), values({U, K}, Kind::Positive), values({N, H, D}), values({N, H}),
          values({N, D, H}), values({N, D})};
}

// A layer whose tensors are the case's inputs: x, gate weight, experts (4), then the cluster embeddings (MoCE) and
// the gate noise. Returns the output and the auxiliary losses in one flat tensor, so every gradient is checked.
Tensor layer_case(const std::vector<Tensor>& in, GateKind gate, int64_t k) {
  const int64_t N = in[1].size(0), D = in[0].size(2), H = in[2].size(1);
  eng::Generator g(1);
  model::Mlp dense(g, D, H);
  MoeOptions o;
  o.gate = gate;
  o.num_experts = N;
  o.top_k = k;
  o.cluster_dim = gate == GateKind::Moce ? in[6].size(1) : 0;
  o.capacity_factor = 0.6;
  MoeMlp layer(dense, o);
  layer.gate_weight = in[1];
  layer.experts = weights_of(in, 2);
  if (gate == GateKind::Moce) layer.set_cluster_embeddings(in[6]);
  layer.set_gate_noise(in.back());
  Tensor y = layer(in[0]);
  const MoeStats& s = layer.stats();
  std::vector<Tensor> parts = {y.reshape({-1}), s.importance_loss.reshape({1}), s.load_loss.reshape({1})};
  if (s.imbalance_loss.defined()) parts.push_back(s.imbalance_loss.reshape({1}));
  return eng::cat(parts, 0);
}

}  // namespace

// ---------------------------------------------------------------- registry cases

OP_CASE({"normal_cdf (Phi from erf)", {values({3, 5})}, [](const std::vector<Tensor>& x) { return normal_cdf(x[0]); },
         [](const std::vector<HostArray>& x) { return map_unary(x[0], phi); }});
OP_CASE({"cv_squared", {values({6}, Kind::Positive)}, [](const std::vector<Tensor>& x) { return cv_squared(x[0]); },
         [](const std::vector<HostArray>& x) { return scalar_host(cv2(x[0].v)); }});
OP_CASE({"importance_loss", {values({7, 4})}, [](const std::vector<Tensor>& x) { return importance_loss(x[0]); },
         [](const std::vector<HostArray>& x) { return importance_ref(x[0]); }});
OP_CASE({"load_loss, k = 1", {values({7, 4}), values({7, 4}, Kind::Distinct)},
         [](const std::vector<Tensor>& x) { return load_loss(x[0], x[1], 1, 0.7); },
         [](const std::vector<HostArray>& x) { return load_ref(x[0], x[1], 1, 0.7); }});
OP_CASE({"load_loss, k = 2", {values({6, 5}), values({6, 5}, Kind::Distinct)},
         [](const std::vector<Tensor>& x) { return load_loss(x[0], x[1], 2, 0.25); },
         [](const std::vector<HostArray>& x) { return load_ref(x[0], x[1], 2, 0.25); }});
OP_CASE({"imbalance_loss per image (ours)", {values({5, 4}, Kind::Positive)},
         [](const std::vector<Tensor>& x) { return imbalance_loss(x[0]); },
         [](const std::vector<HostArray>& x) { return imbalance_ref(x[0], true); }});
OP_CASE({"imbalance_loss per expert", {values({5, 4}, Kind::Positive)},
         [](const std::vector<Tensor>& x) { return imbalance_loss(x[0], ImbalanceReading::PerExpert); },
         [](const std::vector<HostArray>& x) { return imbalance_ref(x[0], false); }});
OP_CASE({"distillation_loss (student gradient only)", {constant({2, 3, 4}), values({2, 3, 4})},
         [](const std::vector<Tensor>& x) { return distillation_loss(x[0], x[1]); },
         [](const std::vector<HostArray>& x) {
           double s = 0;
           for (size_t i = 0; i < x[0].v.size(); i++) s += (x[1].v[i] - x[0].v[i]) * (x[1].v[i] - x[0].v[i]);
           return scalar_host(s / double(x[0].v.size()));
         }});
OP_CASE({"expert dispatch and combine, top-1, whole units, no capacity", dispatch_inputs(6, 3, 4, 1, 3, 5),
         [](const std::vector<Tensor>& x) { return expert_dispatch_combine(x[0], x[1], x[2], weights_of(x, 3), 0); },
         [](const std::vector<HostArray>& x) { return dispatch_ref(x, 0); }});
OP_CASE({"expert dispatch and combine, top-2, whole units, no capacity", dispatch_inputs(5, 2, 3, 2, 4, 4),
         [](const std::vector<Tensor>& x) { return expert_dispatch_combine(x[0], x[1], x[2], weights_of(x, 3), 0); },
         [](const std::vector<HostArray>& x) { return dispatch_ref(x, 0); }});
OP_CASE({"expert dispatch and combine, top-1 tokens, capacity 2 drops", dispatch_inputs(11, 1, 3, 1, 3, 4),
         [](const std::vector<Tensor>& x) { return expert_dispatch_combine(x[0], x[1], x[2], weights_of(x, 3), 2); },
         [](const std::vector<HostArray>& x) { return dispatch_ref(x, 2); }});
OP_CASE({"expert dispatch and combine, top-2 tokens, capacity 3 (top-1 first)", dispatch_inputs(9, 1, 3, 2, 3, 4),
         [](const std::vector<Tensor>& x) { return expert_dispatch_combine(x[0], x[1], x[2], weights_of(x, 3), 3); },
         [](const std::vector<HostArray>& x) { return dispatch_ref(x, 3); }});
// The whole layer through each gate (no forward reference here: the golden fixture checks the forward against
// PyTorch); the gradient check covers the gate weight, the experts, x and every auxiliary loss.
OP_CASE({"MoeMlp with the MoCE gate, top-1",
         {values({4, 3, 3}), values({3, 5}), values({3, 4, 3}), values({3, 4}), values({3, 3, 4}), values({3, 3}),
          constant({4, 5}), constant({4, 3})},
         [](const std::vector<Tensor>& x) { return layer_case(x, GateKind::Moce, 1); }, nullptr});
OP_CASE({"MoeMlp with the MoCE gate, top-2",
         {values({4, 2, 3}), values({4, 5}), values({4, 4, 3}), values({4, 4}), values({4, 3, 4}), values({4, 3}),
          constant({4, 5}), constant({4, 4})},
         [](const std::vector<Tensor>& x) { return layer_case(x, GateKind::Moce, 2); }, nullptr});
OP_CASE({"MoeMlp with the token gate, top-1, capacity drops",
         {values({2, 5, 3}), values({3, 3}), values({3, 4, 3}), values({3, 4}), values({3, 3, 4}), values({3, 3}),
          constant({10, 3})},
         [](const std::vector<Tensor>& x) { return layer_case(x, GateKind::Token, 1); }, nullptr});
OP_CASE({"MoeMlp with the token gate, top-2, capacity drops",
         {values({2, 4, 3}), values({4, 3}), values({4, 4, 3}), values({4, 4}), values({4, 3, 4}), values({4, 3}),
          constant({8, 4})},
         [](const std::vector<Tensor>& x) { return layer_case(x, GateKind::Token, 2); }, nullptr});
