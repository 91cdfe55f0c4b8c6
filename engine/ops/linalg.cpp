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

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  ENG_CHECK(w.dim() == 2, "linear: weight must be [out, in], got {}", shape_str(w.shape()));
  ENG_CHECK(x.size(-1) == w.size(1), "linear: input has {} features, weight {} expects {}", x.size(-1),
            shape_str(w.shape()), w.size(1));
  Tensor y = matmul(x, w.t());
  return b.defined() ? add(y, b) : y;
}

}  // namespace eng
