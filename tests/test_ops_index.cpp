// test_ops_index.cpp: registry cases for the indexing and joining ops (gather, scatter_add, index_select,
// embedding, topk, sort, argsort, cat, stack, split, chunk, max/min/argmax along a dim), checked against naive
// f64 references; and the "index" suite: range errors, sort stability, topk edge cases, cat errors, split/chunk
// views, and thread-count independence of the accumulating kernels.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>

#include "engine/backend.h"
#include "tests/op_registry.h"
#include "tests/test_util.h"

using namespace optest;
using eng::Tensor;

namespace {

// ---------------------------------------------------------------- naive references

std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> m(s.size());
  for (size_t d = s.size(); d-- > 0;) {
    m[d] = i % s[d];
    i /= s[d];
  }
  return m;
}
int64_t ravel(const std::vector<int64_t>& m, const Shape& s) {
  int64_t off = 0;
  for (size_t d = 0; d < s.size(); d++) off = off * s[d] + m[d];
  return off;
}
size_t wrap(int64_t dim, size_t ndim) { return size_t(dim < 0 ? dim + int64_t(ndim) : dim); }

HostArray gather_ref(const HostArray& x, int64_t dim, const HostArray& idx) {
  size_t d = wrap(dim, x.shape.size());
  HostArray o = make_host(idx.shape);
  for (int64_t i = 0; i < o.numel(); i++) {
    auto m = unravel(i, idx.shape);
    m[d] = int64_t(idx.v[size_t(i)]);
    o.v[size_t(i)] = x.v[size_t(ravel(m, x.shape))];
  }
  return o;
}

HostArray scatter_add_ref(const HostArray& x, int64_t dim, const HostArray& idx, const HostArray& src) {
  size_t d = wrap(dim, x.shape.size());
  HostArray o = x;
  for (int64_t i = 0; i < idx.numel(); i++) {
    auto m = unravel(i, idx.shape);
    double s = src.v[size_t(ravel(m, src.shape))];
    m[d] = int64_t(idx.v[size_t(i)]);
    o.v[size_t(ravel(m, x.shape))] += s;
  }
  return o;
}

HostArray index_select_ref(const HostArray& x, int64_t dim, const HostArray& idx) {
  size_t d = wrap(dim, x.shape.size());
  Shape os = x.shape;
  os[d] = idx.numel();
  HostArray o = make_host(os);
  for (int64_t i = 0; i < o.numel(); i++) {
    auto m = unravel(i, os);
    m[d] = int64_t(idx.v[size_t(m[d])]);
    o.v[size_t(i)] = x.v[size_t(ravel(m, x.shape))];
  }
  return o;
}

// The first k of each line along dim in sorted order, by rank counting (no sorting algorithm involved):
// element j's rank is the number of elements that must come before it; ties go to the lower position.
HostArray order_ref(const HostArray& x, int64_t dim, bool descending, int64_t k, bool want_indices) {
  size_t d = wrap(dim, x.shape.size());
  int64_t n = x.shape[d];
  Shape os = x.shape;
  os[d] = k;
  HostArray o = make_host(os);
  for (int64_t i = 0; i < x.numel(); i++) {
    auto m = unravel(i, x.shape);
    int64_t j = m[d];
    double v = x.v[size_t(i)];
    int64_t rank = 0;
    for (int64_t l = 0; l < n; l++) {
      auto ml = m;
      ml[d] = l;
      double w = x.v[size_t(ravel(ml, x.shape))];
      bool before = descending ? w > v : w < v;
      if (before || (w == v && l < j)) rank++;
    }
    if (rank >= k) continue;
    m[d] = rank;
    o.v[size_t(ravel(m, os))] = want_indices ? double(j) : v;
  }
  return o;
}

HostArray drop_dim(HostArray a, int64_t dim) {
  a.shape.erase(a.shape.begin() + int64_t(wrap(dim, a.shape.size())));
  return a;
}

