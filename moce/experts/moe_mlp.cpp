// moe_mlp.cpp: the expert MLP layer, its two gates, and the top-K dispatch and combine (see moe_mlp.h).
#include "moce/experts/moe_mlp.h"

#include <cmath>

#include "engine/error.h"
#include "engine/rng.h"

namespace moce::experts {

using eng::DType;

namespace {
// Philox streams of this layer's draws (one per purpose, so that none shifts another's numbers).
constexpr uint64_t kPerturbStream = 0x70657274ull;  // "pert", + 4·expert + tensor
constexpr uint64_t kGateInitStream = 0x67696e69ull;
constexpr uint64_t kNoiseStream = 0x6e6f6973ull;
constexpr uint64_t kNoiseStepStride = uint64_t(1) << 32;  // counters per step: more than any [U, N] draw

std::string shape_of(const Tensor& t) { return t.defined() ? eng::shape_str(t.shape()) : "undefined"; }

void check_experts(const ExpertWeights& w) {
  ENG_CHECK(w.fc1_weight.defined() && w.fc1_weight.dim() == 3, "expert_dispatch_combine: fc1_weight must be [N, H, D], got {}",
            shape_of(w.fc1_weight));
  const int64_t n = w.fc1_weight.size(0), h = w.fc1_weight.size(1), d = w.fc1_weight.size(2);
  ENG_CHECK(w.fc2_weight.defined() && w.fc2_weight.shape() == eng::Shape({n, d, h}),
            "expert_dispatch_combine: fc2_weight must be [{}, {}, {}], got {}", n, d, h, shape_of(w.fc2_weight));
  ENG_CHECK(!w.fc1_bias.defined() || w.fc1_bias.shape() == eng::Shape({n, h}),
            "expert_dispatch_combine: fc1_bias must be [{}, {}], got {}", n, h, shape_of(w.fc1_bias));
  ENG_CHECK(!w.fc2_bias.defined() || w.fc2_bias.shape() == eng::Shape({n, d}),
            "expert_dispatch_combine: fc2_bias must be [{}, {}], got {}", n, d, shape_of(w.fc2_bias));
}

std::vector<int64_t> host_i64(const Tensor& t) { return t.to(eng::Device::cpu()).contiguous().to_vector<int64_t>(); }

// A copy of a dense tensor per expert, plus N(0, s²) from its own stream: [N, ...shape].
Tensor stacked_copies(const Tensor& dense, int64_t n, double s, uint64_t seed, uint64_t tensor_id) {
  eng::NoGradGuard no_grad;
  std::vector<Tensor> copies;
  for (int64_t e = 0; e < n; e++) {
    Tensor c = dense.detach().clone();
    if (s > 0) {
      eng::Generator g(seed, kPerturbStream + 4 * uint64_t(e) + tensor_id);
      c = c + g.normal(dense.shape(), 0.0, s, dense.dtype(), dense.device());
    }
    copies.push_back(c);
  }
  return model::trainable(eng::stack(copies, 0).contiguous());
}
}  // namespace

const char* gate_kind_name(GateKind g) { return g == GateKind::Moce ? "moce" : "tokenmoe"; }

int64_t token_capacity(int64_t tokens, int64_t k, double capacity_factor, int64_t num_experts) {
  ENG_CHECK(tokens > 0 && k > 0 && num_experts > 0, "token_capacity: tokens = {}, k = {}, num_experts = {} must be positive",
            tokens, k, num_experts);
  ENG_CHECK(capacity_factor > 0 && std::isfinite(capacity_factor), "token_capacity: capacity_factor = {} must be positive",
            capacity_factor);
  const int64_t c = int64_t(std::ceil(double(tokens) * double(k) * capacity_factor / double(num_experts)));
  return (c + 3) / 4 * 4;
}

Tensor expert_dispatch_combine(const Tensor& x, const Tensor& expert_index, const Tensor& combine_weights,
                               const ExpertWeights& w, int64_t capacity, DispatchInfo* info) {
  check_experts(w);
  const int64_t n = w.fc1_weight.size(0), d = w.fc1_weight.size(2);
  ENG_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d, "expert_dispatch_combine: x must be [units, rows, {}], got {}",
            d, shape_of(x));
  const int64_t units = x.size(0), rows = x.size(1);
  ENG_CHECK(expert_index.defined() && expert_index.dtype() == DType::I64 && expert_index.dim() == 2 &&
                expert_index.size(0) == units,
            "expert_dispatch_combine: expert_index must be i64 [{}, K], got {}", units, shape_of(expert_index));
  const int64_t k = expert_index.size(1);
  ENG_CHECK(combine_weights.defined() && combine_weights.shape() == expert_index.shape(),
            "expert_dispatch_combine: combine_weights must be {}, got {}", eng::shape_str(expert_index.shape()),
            shape_of(combine_weights));
  const int64_t choices = k * units;

