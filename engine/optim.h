// optim.h: optimizers (AdamW, SGD), the MAE-style weight-decay split, the cosine learning-rate
// schedule and gradient-norm clipping.
//
// Parameters are leaf tensors with requires_grad; their gradients come from p.grad(). Updates run
// under NoGradGuard and write the parameters in place, so model code keeps its handles.
//
// Gradient accumulation: gradients add up (+=) over backward() calls until zero_grad(). To accumulate
// k micro-batches of a mean loss into the gradient of the full batch, call backward on loss / k for
// each micro-batch (or backward on the plain losses and scale_grads(params, 1.0 / k) before step()).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace eng {

// A set of parameters sharing hyper-parameters. names: empty, or one per parameter (used as state
// keys and in error messages). weight_decay: unset means the optimizer's default. The group's
// learning rate is the optimizer's lr times lr_scale.
struct ParamGroup {
  std::vector<Tensor> params;
  std::vector<std::string> names;
  std::optional<double> weight_decay;
  double lr_scale = 1.0;
};

using NamedParams = std::vector<std::pair<std::string, Tensor>>;

// The MAE/timm rule: 1-D tensors (biases, norm weights), names ending in ".bias", and names that
// contain one of `no_decay_names` get no weight decay.
bool is_no_decay_param(const std::string& name, const Tensor& p,
                       const std::vector<std::string>& no_decay_names = {"pos_embed", "cls_token", "mask_token"});
// Splits parameters that require grad into {no-decay group (wd 0), decay group (wd weight_decay)},
// in that order (as timm's param_groups_weight_decay); parameters without requires_grad are left out.
// Empty groups are kept so the group layout does not depend on the model.
std::vector<ParamGroup> param_groups_weight_decay(
    const NamedParams& named, double weight_decay,
    const std::vector<std::string>& no_decay_names = {"pos_embed", "cls_token", "mask_token"});

// What state_dict() returns and load_state_dict() takes: state tensors keyed "<slot>.<param key>",
// where the param key is the parameter's name when every parameter has a distinct name, else its flat
// index ("exp_avg.blocks.0.attn.qkv.weight" or "exp_avg.7"), plus JSON with the optimizer type,
// hyper-parameters, groups, parameter keys and shapes, and step counts.
struct OptimizerState {
  std::map<std::string, Tensor> tensors;
  nlohmann::json meta;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual void step() = 0;
  // Drops every parameter's gradient (the next backward starts from nothing).
  void zero_grad();

  void set_lr(double lr) { lr_ = lr; }
  double lr() const { return lr_; }
  int64_t step_count() const { return step_count_; }  // number of step() calls
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // Every parameter, groups in order (the "flat index" used in state keys and messages).
  std::vector<Tensor> params() const;
  size_t num_params() const { return flat_.size(); }
  // "parameter 7 'blocks.0.attn.qkv.weight' [768x256]" (name part only when known).
  std::string param_label(size_t flat_index) const;

  // The state tensors are the live buffers, not copies: serialize them before the next step().
  virtual OptimizerState state_dict() const = 0;
  // Restores hyper-parameters, step counts and state (copied into this optimizer's buffers). Throws,
  // naming the parameter and both shapes, when the saved state does not fit these parameters.
  virtual void load_state_dict(const OptimizerState& state) = 0;

 protected:
  Optimizer(std::vector<ParamGroup> groups, double lr, double default_weight_decay, const char* kind);
  struct FlatRef {
    size_t group, index;
  };
  const Tensor& param(size_t flat) const { return groups_[flat_[flat].group].params[flat_[flat].index]; }
  double group_weight_decay(size_t g) const { return groups_[g].weight_decay.value_or(default_weight_decay_); }
  std::string state_key(const char* slot, size_t flat) const;
  // Common meta (type, lr, groups, keys, shapes, step count); on load it is checked in full first,
  // then applied, so a failed load changes nothing.
  nlohmann::json base_meta() const;
  void check_base_meta(const nlohmann::json& meta) const;
  void check_base_meta_fields(const nlohmann::json& meta) const;
  void apply_base_meta(const nlohmann::json& meta);
  // The saved tensor for (slot, flat), checked against the parameter's shape; undefined if absent and !required.
  Tensor saved_slot(const OptimizerState& s, const char* slot, size_t flat, bool required) const;

