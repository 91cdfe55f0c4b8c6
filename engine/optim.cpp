// optim.cpp: AdamW, SGD, the weight-decay split, the cosine schedule and gradient clipping.
#include "engine/optim.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

// ------------------------------------------------------------------------------ weight-decay split

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_no_decay_param(const std::string& name, const Tensor& p, const std::vector<std::string>& no_decay_names) {
  if (p.dim() <= 1 || ends_with(name, ".bias")) return true;
  for (const std::string& n : no_decay_names)
    if (!n.empty() && name.find(n) != std::string::npos) return true;
  return false;
}

std::vector<ParamGroup> param_groups_weight_decay(const NamedParams& named, double weight_decay,
                                                  const std::vector<std::string>& no_decay_names) {
  ParamGroup no_decay, decay;
  no_decay.weight_decay = 0.0;
  decay.weight_decay = weight_decay;
  for (const auto& [name, p] : named) {
    ENG_CHECK(p.defined(), "param_groups_weight_decay: parameter '{}' is undefined", name);
    if (!p.requires_grad()) continue;  // frozen (e.g. MAE's fixed sin-cos pos_embed)
    ParamGroup& g = is_no_decay_param(name, p, no_decay_names) ? no_decay : decay;
    g.params.push_back(p);
    g.names.push_back(name);
  }
  return {std::move(no_decay), std::move(decay)};
}

// ------------------------------------------------------------------------------ Optimizer base

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr, double default_weight_decay, const char* kind)
    : groups_(std::move(groups)), lr_(lr), default_weight_decay_(default_weight_decay), kind_(kind) {
  std::set<const TensorImpl*> seen;
  for (size_t g = 0; g < groups_.size(); g++) {
    const ParamGroup& grp = groups_[g];
    ENG_CHECK(grp.names.empty() || grp.names.size() == grp.params.size(),
              "{}: group {} has {} parameters but {} names (give one name per parameter, or none)", kind, g,
              grp.params.size(), grp.names.size());
    for (size_t i = 0; i < grp.params.size(); i++) {
      const Tensor& p = grp.params[i];
      size_t flat = flat_.size();
      std::string label = fmt::format("{}: parameter {}{}", kind, flat, grp.names.empty() ? "" : " '" + grp.names[i] + "'");
      ENG_CHECK(p.defined(), "{} is undefined", label);
      ENG_CHECK(p.is_leaf(), "{} is not a leaf tensor (optimize the leaves, not results of ops)", label);
      ENG_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64, "{} has dtype {}; optimizers take f32 or f64",
                label, dtype_name(p.dtype()));
      ENG_CHECK(p.is_contiguous(), "{} with shape {} is not contiguous", label, shape_str(p.shape()));
      ENG_CHECK(seen.insert(p.impl_ptr()).second, "{} appears more than once", label);
      flat_.push_back({g, i});
    }
  }
  // State keys: parameter names when all are given and distinct, else flat indices.
  std::set<std::string> names;
  bool use_names = true;
  for (const FlatRef& f : flat_) {
    const ParamGroup& grp = groups_[f.group];
    if (grp.names.empty() || grp.names[f.index].empty() || !names.insert(grp.names[f.index]).second) {
      use_names = false;
      break;
    }
  }
  for (size_t k = 0; k < flat_.size(); k++)
    keys_.push_back(use_names ? groups_[flat_[k].group].names[flat_[k].index] : std::to_string(k));
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (Tensor& p : g.params) p.zero_grad();
}

std::vector<Tensor> Optimizer::params() const {
  std::vector<Tensor> out;
  out.reserve(flat_.size());
  for (size_t k = 0; k < flat_.size(); k++) out.push_back(param(k));
  return out;
}

std::string Optimizer::param_label(size_t flat) const {
  const ParamGroup& grp = groups_[flat_[flat].group];
  std::string name = grp.names.empty() ? "" : " '" + grp.names[flat_[flat].index] + "'";
  return fmt::format("parameter {}{} {}", flat, name, shape_str(param(flat).shape()));
}

