// routing.cpp: the ops an expert (mixture-of-experts) layer routes with, forward and backward side by side:
// cumsum, one_hot, bincount, grouped_matmul (one GEMM per expert over its consecutive rows) and grouped_mlp_gelu (a
// whole expert MLP, the GELU and its gradient in the GEMMs' epilogues, as mlp_gelu does for the dense MLP).
#include <numeric>

#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

namespace {

void check_index(const Tensor& index, const char* op) {
  ENG_CHECK(index.defined(), "{}: index tensor is undefined", op);
  ENG_CHECK(index.dtype() == DType::I64, "{}: index must be i64, got {}", op, dtype_name(index.dtype()));
}

Tensor cumsum_impl(const Tensor& x, int64_t dim, bool reverse) {
  Tensor xc = x.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel()) backend_for(x.device()).cumsum(desc_of(out), desc_of(xc), int(dim), reverse);
  return out;
}

// The address `elements` elements past the start of t's data.
const void* at(const Tensor& t, int64_t elements) {
  return static_cast<const char*>(t.raw_data()) + size_t(elements) * dtype_size(t.dtype());
}
void* at_mut(const Tensor& t, int64_t elements) { return const_cast<void*>(at(t, elements)); }

// One row-major GEMM of the grouped list: c = op(a) op(b), all contiguous, leading dims = stored widths.
GemmArgs group_gemm(DType dt, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
                    const void* b, int64_t ldb, void* c) {
  GemmArgs g;
  g.dtype = dt;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.lda = lda;
  g.b = b;
  g.ldb = ldb;
  g.c = c;
  g.ldc = n;
  return g;
}

}  // namespace

// ---------------------------------------------------------------- cumsum

Tensor cumsum(const Tensor& x, int64_t dim) {
  ENG_CHECK(x.defined(), "cumsum: x is undefined");
  ENG_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64 || x.dtype() == DType::I64,
            "cumsum: x must be f32, f64 or i64, got {}", dtype_name(x.dtype()));
  ENG_CHECK(x.dim() > 0, "cumsum: x is 0-d; it needs at least one dim");
  dim = wrap_dim(dim, x.dim(), "cumsum dim");
  Tensor out = cumsum_impl(x, dim, false);
  if (!is_floating(x.dtype()) || !any_requires_grad({&x})) return out;
  // d/dx_j of sum_i w_i y_i with y_i = sum_{j <= i} x_j is sum_{i >= j} w_i: the reverse cumsum.
  return record("cumsum", out, {x}, [dim](const Tensor& g) { return std::vector<Tensor>{cumsum_impl(g, dim, true)}; });
}

// ---------------------------------------------------------------- one_hot / bincount

Tensor one_hot(const Tensor& index, int64_t num_classes, DType dtype) {
  check_index(index, "one_hot");
  ENG_CHECK(num_classes > 0, "one_hot: num_classes must be positive, got {}", num_classes);
  ENG_CHECK(index.dim() < kMaxDims, "one_hot: index of rank {} leaves no room for the class dim (at most {} dims)",
            index.dim(), kMaxDims);
  Shape os = index.shape();
  os.push_back(num_classes);
  Tensor out = Tensor::empty(os, dtype, index.device());
  Tensor idx = index.contiguous();
  if (out.numel()) backend_for(index.device()).one_hot(desc_of(out), desc_of(idx));
  return out;
}

Tensor bincount(const Tensor& index, int64_t num_bins) {
  check_index(index, "bincount");
  ENG_CHECK(index.dim() == 1, "bincount: index must be 1-D, got shape {}", shape_str(index.shape()));
  ENG_CHECK(num_bins > 0, "bincount: num_bins must be positive, got {}", num_bins);
  Tensor counts = Tensor::empty({num_bins}, DType::I64, index.device());
  backend_for(index.device()).bincount(desc_of(counts), desc_of(index));
  return counts;
}

// ---------------------------------------------------------------- grouped_matmul

