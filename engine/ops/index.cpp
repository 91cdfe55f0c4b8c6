// index.cpp: indexing and joining ops with their backward: gather, scatter_add, index_select, embedding,
// topk, sort, argsort, cat, stack, split, chunk. Index tensors are i64 and never receive a gradient.
//
// Out-of-range indices: the CPU kernels check every index before writing anything; for tensors on another
// device the indices are checked here on a host copy (a device-to-host copy and a sync), so every device
// reports the same one-line error naming the op, the index value and the size.
#include <algorithm>

#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

namespace {

void check_index_tensor(const Tensor& x, const Tensor& index, const char* op) {
  ENG_CHECK(index.defined(), "{}: index tensor is undefined", op);
  ENG_CHECK(index.dtype() == DType::I64, "{}: index must be i64, got {}", op, dtype_name(index.dtype()));
  check_same_device(x, index, op);
}

// Index values are range-checked by the backends' kernels: the CPU's throw at once; CUDA's skip the element and
// report at the next read-back (engine/backends/cuda/cuda_common.cuh, IndexFault), so no op waits for the GPU.

// Gradient of "pick elements of x along dim at idx" (max, topk, sort): scatter g back into zeros of x's shape.
Tensor record_pick(const char* name, const Tensor& values, const Tensor& x, int64_t dim, const Tensor& idx) {
  if (!any_requires_grad({&x})) return values;
  Shape xs = x.shape();
  Tensor saved_idx = idx.detach();
  return record(name, values, {x}, [xs, dim, saved_idx](const Tensor& g) {
    Tensor gx = Tensor::zeros(xs, g.dtype(), g.device());
    if (g.numel()) backend_for(g.device()).scatter_add(desc_of(gx), int(dim), desc_of(saved_idx), desc_of(g));
    return std::vector<Tensor>{gx};
  });
}

}  // namespace

// ---------------------------------------------------------------- gather / scatter_add

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index_tensor(x, index, "gather");
  ENG_CHECK(x.dim() > 0, "gather: x is 0-d; it needs at least one dim");
  ENG_CHECK(index.dim() == x.dim(), "gather: index has rank {} (shape {}) but x has rank {} (shape {})", index.dim(),
            shape_str(index.shape()), x.dim(), shape_str(x.shape()));
  dim = wrap_dim(dim, x.dim(), "gather dim");
  for (int64_t d = 0; d < x.dim(); d++)
    ENG_CHECK(d == dim || index.size(d) <= x.size(d), "gather: index shape {} exceeds x shape {} in dim {}",
              shape_str(index.shape()), shape_str(x.shape()), d);
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  if (out.numel()) backend_for(x.device()).gather(desc_of(out), desc_of(x), int(dim), desc_of(index));
  return record_pick("gather", out, x, dim, index);
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  check_index_tensor(x, index, "scatter_add");
  check_same_device(x, src, "scatter_add");
  ENG_CHECK(x.dtype() == src.dtype(), "scatter_add: x is {} but src is {}", dtype_name(x.dtype()), dtype_name(src.dtype()));
  ENG_CHECK(x.dim() > 0, "scatter_add: x is 0-d; it needs at least one dim");
  ENG_CHECK(index.dim() == x.dim() && src.dim() == x.dim(), "scatter_add: x {}, index {} and src {} must have the same rank",
            shape_str(x.shape()), shape_str(index.shape()), shape_str(src.shape()));
  dim = wrap_dim(dim, x.dim(), "scatter_add dim");
  for (int64_t d = 0; d < x.dim(); d++) {
    ENG_CHECK(index.size(d) <= src.size(d), "scatter_add: index shape {} exceeds src shape {} in dim {}",
              shape_str(index.shape()), shape_str(src.shape()), d);
    ENG_CHECK(d == dim || index.size(d) <= x.size(d), "scatter_add: index shape {} exceeds x shape {} in dim {}",
              shape_str(index.shape()), shape_str(x.shape()), d);
  }
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel()) backend_for(x.device()).copy(desc_of(out), desc_of(x));
  if (index.numel()) backend_for(x.device()).scatter_add(desc_of(out), int(dim), desc_of(index), desc_of(src));
  if (!any_requires_grad({&x, &src})) return out;
  Tensor idx = index.detach();
  Shape src_shape = src.shape();
  bool src_grad = src.requires_grad();
  return record("scatter_add", out, {x, src}, [idx, dim, src_shape, src_grad](const Tensor& g) {
    Tensor gsrc;
    if (src_grad) {
      Tensor picked = gather(g, dim, idx);  // the part of src that index covers; the rest got no gradient
      if (picked.shape() == src_shape) {
        gsrc = picked;
      } else {
        gsrc = Tensor::zeros(src_shape, g.dtype(), g.device());
        Tensor box = gsrc;
        for (int64_t d = 0; d < box.dim(); d++) box = box.narrow(d, 0, idx.size(d));
        box.copy_(picked);
      }
    }
    return std::vector<Tensor>{g, gsrc};
  });
}

