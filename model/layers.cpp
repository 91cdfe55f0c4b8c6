// layers.cpp: Linear, LayerNorm, Attention, Mlp, Block, and the fixed position embedding.
#include "model/layers.h"

#include <cmath>

namespace model {

using eng::Shape;

Tensor trainable(Tensor t) {
  t.requires_grad_(true);
  return t;
}

Tensor in_dtype_of(const Tensor& p, const Tensor& x) {
  if (!p.defined() || x.dtype() != eng::DType::BF16 || p.dtype() == eng::DType::BF16) return p;
  return p.to(eng::DType::BF16);  // records a cast whose backward converts the gradient back to p's dtype
}

Tensor xavier_uniform(eng::Generator& g, int64_t fan_out, int64_t fan_in, const Shape& shape) {
  double a = std::sqrt(6.0 / double(fan_in + fan_out));
  return trainable(g.uniform(shape, -a, a));
}

Linear::Linear(eng::Generator& g, int64_t in, int64_t out, bool with_bias) {
  weight = xavier_uniform(g, out, in, {out, in});
  if (with_bias) bias = trainable(Tensor::zeros({out}));
}
void Linear::visit(const std::string& p, const Visitor& f) {
  f(p + "weight", weight);
  if (bias.defined()) f(p + "bias", bias);
}

LayerNorm::LayerNorm(int64_t dim, double e) : weight(trainable(Tensor::ones({dim}))), bias(trainable(Tensor::zeros({dim}))), eps(e) {}
void LayerNorm::visit(const std::string& p, const Visitor& f) {
  f(p + "weight", weight);
  f(p + "bias", bias);
}

Attention::Attention(eng::Generator& g, int64_t dim, int64_t h) : qkv(g, dim, 3 * dim), proj(g, dim, dim), heads(h) {
  ENG_CHECK(dim % h == 0, "attention: width {} is not divisible by {} heads", dim, h);
}
Tensor Attention::operator()(const Tensor& x) const {
  // [B, T, 3D] packed (q, k, v) x heads x D/H per token -> [B, T, D] with the heads side by side: one fused op
  // (engine attention_qkv), the same math as splitting into q, k, v views and merging the heads back.
  return proj(eng::attention_qkv(qkv(x), heads));
}
void Attention::visit(const std::string& p, const Visitor& f) {
  qkv.visit(p + "qkv.", f);
  proj.visit(p + "proj.", f);
}

Mlp::Mlp(eng::Generator& g, int64_t dim, int64_t hidden) : fc1(g, dim, hidden), fc2(g, hidden, dim) {}
void Mlp::visit(const std::string& p, const Visitor& f) {
  fc1.visit(p + "fc1.", f);
  fc2.visit(p + "fc2.", f);
}

Block::Block(eng::Generator& g, int64_t dim, int64_t heads, double mlp_ratio)
    : norm1(dim),
      norm2(dim),
      attn(g, dim, heads),
      mlp_(std::make_shared<Mlp>(g, dim, int64_t(double(dim) * mlp_ratio))) {}
Tensor Block::operator()(const Tensor& x) const {
  Tensor y = eng::add(x, attn(norm1(x)));
  return eng::add(y, (*mlp_)(norm2(y)));
}
void Block::visit(const std::string& p, const Visitor& f) {
  norm1.visit(p + "norm1.", f);
  attn.visit(p + "attn.", f);
  norm2.visit(p + "norm2.", f);
  mlp_->visit(p + "mlp.", f);
}
void Block::set_mlp(std::shared_ptr<MlpLayer> mlp) {
  ENG_CHECK(mlp != nullptr, "Block::set_mlp: mlp is null (pass a module implementing MlpLayer)");
  mlp_ = std::move(mlp);
}
Mlp& Block::dense_mlp() { return const_cast<Mlp&>(static_cast<const Block&>(*this).dense_mlp()); }
const Mlp& Block::dense_mlp() const {
  const Mlp* dense = dynamic_cast<const Mlp*>(mlp_.get());
  ENG_CHECK(dense != nullptr, "Block::dense_mlp: this block's MLP was replaced by set_mlp and is not a dense Mlp");
  return *dense;
}

Tensor embed_patches(const Tensor& imgs, const Tensor& weight, const Tensor& bias) {
  ENG_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3), "embed_patches: weight must be [D, C, p, p], got {}",
            eng::shape_str(weight.shape()));
  const int64_t D = weight.size(0), C = weight.size(1), p = weight.size(2);
  ENG_CHECK(imgs.dim() == 4 && imgs.size(1) == C && imgs.size(2) % p == 0 && imgs.size(3) % p == 0,
            "embed_patches: images must be [N, {}, H, W] with H and W divisible by {}, got {}", C, p,
            eng::shape_str(imgs.shape()));
  const int64_t N = imgs.size(0), gh = imgs.size(2) / p, gw = imgs.size(3) / p;
  Tensor patches = imgs.reshape({N, C, gh, p, gw, p}).permute({0, 2, 4, 1, 3, 5}).reshape({N, gh * gw, C * p * p});
  return eng::linear(patches, in_dtype_of(weight.reshape({D, -1}), patches), in_dtype_of(bias, patches));
}