HostArray cat_ref(const std::vector<HostArray>& xs, int64_t dim) {
  size_t d = wrap(dim, xs[0].shape.size());
  Shape os = xs[0].shape;
  os[d] = 0;
  for (const auto& x : xs) os[d] += x.shape[d];
  HostArray o = make_host(os);
  int64_t at = 0;
  for (const auto& x : xs) {
    for (int64_t i = 0; i < x.numel(); i++) {
      auto m = unravel(i, x.shape);
      m[d] += at;
      o.v[size_t(ravel(m, os))] = x.v[size_t(i)];
    }
    at += x.shape[d];
  }
  return o;
}

HostArray unsqueeze_ref(HostArray a, int64_t dim) {
  a.shape.insert(a.shape.begin() + int64_t(wrap(dim, a.shape.size() + 1)), 1);
  return a;
}

// Sub-box [start, start + len) of dim d.
HostArray narrow_ref(const HostArray& x, int64_t dim, int64_t start, int64_t len) {
  size_t d = wrap(dim, x.shape.size());
  Shape os = x.shape;
  os[d] = len;
  HostArray o = make_host(os);
  for (int64_t i = 0; i < o.numel(); i++) {
    auto m = unravel(i, os);
    m[d] += start;
    o.v[size_t(i)] = x.v[size_t(ravel(m, x.shape))];
  }
  return o;
}

HostArray scale_ref(HostArray a, double s) { return map_unary(a, [s](double v) { return v * s; }); }

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
using Ref = std::function<HostArray(const std::vector<HostArray>&)>;
InputSpec idx(Shape s, int64_t hi, bool transposed = false) { return {s, Kind::Index, hi, false, transposed}; }
InputSpec distinct(Shape s, bool transposed = false) { return {s, Kind::Distinct, 0, true, transposed}; }
InputSpec normal(Shape s, bool transposed = false) { return {s, Kind::Normal, 0, true, transposed}; }

// ---------------------------------------------------------------- gather / scatter_add

OP_CASE({"gather dim 1 (3-D)", {normal({3, 4, 5}), idx({3, 2, 5}, 4)},
         [](const std::vector<Tensor>& x) { return eng::gather(x[0], 1, x[1]); },
         [](const std::vector<HostArray>& h) { return gather_ref(h[0], 1, h[1]); }});
OP_CASE({"gather dim -1, index smaller than x in dim 0", {normal({3, 5}), idx({2, 7}, 5)},
         [](const std::vector<Tensor>& x) { return eng::gather(x[0], -1, x[1]); },
         [](const std::vector<HostArray>& h) { return gather_ref(h[0], -1, h[1]); }});
OP_CASE({"gather dim 0 of transposed x with transposed index", {normal({4, 3}, true), idx({6, 3}, 4, true)},
         [](const std::vector<Tensor>& x) { return eng::gather(x[0], 0, x[1]); },
         [](const std::vector<HostArray>& h) { return gather_ref(h[0], 0, h[1]); }});

OP_CASE({"scatter_add dim 1 (3-D, duplicate indices)", {normal({3, 4, 2}), idx({3, 6, 2}, 4), normal({3, 6, 2})},
         [](const std::vector<Tensor>& x) { return eng::scatter_add(x[0], 1, x[1], x[2]); },
         [](const std::vector<HostArray>& h) { return scatter_add_ref(h[0], 1, h[1], h[2]); }});
OP_CASE({"scatter_add dim 0, src larger than index", {normal({3, 4}), idx({5, 2}, 3), normal({6, 4})},
         [](const std::vector<Tensor>& x) { return eng::scatter_add(x[0], 0, x[1], x[2]); },
         [](const std::vector<HostArray>& h) { return scatter_add_ref(h[0], 0, h[1], h[2]); }});
OP_CASE({"scatter_add dim -1 of transposed x and src", {normal({4, 5}, true), idx({4, 6}, 5), normal({4, 6}, true)},
         [](const std::vector<Tensor>& x) { return eng::scatter_add(x[0], -1, x[1], x[2]); },
         [](const std::vector<HostArray>& h) { return scatter_add_ref(h[0], -1, h[1], h[2]); }});

// Inner dims that do not collapse to one stride take the kernels' offset-table path.
OP_CASE({"gather dim 0, index smaller than x in two inner dims", {normal({3, 4, 5}), idx({4, 2, 3}, 3)},
         [](const std::vector<Tensor>& x) { return eng::gather(x[0], 0, x[1]); },
         [](const std::vector<HostArray>& h) { return gather_ref(h[0], 0, h[1]); }});