// ---------------------------------------------------------------- index_select / embedding

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index_tensor(x, index, "index_select");
  ENG_CHECK(x.dim() > 0, "index_select: x is 0-d; it needs at least one dim");
  ENG_CHECK(index.dim() <= 1, "index_select: index must be 1-D, got shape {}", shape_str(index.shape()));
  dim = wrap_dim(dim, x.dim(), "index_select dim");
  Tensor idx = index.reshape({index.numel()});
  Shape os = x.shape();
  os[size_t(dim)] = idx.numel();
  Tensor out = Tensor::empty(os, x.dtype(), x.device());
  if (out.numel()) backend_for(x.device()).index_select(desc_of(out), desc_of(x), int(dim), desc_of(idx));
  if (!any_requires_grad({&x})) return out;
  Shape xs = x.shape();
  Tensor saved_idx = idx.detach();
  return record("index_select", out, {x}, [xs, dim, saved_idx](const Tensor& g) {
    Tensor gx = Tensor::zeros(xs, g.dtype(), g.device());
    if (g.numel()) backend_for(g.device()).index_add(desc_of(gx), int(dim), desc_of(saved_idx), desc_of(g));
    return std::vector<Tensor>{gx};
  });
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  ENG_CHECK(weight.dim() == 2, "embedding: weight must be 2-D [V, D], got shape {}", shape_str(weight.shape()));
  ENG_CHECK(ids.dtype() == DType::I64, "embedding: ids must be i64, got {}", dtype_name(ids.dtype()));
  Tensor rows;
  try {
    rows = index_select(weight, 0, ids.reshape({ids.numel()}));
  } catch (const Error& e) {
    ENG_FAIL("embedding (table of {} rows): {}", weight.size(0), e.what());
  }
  Shape os = ids.shape();
  os.push_back(weight.size(1));
  return rows.reshape(os);
}

// ---------------------------------------------------------------- topk / sort / argsort

ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim, bool largest) {
  ENG_CHECK(x.dim() > 0, "topk: x is 0-d; it needs at least one dim");
  dim = wrap_dim(dim, x.dim(), "topk dim");
  ENG_CHECK(k >= 0 && k <= x.size(dim), "topk: k = {} out of range for dim {} of size {} (shape {})", k, dim, x.size(dim),
            shape_str(x.shape()));
  Shape os = x.shape();
  os[size_t(dim)] = k;
  Tensor v = Tensor::empty(os, x.dtype(), x.device());
  Tensor i = Tensor::empty(os, DType::I64, x.device());
  if (v.numel()) backend_for(x.device()).topk(desc_of(v), desc_of(i), desc_of(x), k, int(dim), largest);
  return {record_pick("topk", v, x, dim, i), i};
}

ValuesIndices sort(const Tensor& x, int64_t dim, bool descending) {
  ENG_CHECK(x.dim() > 0, "sort: x is 0-d; it needs at least one dim");
  dim = wrap_dim(dim, x.dim(), "sort dim");
  Tensor v = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor i = Tensor::empty(x.shape(), DType::I64, x.device());
  if (v.numel()) backend_for(x.device()).sort(desc_of(v), desc_of(i), desc_of(x), int(dim), descending);
  return {record_pick("sort", v, x, dim, i), i};
}