  // Top-1 with nothing over capacity (the MoCE gate always; a token gate whose experts all fit): the choices are a
  // permutation of the units. The order is a stable counting sort on the host (the expert sizes are read back for the
  // grouped GEMM anyway), then one pass each way: whole units sorted by expert, the experts, and the inverse
  // permutation times the gate values (permute_rows; its backward is one pass too, no zero-filled index_add).
  if (k == 1) {
    const std::vector<int64_t> expert_host = host_i64(expert_index);
    std::vector<int64_t> chosen(static_cast<size_t>(n), 0);
    for (int64_t v : expert_host) {
      ENG_CHECK(v >= 0 && v < n, "expert_dispatch_combine: expert index {} out of range for {} experts", v, n);
      chosen[size_t(v)]++;
    }
    bool fits = true;
    for (int64_t e = 0; e < n; e++) fits = fits && (capacity <= 0 || chosen[size_t(e)] <= capacity);
    if (fits) {
      std::vector<int64_t> start(static_cast<size_t>(n) + 1, 0), order(static_cast<size_t>(units)),
          position(static_cast<size_t>(units));
      for (int64_t e = 0; e < n; e++) start[size_t(e) + 1] = start[size_t(e)] + chosen[size_t(e)];
      for (int64_t u = 0; u < units; u++) {
        const int64_t slot = start[size_t(expert_host[size_t(u)])]++;
        order[size_t(slot)] = u;     // slot -> unit
        position[size_t(u)] = slot;  // unit -> slot
      }
      if (info) *info = DispatchInfo{chosen, chosen, 0};
      std::vector<int64_t> group_rows(static_cast<size_t>(n));
      for (int64_t e = 0; e < n; e++) group_rows[size_t(e)] = chosen[size_t(e)] * rows;
      Tensor sorted = eng::permute_rows(x, Tensor::from_vector(order, {units}).to(x.device()));
      Tensor out = eng::grouped_mlp_gelu(sorted.reshape({units * rows, d}), w.fc1_weight, w.fc1_bias, w.fc2_weight,
                                         w.fc2_bias, group_rows)
                       .reshape({units, rows, d});
      return eng::permute_rows(out, Tensor::from_vector(position, {units}).to(x.device()),
                               combine_weights.reshape({units}));
    }
  }

  // The choices in priority order, k-major: every unit's first choice, in unit order, before any second choice.
  Tensor expert_of = expert_index.transpose(0, 1).contiguous().reshape({choices});
  Tensor weight_of = combine_weights.transpose(0, 1).reshape({choices});
  std::vector<int64_t> unit_host(static_cast<size_t>(choices));
  for (int64_t c = 0; c < choices; c++) unit_host[size_t(c)] = c % units;
  Tensor unit_of = Tensor::from_vector(unit_host, {choices}).to(x.device());

  std::vector<int64_t> chosen = host_i64(eng::bincount(expert_of, n));  // also range-checks the indices
  // Sort key: the expert, or n for a choice over capacity (those sort last and skip the experts).
  Tensor key = expert_of.to(DType::F64);
  if (capacity > 0) {
    Tensor hot = eng::one_hot(expert_of, n, DType::F64);                              // [choices, N]
    Tensor position = eng::sum(eng::cumsum(hot, 0) * hot, {1});                       // 1-based slot in its expert
    Tensor over = eng::gt(position, Tensor::scalar(double(capacity), DType::F64, x.device()));
    key = eng::where(over, Tensor::scalar(double(n), DType::F64, x.device()), key);
  }
  Tensor order = eng::argsort(key, 0);  // stable: within an expert, priority order
  std::vector<int64_t> kept(static_cast<size_t>(n));
  int64_t total_kept = 0;
  for (int64_t e = 0; e < n; e++) {
    kept[size_t(e)] = capacity > 0 ? std::min(chosen[size_t(e)], capacity) : chosen[size_t(e)];
    total_kept += kept[size_t(e)];
  }
  const int64_t dropped = choices - total_kept;
  if (info) *info = DispatchInfo{chosen, kept, dropped};