OP_CASE({"scatter_add dim 0, index smaller than src in two inner dims", {normal({3, 3, 4}), idx({4, 2, 3}, 3), normal({5, 3, 4})},
         [](const std::vector<Tensor>& x) { return eng::scatter_add(x[0], 0, x[1], x[2]); },
         [](const std::vector<HostArray>& h) { return scatter_add_ref(h[0], 0, h[1], h[2]); }});

// ---------------------------------------------------------------- index_select / embedding

OP_CASE({"index_select dim 0 (duplicate indices)", {normal({5, 3}), idx({9}, 5)},
         [](const std::vector<Tensor>& x) { return eng::index_select(x[0], 0, x[1]); },
         [](const std::vector<HostArray>& h) { return index_select_ref(h[0], 0, h[1]); }});
OP_CASE({"index_select dim 1 (3-D)", {normal({2, 6, 3}), idx({4}, 6)},
         [](const std::vector<Tensor>& x) { return eng::index_select(x[0], 1, x[1]); },
         [](const std::vector<HostArray>& h) { return index_select_ref(h[0], 1, h[1]); }});
OP_CASE({"index_select dim -1 of transposed x", {normal({4, 5}, true), idx({7}, 5)},
         [](const std::vector<Tensor>& x) { return eng::index_select(x[0], -1, x[1]); },
         [](const std::vector<HostArray>& h) { return index_select_ref(h[0], -1, h[1]); }});

OP_CASE({"index_select dim 0 of a transposed 3-D view", {normal({4, 3, 2}, true), idx({5}, 4)},
         [](const std::vector<Tensor>& x) { return eng::index_select(x[0], 0, x[1]); },
         [](const std::vector<HostArray>& h) { return index_select_ref(h[0], 0, h[1]); }});

OP_CASE({"embedding ids [2, 3]", {normal({6, 4}), idx({2, 3}, 6)},
         [](const std::vector<Tensor>& x) { return eng::embedding(x[0], x[1]); },
         [](const std::vector<HostArray>& h) {
           HostArray flat = h[1];
           flat.shape = {flat.numel()};
           HostArray o = index_select_ref(h[0], 0, flat);
           o.shape = {2, 3, 4};
           return o;
         }});
OP_CASE({"embedding of transposed table, transposed ids", {normal({5, 7}, true), idx({3, 4}, 5, true)},
         [](const std::vector<Tensor>& x) { return eng::embedding(x[0], x[1]); },
         [](const std::vector<HostArray>& h) {
           HostArray flat = h[1];
           flat.shape = {flat.numel()};
           HostArray o = index_select_ref(h[0], 0, flat);
           o.shape = {3, 4, 7};
           return o;
         }});

// ---------------------------------------------------------------- topk / sort / argsort

OP_CASE({"topk k=3 largest dim -1 values", {distinct({3, 7})},
         [](const std::vector<Tensor>& x) { return eng::topk(x[0], 3, -1).values; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], -1, true, 3, false); }});
OP_CASE({"topk k=3 largest dim -1 indices", {distinct({3, 7})},
         [](const std::vector<Tensor>& x) { return eng::topk(x[0], 3, -1).indices; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], -1, true, 3, true); }});
OP_CASE({"topk k=2 smallest dim 0 values", {distinct({6, 4})},
         [](const std::vector<Tensor>& x) { return eng::topk(x[0], 2, 0, false).values; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 0, false, 2, false); }});
OP_CASE({"topk k=2 smallest dim 0 indices (3-D)", {distinct({5, 2, 3})},
         [](const std::vector<Tensor>& x) { return eng::topk(x[0], 2, 0, false).indices; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 0, false, 2, true); }});
OP_CASE({"topk k=n dim 1 of transposed x", {distinct({5, 4}, true)},
         [](const std::vector<Tensor>& x) { return eng::topk(x[0], 4, 1).values; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 1, true, 4, false); }});

OP_CASE({"sort ascending dim -1 values", {distinct({3, 6})},
         [](const std::vector<Tensor>& x) { return eng::sort(x[0]).values; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], -1, false, 6, false); }});