namespace {

// The checks of grouped_matmul's operands (x [R, in], w [E, out, in], sizes summing to R, bias [E, out]), named by op.
void check_grouped(const Tensor& x, const Tensor& w, const std::vector<int64_t>& group_sizes, const Tensor& b,
                   const char* op) {
  ENG_CHECK(x.defined() && w.defined(), "{}: x or w is undefined", op);
  ENG_CHECK(x.dim() == 2, "{}: x must be [rows, in], got {}", op, shape_str(x.shape()));
  ENG_CHECK(w.dim() == 3, "{}: w must be [groups, out, in], got {}", op, shape_str(w.shape()));
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2), R = x.size(0);
  ENG_CHECK(x.size(1) == in, "{}: x has {} features but w {} expects {}", op, x.size(1), shape_str(w.shape()), in);
  ENG_CHECK(int64_t(group_sizes.size()) == E, "{}: {} group sizes for the {} groups of w {}", op, group_sizes.size(), E,
            shape_str(w.shape()));
  for (size_t e = 0; e < group_sizes.size(); e++)
    ENG_CHECK(group_sizes[e] >= 0, "{}: group_sizes[{}] = {} is negative", op, e, group_sizes[e]);
  const int64_t total = std::accumulate(group_sizes.begin(), group_sizes.end(), int64_t(0));
  ENG_CHECK(total == R, "{}: group sizes add up to {} but x has {} rows", op, total, R);
  check_same_device(x, w, op);
  ENG_CHECK(x.dtype() == w.dtype(), "{}: x is {} but w is {}", op, dtype_name(x.dtype()), dtype_name(w.dtype()));
  ENG_CHECK(is_floating(x.dtype()), "{}: x must be a floating dtype, got {}", op, dtype_name(x.dtype()));
  if (b.defined()) {
    ENG_CHECK(b.dim() == 2 && b.size(0) == E && b.size(1) == out, "{}: bias must be [{}, {}], got {}", op, E, out,
              shape_str(b.shape()));
    ENG_CHECK(b.dtype() == x.dtype(), "{}: bias is {} but x is {}", op, dtype_name(b.dtype()), dtype_name(x.dtype()));
    check_same_device(x, b, op);
  }
}

std::vector<int64_t> group_offsets(const std::vector<int64_t>& group_sizes) {  // first row of each group, then R
  std::vector<int64_t> offsets(group_sizes.size() + 1, 0);
  for (size_t e = 0; e < group_sizes.size(); e++) offsets[e + 1] = offsets[e] + group_sizes[e];
  return offsets;
}

// y_e = x_e w[e]^T (+ b[e], + GELU with its input kept in pre, by the GEMM's epilogue) for the non-empty groups;
// x [R, in], w [E, out, in] contiguous, y [R, out] (pre too).
void grouped_forward(const Tensor& x, const Tensor& w, const Tensor& b, const std::vector<int64_t>& offsets,
                     const Tensor& y, bool gelu, const Tensor& pre) {
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2);
  if (out == 0) return;
  std::vector<GemmArgs> gs;
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e) + 1] - r0;
    if (rows == 0) continue;
    GemmArgs g = group_gemm(x.dtype(), false, true, rows, out, in, at(x, r0 * in), in, at(w, e * out * in), in,
                            at_mut(y, r0 * out));
    if (gelu) {
      g.epilogue = GemmEpilogue::BiasGelu;
      g.bias = b.defined() ? at(b, e * out) : nullptr;
      g.pre_gelu = pre.defined() ? at_mut(pre, r0 * out) : nullptr;
    } else if (b.defined()) {
      g.epilogue = GemmEpilogue::Bias;
      g.bias = at(b, e * out);
    }
    gs.push_back(g);
  }
  if (!gs.empty()) backend_for(x.device()).grouped_gemm(gs);
}

