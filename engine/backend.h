// backend.h: the small, typed interface every device implements. A backend sees raw strided
// descriptors, never Tensors or autograd. Methods a device has not implemented throw a clear error.
// The methods are listed once, in backend_methods.inc; a backend class declares them all with
// backend_overrides.inc. To add a method: one line in backend_methods.inc plus each backend's definition.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace eng {

constexpr int kMaxDims = 8;

// A strided view of device memory. `data` already includes the tensor's offset.
struct TensorDesc {
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
  }
  bool contiguous() const {
    if (numel() == 0) return true;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
      if (shape[i] != 1 && strides[i] != s) return false;
      s *= shape[i];
    }
    return true;
  }
};

enum class UnaryOp {
  Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, Gelu, Erf, Abs, Square, Reciprocal,
  PowScalar,  // x^a
  AddScalar,  // x + a
  MulScalar,  // x * a
  Clamp,      // min(max(x, a), b)
  Sign,
};
struct UnaryParams {
  double a = 0, b = 0;
};

enum class BinaryOp {
  Add, Sub, Mul, Div, Pow, Maximum, Minimum,
  Gt, Lt, Ge, Le, Eq, Ne,  // 1 or 0 in the output dtype
  // backward helpers: out = f(a, b) where b is the incoming gradient
  GeluBackward,     // a = x
  ReluBackward,     // a = x
  TanhBackward,     // a = y = tanh(x)
  SigmoidBackward,  // a = y = sigmoid(x)
};

enum class ReduceOp { Sum, Max, Min };

// What a GEMM does to C after the product (backends that report supports_gemm_epilogue(e)):
//   Bias:     C[b][i][j] += bias[j]
//   BiasGelu: C[b][i][j] = gelu(C[b][i][j] + bias[j]) with the exact erf GELU (bias may be null: no add);
//             pre_gelu (when set) receives the values before the GELU, in C's layout (ldc, stride_c), for the
//             backward pass.
//   GeluGrad: C[b][i][j] *= gelu'(pre_gelu[b][i][j]) (pre_gelu read in C's layout): the backward of a BiasGelu
//             layer fused into the GEMM that produces the gradient of its output. No bias.
enum class GemmEpilogue : uint8_t { None, Bias, BiasGelu, GeluGrad };

// Row-major C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], op = transpose when the flag is set.
// A is m x k after op (stored k x m when trans_a), B is k x n after op.
// dtype BF16 (CUDA): A, B and C are bf16, products are accumulated in f32.
struct GemmArgs {
  DType dtype = DType::F32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  double alpha = 1, beta = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int64_t batch = 1;
  GemmEpilogue epilogue = GemmEpilogue::None;  // only where the backend supports it (see Backend)
  const void* bias = nullptr;                  // [n], C's dtype, shared by every batch item
  void* pre_gelu = nullptr;                    // BiasGelu only; may be null
};

// Element strides of the [batch, heads, tokens] dims of one attention operand (its last dim is contiguous).
struct RowStrides {
  int64_t b = 0, h = 0, t = 0;
};

// Fused scaled-dot-product attention on contiguous row-major tensors:
//   q [batch, heads, tq, head_dim], k [batch, heads, tk, head_dim], v [batch, heads, tk, v_dim]
//   out [batch, heads, tq, v_dim] = softmax(scale * q k^T) v
//   lse [batch, heads, tq] = log-sum-exp of each row of scale * q k^T (f32 for f32/bf16 inputs, f64 for f64),
//   written by the forward pass and read by the backward pass.
// Backward: dq, dk, dv (the shapes of q, k, v) from dout (the shape of out), q, k, v, out and lse.
struct AttentionArgs {
  DType dtype = DType::F32;
  int64_t batch = 0, heads = 0, tq = 0, tk = 0, head_dim = 0, v_dim = 0;
  double scale = 1.0;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  void* lse = nullptr;
  const void* dout = nullptr;  // backward only
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  // Optional layouts: element strides of the [batch, heads, tokens] dims (the last dim is contiguous) of q and dq,
  // k and dk, v and dv, out and dout. All zero (the default): contiguous as above. Set only for backends whose
  // supports_strided_attention() is true (then q, k, v can be views of a packed qkv projection and out can be
  // [batch, tokens, heads, v_dim], with no copies); lse is always contiguous.
  int64_t q_strides[3] = {0, 0, 0}, k_strides[3] = {0, 0, 0}, v_strides[3] = {0, 0, 0}, o_strides[3] = {0, 0, 0};

