// tensor.cpp: tensor creation, geometry, copies, conversions and the view ops with their backward.
#include "engine/tensor.h"

#include <algorithm>
#include <numeric>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(s.size()) - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* what) {
  int64_t n = std::max<int64_t>(ndim, 1);
  ENG_CHECK(dim >= -n && dim < n, "{} {} out of range for a tensor of rank {}", what, dim, ndim);
  return dim < 0 ? dim + n : dim;
}

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(impl);
}

// ---------------------------------------------------------------- creation

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) ENG_CHECK(d >= 0, "negative size in shape {}", shape_str(shape));
  ENG_CHECK(shape.size() <= size_t(kMaxDims), "shape {} has more than {} dims", shape_str(shape), kMaxDims);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<double> v(size_t(std::max<int64_t>(n, 0)));
  std::iota(v.begin(), v.end(), 0.0);
  return from_vector(v, {n}, dtype).to(device);
}

template <typename S>
static Tensor from_host(const std::vector<S>& v, const Shape& shape, DType dtype) {
  ENG_CHECK(int64_t(v.size()) == shape_numel(shape), "from_vector: {} values do not fill shape {}", v.size(),
            shape_str(shape));
  Tensor src = Tensor::empty(shape, dtype_of<S>::value);
  std::copy(v.begin(), v.end(), src.data<S>());
  return src.to(dtype);
}
Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& s, DType d) { return from_host(v, s, d); }
Tensor Tensor::from_vector(const std::vector<double>& v, const Shape& s, DType d) { return from_host(v, s, d); }
Tensor Tensor::from_vector(const std::vector<int64_t>& v, const Shape& s, DType d) { return from_host(v, s, d); }
Tensor Tensor::from_vector(const std::vector<int32_t>& v, const Shape& s, DType d) { return from_host(v, s, d); }

// ---------------------------------------------------------------- properties

int64_t Tensor::size(int64_t d) const { return shape()[size_t(wrap_dim(d, dim()))]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no elements: any strides describe the same (empty) layout
  int64_t s = 1;
  for (int64_t i = dim() - 1; i >= 0; i--) {
    if (shape()[i] != 1 && strides()[i] != s) return false;
    s *= shape()[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor[undefined]";
  return fmt::format("Tensor[{} {} {}]", dtype_name(dtype()), device().str(), shape_str(shape()));
}

void* Tensor::raw_data() const {
  return static_cast<char*>(storage()->data()) + offset() * int64_t(dtype_size(dtype()));
}

template <typename T> std::vector<T> Tensor::to_vector() const {
  Tensor c = detach().to(Device::cpu()).to(dtype_of<T>::value).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

double Tensor::item() const {
  ENG_CHECK(numel() == 1, "item() needs a one-element tensor, got shape {}", shape_str(shape()));
  return to_vector<double>()[0];
}

// ---------------------------------------------------------------- copies

void Tensor::fill_(double value) {
  if (numel() == 0) return;
  backend_for(device()).fill(desc_of(*this), value);
}

void Tensor::copy_(const Tensor& src_in) {
  if (numel() == 0) return;
  Tensor src = src_in.detach().expand(shape());
  if (src.device() == device()) {
    backend_for(device()).copy(desc_of(*this), desc_of(src));
    return;
  }
  // Across devices: bring src to a contiguous buffer of our dtype, move the bytes, then place them.
  Tensor staged = src.to(dtype()).contiguous();
  Tensor landed = is_contiguous() ? *this : Tensor::empty(shape(), dtype(), device());
  copy_bytes_between_devices(landed.raw_data(), device(), staged.raw_data(), staged.device(), nbytes());
  if (!landed.same_storage(*this)) backend_for(device()).copy(desc_of(*this), desc_of(landed));
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), device());
  backend_for(device()).copy(desc_of(out), desc_of(*this));
  return record("contiguous", out, {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  if (numel()) backend_for(device()).copy(desc_of(out), desc_of(*this));
  return record("clone", out, {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), dt, device());
  if (numel()) backend_for(device()).copy(desc_of(out), desc_of(*this));
  if (!is_floating(dt) || !is_floating(dtype())) return out;
  DType back = dtype();
  return record("to_dtype", out, {*this}, [back](const Tensor& g) { return std::vector<Tensor>{g.to(back)}; });
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), dev);
  out.copy_(*this);
  Device back = device();
  return record("to_device", out, {*this}, [back](const Tensor& g) { return std::vector<Tensor>{g.to(back)}; });
}

// ---------------------------------------------------------------- views

static Shape infer_shape(const Shape& want, int64_t numel) {
  Shape s = want;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == -1) {
      ENG_CHECK(infer < 0, "shape {} has more than one -1", shape_str(want));
      infer = int64_t(i);
    } else {
      ENG_CHECK(s[i] >= 0, "invalid size {} in shape {}", s[i], shape_str(want));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    ENG_CHECK(known != 0 && numel % known == 0, "cannot reshape {} elements into {}", numel, shape_str(want));
    s[size_t(infer)] = numel / known;
  }
  ENG_CHECK(shape_numel(s) == numel, "cannot reshape {} elements into {}", numel, shape_str(want));
  return s;
}

