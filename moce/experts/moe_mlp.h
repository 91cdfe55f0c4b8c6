// moe_mlp.h: the expert MLP layer that fills model/'s MLP seam, with the MoCE gate or V-MoE's TokenMoE gate.
//
// N expert MLPs (fc1, exact GELU, fc2) with stacked weights, stored under the block's prefix as
//   mlp.fc1.weight [N, hidden, D]  mlp.fc1.bias [N, hidden]  mlp.fc2.weight [N, D, hidden]  mlp.fc2.bias [N, D]
//   mlp.gate.weight [N, gate_in]   (gate_in = d_c, the cluster-embedding size, for MoCE; D for TokenMoE)
// i.e. expert e's nn.Linear weights are fc1.weight[e] and fc2.weight[e] ([out, in] each, stacked).
//
// Gates (G the gate vector before top-K, ε ~ N(0, σ²) with σ = 1/N by default, in training only):
//   MoCE (the paper's Eqn. 4): G(x) = softmax(W_g · C[x] + ε), C[x] the fixed centroid of the cluster of the image
//     x belongs to, set per batch by the owner (set_cluster_embeddings, [B, d_c]). A unit of routing is a whole
//     image: every token of row b goes to the same expert(s); no capacity limit.
//   TokenMoE (V-MoE): G(x) = softmax(W_g x + ε) per token; expert capacity C = ceil(tokens·K·cf / N) rounded up to a
//     multiple of 4; all top-1 choices are placed before any top-2 choice (each in token order); a choice beyond its
//     expert's capacity is dropped (that slot's MoE output is zero, so the token passes through the residual).
// Output: Σ_k G_{u,e_k} · expert_{e_k}(x_u) over the chosen experts e_1..e_K: the top-K gate values as they are, not
// renormalised to sum to 1 (V-MoE's choice, kept for both gates).
//
// Dispatch: the (unit, k) choices are sorted by expert (a stable sort: deterministic), the rows gathered in that
// order, the experts' MLPs in one eng::grouped_mlp_gelu (one grouped GEMM per linear layer, the expert sizes read
// back to the host once per forward; exact GELU, on the CPU in fc1's GEMM epilogue and its gradient in the epilogue
// of the backward GEMM, as the dense mlp_gelu), then the rows are put back in choice order by the inverse
// permutation, scaled by their gate values and summed over k. All engine ops: forward and backward run on any
// backend, with no atomics in a float reduction.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/layers.h"
#include "moce/experts/losses.h"

namespace moce::experts {

enum class GateKind { Moce, Token };
const char* gate_kind_name(GateKind g);  // "moce" | "tokenmoe"

struct MoeOptions {
  GateKind gate = GateKind::Moce;
  int64_t num_experts = 8;
  int64_t top_k = 1;                 // 1 or 2 (any k <= num_experts works)
  int64_t cluster_dim = 0;           // MoCE: d_c, the size of a cluster embedding
  double capacity_factor = 1.05;     // TokenMoE: cf of the capacity formula
  double noise_std = -1.0;           // σ of the gate noise; < 0 means 1 / num_experts
  double perturbation = 1e-3;        // std of the seeded N(0, s²) added to each expert's copy of the dense weights
  double gate_init_std = 0.02;       // W_g ~ N(0, s²)
  uint64_t seed = 0;                 // perturbation, gate initialisation and gate noise
  ImbalanceReading imbalance = ImbalanceReading::PerImage;
};

// TokenMoE's expert capacity: ceil(tokens·k·cf / num_experts) rounded up to a multiple of 4.
int64_t token_capacity(int64_t tokens, int64_t k, double capacity_factor, int64_t num_experts);

struct ExpertWeights {
  Tensor fc1_weight, fc1_bias, fc2_weight, fc2_bias;  // [N, H, D], [N, H], [N, D, H], [N, D]
};

struct DispatchInfo {
  std::vector<int64_t> chosen;  // choices per expert before the capacity cut, [N]
  std::vector<int64_t> kept;    // rows per expert that went through it (units), [N]
  int64_t dropped = 0;          // choices over capacity
};

// The top-K dispatch and combine: x [U, L, D] holds U routing units of L rows each (images of T tokens for MoCE,
// single tokens for TokenMoE); expert_index i64 [U, K] and combine_weights [U, K] are each unit's choices and gate
// values. Returns [U, L, D] = Σ_k combine_{u,k} · expert_{index_{u,k}}(x_u), a choice beyond `capacity` units per
// expert (in k-major priority order) contributing zero; capacity <= 0 means no limit. Differentiable in x, the
// combine weights and the expert weights.
Tensor expert_dispatch_combine(const Tensor& x, const Tensor& expert_index, const Tensor& combine_weights,
                               const ExpertWeights& w, int64_t capacity, DispatchInfo* info = nullptr);

// What the last forward left: the auxiliary losses (scalars in the graph, ready to be weighted and added) and the
// statistics of its routing.
struct MoeStats {
  Tensor importance_loss;       // cv²(Σ_u softmax(clean logits)), over images (MoCE) or tokens (TokenMoE)
  Tensor load_loss;             // V-MoE's load loss, same units
  Tensor imbalance_loss;        // Eqn. 5 (MoCE only; undefined for TokenMoE)
  std::vector<double> expert_load;  // share of the K·U choices each expert received (before any capacity cut)
  double gate_confidence = 0;   // mean over units of max_e G_{u,e}
  int64_t capacity = 0;         // TokenMoE's C (0: no limit)
  int64_t dropped = 0;          // choices dropped by the capacity (TokenMoE)
  double dropped_fraction = 0;  // dropped / (K·U): with K = 1 the share of tokens dropped
  Tensor choices;               // i64 [U, K]: each unit's experts, before the capacity cut (the routing analysis)
  Tensor unit_confidence;       // [U]: max_e G_{u,e} of each unit
  Tensor gates;                 // [U, N]: G before top-K (no gradient): what an exported expert's scale would be
};

class MoeMlp : public model::MlpLayer {
 public:
  // Every expert starts as `dense` plus the seeded perturbation (its own Philox stream per expert and tensor).
  MoeMlp(const model::Mlp& dense, const MoeOptions& options);