  // The strides in effect for q and dq, k and dk, v and dv, out and dout: the given ones, or those of a contiguous
  // [batch, heads, tokens, dim] tensor when all three are zero.
  RowStrides q_rows() const { return rows_in_effect(q_strides, tq, head_dim); }
  RowStrides k_rows() const { return rows_in_effect(k_strides, tk, head_dim); }
  RowStrides v_rows() const { return rows_in_effect(v_strides, tk, v_dim); }
  RowStrides o_rows() const { return rows_in_effect(o_strides, tq, v_dim); }
  bool strided() const {
    for (const int64_t* s : {q_strides, k_strides, v_strides, o_strides})
      if (s[0] != 0 || s[1] != 0 || s[2] != 0) return true;
    return false;
  }

 private:
  RowStrides rows_in_effect(const int64_t* s, int64_t tokens, int64_t dim) const {
    if (s[0] == 0 && s[1] == 0 && s[2] == 0) return {heads * tokens * dim, tokens * dim, dim};
    return {s[0], s[1], s[2]};
  }
};

struct AdamWArgs {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based, for bias correction
};

// One tensor of a multi-tensor AdamW update (adamw_update_multi): contiguous param, grad, m, v of n elements.
struct AdamWTensor {
  void* param = nullptr;
  const void* grad = nullptr;
  void* m = nullptr;
  void* v = nullptr;
  int64_t n = 0;
  AdamWArgs args{};
};

// Gradient clipping decided where the gradients live, with no host round trip. grad_norm: null (no clipping), or
// the backend's own f64 scalar holding the global gradient norm (global_norm's result). With it, when
// max_norm > 0 and coef = max_norm / (norm + 1e-6) is < 1, every gradient element is multiplied by coef rounded to
// the element type before the update (clip_grad_norm's rule and rounding, so the bits match clip + step), and a
// non-finite norm leaves every parameter and moment as it was (the caller reports it).
struct AdamWClip {
  const double* grad_norm = nullptr;
  double max_norm = 0;
};

// A contiguous tensor for global_norm and sum_squares.
struct SumSquaresTensor {
  const void* data = nullptr;
  int64_t n = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // One virtual method per line of backend_methods.inc (each documented there).
#define ENG_BACKEND_OP(name, params) virtual void name params;
#define ENG_BACKEND_QUERY(name, params, answer) virtual bool name params const;
#include "engine/backend_methods.inc"

 protected:
  [[noreturn]] void not_implemented(const char* op) const;
};

// Backend lookup (engine/backend_registry.cpp).
Backend& backend_for(Device d);
// True when this build has the CUDA backend and a GPU is visible.
bool cuda_available();
// Host <-> device transfer of contiguous bytes (either side may be the CPU).
void copy_bytes_between_devices(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);

// TF32 tensor-core math for f32 GEMMs on CUDA (inputs rounded to a 10-bit mantissa, f32 accumulation).
// Off by default, so f32 GEMMs on the GPU agree with the CPU to ~1e-6; no effect on the CPU backend.
namespace detail {
inline std::atomic<bool>& cuda_tf32_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
}  // namespace detail
inline void set_cuda_tf32(bool on) { detail::cuda_tf32_flag().store(on, std::memory_order_relaxed); }
inline bool cuda_tf32_enabled() { return detail::cuda_tf32_flag().load(std::memory_order_relaxed); }

}  // namespace eng