std::string Optimizer::state_key(const char* slot, size_t flat) const { return std::string(slot) + "." + keys_[flat]; }

nlohmann::json Optimizer::base_meta() const {
  nlohmann::json m;
  m["type"] = kind_;
  m["lr"] = lr_;
  m["step_count"] = step_count_;
  m["groups"] = nlohmann::json::array();
  for (const ParamGroup& g : groups_) {
    nlohmann::json jg;
    jg["num_params"] = g.params.size();
    jg["lr_scale"] = g.lr_scale;
    jg["weight_decay"] = g.weight_decay ? nlohmann::json(*g.weight_decay) : nlohmann::json(nullptr);
    m["groups"].push_back(jg);
  }
  m["params"] = nlohmann::json::array();
  for (size_t k = 0; k < flat_.size(); k++)
    m["params"].push_back({{"key", keys_[k]}, {"shape", param(k).shape()}});
  return m;
}

void Optimizer::check_base_meta(const nlohmann::json& meta) const {
  try {
    check_base_meta_fields(meta);
  } catch (const nlohmann::json::exception& e) {  // wrong JSON types: say so in one line
    ENG_FAIL("{} load_state_dict: malformed saved state: {}", kind_, e.what());
  }
}

void Optimizer::check_base_meta_fields(const nlohmann::json& meta) const {
  ENG_CHECK(meta.is_object() && meta.contains("type"), "{} load_state_dict: the state has no 'type' (not an optimizer state?)",
            kind_);
  std::string type = meta.at("type").get<std::string>();
  ENG_CHECK(type == kind_, "{} load_state_dict: the saved state is for a '{}' optimizer", kind_, type);
  for (const char* f : {"lr", "step_count", "groups", "params"})
    ENG_CHECK(meta.contains(f), "{} load_state_dict: field '{}' is missing from the saved state", kind_, f);
  const nlohmann::json& jgroups = meta.at("groups");
  ENG_CHECK(jgroups.size() == groups_.size(), "{} load_state_dict: the saved state has {} parameter groups, this optimizer has {}",
            kind_, jgroups.size(), groups_.size());
  for (size_t g = 0; g < groups_.size(); g++) {
    size_t n = jgroups.at(g).at("num_params").get<size_t>();
    ENG_CHECK(n == groups_[g].params.size(), "{} load_state_dict: saved group {} has {} parameters, this optimizer's has {}",
              kind_, g, n, groups_[g].params.size());
  }
  const nlohmann::json& jparams = meta.at("params");
  ENG_CHECK(jparams.size() == flat_.size(), "{} load_state_dict: the saved state has {} parameters, this optimizer has {}", kind_,
            jparams.size(), flat_.size());
  for (size_t k = 0; k < flat_.size(); k++) {
    std::string key = jparams.at(k).at("key").get<std::string>();
    Shape shape = jparams.at(k).at("shape").get<Shape>();
    ENG_CHECK(key == keys_[k], "{} load_state_dict: {}: the saved state has '{}' in this place", kind_, param_label(k), key);
    ENG_CHECK(shape == param(k).shape(), "{} load_state_dict: {}: the saved state has shape {}", kind_, param_label(k),
              shape_str(shape));
  }
  // Read (and drop) what apply_base_meta will read, so type errors surface here, before any change.
  (void)meta.at("lr").get<double>();
  (void)meta.at("step_count").get<int64_t>();
  for (size_t g = 0; g < groups_.size(); g++) {
    (void)jgroups.at(g).at("lr_scale").get<double>();
    const nlohmann::json& wd = jgroups.at(g).at("weight_decay");
    if (!wd.is_null()) (void)wd.get<double>();
  }
}

