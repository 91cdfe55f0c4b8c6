// nn.cpp: neural-network ops: softmax, log_softmax, layer_norm, l2_normalize, cross_entropy, mse_loss,
// attention and dropout. softmax and layer_norm have their own kernels (backend softmax_* / layer_norm_*);
// the rest are compositions of differentiable ops, so their gradients come from those ops.
#include <cmath>
#include <limits>

#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

namespace {

void check_float(const Tensor& x, const char* op) {
  ENG_CHECK(is_floating(x.dtype()), "{}: needs a floating tensor, got {}", op, dtype_name(x.dtype()));
}

// y = softmax(scale * x) (or its log) over the last dim of a contiguous tensor.
Tensor softmax_last_dim(const Tensor& xc, double scale, bool log, const char* name) {
  const int64_t cols = xc.size(-1);
  const int64_t rows = cols ? xc.numel() / cols : 0;
  Tensor out = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
  if (out.numel()) backend_for(xc.device()).softmax_forward(xc.dtype(), out.raw_data(), xc.raw_data(), rows, cols, scale, log);
  if (!any_requires_grad({&xc})) return out;
  Tensor y = out.detach();
  return record(name, out, {xc}, [y, rows, cols, scale, log](const Tensor& g) {
    Tensor gc = g.contiguous();
    Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
    if (dx.numel())
      backend_for(y.device()).softmax_backward(y.dtype(), dx.raw_data(), y.raw_data(), gc.raw_data(), rows, cols, scale, log);
    return std::vector<Tensor>{dx};
  });
}

// softmax / log_softmax of scale * x along any dim: a dim other than the last is moved last and back.
Tensor softmax_any_dim(const Tensor& x, int64_t dim, double scale, bool log, const char* name) {
  check_float(x, name);
  if (x.dim() == 0) return softmax_any_dim(x.reshape({1}), 0, scale, log, name).reshape({});
  dim = wrap_dim(dim, x.dim(), name);
  const int64_t last = x.dim() - 1;
  if (dim == last) return softmax_last_dim(x.contiguous(), scale, log, name);
  Tensor y = softmax_last_dim(x.transpose(dim, last).contiguous(), scale, log, name);
  return y.transpose(dim, last).contiguous();
}

void check_param(const Tensor& p, const Tensor& x, int64_t cols, const char* what) {
  if (!p.defined()) return;
  ENG_CHECK(p.dim() == 1 && p.size(0) == cols, "layer_norm: {} must have shape [{}] (the last dim of input {}), got {}",
            what, cols, shape_str(x.shape()), shape_str(p.shape()));
  ENG_CHECK(p.dtype() == x.dtype(), "layer_norm: {} is {} but the input is {}", what, dtype_name(p.dtype()),
            dtype_name(x.dtype()));
  check_same_device(p, x, "layer_norm");
}

// Per-row statistics (the log-sum-exp of fused attention, layer norm's mean and rstd) are f64 for f64 inputs and
// f32 otherwise: bf16 activations keep f32 statistics (mixed precision), so a backward pass recomputes x_hat and
// the probabilities from f32 values, not from a second bf16 rounding.
DType stats_dtype(DType dt) { return dt == DType::F64 ? DType::F64 : DType::F32; }
DType lse_dtype(DType dt) { return stats_dtype(dt); }

// Arguments of the backend's fused attention for contiguous q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv].
AttentionArgs attention_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                             double scale) {
  AttentionArgs a;
  a.dtype = q.dtype();
  a.batch = q.size(0);
  a.heads = q.size(1);
  a.tq = q.size(2);
  a.tk = k.size(2);
  a.head_dim = q.size(3);
  a.v_dim = v.size(3);
  a.scale = scale;
  a.q = q.raw_data();
  a.k = k.raw_data();
  a.v = v.raw_data();
  a.out = out.raw_data();
  a.lse = lse.raw_data();
  return a;
}