  std::vector<ParamGroup> groups_;
  std::vector<FlatRef> flat_;
  std::vector<std::string> keys_;  // per flat index
  double lr_;
  double default_weight_decay_;
  int64_t step_count_ = 0;
  const char* kind_;
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // default for groups that do not set their own
};

// AdamW with decoupled weight decay and bias correction, as torch.optim.AdamW. Each parameter has its
// own step count, advanced only on steps where it has a gradient (a parameter without a gradient is
// skipped entirely, as in PyTorch). The update is the backend's fused multi-tensor kernel (a few launches
// for the whole model on a GPU); parameters must be contiguous F32 or F64 (gradients are made contiguous as
// needed).
class AdamW final : public Optimizer {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions opt = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opt = {});
  void step() override;
  // The step with gradient clipping decided on the parameters' device, with no host round trip:
  // grad_norm is grad_norm_tensor(params) of the same gradients. When max_norm > 0 and the norm
  // exceeds it, each gradient is used multiplied by max_norm / (norm + 1e-6), bitwise as
  // clip_grad_norm(params, max_norm) followed by step() (the gradients themselves are left unscaled).
  // A non-finite norm leaves every parameter and moment unchanged (the step counts still advance): the
  // caller reads the norm when it next syncs, and reports it. max_norm <= 0: no clipping, only that guard.
  void step(const Tensor& grad_norm, double max_norm);
  OptimizerState state_dict() const override;
  void load_state_dict(const OptimizerState& state) override;
  const AdamWOptions& options() const { return opt_; }
  int64_t param_step(size_t flat) const { return steps_[flat]; }
  const Tensor& exp_avg(size_t flat) const { return exp_avg_[flat]; }
  const Tensor& exp_avg_sq(size_t flat) const { return exp_avg_sq_[flat]; }

 private:
  void init_state();
  void update(const Tensor* grad_norm, double max_norm);
  AdamWOptions opt_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;
  std::vector<int64_t> steps_;
};

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double weight_decay = 0.0;  // L2: added to the gradient (wd * p) before momentum
  bool nesterov = false;
};

// SGD as torch.optim.SGD with dampening 0: g += wd*p; buf = g on a parameter's first step, else
// buf = momentum*buf + g; g = nesterov ? g + momentum*buf : buf; p -= lr*g.
class SGD final : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions opt = {});
  SGD(std::vector<ParamGroup> groups, SGDOptions opt = {});
  void step() override;
  OptimizerState state_dict() const override;
  void load_state_dict(const OptimizerState& state) override;
  const SGDOptions& options() const { return opt_; }

 private:
  SGDOptions opt_;
  std::vector<Tensor> momentum_buffer_;  // undefined until the parameter's first step with momentum
};

// MAE's per-step lr schedule: linear warm-up from 0 to base_lr over warmup_steps, then a half cosine
// from base_lr down to min_lr at total_steps; min_lr after that. `step` may be fractional.
struct CosineSchedule {
  double base_lr = 1e-3;
  double min_lr = 0.0;
  double warmup_steps = 0;
  double total_steps = 1;
  double lr(double step) const;
};

// Multiplies every defined gradient by `factor` in place.
void scale_grads(const std::vector<Tensor>& params, double factor);

// Clips the global L2 norm of the gradients to max_norm, as torch.nn.utils.clip_grad_norm_: the norm
// is accumulated in f64 in a fixed order (parameters in order; within a parameter, fixed blocks summed
// in order), so it is the same for any thread count. When norm > max_norm, gradients are scaled by
// max_norm / (norm + 1e-6). Returns the pre-clip norm. A non-finite norm leaves the gradients as they
// are and is returned for the caller to report; with error_if_nonfinite it throws instead, naming the
// first parameter whose gradient is not finite. Parameters without a gradient are skipped.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite = false);
// The global L2 norm alone (same accumulation as clip_grad_norm).
double grad_norm(const std::vector<Tensor>& params);
// The same norm as a 0-d f64 tensor on the gradients' device, computed there (no host sync on a GPU; on the
// CPU bitwise grad_norm). Gradients must share one device and one dtype (bf16 counts as f32). For
// AdamW::step(grad_norm, max_norm) and for logging without stalling the GPU.
Tensor grad_norm_tensor(const std::vector<Tensor>& params);

}  // namespace eng