  Tensor operator()(const Tensor& x) const override;  // [B, T, D] -> [B, T, D]
  void visit(const std::string& prefix, const model::Visitor& f) override;

  // MoCE: the cluster embedding (centroid) of each image of the next batch, [B, d_c]; a constant (no gradient).
  void set_cluster_embeddings(const Tensor& embeddings);
  // Training adds the gate noise, drawn from Philox (seed, stream "gate noise", offset from the step): call
  // set_step(step) before each step's forward so a resumed run draws the same noise.
  void set_training(bool training) { training_ = training; }
  void set_step(uint64_t step) { step_ = step; }
  // Explicit gate noise ε [U, N] (tests, the golden fixture): used in training instead of the Philox draw until
  // cleared with an undefined tensor.
  void set_gate_noise(const Tensor& noise) { explicit_noise_ = noise; }
  // TokenMoE's capacity factor from the next forward on (V-MoE evaluates at a capacity factor of its own choosing).
  void set_capacity_factor(double capacity_factor);

  const MoeStats& stats() const { return stats_; }
  const MoeOptions& options() const { return options_; }
  double noise_std() const;

  ExpertWeights experts;  // the stacked expert weights (parameters)
  Tensor gate_weight;     // [N, gate_in] (parameter)

 private:
  MoeOptions options_;
  int64_t dim_ = 0, hidden_ = 0;
  Tensor cluster_embeddings_;
  Tensor explicit_noise_;
  bool training_ = true;
  uint64_t step_ = 0;
  mutable MoeStats stats_;
};

// Puts an MoeMlp in place of the dense MLP of each listed block (each starting from that block's dense weights;
// block i's perturbation, gate initialisation and noise use seed options.seed + i, so blocks differ) and returns the
// layers in the order listed, for the owner to feed (set_cluster_embeddings, set_step) and read (stats). Throws
// naming the block when an index is out of range, repeated, or its MLP is no longer dense.
std::vector<std::shared_ptr<MoeMlp>> install_moe_mlps(std::vector<model::Block>& blocks,
                                                      const std::vector<int64_t>& block_ids, const MoeOptions& options);

// The weights of the auxiliary losses (the paper: "all regularization loss weight is set to 0.01").
struct AuxLossWeights {
  double importance = 0.01, load = 0.01, imbalance = 0.01;
};

// Σ over the layers of the weighted auxiliary losses of their last forward: importance and load for either gate
// (over images for MoCE, tokens for TokenMoE), plus the imbalance loss for MoCE. A 0-d f32 tensor in the graph
// (undefined when there are no layers or every weight is 0), ready to be added to the reconstruction loss.
Tensor auxiliary_loss(const std::vector<std::shared_ptr<MoeMlp>>& layers, const AuxLossWeights& weights);

}  // namespace moce::experts