OP_CASE({"sort descending dim 0 values (3-D)", {distinct({5, 3, 2})},
         [](const std::vector<Tensor>& x) { return eng::sort(x[0], 0, true).values; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 0, true, 5, false); }});
OP_CASE({"sort descending dim 1 indices of transposed x", {distinct({4, 5}, true)},
         [](const std::vector<Tensor>& x) { return eng::sort(x[0], 1, true).indices; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 1, true, 5, true); }});
OP_CASE({"argsort ascending dim -2", {distinct({6, 3})},
         [](const std::vector<Tensor>& x) { return eng::argsort(x[0], -2); },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 0, false, 6, true); }});
OP_CASE({"argsort descending of transposed x", {distinct({3, 5}, true)},
         [](const std::vector<Tensor>& x) { return eng::argsort(x[0], -1, true); },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], -1, true, 5, true); }});

// ---------------------------------------------------------------- max / min / argmax along a dim

OP_CASE({"max dim 1 values", {distinct({3, 5})},
         [](const std::vector<Tensor>& x) { return eng::max(x[0], 1).values; },
         [](const std::vector<HostArray>& h) { return drop_dim(order_ref(h[0], 1, true, 1, false), 1); }});
OP_CASE({"max dim 0 keepdim values (3-D)", {distinct({4, 3, 2})},
         [](const std::vector<Tensor>& x) { return eng::max(x[0], 0, true).values; },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 0, true, 1, false); }});
OP_CASE({"min dim -1 values of transposed x", {distinct({4, 6}, true)},
         [](const std::vector<Tensor>& x) { return eng::min(x[0], -1).values; },
         [](const std::vector<HostArray>& h) { return drop_dim(order_ref(h[0], -1, false, 1, false), -1); }});
OP_CASE({"min dim 0 indices", {distinct({5, 3})},
         [](const std::vector<Tensor>& x) { return eng::min(x[0], 0).indices; },
         [](const std::vector<HostArray>& h) { return drop_dim(order_ref(h[0], 0, false, 1, true), 0); }});
OP_CASE({"argmax dim 1", {distinct({4, 6})},
         [](const std::vector<Tensor>& x) { return eng::argmax(x[0], 1); },
         [](const std::vector<HostArray>& h) { return drop_dim(order_ref(h[0], 1, true, 1, true), 1); }});
OP_CASE({"argmax dim -2 keepdim of transposed x", {distinct({5, 4}, true)},
         [](const std::vector<Tensor>& x) { return eng::argmax(x[0], -2, true); },
         [](const std::vector<HostArray>& h) { return order_ref(h[0], 0, true, 1, true); }});

// ---------------------------------------------------------------- cat / stack / split / chunk

OP_CASE({"cat dim 0 of three", {normal({2, 3}), normal({1, 3}), normal({4, 3})},
         [](const std::vector<Tensor>& x) { return eng::cat({x[0], x[1], x[2]}, 0); },
         [](const std::vector<HostArray>& h) { return cat_ref({h[0], h[1], h[2]}, 0); }});
OP_CASE({"cat dim -1 with a transposed input", {normal({3, 2}), normal({3, 4}, true)},
         [](const std::vector<Tensor>& x) { return eng::cat({x[0], x[1]}, -1); },
         [](const std::vector<HostArray>& h) { return cat_ref({h[0], h[1]}, -1); }});
OP_CASE({"cat dim 1 (3-D), same input twice", {normal({2, 3, 2}), normal({2, 1, 2})},
         [](const std::vector<Tensor>& x) { return eng::cat({x[0], x[1], x[0]}, 1); },
         [](const std::vector<HostArray>& h) { return cat_ref({h[0], h[1], h[0]}, 1); }});
OP_CASE({"stack dim 0 of three", {normal({2, 3}), normal({2, 3}), normal({2, 3})},
         [](const std::vector<Tensor>& x) { return eng::stack({x[0], x[1], x[2]}, 0); },
         [](const std::vector<HostArray>& h) {
           return cat_ref({unsqueeze_ref(h[0], 0), unsqueeze_ref(h[1], 0), unsqueeze_ref(h[2], 0)}, 0);
         }});