void Optimizer::apply_base_meta(const nlohmann::json& meta) {
  const nlohmann::json& jgroups = meta.at("groups");
  lr_ = meta.at("lr").get<double>();
  step_count_ = meta.at("step_count").get<int64_t>();
  for (size_t g = 0; g < groups_.size(); g++) {
    groups_[g].lr_scale = jgroups.at(g).at("lr_scale").get<double>();
    const nlohmann::json& wd = jgroups.at(g).at("weight_decay");
    groups_[g].weight_decay = wd.is_null() ? std::nullopt : std::optional<double>(wd.get<double>());
  }
}

Tensor Optimizer::saved_slot(const OptimizerState& s, const char* slot, size_t flat, bool required) const {
  std::string key = state_key(slot, flat);
  auto it = s.tensors.find(key);
  if (it == s.tensors.end()) {
    ENG_CHECK(!required, "{} load_state_dict: {}: state tensor '{}' is missing", kind_, param_label(flat), key);
    return Tensor();
  }
  const Tensor& t = it->second;
  ENG_CHECK(t.defined(), "{} load_state_dict: {}: state tensor '{}' is undefined", kind_, param_label(flat), key);
  ENG_CHECK(t.shape() == param(flat).shape(), "{} load_state_dict: {}: state tensor '{}' has shape {}", kind_,
            param_label(flat), key, shape_str(t.shape()));
  return t;
}

// ------------------------------------------------------------------------------ AdamW

static std::vector<ParamGroup> single_group(std::vector<Tensor> params) {
  ParamGroup g;
  g.params = std::move(params);
  return {std::move(g)};
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions opt) : AdamW(single_group(std::move(params)), opt) {}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opt)
    : Optimizer(std::move(groups), opt.lr, opt.weight_decay, "adamw"), opt_(opt) {
  ENG_CHECK(opt.beta1 >= 0 && opt.beta1 < 1 && opt.beta2 >= 0 && opt.beta2 < 1,
            "adamw: betas must be in [0, 1), got ({}, {})", opt.beta1, opt.beta2);
  ENG_CHECK(opt.eps >= 0, "adamw: eps must be >= 0, got {}", opt.eps);
  init_state();
}

void AdamW::init_state() {
  exp_avg_.clear();
  exp_avg_sq_.clear();
  for (size_t k = 0; k < num_params(); k++) {
    const Tensor& p = param(k);
    exp_avg_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
  }
  steps_.assign(num_params(), 0);
}

void AdamW::step() { update(nullptr, 0); }

void AdamW::step(const Tensor& grad_norm, double max_norm) {
  ENG_CHECK(grad_norm.defined() && grad_norm.numel() == 1 && grad_norm.dtype() == DType::F64 && grad_norm.is_contiguous(),
            "adamw step: the gradient norm must be grad_norm_tensor()'s one-element f64 tensor, got {}",
            grad_norm.defined() ? grad_norm.str() : std::string("an undefined tensor"));
  update(&grad_norm, max_norm);
}

// One adamw_update_multi per (device, dtype), in the order the parameters come; the per-element math is
// adamw_update's, so this is bitwise the per-tensor loop.
void AdamW::update(const Tensor* grad_norm, double max_norm) {
  NoGradGuard no_grad;
  step_count_++;
  struct Batch {
    Device device;
    DType dtype;
    std::vector<AdamWTensor> tensors;
  };
  std::vector<Batch> batches;
  std::vector<Tensor> keep;  // converted gradients stay alive until their update is queued
  for (size_t k = 0; k < num_params(); k++) {
    const Tensor& p = param(k);
    Tensor g = p.grad();
    if (!g.defined()) continue;
    ENG_CHECK(g.shape() == p.shape() && g.device() == p.device(), "adamw: {}: gradient is {}", param_label(k), g.str());
    if (grad_norm)
      ENG_CHECK(grad_norm->device() == p.device(), "adamw step: {} is on {} but the gradient norm is on {}",
                param_label(k), p.device().str(), grad_norm->device().str());
    g = g.to(p.dtype()).contiguous();
    keep.push_back(g);
    size_t group = flat_[k].group;
    AdamWTensor t;
    t.param = p.raw_data();
    t.grad = g.raw_data();
    t.m = exp_avg_[k].raw_data();
    t.v = exp_avg_sq_[k].raw_data();
    t.n = p.numel();
    t.args.lr = lr_ * groups_[group].lr_scale;
    t.args.beta1 = opt_.beta1;
    t.args.beta2 = opt_.beta2;
    t.args.eps = opt_.eps;
    t.args.weight_decay = group_weight_decay(group);
    t.args.step = ++steps_[k];
    auto it = std::find_if(batches.begin(), batches.end(),
                           [&](const Batch& b) { return b.device == p.device() && b.dtype == p.dtype(); });
    if (it == batches.end()) {
      batches.push_back(Batch{p.device(), p.dtype(), {}});
      it = batches.end() - 1;
    }
    it->tensors.push_back(t);
  }
  AdamWClip clip;
  if (grad_norm) {
    clip.grad_norm = static_cast<const double*>(grad_norm->raw_data());
    clip.max_norm = max_norm;
  }
  for (const Batch& b : batches) backend_for(b.device).adamw_update_multi(b.dtype, b.tensors, clip);
}