// Strides for viewing (shape, strides) as new_shape without copying, if possible (PyTorch's rule:
// each group of old dims that merges into new dims must be contiguous within itself).
static bool view_strides(const Shape& shape, const Shape& strides, const Shape& ns, Shape& out) {
  out.assign(ns.size(), 0);
  if (shape_numel(shape) == 0 || shape.empty()) {
    out = contiguous_strides(ns);
    return true;
  }
  int64_t view_d = int64_t(ns.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; d--) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || ns[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= ns[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensor Tensor::view(const Shape& want) const {
  Shape ns = infer_shape(want, numel());
  Shape st;
  ENG_CHECK(view_strides(shape(), strides(), ns, st), "view: cannot view {} with strides {} as {} without a copy (use reshape)",
            shape_str(shape()), shape_str(strides()), shape_str(ns));
  Tensor out = make_view(*this, ns, st, offset());
  Shape old = shape();
  return record("view", out, {*this}, [old](const Tensor& g) { return std::vector<Tensor>{g.reshape(old)}; });
}

Tensor Tensor::reshape(const Shape& want) const {
  Shape ns = infer_shape(want, numel());
  Shape st;
  if (view_strides(shape(), strides(), ns, st)) return view(ns);
  return contiguous().view(ns);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  ENG_CHECK(int64_t(dims.size()) == dim(), "permute: {} dims given for a tensor of rank {}", dims.size(), dim());
  Shape ns(dims.size()), st(dims.size());
  std::vector<int64_t> inv(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); i++) {
    int64_t d = wrap_dim(dims[i], dim(), "permute dim");
    ENG_CHECK(inv[size_t(d)] < 0, "permute: dim {} repeated", d);
    inv[size_t(d)] = int64_t(i);
    ns[i] = shape()[size_t(d)];
    st[i] = strides()[size_t(d)];
  }
  Tensor out = make_view(*this, ns, st, offset());
  return record("permute", out, {*this}, [inv](const Tensor& g) { return std::vector<Tensor>{g.permute(inv)}; });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> p(static_cast<size_t>(dim()));
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[size_t(wrap_dim(d0, dim()))], p[size_t(wrap_dim(d1, dim()))]);
  return permute(p);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice dim");
  ENG_CHECK(step > 0, "slice: step must be positive, got {}", step);
  int64_t n = shape()[size_t(d)];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape ns = shape(), st = strides();
  ns[size_t(d)] = (end - start + step - 1) / step;
  st[size_t(d)] *= step;
  Tensor out = make_view(*this, ns, st, offset() + start * strides()[size_t(d)]);
  Shape in_shape = shape();
  DType dt = dtype();
  Device dev = device();
  return record("slice", out, {*this}, [=](const Tensor& g) {
    Tensor gx = Tensor::zeros(in_shape, dt, dev);
    gx.slice(d, start, end, step).copy_(g);
    return std::vector<Tensor>{gx};
  });
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select dim");
  int64_t n = shape()[size_t(d)];
  ENG_CHECK(index >= -n && index < n, "select: index {} out of range for size {}", index, n);
  if (index < 0) index += n;
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& want) const {
  ENG_CHECK(int64_t(want.size()) >= dim(), "expand: cannot expand {} to fewer dims {}", shape_str(shape()),
            shape_str(want));
  size_t lead = want.size() - size_t(dim());
  Shape ns(want.size()), st(want.size());
  bool same = lead == 0;
  for (size_t i = 0; i < want.size(); i++) {
    if (i < lead) {
      ENG_CHECK(want[i] >= 0, "expand: size -1 not allowed for a new leading dim in {}", shape_str(want));
      ns[i] = want[i];
      st[i] = 0;
      continue;
    }
    int64_t have = shape()[i - lead];
    int64_t w = want[i] == -1 ? have : want[i];
    ENG_CHECK(have == w || have == 1, "expand: cannot expand {} to {}", shape_str(shape()), shape_str(want));
    ns[i] = w;
    st[i] = (have == w) ? strides()[i - lead] : 0;
    if (have != w) same = false;
  }
  if (same) return *this;
  Tensor out = make_view(*this, ns, st, offset());
  Shape old = shape();
  return record("expand", out, {*this}, [old](const Tensor& g) { return std::vector<Tensor>{sum_to(g, old)}; });
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze dim");
  Shape ns = shape();
  ns.insert(ns.begin() + d, 1);
  return view(ns);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze dim");
  if (shape()[size_t(d)] != 1) return *this;
  Shape ns = shape();
  ns.erase(ns.begin() + d);
  return view(ns);
}

Tensor Tensor::flatten(int64_t s, int64_t e) const {
  if (dim() == 0) return reshape({1});
  s = wrap_dim(s, dim());
  e = wrap_dim(e, dim());
  Shape ns(shape().begin(), shape().begin() + s);
  int64_t m = 1;
  for (int64_t i = s; i <= e; i++) m *= shape()[size_t(i)];
  ns.push_back(m);
  ns.insert(ns.end(), shape().begin() + e + 1, shape().end());
  return reshape(ns);
}

// ---------------------------------------------------------------- autograd entry points

Tensor& Tensor::requires_grad_(bool on) {
  ENG_CHECK(is_leaf(), "requires_grad_() on a non-leaf tensor; use detach() first");
  ENG_CHECK(!on || is_floating(dtype()), "requires_grad_() needs a floating tensor, this one is {}", dtype_name(dtype()));
  impl_->requires_grad = on;
  if (!on) impl_->grad_acc.reset();
  return *this;
}

void Tensor::set_grad(const Tensor& g) {
  if (!g.defined()) {
    impl_->grad.reset();
    return;
  }
  ENG_CHECK(g.shape() == shape(), "set_grad: gradient shape {} does not match tensor shape {}", shape_str(g.shape()),
            shape_str(shape()));
  impl_->grad = g.impl_shared();
}

Tensor Tensor::detach() const {
  return make_view(*this, shape(), strides(), offset());
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const { run_backward(*this, grad, retain_graph); }

}  // namespace eng
