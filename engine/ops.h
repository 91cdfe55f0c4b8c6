// ops.h: every differentiable op of the engine. Each family lives in engine/ops/<family>.cpp with
// forward and backward side by side; kernels come from the tensor's device backend (engine/backend.h).
#pragma once
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/tensor.h"

namespace eng {

struct ValuesIndices {
  Tensor values;
  Tensor indices;  // i64
};

// ---- elementwise (engine/ops/elementwise.cpp); binary ops broadcast numpy-style ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);  // a > 0 where b's gradient is needed
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor pow(const Tensor& a, double exponent);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // exact erf form: x * Phi(x)
Tensor erf(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor square(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
// comparisons: no gradient; result has a's dtype, 1 where true
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // cond nonzero -> a
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);  // mask nonzero -> value

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }

// Sums `g` down to `shape` (the reverse of broadcasting); used by backward functions.
Tensor sum_to(const Tensor& g, const Shape& shape);
// Shape two operands broadcast to; throws naming both shapes when they do not.
Shape broadcast_shapes(const Shape& a, const Shape& b);

// ---- reductions (engine/ops/reduce.cpp); an empty dims list means all dims ----
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor var(const Tensor& x, std::vector<int64_t> dims = {}, bool unbiased = true, bool keepdim = false);
Tensor std(const Tensor& x, std::vector<int64_t> dims = {}, bool unbiased = true, bool keepdim = false);
Tensor amax(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);  // gradient split among ties
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);  // gradient to the first maximum
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

// ---- linear algebra (engine/ops/linalg.cpp) ----
// matmul: 1-D and n-D like numpy; batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
// linear: x[..., in] @ w[out, in]^T + b[out] (b may be undefined). Where the backend has GEMM epilogues the bias
// is added inside the GEMM, and the backward pass is two GEMMs and a column sum.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
// gelu(linear(x, w, b)) with the GELU in the GEMM's epilogue where the backend can (its input is kept for backward).
Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
// A transformer MLP, linear(linear_gelu(x, w1, b1), w2, b2), whose backward also puts the GELU's gradient in a GEMM
// epilogue (that of the GEMM making fc2's input gradient) where the backend can; otherwise exactly that composition.
Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2);

// ---- neural-network ops (engine/ops/nn.cpp) ----
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps = 1e-5);  // over the last dim
Tensor l2_normalize(const Tensor& x, int64_t dim = -1, double eps = 1e-12);  // x / max(||x||, eps)
// logits [N, C], targets i64 [N]; mean over N. label_smoothing as in PyTorch.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing = 0.0);
Tensor mse_loss(const Tensor& a, const Tensor& b);  // mean of squared differences
// q [B, H, Tq, D], k/v [B, H, Tk, D]: softmax(q k^T * scale) v; scale <= 0 means 1/sqrt(D). A fused kernel (no
// Tq x Tk matrix saved; the backward pass recomputes it from the row log-sum-exp) where the backend has one.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale = 0.0);
// Multi-head self-attention on a packed projection (timm's layout): qkv [B, T, 3 * D] holds q, k, v, each as
// heads x D / heads, per token; returns [B, T, D] with the heads side by side per token. The same as splitting
// qkv into q, k, v of [B, heads, T, D / heads], attention(q, k, v, scale), and merging the heads back, with
// one copy per operand instead of chains of views and their zero-filled gradients.
Tensor attention_qkv(const Tensor& qkv, int64_t heads, double scale = 0.0);
// Inverted dropout with a Philox mask keyed by (seed, stream, offset): identical on any device and thread count.
Tensor dropout(const Tensor& x, double p, bool training, uint64_t seed, uint64_t stream, uint64_t offset);

// ---- indexing and joining (engine/ops/index.cpp); index tensors are i64 ----
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);  // out = x + scatter(src)
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor embedding(const Tensor& weight, const Tensor& ids);  // weight[V, D], ids any shape -> ids.shape + [D]
ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim = -1, bool largest = true);  // sorted
ValuesIndices sort(const Tensor& x, int64_t dim = -1, bool descending = false);      // stable
Tensor argsort(const Tensor& x, int64_t dim = -1, bool descending = false);
Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);  // views
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);      // views

// ---- routing for expert layers (engine/ops/routing.cpp); index tensors are i64 ----
// Inclusive prefix sum along dim (f32, f64; i64 without gradient, e.g. counts -> offsets), summed in order along
// the dim: the same bits for any thread count. Backward: the reverse cumsum of the gradient.
Tensor cumsum(const Tensor& x, int64_t dim);
// index (i64, any shape) -> index.shape + [num_classes] in `dtype`, 1 at the index; no gradient.
Tensor one_hot(const Tensor& index, int64_t num_classes, DType dtype = DType::F32);
// index (i64, 1-D) -> i64 counts [num_bins]; no gradient.
Tensor bincount(const Tensor& index, int64_t num_bins);
// The expert layer's GEMM. The rows of x [R, in] come sorted by group: consecutive groups of group_sizes[e] rows
// (sum R, zeros allowed) are multiplied by their own weight, nn.Linear's way: y_rows(e) = x_rows(e) w[e]^T + b[e],
// with w [E, out, in] and the optional bias b [E, out]; y is [R, out]. The sizes are on the host because the GEMM
// calls need them there (cuBLAS's grouped GEMM takes host-side sizes): MoE dispatch reads its counts back once per
// layer for this. Backward: dx (grouped, w not transposed), dw[e] = dy_e^T x_e, db[e] = column sums of dy_e.
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const std::vector<int64_t>& group_sizes,
                      const Tensor& b = Tensor());
// The expert MLP on rows sorted by group: grouped_matmul(gelu(grouped_matmul(x, w1, sizes, b1)), w2, sizes, b2), w1
// [E, hidden, in], w2 [E, out, hidden], b1 [E, hidden], b2 [E, out] (biases optional). On the CPU the bias and the
// exact GELU run in fc1's GEMM epilogue and the GELU's backward in the epilogue of the GEMM making its input's
// gradient (mlp_gelu's scheme, one grouped call per GEMM); elsewhere it is that composition.
Tensor grouped_mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                        const std::vector<int64_t>& group_sizes);
// Row blocks of x (its dim 0) in another order, each times its own factor: y[i] = scale[i] * x[perm[i]], perm (i64
// [n]) a permutation of [0, n = x.size(0)), scale [n] optional (x's dtype; undefined: factor 1). An expert layer's
// sort of whole units by expert and its inverse with the gate values. Backward: dx[perm[i]] = scale[i] * dy[i] (one
// pass, the permutation's inverse), dscale[i] = <dy[i], x[perm[i]]>. On the CPU its own kernels (perm checked to be a
// permutation); elsewhere the composition mul(index_select(x, 0, perm), scale), which takes any in-range perm.
Tensor permute_rows(const Tensor& x, const Tensor& perm, const Tensor& scale = Tensor());

// ---- helpers for op implementations ----
struct TensorDesc;
TensorDesc desc_of(const Tensor& t);  // checks rank <= kMaxDims
void check_same_device(const Tensor& a, const Tensor& b, const char* op);

}  // namespace eng