// The backend's fused attention: no Tq x Tk matrix is kept; lse (per query row) lets the backward pass
// recompute the probabilities.
Tensor fused_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double scale) {
  Tensor q = q_in.detach().contiguous(), k = k_in.detach().contiguous(), v = v_in.detach().contiguous();
  const DType dt = q.dtype();
  const Device dev = q.device();
  Tensor out = Tensor::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, dt, dev);
  Tensor lse = Tensor::empty({q.size(0), q.size(1), q.size(2)}, lse_dtype(dt), dev);
  Backend& be = backend_for(dev);
  if (out.numel()) {
    if (k.size(2) == 0) {
      out.fill_(std::nan(""));  // softmax over no keys
      lse.fill_(-INFINITY);
    } else {
      be.attention_forward(attention_args(q, k, v, out, lse, scale));
    }
  }
  if (!any_requires_grad({&q_in, &k_in, &v_in})) return out;
  const bool gq = q_in.requires_grad(), gk = k_in.requires_grad(), gv = v_in.requires_grad();
  Tensor o = out.detach();
  return record("attention", out, {q_in, k_in, v_in}, [=](const Tensor& g) {
    // The kernel writes every element of dq, dk, dv; with no query or no key the gradients are zero.
    const bool empty = g.numel() == 0 || k.size(2) == 0;
    auto grad_buffer = [&](const Tensor& like) {
      return empty ? Tensor::zeros(like.shape(), dt, dev) : Tensor::empty(like.shape(), dt, dev);
    };
    Tensor dq = grad_buffer(q), dk = grad_buffer(k), dv = grad_buffer(v);
    if (!empty) {
      Tensor gc = g.contiguous();
      AttentionArgs a = attention_args(q, k, v, o, lse, scale);
      a.dout = gc.raw_data();
      a.dq = dq.raw_data();
      a.dk = dk.raw_data();
      a.dv = dv.raw_data();
      backend_for(dev).attention_backward(a);
    }
    return std::vector<Tensor>{gq ? dq : Tensor(), gk ? dk : Tensor(), gv ? dv : Tensor()};
  });
}