OP_CASE({"stack dim -1 with a transposed input", {normal({3, 4}, true), normal({3, 4})},
         [](const std::vector<Tensor>& x) { return eng::stack({x[0], x[1]}, -1); },
         [](const std::vector<HostArray>& h) { return cat_ref({unsqueeze_ref(h[0], -1), unsqueeze_ref(h[1], -1)}, -1); }});
OP_CASE({"split size 2 dim 1, last piece smaller, pieces reordered", {normal({3, 5})},
         [](const std::vector<Tensor>& x) {
           auto p = eng::split(x[0], 2, 1);
           REQUIRE(p.size() == 3);
           return eng::cat({p[2], p[0] * 2.0}, 1);  // p[1] unused: its gradient must be zero
         },
         [](const std::vector<HostArray>& h) {
           return cat_ref({narrow_ref(h[0], 1, 4, 1), scale_ref(narrow_ref(h[0], 1, 0, 2), 2.0)}, 1);
         }});
OP_CASE({"split size 3 dim -2 of transposed x", {normal({7, 3}, true)},
         [](const std::vector<Tensor>& x) {
           auto p = eng::split(x[0], 3, -2);
           REQUIRE(p.size() == 3);
           return eng::cat({p[1] * -1.0, p[2], p[0]}, 0);
         },
         [](const std::vector<HostArray>& h) {
           return cat_ref({scale_ref(narrow_ref(h[0], 0, 3, 3), -1.0), narrow_ref(h[0], 0, 6, 1), narrow_ref(h[0], 0, 0, 3)}, 0);
         }});
OP_CASE({"chunk 3 of 7 along dim 0", {normal({7, 2})},
         [](const std::vector<Tensor>& x) {
           auto c = eng::chunk(x[0], 3, 0);
           REQUIRE(c.size() == 3);
           return eng::cat({c[1], c[2] * 3.0}, 0);
         },
         [](const std::vector<HostArray>& h) {
           return cat_ref({narrow_ref(h[0], 0, 3, 3), scale_ref(narrow_ref(h[0], 0, 6, 1), 3.0)}, 0);
         }});

// ---------------------------------------------------------------- helpers for the doctest cases

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const eng::Error& e) {
    return e.what();
  }
  return "";
}
bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

Tensor ids(std::vector<int64_t> v, Shape s) { return Tensor::from_vector(v, s); }

// Restores the OpenMP thread count when a test that changes it ends (even by an exception).
}  // namespace