OptimizerState AdamW::state_dict() const {
  OptimizerState s;
  s.meta = base_meta();
  s.meta["beta1"] = opt_.beta1;
  s.meta["beta2"] = opt_.beta2;
  s.meta["eps"] = opt_.eps;
  s.meta["weight_decay"] = opt_.weight_decay;
  s.meta["param_steps"] = steps_;
  for (size_t k = 0; k < num_params(); k++) {
    s.tensors[state_key("exp_avg", k)] = exp_avg_[k];
    s.tensors[state_key("exp_avg_sq", k)] = exp_avg_sq_[k];
  }
  return s;
}

void AdamW::load_state_dict(const OptimizerState& s) {
  // Check and parse everything before changing anything, so a failed load leaves the optimizer as it was.
  check_base_meta(s.meta);
  AdamWOptions o;
  std::vector<int64_t> steps;
  try {
    for (const char* f : {"beta1", "beta2", "eps", "weight_decay", "param_steps"})
      ENG_CHECK(s.meta.contains(f), "adamw load_state_dict: field '{}' is missing from the saved state", f);
    o.lr = s.meta.at("lr").get<double>();
    o.beta1 = s.meta.at("beta1").get<double>();
    o.beta2 = s.meta.at("beta2").get<double>();
    o.eps = s.meta.at("eps").get<double>();
    o.weight_decay = s.meta.at("weight_decay").get<double>();
    steps = s.meta.at("param_steps").get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    ENG_FAIL("adamw load_state_dict: malformed saved state: {}", e.what());
  }
  ENG_CHECK(steps.size() == num_params(), "adamw load_state_dict: 'param_steps' has {} entries for {} parameters",
            steps.size(), num_params());
  std::vector<Tensor> m(num_params()), v(num_params());
  for (size_t k = 0; k < num_params(); k++) {
    m[k] = saved_slot(s, "exp_avg", k, true);
    v[k] = saved_slot(s, "exp_avg_sq", k, true);
  }
  apply_base_meta(s.meta);
  opt_ = o;
  default_weight_decay_ = o.weight_decay;
  steps_ = steps;
  NoGradGuard no_grad;
  for (size_t k = 0; k < num_params(); k++) {
    exp_avg_[k].copy_(m[k]);
    exp_avg_sq_[k].copy_(v[k]);
  }
}

// ------------------------------------------------------------------------------ SGD

SGD::SGD(std::vector<Tensor> params, SGDOptions opt) : SGD(single_group(std::move(params)), opt) {}

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions opt)
    : Optimizer(std::move(groups), opt.lr, opt.weight_decay, "sgd"), opt_(opt) {
  ENG_CHECK(opt.momentum >= 0, "sgd: momentum must be >= 0, got {}", opt.momentum);
  ENG_CHECK(!opt.nesterov || opt.momentum > 0, "sgd: nesterov needs momentum > 0");
  momentum_buffer_.resize(num_params());
}