// attention_qkv on a backend that reads strided operands: q, k, v are read in place from the packed projection,
// the output is written as [B, T, heads, Dh] (the merged heads), and the gradient lands in qkv's layout. No copies.
Tensor strided_attention_qkv(const Tensor& qkv_in, int64_t heads, double scale) {
  const int64_t B = qkv_in.size(0), T = qkv_in.size(1), D = qkv_in.size(2) / 3, Dh = D / heads;
  const DType dt = qkv_in.dtype();
  const Device dev = qkv_in.device();
  const size_t esz = dtype_size(dt);
  Tensor qkv = qkv_in.detach().contiguous();
  Tensor y = Tensor::empty({B, T, D}, dt, dev);
  Tensor lse = Tensor::empty({B, heads, T}, lse_dtype(dt), dev);
  auto args = [=](const Tensor& packed, const Tensor& out) {
    AttentionArgs a;
    a.dtype = dt;
    a.batch = B;
    a.heads = heads;
    a.tq = a.tk = T;
    a.head_dim = a.v_dim = Dh;
    a.scale = scale;
    char* base = static_cast<char*>(packed.raw_data());
    a.q = base;
    a.k = base + size_t(D) * esz;
    a.v = base + size_t(2 * D) * esz;
    for (int64_t* st : {a.q_strides, a.k_strides, a.v_strides}) {
      st[0] = T * 3 * D;
      st[1] = Dh;
      st[2] = 3 * D;
    }
    a.o_strides[0] = T * D;
    a.o_strides[1] = Dh;
    a.o_strides[2] = D;
    a.out = out.raw_data();
    a.lse = lse.raw_data();
    return a;
  };
  if (y.numel()) backend_for(dev).attention_forward(args(qkv, y));
  if (!any_requires_grad({&qkv_in})) return y;
  Tensor o = y.detach();
  return record("attention_qkv", y, {qkv_in}, [=](const Tensor& g) {
    Tensor dqkv = Tensor::empty({B, T, 3 * D}, dt, dev);
    if (dqkv.numel() == 0) return std::vector<Tensor>{dqkv};
    Tensor gc = g.contiguous();
    AttentionArgs a = args(qkv, o);
    char* dbase = static_cast<char*>(dqkv.raw_data());
    a.dq = dbase;
    a.dk = dbase + size_t(D) * esz;
    a.dv = dbase + size_t(2 * D) * esz;
    a.dout = gc.raw_data();
    backend_for(dev).attention_backward(a);
    return std::vector<Tensor>{dqkv};
  });
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_any_dim(x, dim, 1.0, false, "softmax"); }

Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_any_dim(x, dim, 1.0, true, "log_softmax"); }

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  check_float(x, "layer_norm");
  ENG_CHECK(x.dim() >= 1, "layer_norm: input must have at least one dim, got a 0-d tensor");
  ENG_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got {}", eps);
  const int64_t cols = x.size(-1);
  ENG_CHECK(cols > 0 || x.numel() == 0, "layer_norm: last dim of input {} is empty", shape_str(x.shape()));
  check_param(w, x, cols, "weight");
  check_param(b, x, cols, "bias");
  const int64_t rows = cols ? x.numel() / cols : 0;
  Tensor xc = x.contiguous();
  Tensor wc = w.defined() ? w.contiguous() : Tensor();
  Tensor bc = b.defined() ? b.contiguous() : Tensor();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({rows}, stats_dtype(x.dtype()), x.device());  // x's dtype for f32 and f64
  Tensor rstd = Tensor::empty({rows}, stats_dtype(x.dtype()), x.device());
  if (rows)
    backend_for(x.device()).layer_norm_forward(x.dtype(), out.raw_data(), mean.raw_data(), rstd.raw_data(), xc.raw_data(),
                                               wc.defined() ? wc.raw_data() : nullptr,
                                               bc.defined() ? bc.raw_data() : nullptr, rows, cols, eps);
  if (!any_requires_grad({&xc, &wc, &bc})) return out;
  Tensor xs = xc.detach();
  Tensor ws = wc.defined() ? wc.detach() : Tensor();
  const bool need_x = xc.requires_grad();
  const bool need_w = wc.defined() && wc.requires_grad();
  const bool need_b = bc.defined() && bc.requires_grad();
  return record("layer_norm", out, {xc, wc, bc},
                [xs, ws, mean, rstd, rows, cols, need_x, need_w, need_b](const Tensor& g) {
                  Tensor gc = g.contiguous();
                  // dx is always computed (backends need not support a null dx); dw/db only when wanted.
                  Tensor dx = Tensor::empty(xs.shape(), xs.dtype(), xs.device());
                  Tensor dw = need_w ? Tensor::empty({cols}, xs.dtype(), xs.device()) : Tensor();
                  Tensor db = need_b ? Tensor::empty({cols}, xs.dtype(), xs.device()) : Tensor();
                  backend_for(xs.device()).layer_norm_backward(
                      xs.dtype(), dx.raw_data(), need_w ? dw.raw_data() : nullptr, need_b ? db.raw_data() : nullptr,
                      gc.raw_data(), xs.raw_data(), mean.raw_data(), rstd.raw_data(),
                      ws.defined() ? ws.raw_data() : nullptr, rows, cols);
                  return std::vector<Tensor>{need_x ? dx : Tensor(), dw, db};
                });
}

Tensor l2_normalize(const Tensor& x, int64_t dim, double eps) {
  check_float(x, "l2_normalize");
  ENG_CHECK(eps >= 0, "l2_normalize: eps must be >= 0, got {}", eps);
  // max(||x||, eps) = sqrt(max(||x||^2, eps^2)): clamping before the sqrt keeps the gradient finite at x = 0.
  Tensor sq = sum(square(x), {dim}, true);
  Tensor norm = sqrt(clamp(sq, eps * eps, std::numeric_limits<double>::infinity()));
  return div(x, norm);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing) {
  check_float(logits, "cross_entropy");
  ENG_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, C], got {}", shape_str(logits.shape()));
  ENG_CHECK(targets.dtype() == DType::I64, "cross_entropy: targets must be i64, got {}", dtype_name(targets.dtype()));
  const int64_t n = logits.size(0), c = logits.size(1);
  ENG_CHECK(targets.dim() == 1 && targets.size(0) == n, "cross_entropy: targets must be [{}] for logits {}, got {}", n,
            shape_str(logits.shape()), shape_str(targets.shape()));
  ENG_CHECK(n > 0 && c > 0, "cross_entropy: empty logits {}", shape_str(logits.shape()));
  ENG_CHECK(label_smoothing >= 0 && label_smoothing <= 1, "cross_entropy: label_smoothing must be in [0, 1], got {}",
            label_smoothing);
  check_same_device(logits, targets, "cross_entropy");
  if (targets.device().is_cpu()) {  // a clear message here; other devices rely on gather's own range check
    Tensor tc = targets.contiguous();
    const int64_t* t = tc.data<int64_t>();
    for (int64_t i = 0; i < n; i++)
      ENG_CHECK(t[i] >= 0 && t[i] < c, "cross_entropy: target {} of sample {} is outside [0, {})", t[i], i, c);
  }
  // PyTorch's label smoothing: loss = (1 - ls) * nll + ls * mean_c(-log p), each averaged over samples.
  Tensor logp = log_softmax(logits, 1);
  Tensor picked = gather(logp, 1, targets.unsqueeze(1));  // [N, 1]: log p of each sample's target
  Tensor loss = mul(sum(picked), -(1.0 - label_smoothing) / double(n));
  if (label_smoothing > 0) loss = add(loss, mul(sum(logp), -label_smoothing / double(n * c)));
  return loss;
}

