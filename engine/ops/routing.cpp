// routing.cpp: the ops an expert (mixture-of-experts) layer routes with, forward and backward side by side:
// cumsum, one_hot, bincount and grouped_matmul (one GEMM per expert over its consecutive rows).
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

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const std::vector<int64_t>& group_sizes, const Tensor& b) {
  ENG_CHECK(x.defined() && w.defined(), "grouped_matmul: x or w is undefined");
  ENG_CHECK(x.dim() == 2, "grouped_matmul: x must be [rows, in], got {}", shape_str(x.shape()));
  ENG_CHECK(w.dim() == 3, "grouped_matmul: w must be [groups, out, in], got {}", shape_str(w.shape()));
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2), R = x.size(0);
  ENG_CHECK(x.size(1) == in, "grouped_matmul: x has {} features but w {} expects {}", x.size(1), shape_str(w.shape()),
            in);
  ENG_CHECK(int64_t(group_sizes.size()) == E, "grouped_matmul: {} group sizes for the {} groups of w {}",
            group_sizes.size(), E, shape_str(w.shape()));
  for (size_t e = 0; e < group_sizes.size(); e++)
    ENG_CHECK(group_sizes[e] >= 0, "grouped_matmul: group_sizes[{}] = {} is negative", e, group_sizes[e]);
  const int64_t total = std::accumulate(group_sizes.begin(), group_sizes.end(), int64_t(0));
  ENG_CHECK(total == R, "grouped_matmul: group sizes add up to {} but x has {} rows", total, R);
  check_same_device(x, w, "grouped_matmul");
  ENG_CHECK(x.dtype() == w.dtype(), "grouped_matmul: x is {} but w is {}", dtype_name(x.dtype()), dtype_name(w.dtype()));
  ENG_CHECK(is_floating(x.dtype()), "grouped_matmul: x must be a floating dtype, got {}", dtype_name(x.dtype()));
  if (b.defined()) {
    ENG_CHECK(b.dim() == 2 && b.size(0) == E && b.size(1) == out, "grouped_matmul: bias must be [{}, {}], got {}", E,
              out, shape_str(b.shape()));
    ENG_CHECK(b.dtype() == x.dtype(), "grouped_matmul: bias is {} but x is {}", dtype_name(b.dtype()),
              dtype_name(x.dtype()));
    check_same_device(x, b, "grouped_matmul");
  }
  const DType dt = x.dtype();
  const Device dev = x.device();
  Backend& be = backend_for(dev);
  ENG_CHECK(!b.defined() || be.supports_gemm_epilogue(GemmEpilogue::Bias),
            "grouped_matmul: the {} backend has no GEMM bias epilogue", be.name());
  Tensor xc = x.detach().contiguous(), wc = w.detach().contiguous();
  Tensor bc = b.defined() ? b.detach().contiguous() : Tensor();
  std::vector<int64_t> offsets(size_t(E) + 1, 0);  // first row of each group
  for (size_t e = 0; e < size_t(E); e++) offsets[e + 1] = offsets[e] + group_sizes[e];

  // y_e = x_e w[e]^T (+ b[e] in the GEMM's epilogue); empty groups have nothing to compute.
  Tensor y = Tensor::empty({R, out}, dt, dev);
  if (out > 0) {
    std::vector<GemmArgs> gs;
    for (int64_t e = 0; e < E; e++) {
      const int64_t rows = group_sizes[size_t(e)], r0 = offsets[size_t(e)];
      if (rows == 0) continue;
      GemmArgs g = group_gemm(dt, false, true, rows, out, in, at(xc, r0 * in), in, at(wc, e * out * in), in,
                              at_mut(y, r0 * out));
      if (bc.defined()) {
        g.epilogue = GemmEpilogue::Bias;
        g.bias = at(bc, e * out);
      }
      gs.push_back(g);
    }
    if (!gs.empty()) be.grouped_gemm(gs);
  }
  if (!any_requires_grad({&x, &w, &b})) return y;

  const bool gx = x.requires_grad(), gw = w.requires_grad(), gb = b.defined() && b.requires_grad();
  Tensor xs = gw ? xc : Tensor(), ws = gx ? wc : Tensor();  // only what the wanted gradients read
  return record("grouped_matmul", y, {x, w, b}, [=](const Tensor& grad) {
    Tensor dy = grad.contiguous();
    Tensor dx, dw, db;
    if (gx) {  // dx_e = dy_e w[e]; rows of empty groups do not exist
      dx = Tensor::empty({R, in}, dt, dev);
      std::vector<GemmArgs> gs;
      for (int64_t e = 0; e < E && in > 0; e++) {
        const int64_t rows = group_sizes[size_t(e)], r0 = offsets[size_t(e)];
        if (rows > 0)
          gs.push_back(group_gemm(dt, false, false, rows, in, out, at(dy, r0 * out), out, at(ws, e * out * in), in,
                                  at_mut(dx, r0 * in)));
      }
      if (!gs.empty()) backend_for(dev).grouped_gemm(gs);
    }
    if (gw) {  // dw[e] = dy_e^T x_e, [out, in]; an empty group is a GEMM with k = 0, which writes zeros
      dw = Tensor::empty({E, out, in}, dt, dev);
      std::vector<GemmArgs> gs;
      for (int64_t e = 0; e < E && out > 0 && in > 0; e++) {
        const int64_t rows = group_sizes[size_t(e)], r0 = offsets[size_t(e)];
        gs.push_back(group_gemm(dt, true, false, out, in, rows, at(dy, r0 * out), out, at(xs, r0 * in), in,
                                at_mut(dw, e * out * in)));
      }
      if (!gs.empty()) backend_for(dev).grouped_gemm(gs);
    }
    if (gb) {  // db[e] = column sums of dy_e (the reduction's fixed order), zeros for an empty group
      std::vector<Tensor> cols;
      for (int64_t e = 0; e < E; e++) {
        const int64_t rows = group_sizes[size_t(e)];
        cols.push_back(rows ? sum(dy.narrow(0, offsets[size_t(e)], rows), {0}) : Tensor::zeros({out}, dt, dev));
      }
      db = stack(cols, 0);
    }
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace eng
