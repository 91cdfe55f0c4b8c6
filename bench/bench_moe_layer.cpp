// bench_moe_layer.cpp: where an expert layer's time goes, at the reference workload's encoder MLP (mae_tiny_p4_32,
// batch 128: 128 images x 17 visible tokens, 192 <-> 768, 8 experts, top-1). Each variant is one forward + backward
// of the layer (loss = sum(y * r) for a fixed random r, plus the auxiliary losses for the whole layers), timed
// against the dense MLP (eng::mlp_gelu, what model::Mlp runs) in interleaved pairs:
//   grouped core    the experts' GEMMs alone on rows already sorted by expert (8 equal groups of 16 images):
//                   grouped_matmul + eng::gelu + grouped_matmul (the composition), then grouped_mlp_gelu (the GELU
//                   and its gradient in the GEMMs' epilogues: what expert_dispatch_combine runs);
//   moce dispatch   expert_dispatch_combine with given top-1 choices of whole images (sort, gather, experts, scatter,
//                   gate scaling);
//   moce layer      the whole MoeMlp under the MoCE gate (gate on the cluster embeddings, noise, top-1, dispatch,
//                   importance + load + imbalance losses);
//   tokenmoe layer  the whole MoeMlp under V-MoE's token gate (capacity factor 1.05, importance + load losses).
// A sample repeats the variant for about 50 ms; samples of the dense MLP and of the variant alternate (the order
// flipping each pair), so a burst of other load moves both sides of a pair alike; `ratio` is the median over pairs
// of variant / dense time, with its quartiles.
// Usage: bench_moe_layer [--quick] [--pairs N] [--only TEXT]   (--quick: 7 pairs; default 15; --only: the variants
// whose name contains TEXT)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"
#include "model/layers.h"
#include "moce/experts/moe_mlp.h"

using namespace eng;
namespace ex = moce::experts;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[size_t(q * double(v.size() - 1) + 0.5)];
}

struct Variant {
  std::string name;
  std::function<void()> step;  // one forward + backward
};

}  // namespace

