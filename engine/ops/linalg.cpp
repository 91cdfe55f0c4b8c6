// linalg.cpp: batched matrix multiply (the one primitive), matmul with numpy semantics, linear.
#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

namespace {

// How a [batch, rows, cols] view is handed to GEMM without a copy: row-major (ld = row stride) or as
// the transpose of a row-major matrix (ld = column stride). Anything else is made contiguous first.
struct GemmOperand {
  Tensor t;  // the tensor whose memory is used
  bool trans = false;
  int64_t ld = 0, batch_stride = 0;
};

GemmOperand as_gemm_operand(const Tensor& x) {
  int64_t r = x.size(1), c = x.size(2);
  int64_t sb = x.strides()[0], sr = x.strides()[1], sc = x.strides()[2];
  if ((sc == 1 || c == 1) && (sr >= c || r == 1)) return {x, false, std::max<int64_t>(sr, c), sb};
  if ((sr == 1 || r == 1) && (sc >= r || c == 1)) return {x, true, std::max<int64_t>(sc, r), sb};
  Tensor y = x.contiguous();
  return {y, false, c, r * c};
}

// [B, m, k] x [B, k, n] -> [B, m, n]. Transposed views go to GEMM as flags, not copies.
Tensor bmm_kernel(const Tensor& a, const Tensor& b) {
  int64_t batch = a.size(0), m = a.size(1), k = a.size(2), n = b.size(2);
  GemmOperand A = as_gemm_operand(a), Bo = as_gemm_operand(b);
  Tensor c = Tensor::empty({batch, m, n}, a.dtype(), a.device());
  if (c.numel() == 0) return c;
  if (k == 0) {
    c.zero_();
    return c;
  }
  GemmArgs g;
  g.dtype = a.dtype();
  g.trans_a = A.trans;
  g.trans_b = Bo.trans;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = A.t.raw_data();
  g.lda = A.ld;
  g.stride_a = batch == 1 ? 0 : A.batch_stride;
  g.b = Bo.t.raw_data();
  g.ldb = Bo.ld;
  g.stride_b = batch == 1 ? 0 : Bo.batch_stride;
  g.c = c.raw_data();
  g.ldc = n;
  g.stride_c = m * n;
  g.batch = batch;
  backend_for(a.device()).gemm(g);
  return c;
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  Tensor out = bmm_kernel(a.detach(), b.detach());
  if (!any_requires_grad({&a, &b})) return out;
  Tensor sa = b.requires_grad() ? a.detach() : Tensor();
  Tensor sb = a.requires_grad() ? b.detach() : Tensor();
  return record("matmul", out, {a, b}, [sa, sb](const Tensor& g) {
    Tensor ga, gb;
    if (sb.defined()) ga = bmm(g, sb.transpose(1, 2));
    if (sa.defined()) gb = bmm(sa.transpose(1, 2), g);
    return std::vector<Tensor>{ga, gb};
  });
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  check_same_device(a_in, b_in, "matmul");
  ENG_CHECK(a_in.dtype() == b_in.dtype(), "matmul: dtypes differ ({} and {})", dtype_name(a_in.dtype()),
            dtype_name(b_in.dtype()));
  ENG_CHECK(a_in.dim() >= 1 && b_in.dim() >= 1, "matmul: 0-d operand");
  Tensor a = a_in.dim() == 1 ? a_in.unsqueeze(0) : a_in;
  Tensor b = b_in.dim() == 1 ? b_in.unsqueeze(1) : b_in;
  int64_t m = a.size(-2), k = a.size(-1), k2 = b.size(-2), n = b.size(-1);
  ENG_CHECK(k == k2, "matmul: shapes {} and {} do not align ({} vs {})", shape_str(a_in.shape()), shape_str(b_in.shape()),
            k, k2);
  Tensor out;
  Shape lead_a(a.shape().begin(), a.shape().end() - 2), lead_b(b.shape().begin(), b.shape().end() - 2);
  if (lead_b.empty()) {
    // [..., m, k] x [k, n]: fold the batch into the rows, one GEMM.
    Tensor a2 = a.reshape({1, -1, k});
    out = bmm(a2, b.unsqueeze(0));
    Shape os = lead_a;
    os.push_back(m);
    os.push_back(n);
    out = out.view(os);
  } else {
    Shape batch = broadcast_shapes(lead_a, lead_b);
    Shape sa = batch, sb = batch;
    sa.insert(sa.end(), {m, k});
    sb.insert(sb.end(), {k, n});
    int64_t nb = shape_numel(batch);
    Tensor a3 = a.expand(sa).reshape({nb, m, k});
    Tensor b3 = b.expand(sb).reshape({nb, k, n});
    out = bmm(a3, b3);
    Shape os = batch;
    os.insert(os.end(), {m, n});
    out = out.view(os);
  }
  if (a_in.dim() == 1) out = out.squeeze(-2);
  if (b_in.dim() == 1) out = out.squeeze(-1);
  return out;
}

namespace {

void check_linear(const Tensor& x, const Tensor& w, const Tensor& b, const char* op) {
  ENG_CHECK(w.dim() == 2, "{}: weight must be [out, in], got {}", op, shape_str(w.shape()));
  ENG_CHECK(x.dim() >= 1, "{}: input is 0-d", op);
  ENG_CHECK(x.size(-1) == w.size(1), "{}: input has {} features, weight {} expects {}", op, x.size(-1),
            shape_str(w.shape()), w.size(1));
  check_same_device(x, w, op);
  ENG_CHECK(x.dtype() == w.dtype(), "{}: input is {} but the weight is {}", op, dtype_name(x.dtype()),
            dtype_name(w.dtype()));
  if (b.defined()) {
    ENG_CHECK(b.dim() == 1 && b.size(0) == w.size(0), "{}: bias must be [{}], got {}", op, w.size(0),
              shape_str(b.shape()));
    ENG_CHECK(b.dtype() == x.dtype(), "{}: bias is {} but the input is {}", op, dtype_name(b.dtype()),
              dtype_name(x.dtype()));
    check_same_device(x, b, op);
  }
}

// One row-major GEMM on contiguous 2-D tensors: c = op(a) op(b) (+ epilogue).
void gemm_2d(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, GemmEpilogue ep = GemmEpilogue::None,
             const Tensor& bias = Tensor(), const Tensor& pre = Tensor()) {
  GemmArgs g;
  g.dtype = c.dtype();
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = c.size(0);
  g.n = c.size(1);
  g.k = trans_a ? a.size(0) : a.size(1);
  g.a = a.raw_data();
  g.lda = a.size(1);
  g.b = b.raw_data();
  g.ldb = b.size(1);
  g.c = c.raw_data();
  g.ldc = g.n;
  g.epilogue = ep;
  g.bias = bias.defined() ? bias.raw_data() : nullptr;
  g.pre_gelu = pre.defined() ? pre.raw_data() : nullptr;
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0 && ep == GemmEpilogue::None) {
    Tensor(c).zero_();
    return;
  }
  backend_for(c.device()).gemm(g);
}

// Fused linear (+ GELU): one GEMM whose epilogue adds the bias (and applies the GELU, keeping its input for the
// backward pass). Backward: dh = dy (* gelu'(pre)), dx = dh w (NN), dw = dh^T x (TN, written as [out, in]
// directly), db = column sums of dh. No transposed copies, no broadcast add.
Tensor linear_fused(const Tensor& x, const Tensor& w, const Tensor& b, bool gelu) {
  const int64_t in = w.size(1), out = w.size(0);
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor x2 = x.detach().contiguous().view({rows, in});
  Tensor wc = w.detach().contiguous();
  Tensor bc = b.defined() ? b.detach().contiguous() : Tensor();
  const bool need_grad = any_requires_grad({&x, &w, &b});
  Tensor y = Tensor::empty({rows, out}, x.dtype(), x.device());
  Tensor pre = gelu && need_grad ? Tensor::empty({rows, out}, x.dtype(), x.device()) : Tensor();
  const GemmEpilogue ep = gelu ? GemmEpilogue::BiasGelu : (bc.defined() ? GemmEpilogue::Bias : GemmEpilogue::None);
  gemm_2d(x2, false, wc, true, y, ep, bc, pre);
  Tensor result = y.view(out_shape);
  if (!need_grad) return result;
  const bool gx = x.requires_grad(), gw = w.requires_grad(), gb = b.defined() && b.requires_grad();
  Shape x_shape = x.shape();
  Tensor xs = gw ? x2 : Tensor();  // only what the wanted gradients read
  Tensor ws = gx ? wc : Tensor();
  return record(gelu ? "linear_gelu" : "linear", result, {x, w, b}, [=](const Tensor& g) {
    Tensor dh = g.contiguous().view({rows, out});
    if (gelu) {
      Tensor t = Tensor::empty({rows, out}, dh.dtype(), dh.device());
      backend_for(dh.device()).binary(BinaryOp::GeluBackward, desc_of(t), desc_of(pre), desc_of(dh));
      dh = t;
    }
    Tensor dx, dw, db;
    if (gx) {
      dx = Tensor::empty({rows, in}, dh.dtype(), dh.device());
      gemm_2d(dh, false, ws, false, dx);
      dx = dx.view(x_shape);
    }
    if (gw) {
      dw = Tensor::empty({out, in}, dh.dtype(), dh.device());
      gemm_2d(dh, true, xs, false, dw);
    }
    if (gb) db = rows ? sum(dh, {0}) : Tensor::zeros({out}, dh.dtype(), dh.device());
    return std::vector<Tensor>{dx, dw, db};
  });
}

// bf16 (CUDA mixed precision) takes the fused path too: the bias is added to the f32 accumulator before the one
// rounding to bf16, the GELU runs in f32, and the bias gradient is a column sum with a wide accumulator.
bool fused_linear_ok(const Tensor& x, GemmEpilogue ep) {
  return (x.dtype() == DType::F32 || x.dtype() == DType::F64 || x.dtype() == DType::BF16) &&
         backend_for(x.device()).supports_gemm_epilogue(ep);
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_linear(x, w, b, "linear");
  if (fused_linear_ok(x, b.defined() ? GemmEpilogue::Bias : GemmEpilogue::None)) return linear_fused(x, w, b, false);
  Tensor y = matmul(x, w.t());
  return b.defined() ? add(y, b) : y;
}

Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2) {
  check_linear(x, w1, b1, "mlp_gelu (fc1)");
  ENG_CHECK(w2.dim() == 2 && w2.size(1) == w1.size(0), "mlp_gelu: fc2 weight {} does not take fc1's {} outputs",
            shape_str(w2.shape()), w1.size(0));
  check_same_device(x, w2, "mlp_gelu");
  ENG_CHECK(w2.dtype() == x.dtype(), "mlp_gelu: fc2 weight is {} but the input is {}", dtype_name(w2.dtype()),
            dtype_name(x.dtype()));
  if (b2.defined()) {
    ENG_CHECK(b2.dim() == 1 && b2.size(0) == w2.size(0), "mlp_gelu: fc2 bias must be [{}], got {}", w2.size(0),
              shape_str(b2.shape()));
    ENG_CHECK(b2.dtype() == x.dtype(), "mlp_gelu: fc2 bias is {} but the input is {}", dtype_name(b2.dtype()),
              dtype_name(x.dtype()));
    check_same_device(x, b2, "mlp_gelu");
  }
  const bool fused = fused_linear_ok(x, GemmEpilogue::BiasGelu) &&
                     backend_for(x.device()).supports_gemm_epilogue(GemmEpilogue::GeluGrad) &&
                     backend_for(x.device()).supports_gemm_epilogue(GemmEpilogue::Bias);
  if (!fused) return linear(linear_gelu(x, w1, b1), w2, b2);
  const int64_t in = w1.size(1), hidden = w1.size(0), out = w2.size(0);
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const DType dt = x.dtype();
  const Device dev = x.device();
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor x2 = x.detach().contiguous().view({rows, in});
  Tensor w1c = w1.detach().contiguous(), w2c = w2.detach().contiguous();
  Tensor b1c = b1.defined() ? b1.detach().contiguous() : Tensor(), b2c = b2.defined() ? b2.detach().contiguous() : Tensor();
  const bool need_grad = any_requires_grad({&x, &w1, &b1, &w2, &b2});
  Tensor h = need_grad ? Tensor::empty({rows, hidden}, dt, dev) : Tensor();  // fc1's pre-activation
  Tensor g = Tensor::empty({rows, hidden}, dt, dev);                          // gelu(h), fc2's input
  gemm_2d(x2, false, w1c, true, g, GemmEpilogue::BiasGelu, b1c, h);
  Tensor y = Tensor::empty({rows, out}, dt, dev);
  gemm_2d(g, false, w2c, true, y, b2c.defined() ? GemmEpilogue::Bias : GemmEpilogue::None, b2c);
  Tensor result = y.view(out_shape);
  if (!need_grad) return result;
  const bool gx = x.requires_grad(), gw1 = w1.requires_grad(), gb1 = b1.defined() && b1.requires_grad();
  const bool gw2 = w2.requires_grad(), gb2 = b2.defined() && b2.requires_grad();
  Shape x_shape = x.shape();
  Tensor xs = gw1 ? x2 : Tensor(), gs = gw2 ? g : Tensor();  // only what the wanted gradients read
  return record("mlp_gelu", result, {x, w1, b1, w2, b2}, [=](const Tensor& grad) {
    Tensor dy = grad.contiguous().view({rows, out});
    Tensor dx, dw1, db1, dw2, db2;
    if (gw2) {
      dw2 = Tensor::empty({out, hidden}, dt, dev);
      gemm_2d(dy, true, gs, false, dw2);
    }
    if (gb2) db2 = rows ? sum(dy, {0}) : Tensor::zeros({out}, dt, dev);
    if (gx || gw1 || gb1) {
      // dh = (dy w2) * gelu'(h): the GELU's backward in the epilogue of the GEMM that makes its input gradient.
      Tensor dh = Tensor::empty({rows, hidden}, dt, dev);
      gemm_2d(dy, false, w2c, false, dh, GemmEpilogue::GeluGrad, Tensor(), h);
      if (gw1) {
        dw1 = Tensor::empty({hidden, in}, dt, dev);
        gemm_2d(dh, true, xs, false, dw1);
      }
      if (gb1) db1 = rows ? sum(dh, {0}) : Tensor::zeros({hidden}, dt, dev);
      if (gx) {
        dx = Tensor::empty({rows, in}, dt, dev);
        gemm_2d(dh, false, w1c, false, dx);
        dx = dx.view(x_shape);
      }
    }
    return std::vector<Tensor>{dx, dw1, db1, dw2, db2};
  });
}

Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_linear(x, w, b, "linear_gelu");
  if (fused_linear_ok(x, GemmEpilogue::BiasGelu)) return linear_fused(x, w, b, true);
  Tensor y = matmul(x, w.t());
  return gelu(b.defined() ? add(y, b) : y);
}

}  // namespace eng