Tensor argsort(const Tensor& x, int64_t dim, bool descending) {
  ENG_CHECK(x.dim() > 0, "argsort: x is 0-d; it needs at least one dim");
  dim = wrap_dim(dim, x.dim(), "argsort dim");
  Tensor i = Tensor::empty(x.shape(), DType::I64, x.device());
  TensorDesc no_values;  // data == nullptr: the kernel writes only the indices
  if (i.numel()) backend_for(x.device()).sort(no_values, desc_of(i), desc_of(x), int(dim), descending);
  return i;
}

// ---------------------------------------------------------------- cat / stack / split / chunk

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  ENG_CHECK(!xs.empty(), "cat: empty list of tensors");
  for (size_t k = 0; k < xs.size(); k++) ENG_CHECK(xs[k].defined(), "cat: tensor {} is undefined", k);
  const Tensor& first = xs[0];
  ENG_CHECK(first.dim() > 0, "cat: tensor 0 is 0-d; cat needs at least one dim (use stack for scalars)");
  dim = wrap_dim(dim, first.dim(), "cat dim");
  int64_t total = 0;
  for (size_t k = 0; k < xs.size(); k++) {
    const Tensor& x = xs[k];
    ENG_CHECK(x.dtype() == first.dtype(), "cat: tensor {} is {} but tensor 0 is {}; convert with .to()", k,
              dtype_name(x.dtype()), dtype_name(first.dtype()));
    ENG_CHECK(x.device() == first.device(), "cat: tensor {} is on {} but tensor 0 is on {}", k, x.device().str(),
              first.device().str());
    bool same = x.dim() == first.dim();
    for (int64_t d = 0; same && d < x.dim(); d++) same = d == dim || x.size(d) == first.size(d);
    ENG_CHECK(same, "cat: tensor {} has shape {}, which does not match tensor 0's shape {} outside dim {}", k,
              shape_str(x.shape()), shape_str(first.shape()), dim);
    total += x.size(dim);
  }
  Shape os = first.shape();
  os[size_t(dim)] = total;
  Tensor out = Tensor::empty(os, first.dtype(), first.device());
  std::vector<int64_t> starts, sizes;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    int64_t n = x.size(dim);
    if (n) out.narrow(dim, at, n).copy_(x);  // out needs no grad: the slice records nothing
    starts.push_back(at);
    sizes.push_back(n);
    at += n;
  }
  if (!any_requires_grad(xs)) return out;
  return record("cat", out, xs, [dim, starts, sizes](const Tensor& g) {
    std::vector<Tensor> gs;
    for (size_t k = 0; k < starts.size(); k++) gs.push_back(g.narrow(dim, starts[k], sizes[k]));
    return gs;
  });
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  ENG_CHECK(!xs.empty(), "stack: empty list of tensors");
  for (size_t k = 0; k < xs.size(); k++) {
    ENG_CHECK(xs[k].defined(), "stack: tensor {} is undefined", k);
    ENG_CHECK(xs[k].shape() == xs[0].shape(), "stack: tensor {} has shape {} but tensor 0 has shape {}", k,
              shape_str(xs[k].shape()), shape_str(xs[0].shape()));
  }
  dim = wrap_dim(dim, xs[0].dim() + 1, "stack dim");
  std::vector<Tensor> us;
  for (const Tensor& x : xs) us.push_back(x.unsqueeze(dim));
  return cat(us, dim);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  ENG_CHECK(split_size > 0, "split: split_size must be positive, got {}", split_size);
  ENG_CHECK(x.dim() > 0, "split: x is 0-d; it needs at least one dim");
  dim = wrap_dim(dim, x.dim(), "split dim");
  int64_t n = x.size(dim);
  std::vector<Tensor> pieces;
  for (int64_t s = 0; s < n; s += split_size) pieces.push_back(x.narrow(dim, s, std::min(split_size, n - s)));
  if (n == 0) pieces.push_back(x.narrow(dim, 0, 0));  // as PyTorch: one empty piece
  return pieces;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  ENG_CHECK(chunks > 0, "chunk: chunks must be positive, got {}", chunks);
  ENG_CHECK(x.dim() > 0, "chunk: x is 0-d; it needs at least one dim");
  int64_t n = x.size(dim);
  // As PyTorch: pieces of ceil(n / chunks), so there may be fewer than `chunks` pieces.
  return split(x, std::max<int64_t>(1, (n + chunks - 1) / chunks), dim);
}

}  // namespace eng