Tensor encode_tokens(const Tensor& x, const Tensor& cls_token, const Tensor& cls_pos, const std::vector<Block>& blocks) {
  const int64_t N = x.size(0), D = x.size(2);
  Tensor cls = in_dtype_of(eng::add(cls_token, cls_pos), x).expand({N, 1, D});
  Tensor h = eng::cat({cls, x}, 1);
  for (const Block& b : blocks) h = b(h);
  return h;
}

std::map<std::string, Tensor> Module::state_dict() {
  std::map<std::string, Tensor> m;
  visit([&](const std::string& n, Tensor& t) { m[n] = t; });
  return m;
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> v;
  visit([&](const std::string& n, Tensor& t) {
    if (t.requires_grad()) v.emplace_back(n, t);
  });
  return v;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

namespace {

// A NaN or infinity in a weight read from a file, named here rather than later as a non-finite feature or loss. Only
// host tensors (what a file gives) are scanned; a model's own device tensors are whatever training made them.
void check_finite_weight(const Tensor& w, const std::string& file, const std::string& name) {
  if (!w.device().is_cpu() || !eng::is_floating(w.dtype()) || w.numel() == 0) return;
  const Tensor t = w.dtype() == eng::DType::BF16 ? w.to(eng::DType::F32) : w.contiguous();
  const int64_t n = t.numel();
  auto report = [&](int64_t i, double v) {
    ENG_FAIL("{}: weight '{}' holds a non-finite value ({}) at index {} of its {} values (shape {})", file, name,
             std::isnan(v) ? "NaN" : (v > 0 ? "+inf" : "-inf"), i, n, eng::shape_str(t.shape()));
  };
  if (t.dtype() == eng::DType::F64) {
    const double* p = static_cast<const double*>(t.raw_data());
    for (int64_t i = 0; i < n; i++)
      if (!std::isfinite(p[i])) report(i, p[i]);
  } else {
    const float* p = static_cast<const float*>(t.raw_data());
    for (int64_t i = 0; i < n; i++)
      if (!std::isfinite(p[i])) report(i, double(p[i]));
  }
}

}  // namespace

void load_tensors(const std::map<std::string, Tensor>& mine, const std::map<std::string, Tensor>& weights,
                  const std::string& file, const std::string& model_name) {
  for (const auto& [name, t] : mine) {
    auto it = weights.find(name);
    ENG_CHECK(it != weights.end(), "{}: tensor '{}' missing (is this a checkpoint of model {}?)", file, name, model_name);
    ENG_CHECK(it->second.shape() == t.shape(), "{}: tensor '{}' has shape {}, model {} expects {}", file, name,
              eng::shape_str(it->second.shape()), model_name, eng::shape_str(t.shape()));
    check_finite_weight(it->second, file, name);
  }
  eng::NoGradGuard ng;
  for (auto [name, t] : mine) t.copy_(weights.at(name));
}

Tensor sincos_pos_embed_2d(int64_t dim, int64_t grid, bool cls_token) {
  ENG_CHECK(dim % 4 == 0, "sin-cos position embedding needs a width divisible by 4, got {}", dim);
  int64_t rows = grid * grid + (cls_token ? 1 : 0);
  std::vector<double> v(static_cast<size_t>(rows * dim), 0.0);
  int64_t half = dim / 2, quarter = dim / 4;
  for (int64_t i = 0; i < grid; i++)
    for (int64_t j = 0; j < grid; j++) {
      double* row = &v[size_t(((cls_token ? 1 : 0) + i * grid + j) * dim)];
      // MAE meshes (w, h): channel half 0 encodes j, half 1 encodes i; within a half, sin then cos.
      double coord[2] = {double(j), double(i)};
      for (int h = 0; h < 2; h++)
        for (int64_t k = 0; k < quarter; k++) {
          double omega = 1.0 / std::pow(10000.0, double(k) / double(quarter));
          row[h * half + k] = std::sin(coord[h] * omega);
          row[h * half + quarter + k] = std::cos(coord[h] * omega);
        }
    }
  return Tensor::from_vector(v, {1, rows, dim}, eng::DType::F32);
}

}  // namespace model
