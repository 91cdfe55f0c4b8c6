// layers.h: the building blocks of a ViT, with timm/MAE parameter names.
//
// A layer holds its parameters as Tensors and lists them through visit(prefix, f), which is how a model
// builds its state dict ("blocks.3.attn.qkv.weight"), hands parameters to the optimizer, and loads weights.
//
// Mixed precision: a layer computes in the dtype of its input. Given bf16 activations (CUDA), it uses bf16 copies
// of its f32 master parameters, made by the differentiable cast Tensor::to(DType), so their gradients come back
// into the f32 parameters as f32. An f32 input uses the parameters as they are: no cast, no copy.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"

namespace model {

using eng::Tensor;
using Visitor = std::function<void(const std::string& name, Tensor& t)>;

// Initialisers (MAE's _init_weights): xavier-uniform weights, zero biases, unit norms, N(0, std) tokens.
Tensor xavier_uniform(eng::Generator& g, int64_t fan_out, int64_t fan_in, const eng::Shape& shape);
Tensor trainable(Tensor t);  // marks a fresh tensor as a parameter
// A parameter as the input `x` needs it: a differentiable bf16 copy when x is bf16 and p is not, else p itself
// (an undefined p stays undefined).
Tensor in_dtype_of(const Tensor& p, const Tensor& x);

struct Linear {
  Tensor weight, bias;  // [out, in], [out]
  Linear() = default;
  Linear(eng::Generator& g, int64_t in, int64_t out, bool with_bias = true);
  Tensor operator()(const Tensor& x) const {
    if (x.dtype() != eng::DType::BF16) return eng::linear(x, weight, bias);
    return eng::linear(x, in_dtype_of(weight, x), in_dtype_of(bias, x));
  }
  void visit(const std::string& prefix, const Visitor& f);
};

// Over the last dim. bf16 input: statistics and arithmetic in f32 (the CUDA kernel), output rounded once to bf16.
struct LayerNorm {
  Tensor weight, bias;
  double eps = 1e-6;
  LayerNorm() = default;
  explicit LayerNorm(int64_t dim, double eps = 1e-6);
  Tensor operator()(const Tensor& x) const {
    if (x.dtype() != eng::DType::BF16) return eng::layer_norm(x, weight, bias, eps);
    return eng::layer_norm(x, in_dtype_of(weight, x), in_dtype_of(bias, x), eps);
  }
  void visit(const std::string& prefix, const Visitor& f);
};

struct Attention {
  Linear qkv, proj;
  int64_t heads = 1;
  Attention() = default;
  Attention(eng::Generator& g, int64_t dim, int64_t heads);
  Tensor operator()(const Tensor& x) const;  // [B, T, D] -> [B, T, D]
  void visit(const std::string& prefix, const Visitor& f);
};

struct Mlp {
  Linear fc1, fc2;
  Mlp() = default;
  Mlp(eng::Generator& g, int64_t dim, int64_t hidden);
  Tensor operator()(const Tensor& x) const {
    if (x.dtype() != eng::DType::BF16) return eng::mlp_gelu(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias);
    return eng::mlp_gelu(x, in_dtype_of(fc1.weight, x), in_dtype_of(fc1.bias, x), in_dtype_of(fc2.weight, x),
                         in_dtype_of(fc2.bias, x));
  }
  void visit(const std::string& prefix, const Visitor& f);
};

// Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)).
struct Block {
  LayerNorm norm1, norm2;
  Attention attn;
  Mlp mlp;
  Block() = default;
  Block(eng::Generator& g, int64_t dim, int64_t heads, double mlp_ratio);
  Tensor operator()(const Tensor& x) const;
  void visit(const std::string& prefix, const Visitor& f);
};

// Fixed 2-D sine-cosine position embedding of MAE (util/pos_embed.py), [1 + grid*grid, dim] with a zero
// row for the class token. As in MAE, the first half of the channels encodes the column (w) coordinate.
Tensor sincos_pos_embed_2d(int64_t dim, int64_t grid, bool cls_token);

}  // namespace model