Tensor mse_loss(const Tensor& a, const Tensor& b) {
  ENG_CHECK(a.shape() == b.shape(), "mse_loss: shapes differ ({} and {})", shape_str(a.shape()), shape_str(b.shape()));
  ENG_CHECK(a.numel() > 0, "mse_loss: empty inputs");
  return mean(square(sub(a, b)));
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  check_float(q, "attention");
  ENG_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
            "attention: q, k, v must be [B, H, T, D], got {}, {}, {}", shape_str(q.shape()), shape_str(k.shape()),
            shape_str(v.shape()));
  ENG_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
            "attention: q {} and k {} differ in batch, heads or head dim", shape_str(q.shape()), shape_str(k.shape()));
  ENG_CHECK(v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2),
            "attention: v {} must match k {} in batch, heads and tokens", shape_str(v.shape()), shape_str(k.shape()));
  ENG_CHECK(q.size(3) > 0, "attention: head dim is 0");
  check_same_device(q, k, "attention");
  check_same_device(q, v, "attention");
  ENG_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), "attention: q, k, v dtypes differ ({}, {}, {})",
            dtype_name(q.dtype()), dtype_name(k.dtype()), dtype_name(v.dtype()));
  if (scale <= 0) scale = 1.0 / std::sqrt(double(q.size(3)));
  if (backend_for(q.device()).has_fused_attention(q.dtype(), q.size(3), v.size(3)))
    return fused_attention(q, k, v, scale);
  Tensor scores = matmul(q, k.transpose(-2, -1));  // [B, H, Tq, Tk]
  Tensor probs = softmax_last_dim(scores.contiguous(), scale, false, "attention_softmax");
  return matmul(probs, v);
}