  Tensor y;  // [choices, rows, D] in sorted order
  if (total_kept > 0) {
    Tensor kept_order = order.slice(0, 0, total_kept);
    Tensor xs = eng::index_select(x, 0, eng::index_select(unit_of, 0, kept_order)).reshape({total_kept * rows, d});
    std::vector<int64_t> group_rows(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; e++) group_rows[size_t(e)] = kept[size_t(e)] * rows;
    Tensor out = eng::grouped_mlp_gelu(xs, w.fc1_weight, w.fc1_bias, w.fc2_weight, w.fc2_bias, group_rows)
                     .reshape({total_kept, rows, d});
    y = out * eng::index_select(weight_of, 0, kept_order).reshape({total_kept, 1, 1});
  }
  if (dropped > 0) {
    Tensor zeros = Tensor::zeros({dropped, rows, d}, x.dtype(), x.device());
    y = y.defined() ? eng::cat({y, zeros}, 0) : zeros;
  }
  // Back to choice order (the inverse permutation), then the sum over the k choices of each unit.
  Tensor by_choice = eng::index_select(y, 0, eng::argsort(order.to(DType::F64), 0)).reshape({k, units, rows, d});
  return k == 1 ? by_choice.squeeze(0) : eng::sum(by_choice, {0});
}

MoeMlp::MoeMlp(const model::Mlp& dense, const MoeOptions& options) : options_(options) {
  const MoeOptions& o = options_;
  ENG_CHECK(dense.fc1.weight.defined() && dense.fc1.weight.dim() == 2, "MoeMlp: dense must be an initialised model::Mlp");
  ENG_CHECK(o.num_experts >= 1, "MoeMlp: num_experts = {} must be at least 1", o.num_experts);
  ENG_CHECK(o.top_k >= 1 && o.top_k <= o.num_experts, "MoeMlp: top_k = {} must be in [1, num_experts = {}]", o.top_k,
            o.num_experts);
  ENG_CHECK(o.gate == GateKind::Token || o.cluster_dim >= 1, "MoeMlp: cluster_dim = {} must be positive for the MoCE gate",
            o.cluster_dim);
  ENG_CHECK(o.capacity_factor > 0 && std::isfinite(o.capacity_factor), "MoeMlp: capacity_factor = {} must be positive",
            o.capacity_factor);
  ENG_CHECK(o.perturbation >= 0 && std::isfinite(o.perturbation), "MoeMlp: perturbation = {} must be >= 0",
            o.perturbation);
  ENG_CHECK(o.gate_init_std >= 0 && std::isfinite(o.gate_init_std), "MoeMlp: gate_init_std = {} must be >= 0",
            o.gate_init_std);
  ENG_CHECK(std::isfinite(o.noise_std), "MoeMlp: noise_std = {} must be finite", o.noise_std);
  hidden_ = dense.fc1.weight.size(0);
  dim_ = dense.fc1.weight.size(1);
  const int64_t n = o.num_experts;
  experts.fc1_weight = stacked_copies(dense.fc1.weight, n, o.perturbation, o.seed, 0);
  experts.fc1_bias = stacked_copies(dense.fc1.bias, n, o.perturbation, o.seed, 1);
  experts.fc2_weight = stacked_copies(dense.fc2.weight, n, o.perturbation, o.seed, 2);
  experts.fc2_bias = stacked_copies(dense.fc2.bias, n, o.perturbation, o.seed, 3);
  const int64_t gate_in = o.gate == GateKind::Moce ? o.cluster_dim : dim_;
  eng::Generator g(o.seed, kGateInitStream);
  gate_weight = model::trainable(
      g.normal({n, gate_in}, 0.0, o.gate_init_std, dense.fc1.weight.dtype(), dense.fc1.weight.device()));
}

double MoeMlp::noise_std() const { return options_.noise_std < 0 ? 1.0 / double(options_.num_experts) : options_.noise_std; }

void MoeMlp::set_cluster_embeddings(const Tensor& embeddings) {
  ENG_CHECK(embeddings.defined() && embeddings.dim() == 2 && embeddings.size(1) == options_.cluster_dim,
            "MoeMlp::set_cluster_embeddings: embeddings must be [B, {}], got {}", options_.cluster_dim,
            shape_of(embeddings));
  cluster_embeddings_ = embeddings.detach();
}

void MoeMlp::set_capacity_factor(double capacity_factor) {
  ENG_CHECK(capacity_factor > 0 && std::isfinite(capacity_factor),
            "MoeMlp::set_capacity_factor: capacity_factor = {} must be positive", capacity_factor);
  options_.capacity_factor = capacity_factor;
}

void MoeMlp::visit(const std::string& prefix, const model::Visitor& f) {
  f(prefix + "fc1.weight", experts.fc1_weight);
  f(prefix + "fc1.bias", experts.fc1_bias);
  f(prefix + "fc2.weight", experts.fc2_weight);
  f(prefix + "fc2.bias", experts.fc2_bias);
  f(prefix + "gate.weight", gate_weight);
}