// dx_e = dy_e w[e] (dy [R, out], w [E, out, in], dx [R, in]); with pre, the epilogue multiplies by gelu'(pre_e)
// (the GELU's backward fused into the GEMM that makes the gradient of its output). Rows of empty groups do not exist.
void grouped_input_grad(const Tensor& dy, const Tensor& w, const std::vector<int64_t>& offsets, const Tensor& dx,
                        const Tensor& pre) {
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2);
  std::vector<GemmArgs> gs;
  for (int64_t e = 0; e < E && in > 0; e++) {
    const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e) + 1] - r0;
    if (rows == 0) continue;
    GemmArgs g = group_gemm(dy.dtype(), false, false, rows, in, out, at(dy, r0 * out), out, at(w, e * out * in), in,
                            at_mut(dx, r0 * in));
    if (pre.defined()) {
      g.epilogue = GemmEpilogue::GeluGrad;
      g.pre_gelu = at_mut(pre, r0 * in);
    }
    gs.push_back(g);
  }
  if (!gs.empty()) backend_for(dy.device()).grouped_gemm(gs);
}

// dw[e] = dy_e^T x_e, [E, out, in]; an empty group is a GEMM with k = 0, which writes zeros.
Tensor grouped_weight_grad(const Tensor& dy, const Tensor& x, const std::vector<int64_t>& offsets) {
  const int64_t E = int64_t(offsets.size()) - 1, out = dy.size(1), in = x.size(1);
  Tensor dw = Tensor::empty({E, out, in}, dy.dtype(), dy.device());
  std::vector<GemmArgs> gs;
  for (int64_t e = 0; e < E && out > 0 && in > 0; e++) {
    const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e) + 1] - r0;
    gs.push_back(group_gemm(dy.dtype(), true, false, out, in, rows, at(dy, r0 * out), out, at(x, r0 * in), in,
                            at_mut(dw, e * out * in)));
  }
  if (!gs.empty()) backend_for(dy.device()).grouped_gemm(gs);
  return dw;
}

// db[e] = column sums of dy_e (the reduction's fixed order), zeros for an empty group: [E, out].
Tensor grouped_bias_grad(const Tensor& dy, const std::vector<int64_t>& offsets) {
  std::vector<Tensor> cols;
  for (size_t e = 0; e + 1 < offsets.size(); e++) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    cols.push_back(rows ? sum(dy.narrow(0, offsets[e], rows), {0}) : Tensor::zeros({dy.size(1)}, dy.dtype(), dy.device()));
  }
  return stack(cols, 0);
}

}  // namespace

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const std::vector<int64_t>& group_sizes, const Tensor& b) {
  check_grouped(x, w, group_sizes, b, "grouped_matmul");
  const int64_t R = x.size(0), in = w.size(2), out = w.size(1);
  const DType dt = x.dtype();
  const Device dev = x.device();
  Backend& be = backend_for(dev);
  ENG_CHECK(!b.defined() || be.supports_gemm_epilogue(GemmEpilogue::Bias),
            "grouped_matmul: the {} backend has no GEMM bias epilogue", be.name());
  Tensor xc = x.detach().contiguous(), wc = w.detach().contiguous();
  Tensor bc = b.defined() ? b.detach().contiguous() : Tensor();
  const std::vector<int64_t> offsets = group_offsets(group_sizes);

  Tensor y = Tensor::empty({R, out}, dt, dev);
  grouped_forward(xc, wc, bc, offsets, y, false, Tensor());
  if (!any_requires_grad({&x, &w, &b})) return y;

  const bool gx = x.requires_grad(), gw = w.requires_grad(), gb = b.defined() && b.requires_grad();
  Tensor xs = gw ? xc : Tensor(), ws = gx ? wc : Tensor();  // only what the wanted gradients read
  return record("grouped_matmul", y, {x, w, b}, [=](const Tensor& grad) {
    Tensor dy = grad.contiguous();
    Tensor dx, dw, db;
    if (gx) {
      dx = Tensor::empty({R, in}, dt, dev);
      grouped_input_grad(dy, ws, offsets, dx, Tensor());
    }
    if (gw) dw = grouped_weight_grad(dy, xs, offsets);
    if (gb) db = grouped_bias_grad(dy, offsets);
    return std::vector<Tensor>{dx, dw, db};
  });
}