Tensor attention_qkv(const Tensor& qkv, int64_t heads, double scale) {
  check_float(qkv, "attention_qkv");
  ENG_CHECK(qkv.dim() == 3, "attention_qkv: qkv must be [B, T, 3 * D], got {}", shape_str(qkv.shape()));
  ENG_CHECK(heads > 0 && qkv.size(2) % (3 * heads) == 0,
            "attention_qkv: the last dim of qkv {} is not 3 x heads ({}) x head_dim", shape_str(qkv.shape()), heads);
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / 3, Dh = D / heads;
  ENG_CHECK(Dh > 0, "attention_qkv: head dim is 0 ({})", shape_str(qkv.shape()));
  if (scale <= 0) scale = 1.0 / std::sqrt(double(Dh));
  Backend& be = backend_for(qkv.device());
  if (!be.has_fused_attention(qkv.dtype(), Dh, Dh)) {  // composition of views and differentiable ops
    Tensor t = qkv.reshape({B, T, 3, heads, Dh}).permute({2, 0, 3, 1, 4});
    Tensor a = attention(t.select(0, 0), t.select(0, 1), t.select(0, 2), scale);
    return a.transpose(1, 2).reshape({B, T, D});
  }
  const DType dt = qkv.dtype();
  const Device dev = qkv.device();
  if (be.supports_strided_attention()) return strided_attention_qkv(qkv, heads, scale);
  // [3, B, H, T, Dh] view of the packed projection; one copy per operand into [B, H, T, Dh].
  Tensor split = qkv.detach().reshape({B, T, 3, heads, Dh}).permute({2, 0, 3, 1, 4});
  Tensor q = Tensor::empty({B, heads, T, Dh}, dt, dev), k = Tensor::empty({B, heads, T, Dh}, dt, dev),
         v = Tensor::empty({B, heads, T, Dh}, dt, dev);
  if (q.numel()) {
    be.copy(desc_of(q), desc_of(split.select(0, 0)));
    be.copy(desc_of(k), desc_of(split.select(0, 1)));
    be.copy(desc_of(v), desc_of(split.select(0, 2)));
  }
  Tensor out = Tensor::empty({B, heads, T, Dh}, dt, dev);
  Tensor lse = Tensor::empty({B, heads, T}, lse_dtype(dt), dev);
  AttentionArgs args = attention_args(q, k, v, out, lse, scale);
  if (out.numel()) be.attention_forward(args);
  Tensor y = Tensor::empty({B, T, heads, Dh}, dt, dev);  // heads side by side per token
  if (y.numel()) be.copy(desc_of(y), desc_of(out.permute({0, 2, 1, 3})));
  Tensor result = y.view({B, T, D});
  if (!any_requires_grad({&qkv})) return result;
  return record("attention_qkv", result, {qkv}, [=](const Tensor& g) {
    Backend& b = backend_for(dev);
    Tensor dout = Tensor::empty({B, heads, T, Dh}, dt, dev);
    Tensor dqkv = Tensor::empty({B, T, 3, heads, Dh}, dt, dev);
    if (dout.numel() == 0) return std::vector<Tensor>{dqkv.view({B, T, 3 * D})};
    b.copy(desc_of(dout), desc_of(g.reshape({B, T, heads, Dh}).permute({0, 2, 1, 3})));
    Tensor dq = Tensor::empty(q.shape(), dt, dev), dk = Tensor::empty(k.shape(), dt, dev),
           dv = Tensor::empty(v.shape(), dt, dev);
    AttentionArgs ba = attention_args(q, k, v, out, lse, scale);
    ba.dout = dout.raw_data();
    ba.dq = dq.raw_data();
    ba.dk = dk.raw_data();
    ba.dv = dv.raw_data();
    b.attention_backward(ba);
    Tensor parts = dqkv.permute({2, 0, 3, 1, 4});  // [3, B, H, T, Dh] view of the packed gradient
    b.copy(desc_of(parts.select(0, 0)), desc_of(dq));
    b.copy(desc_of(parts.select(0, 1)), desc_of(dk));
    b.copy(desc_of(parts.select(0, 2)), desc_of(dv));
    return std::vector<Tensor>{dqkv.view({B, T, 3 * D})};
  });
}

Tensor dropout(const Tensor& x, double p, bool training, uint64_t seed, uint64_t stream, uint64_t offset) {
  ENG_CHECK(p >= 0 && p <= 1, "dropout: p must be in [0, 1], got {}", p);
  if (!training || p == 0) return x;
  check_float(x, "dropout");
  if (p == 1) {  // everything dropped; the gradient is zero too
    Tensor out = Tensor::zeros(x.shape(), x.dtype(), x.device());
    return record("dropout", out, {x},
                  [](const Tensor& g) { return std::vector<Tensor>{Tensor::zeros(g.shape(), g.dtype(), g.device())}; });
  }
  // Uniforms are drawn in f32 whatever x's dtype, so f32 and f64 inputs get the same mask.
  Tensor mask;
  {
    NoGradGuard ng;
    Tensor u = Tensor::empty(x.shape(), DType::F32, x.device());
    if (u.numel()) backend_for(x.device()).random_uniform(desc_of(u), seed, stream, offset, 0.0, 1.0);
    Tensor keep = ge(u, Tensor::scalar(p, DType::F32, x.device()));  // P(u >= p) = 1 - p
    mask = mul(keep.to(x.dtype()), 1.0 / (1.0 - p));
  }
  Tensor out = mul(x.detach(), mask);
  return record("dropout", out, {x}, [mask](const Tensor& g) { return std::vector<Tensor>{mul(g, mask)}; });
}

}  // namespace eng