void SGD::step() {
  NoGradGuard no_grad;
  step_count_++;
  for (size_t k = 0; k < num_params(); k++) {
    Tensor p = param(k);
    Tensor g = p.grad();
    if (!g.defined()) continue;
    ENG_CHECK(g.shape() == p.shape() && g.device() == p.device(), "sgd: {}: gradient is {}", param_label(k), g.str());
    g = g.to(p.dtype());
    size_t group = flat_[k].group;
    double wd = group_weight_decay(group);
    double lr = lr_ * groups_[group].lr_scale;
    if (wd != 0) g = add(g, mul(p, wd));
    if (opt_.momentum != 0) {
      Tensor& buf = momentum_buffer_[k];
      if (!buf.defined())
        buf = g.clone();
      else
        buf.copy_(add(mul(buf, opt_.momentum), g));
      g = opt_.nesterov ? add(g, mul(buf, opt_.momentum)) : buf;
    }
    p.copy_(add(p, mul(g, -lr)));
  }
}

OptimizerState SGD::state_dict() const {
  OptimizerState s;
  s.meta = base_meta();
  s.meta["momentum"] = opt_.momentum;
  s.meta["weight_decay"] = opt_.weight_decay;
  s.meta["nesterov"] = opt_.nesterov;
  for (size_t k = 0; k < num_params(); k++)
    if (momentum_buffer_[k].defined()) s.tensors[state_key("momentum_buffer", k)] = momentum_buffer_[k];
  return s;
}

void SGD::load_state_dict(const OptimizerState& s) {
  check_base_meta(s.meta);
  SGDOptions o;
  try {
    for (const char* f : {"momentum", "weight_decay", "nesterov"})
      ENG_CHECK(s.meta.contains(f), "sgd load_state_dict: field '{}' is missing from the saved state", f);
    o.lr = s.meta.at("lr").get<double>();
    o.momentum = s.meta.at("momentum").get<double>();
    o.weight_decay = s.meta.at("weight_decay").get<double>();
    o.nesterov = s.meta.at("nesterov").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    ENG_FAIL("sgd load_state_dict: malformed saved state: {}", e.what());
  }
  std::vector<Tensor> bufs(num_params());
  for (size_t k = 0; k < num_params(); k++) bufs[k] = saved_slot(s, "momentum_buffer", k, false);
  apply_base_meta(s.meta);
  opt_ = o;
  default_weight_decay_ = o.weight_decay;
  NoGradGuard no_grad;
  for (size_t k = 0; k < num_params(); k++) {
    const Tensor& p = param(k);
    if (!bufs[k].defined()) {
      momentum_buffer_[k] = Tensor();
      continue;
    }
    momentum_buffer_[k] = Tensor::empty(p.shape(), p.dtype(), p.device());
    momentum_buffer_[k].copy_(bufs[k]);
  }
}

// ------------------------------------------------------------------------------ schedule

double CosineSchedule::lr(double step) const {
  ENG_CHECK(warmup_steps >= 0 && total_steps >= warmup_steps,
            "CosineSchedule: need 0 <= warmup_steps <= total_steps, got warmup {} total {}", warmup_steps, total_steps);
  if (step < warmup_steps) return base_lr * step / warmup_steps;
  if (step >= total_steps) return min_lr;
  const double pi = 3.14159265358979323846;
  double progress = (step - warmup_steps) / (total_steps - warmup_steps);
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(pi * progress));
}

// ------------------------------------------------------------------------------ gradient norm

