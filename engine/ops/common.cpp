// common.cpp: helpers every op family uses: descriptors, broadcasting, reducing a gradient to a shape.
#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

TensorDesc desc_of(const Tensor& t) {
  ENG_CHECK(t.dim() <= kMaxDims, "tensor of rank {} exceeds the {} dims the kernels support", t.dim(), kMaxDims);
  TensorDesc d;
  d.data = t.raw_data();
  d.dtype = t.dtype();
  d.ndim = int(t.dim());
  for (int i = 0; i < d.ndim; i++) {
    d.shape[i] = t.shape()[size_t(i)];
    d.strides[i] = t.strides()[size_t(i)];
  }
  return d;
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  ENG_CHECK(a.device() == b.device(), "{}: operands on different devices ({} and {})", op, a.device().str(),
            b.device().str());
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; i++) {
    int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    ENG_CHECK(x == y || x == 1 || y == 1, "shapes {} and {} do not broadcast", shape_str(a), shape_str(b));
    out[i] = (x == 1) ? y : x;
  }
  return out;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  size_t lead = g.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < g.shape().size(); i++)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(int64_t(i));
  Tensor s = dims.empty() ? g : sum(g, dims, true);
  return s.reshape(shape);
}

}  // namespace eng