// ---------------------------------------------------------------- grouped_mlp_gelu

Tensor grouped_mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                        const std::vector<int64_t>& group_sizes) {
  check_grouped(x, w1, group_sizes, b1, "grouped_mlp_gelu (fc1)");
  ENG_CHECK(w2.defined() && w2.dim() == 3 && w2.size(0) == w1.size(0) && w2.size(2) == w1.size(1),
            "grouped_mlp_gelu: fc2 weight must be [{}, out, {}] to take fc1's outputs, got {}", w1.size(0), w1.size(1),
            w2.defined() ? shape_str(w2.shape()) : std::string("undefined"));
  check_same_device(x, w2, "grouped_mlp_gelu (fc2)");
  ENG_CHECK(w2.dtype() == x.dtype(), "grouped_mlp_gelu: fc2 weight is {} but x is {}", dtype_name(w2.dtype()),
            dtype_name(x.dtype()));
  if (b2.defined()) {
    ENG_CHECK(b2.dim() == 2 && b2.size(0) == w2.size(0) && b2.size(1) == w2.size(1),
              "grouped_mlp_gelu: fc2 bias must be [{}, {}], got {}", w2.size(0), w2.size(1), shape_str(b2.shape()));
    ENG_CHECK(b2.dtype() == x.dtype(), "grouped_mlp_gelu: fc2 bias is {} but x is {}", dtype_name(b2.dtype()),
              dtype_name(x.dtype()));
    check_same_device(x, b2, "grouped_mlp_gelu (fc2)");
  }
  Backend& be = backend_for(x.device());
  // The fused path needs the GELU epilogues in the grouped GEMM: the CPU backend's packed driver has them. CUDA's
  // grouped cuBLAS call takes none (cuda_routing.cu sends such groups to one GEMM each), so there the composition
  // keeps one grouped call per layer.
  const bool fused = x.device().is_cpu() && (x.dtype() == DType::F32 || x.dtype() == DType::F64) &&
                     be.supports_gemm_epilogue(GemmEpilogue::BiasGelu) &&
                     be.supports_gemm_epilogue(GemmEpilogue::GeluGrad) && be.supports_gemm_epilogue(GemmEpilogue::Bias);
  if (!fused) return grouped_matmul(gelu(grouped_matmul(x, w1, group_sizes, b1)), w2, group_sizes, b2);
  const int64_t R = x.size(0), in = w1.size(2), hidden = w1.size(1), out = w2.size(1);
  const DType dt = x.dtype();
  const Device dev = x.device();
  Tensor xc = x.detach().contiguous(), w1c = w1.detach().contiguous(), w2c = w2.detach().contiguous();
  Tensor b1c = b1.defined() ? b1.detach().contiguous() : Tensor(), b2c = b2.defined() ? b2.detach().contiguous() : Tensor();
  const std::vector<int64_t> offsets = group_offsets(group_sizes);
  const bool need_grad = any_requires_grad({&x, &w1, &b1, &w2, &b2});
  Tensor h = need_grad ? Tensor::empty({R, hidden}, dt, dev) : Tensor();  // fc1's pre-activation
  Tensor g = Tensor::empty({R, hidden}, dt, dev);                          // gelu(h), fc2's input
  grouped_forward(xc, w1c, b1c, offsets, g, true, h);
  Tensor y = Tensor::empty({R, out}, dt, dev);
  grouped_forward(g, w2c, b2c, offsets, y, false, Tensor());
  if (!need_grad) return y;
  const bool gx = x.requires_grad(), gw1 = w1.requires_grad(), gb1 = b1.defined() && b1.requires_grad();
  const bool gw2 = w2.requires_grad(), gb2 = b2.defined() && b2.requires_grad();
  Tensor xs = gw1 ? xc : Tensor(), gs = gw2 ? g : Tensor();  // only what the wanted gradients read
  return record("grouped_mlp_gelu", y, {x, w1, b1, w2, b2}, [=](const Tensor& grad) {
    Tensor dy = grad.contiguous();
    Tensor dx, dw1, db1, dw2, db2;
    if (gw2) dw2 = grouped_weight_grad(dy, gs, offsets);
    if (gb2) db2 = grouped_bias_grad(dy, offsets);
    if (gx || gw1 || gb1) {
      Tensor dh = Tensor::empty({R, hidden}, dt, dev);  // (dy_e w2[e]) * gelu'(h_e), in the GEMM's epilogue
      grouped_input_grad(dy, w2c, offsets, dh, h);
      if (gw1) dw1 = grouped_weight_grad(dh, xs, offsets);
      if (gb1) db1 = grouped_bias_grad(dh, offsets);
      if (gx) {
        dx = Tensor::empty({R, in}, dt, dev);
        grouped_input_grad(dh, w1c, offsets, dx, Tensor());
      }
    }
    return std::vector<Tensor>{dx, dw1, db1, dw2, db2};
  });
}

}  // namespace eng

