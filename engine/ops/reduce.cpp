// reduce.cpp: sum, mean, var, std, amax, max/min with indices, argmax.
#include <algorithm>

#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

namespace {

// Normalised, sorted, unique dims; empty input means all dims.
std::vector<int64_t> norm_dims(std::vector<int64_t> dims, int64_t ndim) {
  if (dims.empty()) {
    for (int64_t i = 0; i < ndim; i++) dims.push_back(i);
    return dims;
  }
  for (auto& d : dims) d = wrap_dim(d, ndim, "reduction dim");
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  return dims;
}

Shape keep_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape k = s;
  for (int64_t d : dims) k[size_t(d)] = 1;
  return k;
}

Shape drop_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape k;
  for (size_t i = 0; i < s.size(); i++)
    if (!std::binary_search(dims.begin(), dims.end(), int64_t(i))) k.push_back(s[i]);
  return k;
}

Tensor reduce_kernel(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  ENG_CHECK(is_floating(x.dtype()), "reduction over a {} tensor; convert it to f32 or f64 first", dtype_name(x.dtype()));
  Shape ks = keep_shape(x.shape(), dims);
  Tensor out = Tensor::empty(ks, x.dtype(), x.device());
  if (x.dim() == 0) {
    out.copy_(x);
  } else if (x.numel() == 0) {
    ENG_CHECK(op == ReduceOp::Sum, "max/min of an empty tensor");
    out.zero_();
  } else {
    backend_for(x.device()).reduce(op, desc_of(out), desc_of(x));
  }
  return keepdim ? out : out.view(drop_shape(x.shape(), dims));
}

int64_t count_of(const Shape& s, const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= s[size_t(d)];
  return n;
}

}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
  auto dims = norm_dims(dims_in, x.dim());
  Tensor out = reduce_kernel(ReduceOp::Sum, x, dims, keepdim);
  Shape xs = x.shape(), ks = keep_shape(x.shape(), dims);
  return record("sum", out, {x}, [xs, ks](const Tensor& g) { return std::vector<Tensor>{g.reshape(ks).expand(xs).contiguous()}; });
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
  auto dims = norm_dims(dims_in, x.dim());
  int64_t n = count_of(x.shape(), dims);
  ENG_CHECK(n > 0, "mean over an empty set of elements (shape {})", shape_str(x.shape()));
  return mul(sum(x, dims, keepdim), 1.0 / double(n));
}

Tensor var(const Tensor& x, std::vector<int64_t> dims_in, bool unbiased, bool keepdim) {
  auto dims = norm_dims(dims_in, x.dim());
  int64_t n = count_of(x.shape(), dims);
  ENG_CHECK(n > (unbiased ? 1 : 0), "var over {} element(s) (unbiased={})", n, unbiased);
  Tensor centered = sub(x, mean(x, dims, true));  // two passes: accurate, and differentiable by composition
  return mul(sum(square(centered), dims, keepdim), 1.0 / double(unbiased ? n - 1 : n));
}

Tensor std(const Tensor& x, std::vector<int64_t> dims, bool unbiased, bool keepdim) {
  return sqrt(var(x, dims, unbiased, keepdim));
}

Tensor amax(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
  auto dims = norm_dims(dims_in, x.dim());
  Tensor out = reduce_kernel(ReduceOp::Max, x, dims, keepdim);
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  Shape ks = keep_shape(x.shape(), dims);
  Tensor o = out.detach().reshape(ks);
  return record("amax", out, {x}, [sx, o, ks, dims](const Tensor& g) {
    // Ties share the gradient equally, as PyTorch's amax does.
    Tensor hit = eq(sx, o);
    Tensor cnt = sum(hit, dims, true);
    return std::vector<Tensor>{mul(hit, div(g.reshape(ks), cnt))};
  });
}

static ValuesIndices arg_extremum(const Tensor& x, int64_t dim, bool keepdim, bool is_max) {
  ENG_CHECK(is_floating(x.dtype()), "max/min over a {} tensor", dtype_name(x.dtype()));
  ENG_CHECK(x.dim() > 0, "max/min along a dim of a 0-d tensor");
  dim = wrap_dim(dim, x.dim());
  ENG_CHECK(x.size(dim) > 0, "max/min along an empty dim {} of shape {}", dim, shape_str(x.shape()));
  Shape ks = x.shape();
  ks[size_t(dim)] = 1;
  Tensor v = Tensor::empty(ks, x.dtype(), x.device());
  Tensor i = Tensor::empty(ks, DType::I64, x.device());
  backend_for(x.device()).arg_reduce(is_max, desc_of(v), desc_of(i), desc_of(x), int(dim));
  Tensor values = v;
  if (any_requires_grad({&x})) {
    Shape xs = x.shape();
    Tensor idx = i;
    values = record(is_max ? "max" : "min", v, {x}, [xs, idx, dim](const Tensor& g) {
      Tensor gx = Tensor::zeros(xs, g.dtype(), g.device());
      return std::vector<Tensor>{scatter_add(gx, dim, idx, g)};
    });
  }
  if (!keepdim) {
    values = values.squeeze(dim);
    i = i.squeeze(dim);
  }
  return {values, i};
}

ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) { return arg_extremum(x, dim, keepdim, true); }
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim) { return arg_extremum(x, dim, keepdim, false); }
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  NoGradGuard ng;
  return arg_extremum(x, dim, keepdim, true).indices;
}

}  // namespace eng