TEST_SUITE("index") {
  TEST_CASE("out-of-range indices: a clear error naming the op, the value and the size; nothing written") {
    Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
    std::string e = error_of([&] { eng::gather(x, 1, ids({0, 3, 1, 2}, {2, 2})); });
    CHECK(has(e, "gather"));
    CHECK(has(e, "index 3"));
    CHECK(has(e, "size 3"));
    e = error_of([&] { eng::gather(x, 0, ids({0, -1, 1}, {1, 3})); });
    CHECK(has(e, "gather"));
    CHECK(has(e, "index -1"));
    e = error_of([&] { eng::index_select(x, 0, ids({1, 0, 7}, {3})); });
    CHECK(has(e, "index_select"));
    CHECK(has(e, "index 7"));
    CHECK(has(e, "size 2"));
    e = error_of([&] { eng::scatter_add(x, 1, ids({5}, {1, 1}), Tensor::ones({1, 1})); });
    CHECK(has(e, "scatter_add"));
    CHECK(has(e, "index 5"));
    CHECK(has(e, "size 3"));
    Tensor w = Tensor::ones({4, 2});
    e = error_of([&] { eng::embedding(w, ids({0, 4}, {2})); });
    CHECK(has(e, "embedding"));
    CHECK(has(e, "index 4"));
    CHECK(has(e, "size 4"));
    e = error_of([&] { eng::gather(x, 0, Tensor::zeros({2, 3}, eng::DType::F32)); });
    CHECK(has(e, "i64"));

    // The kernels check before writing: a bad index late in the list leaves the destination untouched.
    eng::Backend& cpu = eng::backend_for(eng::Device::cpu());
    Tensor dst = Tensor::zeros({3, 2});
    Tensor src = Tensor::ones({4, 2});
    CHECK(has(error_of([&] { cpu.index_add(eng::desc_of(dst), 0, eng::desc_of(ids({0, 1, 2, 3}, {4})), eng::desc_of(src)); }),
              "index_add: index 3 out of range for dim 0 of size 3"));
    CHECK(has(error_of([&] { cpu.scatter_add(eng::desc_of(dst), 0, eng::desc_of(ids({0, 1, 2, 9}, {4, 1})), eng::desc_of(src)); }),
              "index 9"));
    for (float v : dst.to_vector<float>()) CHECK(v == 0.0f);
  }

  TEST_CASE("sort is stable for equal keys, ascending and descending, along any dim") {
    Tensor x = Tensor::from_vector(std::vector<double>{2, 1, 2, 1, 2, 0}, {6});
    CHECK(eng::argsort(x).to_vector<int64_t>() == std::vector<int64_t>{5, 1, 3, 0, 2, 4});
    CHECK(eng::argsort(x, 0, true).to_vector<int64_t>() == std::vector<int64_t>{0, 2, 4, 1, 3, 5});
    auto s = eng::sort(x, 0, true);
    CHECK(s.values.to_vector<double>() == std::vector<double>{2, 2, 2, 1, 1, 0});
    // Many duplicates along dim 0 of a transposed view, compared with std::stable_sort of each column.
    std::mt19937 g(7);
    std::vector<float> v(200);
    for (float& f : v) f = float(g() % 4);
    Tensor m = Tensor::from_vector(v, {8, 25}).t();  // [25, 8], non-contiguous
    Tensor idx = eng::argsort(m, 0);
    std::vector<int64_t> got = idx.to_vector<int64_t>();
    for (int64_t c = 0; c < 8; c++) {
      std::vector<int64_t> want(25);
      for (int64_t r = 0; r < 25; r++) want[size_t(r)] = r;
      std::stable_sort(want.begin(), want.end(), [&](int64_t a, int64_t b) { return v[size_t(c * 25 + a)] < v[size_t(c * 25 + b)]; });
      for (int64_t r = 0; r < 25; r++) CHECK(got[size_t(r * 8 + c)] == want[size_t(r)]);
    }
    // Integer keys sort too (MAE's ids_restore = argsort(ids_shuffle)).
    Tensor shuffle = ids({3, 0, 2, 1}, {1, 4});
    CHECK(eng::argsort(shuffle, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 3, 2, 0});
    // NaN sorts last ascending and first descending.
    Tensor n = Tensor::from_vector(std::vector<float>{1, NAN, -1}, {3});
    CHECK(eng::argsort(n).to_vector<int64_t>() == std::vector<int64_t>{2, 0, 1});
    CHECK(eng::argsort(n, 0, true).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 2});
  }

  TEST_CASE("topk: k = 0, k = n, ties by lower index, bad k") {
    Tensor x = Tensor::from_vector(std::vector<float>{1, 3, 3, 2, 3, 0, 5, 1}, {2, 4});
    auto t0 = eng::topk(x, 0, 1);
    CHECK(t0.values.shape() == Shape{2, 0});
    CHECK(t0.indices.shape() == Shape{2, 0});
    CHECK(t0.indices.dtype() == eng::DType::I64);
    auto tn = eng::topk(x, 4, 1);
    auto sd = eng::sort(x, 1, true);
    CHECK(tn.values.to_vector<float>() == sd.values.to_vector<float>());
    CHECK(tn.indices.to_vector<int64_t>() == sd.indices.to_vector<int64_t>());
    CHECK(tn.indices.to_vector<int64_t>() == std::vector<int64_t>{1, 2, 3, 0, 2, 0, 3, 1});
    auto t2 = eng::topk(x, 2, 1);
    CHECK(t2.indices.to_vector<int64_t>() == std::vector<int64_t>{1, 2, 2, 0});
    auto s2 = eng::topk(x, 2, 1, false);
    CHECK(s2.indices.to_vector<int64_t>() == std::vector<int64_t>{0, 3, 1, 3});
    CHECK(s2.values.to_vector<float>() == std::vector<float>{1, 2, 0, 1});
    CHECK(has(error_of([&] { eng::topk(x, 5, 1); }), "topk: k = 5 out of range for dim 1 of size 4"));
    CHECK(has(error_of([&] { eng::topk(x, -1, 0); }), "topk"));
    // k = 0 with a gradient: backward gives zeros.
    Tensor xl = x.detach();
    xl.requires_grad_(true);
    Tensor l = eng::sum(eng::topk(xl, 0, 1).values);
    l.backward();
    for (float v : xl.grad().to_vector<float>()) CHECK(v == 0.0f);
  }

  TEST_CASE("cat: mismatched shapes, dtypes, ranks and an empty list are clear errors") {
    Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({2, 4});
    std::string e = error_of([&] { eng::cat({a, b}, 0); });
    CHECK(has(e, "cat: tensor 1 has shape"));
    CHECK(has(e, "outside dim 0"));
    CHECK(eng::cat({a, b}, 1).shape() == Shape{2, 7});
    CHECK(has(error_of([&] { eng::cat({a, Tensor::zeros({2, 3}, eng::DType::F64)}, 0); }), "cat: tensor 1 is f64 but tensor 0 is f32"));
    CHECK(has(error_of([&] { eng::cat({a, Tensor::zeros({2, 3, 1})}, 0); }), "cat: tensor 1 has shape"));
    CHECK(has(error_of([&] { eng::cat({}, 0); }), "cat: empty list"));
    CHECK(has(error_of([&] { eng::cat({a}, 2); }), "cat dim 2 out of range"));
    CHECK(has(error_of([&] { eng::stack({a, b}); }), "stack: tensor 1 has shape"));
  }

  TEST_CASE("split and chunk return views sharing storage; sizes as PyTorch") {
    Tensor x = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {5, 2});
    auto p = eng::split(x, 2, 0);
    REQUIRE(p.size() == 3);
    CHECK(p[0].shape() == Shape{2, 2});
    CHECK(p[2].shape() == Shape{1, 2});
    for (const auto& t : p) CHECK(t.same_storage(x));
    x.fill_(7.0);
    CHECK(p[2].to_vector<float>() == std::vector<float>{7, 7});
    p[1].fill_(1.0);  // writes through the view
    CHECK(x.to_vector<float>() == std::vector<float>{7, 7, 7, 7, 1, 1, 1, 1, 7, 7});

    auto c = eng::chunk(Tensor::zeros({7, 3}), 3, 0);
    REQUIRE(c.size() == 3);
    CHECK(c[0].size(0) == 3);
    CHECK(c[1].size(0) == 3);
    CHECK(c[2].size(0) == 1);
    auto c6 = eng::chunk(Tensor::zeros({2, 6}), 4, -1);  // ceil(6 / 4) = 2: three pieces, as PyTorch
    REQUIRE(c6.size() == 3);
    for (const auto& t : c6) CHECK(t.shape() == Shape{2, 2});
    auto c1 = eng::chunk(x, 10, 1);
    REQUIRE(c1.size() == 2);
    CHECK(c1[1].same_storage(x));
    CHECK(c1[1].to_vector<float>() == std::vector<float>{7, 7, 1, 1, 7});
    CHECK(has(error_of([&] { eng::split(x, 0, 0); }), "split_size must be positive"));
    CHECK(has(error_of([&] { eng::chunk(x, 0, 0); }), "chunks must be positive"));
  }

  TEST_CASE("scatter_add and index_add with duplicate indices: bitwise equal with 1 and 2 threads and to a serial loop") {
    testutil::ThreadCount guard;
    std::mt19937 g(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    eng::Backend& cpu = eng::backend_for(eng::Device::cpu());

    // index_add along dim 0 of [64, 256] from [4000, 256] (embedding backward shape): several parallel pieces.
    const int64_t V = 64, D = 256, N = 4000;
    std::vector<float> src_v(size_t(N * D));
    for (float& f : src_v) f = nd(g) * float(1 << (g() % 12));  // magnitudes far apart: order matters in f32
    std::vector<int64_t> row(static_cast<size_t>(N));
    for (int64_t& r : row) r = int64_t(g() % V);
    Tensor src = Tensor::from_vector(src_v, {N, D});
    Tensor index = ids(row, {N});
    std::vector<float> want(size_t(V * D), 0.0f);
    for (int64_t j = 0; j < N; j++)
      for (int64_t k = 0; k < D; k++) want[size_t(row[size_t(j)] * D + k)] += src_v[size_t(j * D + k)];
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      Tensor dst = Tensor::zeros({V, D});
      cpu.index_add(eng::desc_of(dst), 0, eng::desc_of(index), eng::desc_of(src));
      std::vector<float> got = dst.to_vector<float>();
      CHECK_MESSAGE(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0, "index_add, threads=" << threads);
      // The same through autograd: the gradient of index_select.
      Tensor w = Tensor::zeros({V, D});
      w.requires_grad_(true);
      eng::index_select(w, 0, index).backward(src);
      std::vector<float> gw = w.grad().to_vector<float>();
      CHECK_MESSAGE(std::memcmp(gw.data(), want.data(), want.size() * sizeof(float)) == 0, "index_select backward, threads=" << threads);
    }

    // scatter_add along dim 1 of [64, 50] from [64, 2000], and along dim 0 of a transposed destination.
    const int64_t R = 64, C = 50, M = 2000;
    std::vector<float> s2(size_t(R * M));
    for (float& f : s2) f = nd(g) * float(1 << (g() % 12));
    std::vector<int64_t> col(size_t(R * M));
    for (int64_t& c : col) c = int64_t(g() % C);
    Tensor src2 = Tensor::from_vector(s2, {R, M});
    Tensor index2 = ids(col, {R, M});
    std::vector<float> want2(size_t(R * C), 0.0f);
    for (int64_t r = 0; r < R; r++)
      for (int64_t j = 0; j < M; j++) want2[size_t(r * C + col[size_t(r * M + j)])] += s2[size_t(r * M + j)];
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      Tensor out = eng::scatter_add(Tensor::zeros({R, C}), 1, index2, src2);
      std::vector<float> got = out.to_vector<float>();
      CHECK_MESSAGE(std::memcmp(got.data(), want2.data(), want2.size() * sizeof(float)) == 0, "scatter_add, threads=" << threads);
      Tensor outT = eng::scatter_add(Tensor::zeros({C, R}).t(), 1, index2, src2);  // non-contiguous x
      std::vector<float> gotT = outT.to_vector<float>();
      CHECK_MESSAGE(std::memcmp(gotT.data(), want2.data(), want2.size() * sizeof(float)) == 0, "scatter_add on a transposed x, threads=" << threads);
      Tensor outD0 = eng::scatter_add(Tensor::zeros({C, R}), 0, index2.t(), src2.t());  // along dim 0
      std::vector<float> gotD0 = outD0.t().to_vector<float>();
      CHECK_MESSAGE(std::memcmp(gotD0.data(), want2.data(), want2.size() * sizeof(float)) == 0, "scatter_add dim 0, threads=" << threads);
    }
  }

  TEST_CASE("gather, index_select and sort move integer and f32 data; results independent of thread count") {
    testutil::ThreadCount guard;
    std::mt19937 g(3);
    std::vector<float> v(size_t(300 * 200));
    for (float& f : v) f = float(g() % 1000) * 0.5f;
    Tensor x = Tensor::from_vector(v, {300, 200});
    std::vector<int64_t> sel(500);
    for (int64_t& s : sel) s = int64_t(g() % 300);
    std::vector<float> r1, r2;
    std::vector<int64_t> a1, a2;
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      auto& r = threads == 1 ? r1 : r2;
      auto& a = threads == 1 ? a1 : a2;
      r = eng::index_select(x, 0, ids(sel, {500})).to_vector<float>();
      a = eng::argsort(x, 0).to_vector<int64_t>();
    }
    CHECK(r1 == r2);
    CHECK(a1 == a2);
    for (int64_t j = 0; j < 500; j += 37)
      for (int64_t k = 0; k < 200; k += 13) CHECK(r1[size_t(j * 200 + k)] == v[size_t(sel[size_t(j)] * 200 + k)]);
    // i64 data through gather.
    Tensor data = ids({10, 11, 12, 13, 14, 15}, {2, 3});
    CHECK(eng::gather(data, 1, ids({2, 2, 0, 1}, {2, 2})).to_vector<int64_t>() == std::vector<int64_t>{12, 12, 13, 14});
  }
}
