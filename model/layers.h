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
#include <map>
#include <memory>
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

// The seam for expert layers: what a block's MLP must be. Called on [B, T, D] -> [B, T, D], where row b of the
// batch holds the tokens of image b (so an expert layer can route whole images), and it lists its parameters through
// visit(prefix, f) under the prefix it is given ("blocks.3.mlp."). model/ knows only this interface; the dense Mlp
// below is the default. Per-batch side information an expert layer needs (for MoCE: the cluster id of each image)
// is not model/'s business: the module's owner sets it on the module before calling the model's forward.
struct MlpLayer {
  virtual ~MlpLayer() = default;
  virtual Tensor operator()(const Tensor& x) const = 0;
  virtual void visit(const std::string& prefix, const Visitor& f) = 0;
};

// The dense MLP of ViT/MAE: fc1, exact GELU, fc2 (one fused op).
struct Mlp : MlpLayer {
  Linear fc1, fc2;
  Mlp() = default;
  Mlp(eng::Generator& g, int64_t dim, int64_t hidden);
  Tensor operator()(const Tensor& x) const override {
    if (x.dtype() != eng::DType::BF16) return eng::mlp_gelu(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias);
    return eng::mlp_gelu(x, in_dtype_of(fc1.weight, x), in_dtype_of(fc1.bias, x), in_dtype_of(fc2.weight, x),
                         in_dtype_of(fc2.bias, x));
  }
  void visit(const std::string& prefix, const Visitor& f) override;
};

// Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)). The MLP is held through a shared pointer
// so that set_mlp can put any MlpLayer in the dense one's place. Copying a Block (and so a model holding blocks)
// shares its MLP module, as copying a Tensor shares its storage: the copy's norms and attention are separate
// handles onto the same storage, while its MLP is the very same object (reassigning a tensor of the copy's MLP
// through visit reassigns the original's too).
struct Block {
  LayerNorm norm1, norm2;
  Attention attn;
  Block() = default;
  Block(eng::Generator& g, int64_t dim, int64_t heads, double mlp_ratio);
  Tensor operator()(const Tensor& x) const;
  void visit(const std::string& prefix, const Visitor& f);

  const MlpLayer& mlp() const { return *mlp_; }
  MlpLayer& mlp() { return *mlp_; }
  const std::shared_ptr<MlpLayer>& mlp_ptr() const { return mlp_; }
  // Replaces the MLP (for an expert layer); its parameters then appear under "<block prefix>mlp.<its names>".
  void set_mlp(std::shared_ptr<MlpLayer> mlp);
  // The dense MLP; throws when set_mlp has replaced it by another kind of layer.
  Mlp& dense_mlp();
  const Mlp& dense_mlp() const;

 private:
  std::shared_ptr<MlpLayer> mlp_ = std::make_shared<Mlp>();
};

// The pieces of the ViT encoder that the MAE and the ViT classifier share (the same ops, so the same bits):
// Patch embedding: timm's conv with kernel = stride = p is patchify in (c, i, j) order + a linear layer over the
// flattened weight. imgs [N, C, H, W] (already in the compute dtype), weight [D, C, p, p], bias [D] -> [N, L, D],
// without position embeddings. The caller checks the image shape against its config.
Tensor embed_patches(const Tensor& imgs, const Tensor& weight, const Tensor& bias);
// The class token plus its position row (added in the parameters' dtype, then cast once to x's) in front of the
// patch tokens x [N, L, D] (which carry their position embeddings already), then every block in turn: [N, 1 + L, D]
// before the final norm.
Tensor encode_tokens(const Tensor& x, const Tensor& cls_token, const Tensor& cls_pos, const std::vector<Block>& blocks);

// What the models share: they list their tensors through visit(f), by full name; the state dict, the trainable
// parameters and their count follow from it.
class Module {
 public:
  virtual ~Module() = default;
  virtual void visit(const Visitor& f) = 0;
  std::map<std::string, Tensor> state_dict();  // every tensor visit lists, by name
  std::vector<std::pair<std::string, Tensor>> named_parameters();  // those that train (requires_grad), in visit order
  int64_t num_parameters();
};

// Copies weights[name] into each tensor of `mine` (no autograd), after checking that every name is in `weights` with
// the same shape and that no host weight holds a NaN or infinity ("<file>: weight 'x' holds a non-finite value (NaN)
// at index i ..."); errors name the file, the tensor and the model; nothing is copied unless all pass. Names in
// `weights` that `mine` lacks are ignored.
void load_tensors(const std::map<std::string, Tensor>& mine, const std::map<std::string, Tensor>& weights,
                  const std::string& file, const std::string& model_name);

// Fixed 2-D sine-cosine position embedding of MAE (util/pos_embed.py), [1 + grid*grid, dim] with a zero
// row for the class token. As in MAE, the first half of the channels encodes the column (w) coordinate.
Tensor sincos_pos_embed_2d(int64_t dim, int64_t grid, bool cls_token);

}  // namespace model