Tensor MoeMlp::operator()(const Tensor& x) const {
  ENG_CHECK(x.defined() && x.dim() == 3 && x.size(2) == dim_, "MoeMlp: x must be [B, T, {}], got {}", dim_, shape_of(x));
  ENG_CHECK(x.dtype() != DType::BF16, "MoeMlp: bf16 compute is not supported yet (x is bf16)");
  const int64_t b = x.size(0), t = x.size(1), n = options_.num_experts, k = options_.top_k;
  const bool moce = options_.gate == GateKind::Moce;
  Tensor gate_in, units;
  if (moce) {
    ENG_CHECK(cluster_embeddings_.defined() && cluster_embeddings_.size(0) == b,
              "MoeMlp: the MoCE gate needs set_cluster_embeddings([{}, {}]) before the forward, has {}", b,
              options_.cluster_dim, shape_of(cluster_embeddings_));
    gate_in = cluster_embeddings_.to(x.dtype()).to(x.device());
    units = x;
  } else {
    gate_in = x.reshape({b * t, dim_});
    units = x.reshape({b * t, 1, dim_});
  }
  const int64_t u = units.size(0);
  Tensor clean = eng::linear(gate_in, gate_weight);  // [U, N]
  Tensor noisy = clean;
  if (training_) {
    Tensor noise = explicit_noise_;
    if (noise.defined()) {
      ENG_CHECK(noise.shape() == eng::Shape({u, n}), "MoeMlp::set_gate_noise: noise must be [{}, {}], got {}", u, n,
                shape_of(noise));
      noise = noise.detach().to(x.dtype()).to(x.device());
    } else {
      eng::Generator g(options_.seed, kNoiseStream, step_ * kNoiseStepStride);
      noise = g.normal({u, n}, 0.0, noise_std(), x.dtype(), x.device());
    }
    noisy = clean + noise;
  }
  Tensor gates = eng::softmax(noisy, 1);  // G before top-K
  eng::ValuesIndices top = eng::topk(gates, k, 1);
  MoeStats s;
  s.capacity = moce ? 0 : token_capacity(u, k, options_.capacity_factor, n);
  DispatchInfo info;
  Tensor y = expert_dispatch_combine(units, top.indices, top.values, experts, s.capacity, &info);
  s.importance_loss = importance_loss(clean);
  s.load_loss = load_loss(clean, noisy, k, noise_std() > 0 ? noise_std() : 1.0);  // σ = 0 (no noise): Φ with σ = 1
  if (moce) s.imbalance_loss = imbalance_loss(gates, options_.imbalance);
  s.expert_load.resize(size_t(n));
  for (int64_t e = 0; e < n; e++) s.expert_load[size_t(e)] = double(info.chosen[size_t(e)]) / double(k * u);
  {
    eng::NoGradGuard no_grad;
    s.choices = top.indices.detach();
    s.gates = gates.detach();
    s.unit_confidence = eng::amax(s.gates, {1});
    s.gate_confidence = eng::mean(s.unit_confidence).item();
  }
  s.dropped = info.dropped;
  s.dropped_fraction = double(info.dropped) / double(k * u);
  stats_ = s;
  return y.reshape({b, t, dim_});
}

std::vector<std::shared_ptr<MoeMlp>> install_moe_mlps(std::vector<model::Block>& blocks,
                                                      const std::vector<int64_t>& block_ids, const MoeOptions& options) {
  std::vector<std::shared_ptr<MoeMlp>> layers;
  std::vector<bool> seen(blocks.size(), false);
  for (int64_t id : block_ids) {
    ENG_CHECK(id >= 0 && id < int64_t(blocks.size()), "install_moe_mlps: block {} out of range for {} blocks", id,
              blocks.size());
    ENG_CHECK(!seen[size_t(id)], "install_moe_mlps: block {} listed twice", id);
    seen[size_t(id)] = true;
    ENG_CHECK(dynamic_cast<const model::Mlp*>(&blocks[size_t(id)].mlp()) != nullptr,
              "install_moe_mlps: block {}'s MLP is not dense (already replaced)", id);
  }
  for (int64_t id : block_ids) {
    MoeOptions o = options;
    o.seed = options.seed + uint64_t(id);
    auto layer = std::make_shared<MoeMlp>(blocks[size_t(id)].dense_mlp(), o);
    blocks[size_t(id)].set_mlp(layer);
    layers.push_back(layer);
  }
  return layers;
}

Tensor auxiliary_loss(const std::vector<std::shared_ptr<MoeMlp>>& layers, const AuxLossWeights& weights) {
  Tensor total;
  auto add = [&](const Tensor& loss, double weight) {
    if (weight == 0 || !loss.defined()) return;
    Tensor term = eng::mul(loss, weight);
    total = total.defined() ? eng::add(total, term) : term;
  };
  for (const auto& layer : layers) {
    const MoeStats& s = layer->stats();
    add(s.importance_loss, weights.importance);
    add(s.load_loss, weights.load);
    if (layer->options().gate == GateKind::Moce) add(s.imbalance_loss, weights.imbalance);
  }
  return total;
}

}  // namespace moce::experts
