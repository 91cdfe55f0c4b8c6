// tensor.h: the n-dimensional array with shared storage, views and reverse-mode autograd.
//
// A Tensor is a cheap handle (shared_ptr) to a TensorImpl: storage + shape + strides (in elements) +
// offset + dtype. Views (reshape of contiguous data, permute, transpose, slice, expand) share storage.
// The ops themselves are free functions declared in engine/ops.h.
#pragma once
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/dtype.h"
#include "engine/error.h"

namespace eng {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

struct Node;
class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  bool requires_grad = false;        // leaves only; a non-leaf requires grad when grad_fn is set
  std::shared_ptr<Node> grad_fn;     // the op that made this tensor (non-leaf)
  std::shared_ptr<Node> grad_acc;    // leaves that require grad: where backward delivers their gradient
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient (leaves)
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation ----
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::I64, Device device = Device::cpu());
  // Copies host values into a new CPU tensor of the given shape (numel must match) and dtype.
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape, DType dtype = DType::F32);
  static Tensor from_vector(const std::vector<double>& v, const Shape& shape, DType dtype = DType::F64);
  static Tensor from_vector(const std::vector<int64_t>& v, const Shape& shape, DType dtype = DType::I64);
  static Tensor from_vector(const std::vector<int32_t>& v, const Shape& shape, DType dtype = DType::I32);

  // ---- properties ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return int64_t(impl().shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(impl().shape); }
  int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  bool is_contiguous() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  std::string str() const;  // "Tensor[f32 cpu 2x3]"
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  TensorImpl* impl_ptr() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_shared() const { return impl_; }
  bool same_storage(const Tensor& o) const { return storage() == o.storage(); }

  // Raw pointer to the first element (storage + offset). data<T>() checks dtype and that the tensor is on the CPU.
  void* raw_data() const;
  template <typename T> T* data() const {
    ENG_CHECK(dtype_of<T>::value == dtype(), "data<{}>() called on a {} tensor", dtype_name(dtype_of<T>::value), dtype_name(dtype()));
    ENG_CHECK(device().is_cpu(), "data() needs a CPU tensor, this one is on {}", device().str());
    return static_cast<T*>(raw_data());
  }
  // Element values copied to the host (any device, any layout), converted to T.
  template <typename T> std::vector<T> to_vector() const;
  double item() const;  // one-element tensor's value

  // ---- copies and conversions (differentiable where it makes sense) ----
  Tensor contiguous() const;     // self when already contiguous
  Tensor clone() const;          // always a fresh contiguous copy
  Tensor to(DType dtype) const;  // self when already that dtype
  Tensor to(Device device) const;
  void copy_(const Tensor& src);  // in-place, no autograd; src broadcast to self's shape, dtype converted
  void fill_(double value);       // in-place, no autograd
  void zero_() { fill_(0.0); }

  // ---- views (differentiable) ----
  Tensor view(const Shape& shape) const;     // needs compatible strides; one -1 allowed
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;  // python-like, negatives allowed
  Tensor select(int64_t dim, int64_t index) const;  // removes dim
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const { return slice(dim, start, start + length); }
  Tensor expand(const Shape& shape) const;  // -1 keeps a size
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // ---- autograd ----
  bool requires_grad() const { return impl().requires_grad || impl().grad_fn != nullptr; }
  Tensor& requires_grad_(bool on = true);  // leaves only
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g);
  void zero_grad() { impl_->grad.reset(); }
  // Reverse-mode autograd from this tensor. Without a gradient the tensor must hold one element.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, no history
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }

 private:
  TensorImpl& impl() const {
    ENG_CHECK(impl_ != nullptr, "use of an undefined tensor");
    return *impl_;
  }
  std::shared_ptr<TensorImpl> impl_;
};

// Makes a tensor that views `base`'s storage with the given geometry (no autograd).
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* what = "dim");

}  // namespace eng