int main(int argc, char** argv) {
  int pairs = 15;
  std::string only;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--quick")) pairs = 7;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--pairs") && i + 1 < argc) pairs = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "bench_moe_layer: unknown flag %s (expected --quick, --pairs N or --only TEXT)\n", argv[i]);
      return 2;
    }
  }
  if (pairs < 1) {
    std::fprintf(stderr, "bench_moe_layer: --pairs %d must be at least 1\n", pairs);
    return 2;
  }
  const int64_t images = 128, tokens = 17, dim = 192, hidden = 768, experts = 8, cluster_dim = 192;
  Generator g(11);
  model::Mlp dense(g, dim, hidden);
  Tensor x = g.normal({images, tokens, dim}, 0.0, 1.0).requires_grad_();
  Tensor r = g.normal({images, tokens, dim}, 0.0, 1.0);

  ex::MoeOptions mo;
  mo.gate = ex::GateKind::Moce;
  mo.num_experts = experts;
  mo.cluster_dim = cluster_dim;
  auto moce = std::make_shared<ex::MoeMlp>(dense, mo);
  moce->set_cluster_embeddings(g.normal({images, cluster_dim}, 0.0, 1.0));
  ex::MoeOptions to = mo;
  to.gate = ex::GateKind::Token;
  to.capacity_factor = 1.05;
  auto token = std::make_shared<ex::MoeMlp>(dense, to);
  const std::vector<std::shared_ptr<ex::MoeMlp>> moce_layers{moce}, token_layers{token};

  // Given top-1 choices for the dispatch variant: image i to expert i % 8 (16 images each), gate values in (0.5, 1).
  std::vector<int64_t> choice(static_cast<size_t>(images));
  for (int64_t i = 0; i < images; i++) choice[size_t(i)] = i % experts;
  Tensor expert_index = Tensor::from_vector(choice, {images, 1});
  Tensor combine = g.uniform({images, 1}, 0.5, 1.0).requires_grad_();
  const std::vector<int64_t> group_rows(size_t(experts), images / experts * tokens);

  auto finish = [&](const Tensor& y, const Tensor& aux) {
    Tensor loss = sum(mul(y, r));
    if (aux.defined()) loss = add(loss, aux);
    loss.backward();
  };
  auto zero = [&](std::initializer_list<Tensor*> ts) {
    for (Tensor* t : ts) t->zero_grad();
  };
  const Variant base{"dense mlp (mlp_gelu)", [&] {
                       finish(dense(x), Tensor());
                       zero({&x, &dense.fc1.weight, &dense.fc1.bias, &dense.fc2.weight, &dense.fc2.bias});
                     }};
  std::vector<Variant> variants = {
      {"grouped core (E=8, sorted rows)",
       [&] {
         Tensor rows = x.reshape({images * tokens, dim});
         Tensor h = gelu(grouped_matmul(rows, moce->experts.fc1_weight, group_rows, moce->experts.fc1_bias));
         finish(grouped_matmul(h, moce->experts.fc2_weight, group_rows, moce->experts.fc2_bias).reshape(x.shape()),
                Tensor());
       }},
      {"grouped core fused (grouped_mlp_gelu)",
       [&] {
         Tensor rows = x.reshape({images * tokens, dim});
         const ex::ExpertWeights& w = moce->experts;
         finish(grouped_mlp_gelu(rows, w.fc1_weight, w.fc1_bias, w.fc2_weight, w.fc2_bias, group_rows).reshape(x.shape()),
                Tensor());
       }},
      {"moce dispatch (given top-1)",
       [&] { finish(ex::expert_dispatch_combine(x, expert_index, combine, moce->experts, 0), Tensor()); }},
      {"moce layer (gate, dispatch, aux)",
       [&] {
         Tensor y = (*moce)(x);  // first: the auxiliary losses are those of this forward
         finish(y, ex::auxiliary_loss(moce_layers, ex::AuxLossWeights{}));
       }},
      {"tokenmoe layer (cf 1.05, aux)",
       [&] {
         Tensor y = (*token)(x);
         finish(y, ex::auxiliary_loss(token_layers, ex::AuxLossWeights{0.01, 0.01, 0.0}));
       }},
  };
  if (!only.empty()) {  // --only: the variants whose name contains the text (for a profiler)
    std::vector<Variant> kept;
    for (auto& v : variants)
      if (v.name.find(only) != std::string::npos) kept.push_back(v);
    if (kept.empty()) {
      std::fprintf(stderr, "bench_moe_layer: --only %s matches no variant\n", only.c_str());
      return 2;
    }
    variants = kept;
  }
  auto clear_moe_grads = [&] {
    for (auto* layer : {moce.get(), token.get()}) {
      layer->experts.fc1_weight.zero_grad();
      layer->experts.fc1_bias.zero_grad();
      layer->experts.fc2_weight.zero_grad();
      layer->experts.fc2_bias.zero_grad();
      layer->gate_weight.zero_grad();
    }
    x.zero_grad();
    combine.zero_grad();
  };

  std::printf("expert layer at mae_tiny_p4_32's encoder MLP: %lld images x %lld tokens, %lld <-> %lld, %lld experts, "
              "top-1; %d OpenMP threads; %d pairs\n",
              (long long)images, (long long)tokens, (long long)dim, (long long)hidden, (long long)experts,
              omp_get_max_threads(), pairs);
  for (int w = 0; w < 2; w++) {  // warm-up: the caching allocator and the packing buffers
    base.step();
    for (auto& v : variants) v.step(), clear_moe_grads();
  }
  double t0 = now_s();
  int reps = 0;
  while (now_s() - t0 < 0.05) base.step(), reps++;
  auto sample = [&](const std::function<void()>& f) {
    const double t = now_s();
    for (int i = 0; i < reps; i++) f(), clear_moe_grads();
    return (now_s() - t) / reps;
  };
  std::printf("%-34s %10s %10s %8s %14s\n", "variant (fwd + bwd)", "ms", "dense ms", "ratio", "quartiles");
  std::vector<std::string> lines;
  for (auto& v : variants) {
    std::vector<double> tv, td, ratios;
    for (int p = 0; p < pairs; p++) {
      double a, b;
      if (p % 2 == 0) {
        b = sample(base.step);
        a = sample(v.step);
      } else {
        a = sample(v.step);
        b = sample(base.step);
      }
      tv.push_back(a);
      td.push_back(b);
      ratios.push_back(a / b);
    }
    const double ms = 1e3 * quantile(tv, 0.5), dms = 1e3 * quantile(td, 0.5);
    std::printf("%-34s %10.2f %10.2f %7.2fx %7.2f-%.2fx\n", v.name.c_str(), ms, dms, quantile(ratios, 0.5),
                quantile(ratios, 0.25), quantile(ratios, 0.75));
    char buf[256];
    std::snprintf(buf, sizeof buf, "moe_layer %s: %.2f ms (%.2fx dense %.2f ms, quartiles %.2f-%.2fx)", v.name.c_str(),
                  ms, quantile(ratios, 0.5), dms, quantile(ratios, 0.25), quantile(ratios, 0.75));
    lines.push_back(buf);
  }
  for (const auto& l : lines) std::printf("%s\n", l.c_str());
  return 0;
}