namespace eng {

// ---------------------------------------------------------------- permute_rows

Tensor permute_rows(const Tensor& x, const Tensor& perm, const Tensor& scale) {
  ENG_CHECK(x.defined() && x.dim() >= 1, "permute_rows: x must have at least one dim, got {}",
            x.defined() ? shape_str(x.shape()) : std::string("undefined"));
  ENG_CHECK(is_floating(x.dtype()), "permute_rows: x must be a floating dtype, got {}", dtype_name(x.dtype()));
  const int64_t n = x.size(0);
  check_index(perm, "permute_rows");
  ENG_CHECK(perm.dim() == 1 && perm.size(0) == n, "permute_rows: perm must be [{}] (x's rows), got {}", n,
            shape_str(perm.shape()));
  check_same_device(x, perm, "permute_rows");
  if (scale.defined()) {
    ENG_CHECK(scale.dim() == 1 && scale.size(0) == n, "permute_rows: scale must be [{}], got {}", n,
              shape_str(scale.shape()));
    ENG_CHECK(scale.dtype() == x.dtype(), "permute_rows: scale is {} but x is {}", dtype_name(scale.dtype()),
              dtype_name(x.dtype()));
    check_same_device(x, scale, "permute_rows");
  }
  if (!x.device().is_cpu()) {  // the composition (index_select's backward accumulates; right for any in-range perm)
    Tensor y = index_select(x, 0, perm);
    if (!scale.defined()) return y;
    Shape s(size_t(x.dim()), 1);
    s[0] = n;
    return mul(y, scale.reshape(s));
  }
  Tensor xc = x.detach().contiguous(), pc = perm.contiguous();
  Tensor sc = scale.defined() ? scale.detach().contiguous() : Tensor();
  Backend& be = backend_for(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  TensorDesc no_scale;  // data == nullptr: factor 1
  const TensorDesc scale_desc = sc.defined() ? desc_of(sc) : no_scale;
  if (y.numel()) be.permute_rows(desc_of(y), desc_of(xc), desc_of(pc), scale_desc, false);
  if (!any_requires_grad({&x, &scale})) return y;
  const bool gx = x.requires_grad(), gs = scale.defined() && scale.requires_grad();
  Tensor xs = gs ? xc : Tensor();  // only what the wanted gradients read
  return record("permute_rows", y, {x, scale}, [=](const Tensor& grad) {
    Tensor dy = grad.contiguous();
    Backend& b = backend_for(dy.device());
    Tensor dx, ds;
    if (gx) {
      dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
      TensorDesc none;
      if (dx.numel()) b.permute_rows(desc_of(dx), desc_of(dy), desc_of(pc), sc.defined() ? desc_of(sc) : none, true);
    }
    if (gs) {
      ds = Tensor::empty({n}, dy.dtype(), dy.device());
      if (n) b.rows_dot(desc_of(ds), desc_of(dy), desc_of(xs), desc_of(pc));
    }
    return std::vector<Tensor>{dx, ds};
  });
}

}  // namespace eng