// Each gradient's f64 sum of squares by its device's backend (f32 and f64 as they are, bf16 widened to f32, which is
// exact): the per-tensor sums global_norm adds, so the CPU's norm below is global_norm's, bit for bit.
static std::vector<double> per_param_sum_squares(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  std::vector<double> sums(params.size(), 0.0);
  for (size_t k = 0; k < params.size(); k++) {
    ENG_CHECK(params[k].defined(), "grad norm: parameter {} is undefined", k);
    Tensor g = params[k].grad();
    if (!g.defined()) continue;
    if (g.dtype() != DType::F32 && g.dtype() != DType::F64) g = g.to(DType::F32);
    g = g.contiguous();
    Tensor sum = Tensor::empty({}, DType::F64, g.device());
    backend_for(g.device()).sum_squares(g.dtype(), {{g.raw_data(), g.numel()}}, static_cast<double*>(sum.raw_data()));
    sums[k] = sum.item();
  }
  return sums;
}

// Off the CPU, the norm comes from the device's global_norm with one read-back instead of one per parameter.
static bool any_grad_off_cpu(const std::vector<Tensor>& params) {
  for (const Tensor& p : params)
    if (p.defined() && p.grad().defined() && !p.grad().device().is_cpu()) return true;
  return false;
}

double grad_norm(const std::vector<Tensor>& params) {
  if (any_grad_off_cpu(params)) return grad_norm_tensor(params).item();
  double total = 0;
  for (double s : per_param_sum_squares(params)) total += s;
  return std::sqrt(total);
}

void scale_grads(const std::vector<Tensor>& params, double factor) {
  NoGradGuard no_grad;
  for (const Tensor& p : params) {
    Tensor g = p.defined() ? p.grad() : Tensor();
    if (!g.defined()) continue;
    if (g.is_contiguous() && (g.dtype() == DType::F32 || g.dtype() == DType::F64)) {
      // In place, in the gradient's dtype, as PyTorch's grad.mul_(coef): coef is rounded to the dtype first.
      const TensorDesc d = desc_of(g);
      backend_for(g.device()).unary(UnaryOp::MulScalar, d, d, {factor, 0});
    } else {
      g.copy_(mul(g, factor));
    }
  }
}

Tensor grad_norm_tensor(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  std::optional<Device> device;
  for (size_t k = 0; k < params.size(); k++) {
    ENG_CHECK(params[k].defined(), "grad norm: parameter {} is undefined", k);
    Tensor g = params[k].grad();
    if (!g.defined()) continue;
    if (g.dtype() != DType::F32 && g.dtype() != DType::F64) g = g.to(DType::F32);  // bf16: exact in f32
    ENG_CHECK(!device || *device == g.device(), "grad norm: parameter {} has its gradient on {}, the others on {}", k,
              g.device().str(), device->str());
    ENG_CHECK(grads.empty() || grads[0].dtype() == g.dtype(),
              "grad norm: parameter {} has an {} gradient, the others {}: one dtype is needed", k,
              dtype_name(g.dtype()), dtype_name(grads[0].dtype()));
    device = g.device();
    grads.push_back(g.contiguous());
  }
  Tensor norm = Tensor::zeros({}, DType::F64, device.value_or(Device::cpu()));
  if (grads.empty()) return norm;
  std::vector<SumSquaresTensor> list;
  for (const Tensor& g : grads) list.push_back({g.raw_data(), g.numel()});
  backend_for(*device).global_norm(grads[0].dtype(), list, static_cast<double*>(norm.raw_data()));
  return norm;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, bool error_if_nonfinite) {
  ENG_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  const double norm = grad_norm(params);
  if (!std::isfinite(norm)) {
    if (error_if_nonfinite) {
      const std::vector<double> sums = per_param_sum_squares(params);
      for (size_t k = 0; k < sums.size(); k++)
        ENG_CHECK(std::isfinite(sums[k]), "clip_grad_norm: the gradient of parameter {} {} is not finite (norm {})", k,
                  shape_str(params[k].shape()), std::sqrt(sums[k]));
      ENG_FAIL("clip_grad_norm: the total gradient norm is not finite ({})", norm);
    }
    return norm;  // gradients untouched: the caller reports and skips the step
  }
  double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) scale_grads(params, coef);
  return norm;
}

}  // namespace eng
