// test_ops_routing.cpp: registry cases for the routing ops of expert layers (cumsum, one_hot, bincount,
// grouped_matmul, grouped_mlp_gelu, permute_rows) against naive f64 references and finite differences; and the "routing" suite:
// range and shape errors, grouped_matmul bitwise equal to one linear per group (forward and backward), grouped_mlp_gelu
// against the composition it fuses, and results bitwise independent of the thread count.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/backend.h"
#include "engine/rng.h"
#include "tests/op_registry.h"
#include "tests/test_util.h"

using namespace optest;
using eng::DType;
using eng::Tensor;
using testutil::error_of;

namespace {

InputSpec values(Shape s) { return InputSpec{s, Kind::Normal}; }
InputSpec transposed_values(Shape s) { return InputSpec{s, Kind::Normal, 0, true, true}; }
InputSpec forward_only(Shape s) { return InputSpec{s, Kind::Normal, 0, false}; }
InputSpec index_in(Shape s, int64_t hi) { return InputSpec{s, Kind::Index, hi, false}; }

// ---------------------------------------------------------------- naive references

HostArray cumsum_ref(const HostArray& x, int64_t dim) {
  const size_t d = size_t(dim < 0 ? dim + int64_t(x.shape.size()) : dim);
  int64_t inner = 1;
  for (size_t k = d + 1; k < x.shape.size(); k++) inner *= x.shape[k];
  const int64_t n = x.shape[d];
  HostArray o = x;
  for (int64_t i = 0; i < x.numel(); i++) {
    const int64_t j = (i / inner) % n;
    if (j > 0) o.v[size_t(i)] = o.v[size_t(i - inner)] + x.v[size_t(i)];  // rows in order: the previous is final
  }
  return o;
}

HostArray one_hot_ref(const HostArray& idx, int64_t classes) {
  Shape s = idx.shape;
  s.push_back(classes);
  HostArray o = make_host(s);
  for (int64_t i = 0; i < idx.numel(); i++) o.v[size_t(i * classes + int64_t(idx.v[size_t(i)]))] = 1.0;
  return o;
}

HostArray bincount_ref(const HostArray& idx, int64_t bins) {
  HostArray o = make_host({bins});
  for (double v : idx.v) o.v[size_t(v)] += 1.0;
  return o;
}

// y[r] = x[r] w[e(r)]^T (+ b[e(r)]) where e(r) is the group of row r.
HostArray grouped_ref(const HostArray& x, const HostArray& w, const std::vector<int64_t>& sizes, const HostArray* b) {
  const int64_t R = x.size(0), in = x.size(1), out = w.size(1);
  HostArray y = make_host({R, out});
  int64_t r = 0;
  for (size_t e = 0; e < sizes.size(); e++) {
    for (int64_t i = 0; i < sizes[e]; i++, r++) {
      for (int64_t o = 0; o < out; o++) {
        double acc = b ? b->at({int64_t(e), o}) : 0.0;
        for (int64_t p = 0; p < in; p++) acc += x.at({r, p}) * w.at({int64_t(e), o, p});
        y.at({r, o}) = acc;
      }
    }
  }
  return y;
}

// The expert MLP: grouped fc2(gelu(grouped fc1(x))), exact GELU x Φ(x) in f64.
HostArray grouped_mlp_ref(const std::vector<HostArray>& h, const std::vector<int64_t>& sizes) {
  HostArray a = grouped_ref(h[0], h[1], sizes, &h[2]);
  for (double& v : a.v) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  return grouped_ref(a, h[3], sizes, h.size() > 4 ? &h[4] : nullptr);
}

// ---------------------------------------------------------------- registry cases

OP_CASE({"cumsum along the last dim", {values({4, 6})}, [](const std::vector<Tensor>& x) { return eng::cumsum(x[0], -1); },
         [](const std::vector<HostArray>& h) { return cumsum_ref(h[0], -1); }});
OP_CASE({"cumsum along dim 0 of a 3-D tensor", {values({5, 3, 2})},
         [](const std::vector<Tensor>& x) { return eng::cumsum(x[0], 0); },
         [](const std::vector<HostArray>& h) { return cumsum_ref(h[0], 0); }});
OP_CASE({"cumsum along dim 1 of a transposed view", {transposed_values({3, 4})},
         [](const std::vector<Tensor>& x) { return eng::cumsum(x[0], 1); },
         [](const std::vector<HostArray>& h) { return cumsum_ref(h[0], 1); }});
OP_CASE({"cumsum of i64 counts (offsets)", {index_in({7}, 9)},
         [](const std::vector<Tensor>& x) { return eng::cumsum(x[0], 0); },
         [](const std::vector<HostArray>& h) { return cumsum_ref(h[0], 0); }});
OP_CASE({"one_hot of a 2-D index into f32", {index_in({2, 3}, 4)},
         [](const std::vector<Tensor>& x) { return eng::one_hot(x[0], 5, DType::F32); },
         [](const std::vector<HostArray>& h) { return one_hot_ref(h[0], 5); }});
OP_CASE({"one_hot of a 1-D index into i64", {index_in({6}, 3)},
         [](const std::vector<Tensor>& x) { return eng::one_hot(x[0], 3, DType::I64); },
         [](const std::vector<HostArray>& h) { return one_hot_ref(h[0], 3); }});
OP_CASE({"bincount with an empty last bin", {index_in({25}, 6)},
         [](const std::vector<Tensor>& x) { return eng::bincount(x[0], 7); },
         [](const std::vector<HostArray>& h) { return bincount_ref(h[0], 7); }});

const std::vector<int64_t> kUnequalSizes = {2, 0, 3, 1};  // an empty group among unequal ones
OP_CASE({"grouped_matmul with bias, unequal groups and an empty one", {values({6, 5}), values({4, 3, 5}), values({4, 3})},
         [](const std::vector<Tensor>& x) { return eng::grouped_matmul(x[0], x[1], kUnequalSizes, x[2]); },
         [](const std::vector<HostArray>& h) { return grouped_ref(h[0], h[1], kUnequalSizes, &h[2]); }});
const std::vector<int64_t> kEmptyEdges = {0, 4, 0};
OP_CASE({"grouped_matmul without bias, transposed x, empty first and last groups",
         {transposed_values({4, 3}), values({3, 2, 3})},
         [](const std::vector<Tensor>& x) { return eng::grouped_matmul(x[0], x[1], kEmptyEdges); },
         [](const std::vector<HostArray>& h) { return grouped_ref(h[0], h[1], kEmptyEdges, nullptr); }});
// Groups large enough for the packed, threaded f32 GEMM (forward checked only: its f64 gradient check would cost
// seconds; the small cases above check the same backward code, and the "routing" suite checks it in f32).
const std::vector<int64_t> kPackedSizes = {70, 0, 9, 49};
OP_CASE({"grouped_matmul on the packed GEMM path (forward)",
         {forward_only({128, 48}), forward_only({4, 40, 48}), forward_only({4, 40})},
         [](const std::vector<Tensor>& x) { return eng::grouped_matmul(x[0], x[1], kPackedSizes, x[2]); },
         [](const std::vector<HostArray>& h) { return grouped_ref(h[0], h[1], kPackedSizes, &h[2]); }});

OP_CASE({"grouped_mlp_gelu (GELU and its gradient in the epilogues), unequal groups and an empty one",
         {values({6, 5}), values({4, 7, 5}), values({4, 7}), values({4, 3, 7}), values({4, 3})},
         [](const std::vector<Tensor>& x) { return eng::grouped_mlp_gelu(x[0], x[1], x[2], x[3], x[4], kUnequalSizes); },
         [](const std::vector<HostArray>& h) { return grouped_mlp_ref(h, kUnequalSizes); }});
OP_CASE({"grouped_mlp_gelu without fc2 bias, empty first and last groups",
         {values({4, 3}), values({3, 6, 3}), values({3, 6}), values({3, 2, 6})},
         [](const std::vector<Tensor>& x) { return eng::grouped_mlp_gelu(x[0], x[1], x[2], x[3], Tensor(), kEmptyEdges); },
         [](const std::vector<HostArray>& h) { return grouped_mlp_ref(h, kEmptyEdges); }});
OP_CASE({"grouped_mlp_gelu on the packed GEMM path (forward)",
         {forward_only({128, 48}), forward_only({4, 40, 48}), forward_only({4, 40}), forward_only({4, 24, 40}),
          forward_only({4, 24})},
         [](const std::vector<Tensor>& x) { return eng::grouped_mlp_gelu(x[0], x[1], x[2], x[3], x[4], kPackedSizes); },
         [](const std::vector<HostArray>& h) { return grouped_mlp_ref(h, kPackedSizes); }});

// y[i] = s[i] * x[perm[i]] over the row blocks of x (dim 0); no s: factor 1.
HostArray permute_rows_ref(const HostArray& x, const std::vector<int64_t>& perm, const HostArray* s) {
  const int64_t n = x.size(0), width = x.numel() / n;
  HostArray y = x;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < width; j++)
      y.v[size_t(i * width + j)] = (s ? s->v[size_t(i)] : 1.0) * x.v[size_t(perm[size_t(i)] * width + j)];
  return y;
}
const std::vector<int64_t> kPerm5 = {3, 0, 4, 1, 2}, kPerm4 = {2, 3, 1, 0};
Tensor perm_on(const std::vector<int64_t>& p, const Tensor& like) {
  return Tensor::from_vector(p, {int64_t(p.size())}).to(like.device());
}
OP_CASE({"permute_rows of 3-D row blocks times a factor each", {values({5, 3, 2}), values({5})},
         [](const std::vector<Tensor>& x) { return eng::permute_rows(x[0], perm_on(kPerm5, x[0]), x[1]); },
         [](const std::vector<HostArray>& h) { return permute_rows_ref(h[0], kPerm5, &h[1]); }});
OP_CASE({"permute_rows without a factor, transposed x", {transposed_values({4, 3})},
         [](const std::vector<Tensor>& x) { return eng::permute_rows(x[0], perm_on(kPerm4, x[0])); },
         [](const std::vector<HostArray>& h) { return permute_rows_ref(h[0], kPerm4, nullptr); }});

// ---------------------------------------------------------------- helpers for the doctest cases

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

Tensor ids(std::vector<int64_t> v) {
  const int64_t n = int64_t(v.size());
  return Tensor::from_vector(v, {n});
}

Tensor randn(Shape s, uint64_t seed) {
  eng::Generator g(seed, 5);
  return g.normal(s, 0.0, 1.0, DType::F32);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

struct GroupedResult {
  Tensor y, dx, dw, db;
};

// grouped_matmul and its three gradients for the loss sum(y * dy).
GroupedResult grouped_run(const Tensor& x, const Tensor& w, const Tensor& b, const std::vector<int64_t>& sizes,
                          const Tensor& dy) {
  Tensor xl = x.detach().requires_grad_(true), wl = w.detach().requires_grad_(true), bl = b.detach().requires_grad_(true);
  Tensor y = eng::grouped_matmul(xl, wl, sizes, bl);
  eng::sum(eng::mul(y, dy)).backward();
  return {y.detach(), xl.grad(), wl.grad(), bl.grad()};
}

// The same through one linear() per group and cat / stack.
GroupedResult per_group_linear(const Tensor& x, const Tensor& w, const Tensor& b, const std::vector<int64_t>& sizes,
                               const Tensor& dy) {
  Tensor xl = x.detach().requires_grad_(true), wl = w.detach().requires_grad_(true), bl = b.detach().requires_grad_(true);
  std::vector<Tensor> ys;
  int64_t r0 = 0;
  for (size_t e = 0; e < sizes.size(); e++) {
    if (sizes[e] > 0) ys.push_back(eng::linear(xl.narrow(0, r0, sizes[e]), wl.select(0, int64_t(e)), bl.select(0, int64_t(e))));
    r0 += sizes[e];
  }
  Tensor y = eng::cat(ys, 0);
  eng::sum(eng::mul(y, dy)).backward();
  return {y.detach(), xl.grad(), wl.grad(), bl.grad()};
}

// grouped_mlp_gelu (or, with composed = true, the grouped_matmul + gelu + grouped_matmul it fuses) and its five
// gradients for the loss sum(y * dy).
struct MlpResult {
  Tensor y, dx, dw1, db1, dw2, db2;
};
MlpResult grouped_mlp_run(const std::vector<Tensor>& in, const std::vector<int64_t>& sizes, const Tensor& dy, bool composed) {
  std::vector<Tensor> p;
  for (const Tensor& t : in) p.push_back(t.detach().requires_grad_(true));
  Tensor y = composed ? eng::grouped_matmul(eng::gelu(eng::grouped_matmul(p[0], p[1], sizes, p[2])), p[3], sizes, p[4])
                      : eng::grouped_mlp_gelu(p[0], p[1], p[2], p[3], p[4], sizes);
  eng::sum(eng::mul(y, dy)).backward();
  return {y.detach(), p[0].grad(), p[1].grad(), p[2].grad(), p[3].grad(), p[4].grad()};
}

double max_abs_diff(const Tensor& a, const Tensor& b) { return eng::amax(eng::abs(eng::sub(a, b))).item(); }

}  // namespace

TEST_SUITE("routing") {
  TEST_CASE("grouped_mlp_gelu: the composition it fuses within f32 rounding; bitwise equal with 1 and 2 threads") {
    testutil::ThreadCount guard;
    // mae_tiny's encoder MLP at a quarter of the rows, skewed groups with an empty one: the threaded packed path.
    const std::vector<int64_t> sizes = {170, 0, 153, 119, 68, 34};
    const int64_t R = 544, E = int64_t(sizes.size()), in = 192, hidden = 768, out = 192;
    const std::vector<Tensor> in_t = {randn({R, in}, 21), eng::mul(randn({E, hidden, in}, 22), 0.05),
                                      randn({E, hidden}, 23), eng::mul(randn({E, out, hidden}, 24), 0.03),
                                      randn({E, out}, 25)};
    Tensor dy = randn({R, out}, 26);
    MlpResult first;
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      MlpResult fused = grouped_mlp_run(in_t, sizes, dy, false);
      MlpResult composed = grouped_mlp_run(in_t, sizes, dy, true);
      const std::vector<std::pair<Tensor, Tensor>> pairs = {{fused.y, composed.y},     {fused.dx, composed.dx},
                                                            {fused.dw1, composed.dw1}, {fused.db1, composed.db1},
                                                            {fused.dw2, composed.dw2}, {fused.db2, composed.db2}};
      for (size_t i = 0; i < pairs.size(); i++) {
        // Relative to the largest entry: the two differ only in how the GELU and its gradient round.
        const double scale = eng::amax(eng::abs(pairs[i].second)).item();
        CHECK_MESSAGE(max_abs_diff(pairs[i].first, pairs[i].second) <= 1e-5 * scale, "output " << i << ", threads " << threads);
      }
      CHECK(eng::sum(eng::abs(fused.dw1.select(0, 1))).item() == 0.0);  // the empty group's gradients are zeros
      CHECK(eng::sum(eng::abs(fused.db2.select(0, 1))).item() == 0.0);
      if (threads == 1) {
        first = fused;
        continue;
      }
      CHECK(same_bits(fused.y, first.y));
      CHECK(same_bits(fused.dx, first.dx));
      CHECK(same_bits(fused.dw1, first.dw1));
      CHECK(same_bits(fused.db1, first.db1));
      CHECK(same_bits(fused.dw2, first.dw2));
      CHECK(same_bits(fused.db2, first.db2));
    }
    // One group holding every row is the dense mlp_gelu itself, bit for bit (the same GEMMs and epilogues).
    Tensor y1 = eng::grouped_mlp_gelu(in_t[0], in_t[1].narrow(0, 0, 1), in_t[2].narrow(0, 0, 1), in_t[3].narrow(0, 0, 1),
                                      in_t[4].narrow(0, 0, 1), {R});
    CHECK(same_bits(y1, eng::mlp_gelu(in_t[0], in_t[1].select(0, 0), in_t[2].select(0, 0), in_t[3].select(0, 0),
                                      in_t[4].select(0, 0))));
    CHECK(has(error_of([&] { eng::grouped_mlp_gelu(in_t[0], in_t[1], in_t[2], in_t[1], in_t[4], sizes); }),
              "grouped_mlp_gelu: fc2 weight must be [6, out, 768]"));
    CHECK(has(error_of([&] { eng::grouped_mlp_gelu(in_t[0], in_t[1], in_t[2], in_t[3], in_t[2], sizes); }),
              "grouped_mlp_gelu: fc2 bias must be [6, 192]"));
    CHECK(has(error_of([&] { eng::grouped_mlp_gelu(in_t[0], in_t[1], in_t[2], in_t[3], in_t[4], {R}); }),
              "grouped_mlp_gelu (fc1): 1 group sizes for the 6 groups"));
  }

  TEST_CASE("routing errors: out-of-range indices, bad sizes, shapes and dtypes are one-line errors naming the argument") {
    std::string e = error_of([] { eng::one_hot(ids({0, 2, 5}), 5); });
    CHECK(has(e, "one_hot: index 5 out of range for 5 classes"));
    CHECK(has(error_of([] { eng::one_hot(ids({-1}), 3); }), "one_hot: index -1 out of range"));
    CHECK(has(error_of([] { eng::one_hot(ids({0}), 0); }), "num_classes must be positive"));
    CHECK(has(error_of([] { eng::one_hot(Tensor::zeros({2}), 3); }), "one_hot: index must be i64"));
    CHECK(has(error_of([] { eng::bincount(ids({1, 4, 2}), 4); }), "bincount: index 4 out of range for 4 bins"));
    CHECK(has(error_of([] { eng::bincount(ids({-3}), 4); }), "bincount: index -3 out of range"));
    CHECK(has(error_of([] { eng::bincount(Tensor::from_vector(std::vector<int64_t>{0, 1}, {1, 2}), 4); }),
              "bincount: index must be 1-D"));
    CHECK(has(error_of([] { eng::cumsum(Tensor::zeros({3}, DType::I32), 0); }), "cumsum: x must be f32, f64 or i64"));
    CHECK(has(error_of([] { eng::cumsum(Tensor::zeros({3}), 1); }), "cumsum dim"));

    // The CPU kernels check every index before writing: the destination keeps what it had.
    eng::Backend& cpu = eng::backend_for(eng::Device::cpu());
    Tensor oh = Tensor::full({3, 4}, 7.0);
    CHECK(has(error_of([&] { cpu.one_hot(eng::desc_of(oh), eng::desc_of(ids({1, 2, 9}))); }), "index 9"));
    for (float v : oh.to_vector<float>()) CHECK(v == 7.0f);
    Tensor counts = Tensor::full({3}, 7.0, DType::I64);
    CHECK(has(error_of([&] { cpu.bincount(eng::desc_of(counts), eng::desc_of(ids({0, 1, 3}))); }), "index 3"));
    for (int64_t v : counts.to_vector<int64_t>()) CHECK(v == 7);

    Tensor x = Tensor::zeros({5, 3}), w = Tensor::zeros({2, 4, 3}), b = Tensor::zeros({2, 4});
    CHECK(has(error_of([&] { eng::grouped_matmul(x, w, {2, 2}, b); }), "group sizes add up to 4 but x has 5 rows"));
    CHECK(has(error_of([&] { eng::grouped_matmul(x, w, {6, -1}, b); }), "group_sizes[1] = -1 is negative"));
    CHECK(has(error_of([&] { eng::grouped_matmul(x, w, {5}, b); }), "1 group sizes for the 2 groups"));
    CHECK(has(error_of([&] { eng::grouped_matmul(x, w, {2, 3}, Tensor::zeros({2, 3})); }), "bias must be [2, 4]"));
    CHECK(has(error_of([&] { eng::grouped_matmul(Tensor::zeros({5, 2}), w, {2, 3}); }), "x has 2 features"));
    CHECK(has(error_of([&] { eng::grouped_matmul(x, Tensor::zeros({4, 3}), {5}); }), "w must be [groups, out, in]"));
    CHECK(has(error_of([&] { eng::grouped_matmul(x.to(DType::F64), w, {2, 3}); }), "x is f64 but w is f32"));
  }

  TEST_CASE("bincount equals the column sums of one_hot; cumsum of the counts gives the group offsets") {
    std::vector<int64_t> v;
    for (int64_t i = 0; i < 1000; i++) v.push_back((i * 7919) % 13 % 9);  // bins 0..8 unevenly, 9 and 10 empty
    Tensor idx = ids(v);
    Tensor counts = eng::bincount(idx, 11);
    CHECK(counts.dtype() == DType::I64);
    Tensor from_one_hot = eng::sum(eng::one_hot(idx, 11, DType::F64), {0});
    std::vector<int64_t> c = counts.to_vector<int64_t>();
    std::vector<double> c2 = from_one_hot.to_vector<double>();
    for (size_t k = 0; k < c.size(); k++) CHECK(double(c[k]) == c2[k]);
    CHECK(c[9] == 0);
    CHECK(c[10] == 0);
    CHECK(std::accumulate(c.begin(), c.end(), int64_t(0)) == 1000);
    std::vector<int64_t> offsets = eng::cumsum(counts, 0).to_vector<int64_t>();
    int64_t run = 0;
    for (size_t k = 0; k < c.size(); k++) CHECK(offsets[k] == (run += c[k]));
    CHECK(eng::bincount(Tensor::from_vector(std::vector<int64_t>{}, {0}), 3).to_vector<int64_t>() ==
          std::vector<int64_t>{0, 0, 0});
  }

  TEST_CASE("grouped_matmul is bitwise one linear per group (forward and every gradient), skewed and empty groups") {
    const int64_t in = 64, out = 96;
    // A skewed split: one group on the threaded GEMM, mid-sized and tiny ones run side by side, two empty.
    const std::vector<int64_t> sizes = {300, 0, 190, 90, 13, 0, 7};
    const int64_t R = std::accumulate(sizes.begin(), sizes.end(), int64_t(0)), E = int64_t(sizes.size());
    Tensor x = randn({R, in}, 1), w = randn({E, out, in}, 2), b = randn({E, out}, 3), dy = randn({R, out}, 4);
    GroupedResult got = grouped_run(x, w, b, sizes, dy);
    GroupedResult want = per_group_linear(x, w, b, sizes, dy);
    CHECK(same_bits(got.y, want.y));
    CHECK(same_bits(got.dx, want.dx));
    // Empty groups get zero weight and bias gradients; per_group_linear gives them zeros too (unused parameters).
    CHECK(same_bits(got.dw, want.dw));
    CHECK(same_bits(got.db, want.db));
    CHECK(eng::sum(eng::abs(got.dw.select(0, 1))).item() == 0.0);
    CHECK(eng::sum(eng::abs(got.db.select(0, 5))).item() == 0.0);
    // One group holding every row is linear itself.
    Tensor y1 = eng::grouped_matmul(x, w.narrow(0, 0, 1), {R}, b.narrow(0, 0, 1));
    CHECK(same_bits(y1, eng::linear(x, w.select(0, 0), b.select(0, 0))));
    // No rows at all.
    Tensor y0 = eng::grouped_matmul(Tensor::zeros({0, in}), w, std::vector<int64_t>(size_t(E), 0), b);
    CHECK(y0.shape() == Shape{0, out});
  }

  TEST_CASE("cumsum, one_hot, bincount and grouped_matmul: bitwise equal with 1 and 2 threads") {
    testutil::ThreadCount guard;
    Tensor x = randn({48, 700}, 11);
    // cumsum in f32 is a sequential sum along the dim: the serial loop's bits, on any thread count.
    std::vector<float> xs = x.to_vector<float>(), serial(xs.size());
    for (int64_t r = 0; r < 48; r++) {
      float acc = 0.0f;
      for (int64_t j = 0; j < 700; j++) serial[size_t(r * 700 + j)] = acc = acc + xs[size_t(r * 700 + j)];
    }
    const std::vector<int64_t> sizes = {500, 0, 300, 200, 24, 0};
    const int64_t R = 1024, E = int64_t(sizes.size());
    Tensor gx = randn({R, 80}, 12), gw = randn({E, 120, 80}, 13), gb = randn({E, 120}, 14), dy = randn({R, 120}, 15);
    std::vector<int64_t> v;
    for (int64_t i = 0; i < 50000; i++) v.push_back((i * 31) % 17);
    GroupedResult first;
    Tensor first_c0, first_grad, first_oh, first_bc;
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      Tensor c1 = eng::cumsum(x, 1);
      CHECK_MESSAGE(std::memcmp(c1.to_vector<float>().data(), serial.data(), serial.size() * sizeof(float)) == 0,
                    "cumsum dim 1 vs serial loop, threads=" << threads);
      Tensor xl = x.detach().requires_grad_(true);
      eng::sum(eng::mul(eng::cumsum(xl, 0), x)).backward();
      Tensor c0 = eng::cumsum(x, 0);
      Tensor oh = eng::one_hot(ids(v), 17);
      Tensor bc = eng::bincount(ids(v), 17);
      GroupedResult g = grouped_run(gx, gw, gb, sizes, dy);
      if (threads == 1) {
        first = g;
        first_c0 = c0;
        first_grad = xl.grad();
        first_oh = oh;
        first_bc = bc;
        continue;
      }
      CHECK_MESSAGE(same_bits(c0, first_c0), "cumsum dim 0");
      CHECK_MESSAGE(same_bits(xl.grad(), first_grad), "cumsum backward");
      CHECK_MESSAGE(same_bits(oh, first_oh), "one_hot");
      CHECK_MESSAGE(same_bits(bc, first_bc), "bincount");
      CHECK_MESSAGE(same_bits(g.y, first.y), "grouped_matmul forward");
      CHECK_MESSAGE(same_bits(g.dx, first.dx), "grouped_matmul dx");
      CHECK_MESSAGE(same_bits(g.dw, first.dw), "grouped_matmul dw");
      CHECK_MESSAGE(same_bits(g.db, first.db), "grouped_matmul db");
    }
  }
  TEST_CASE("permute_rows: bitwise its composition (index_select, mul) forward and dx, the factor's gradient within "
            "f32 rounding, bitwise with 1 and 2 threads; a non-permutation is an error") {
    testutil::ThreadCount guard;
    // MoCE's dispatch at the reference size: 128 images of 17 x 192 floats, in a shuffled order.
    const int64_t n = 128, t = 17, d = 192;
    std::vector<int64_t> p(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; i++) p[size_t(i)] = (i * 37 + 11) % n;  // 37 is prime to 128: a permutation
    Tensor x = randn({n, t, d}, 31), s = randn({n}, 32), dy = randn({n, t, d}, 33);
    std::vector<Tensor> first;
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      Tensor xa = x.detach().requires_grad_(true), sa = s.detach().requires_grad_(true);
      Tensor ya = eng::permute_rows(xa, ids(p), sa);
      eng::sum(eng::mul(ya, dy)).backward();
      Tensor xb = x.detach().requires_grad_(true), sb = s.detach().requires_grad_(true);
      Tensor yb = eng::mul(eng::index_select(xb, 0, ids(p)), sb.reshape({n, 1, 1}));
      eng::sum(eng::mul(yb, dy)).backward();
      CHECK(same_bits(ya, yb));
      CHECK(same_bits(xa.grad(), xb.grad()));  // one product per element, added to nothing
      const double scale = eng::amax(eng::abs(sb.grad())).item();
      CHECK(max_abs_diff(sa.grad(), sb.grad()) <= 1e-5 * scale);
      // The inverse permutation undoes it, bit for bit (no factor).
      std::vector<int64_t> inv(p.size());
      for (size_t i = 0; i < p.size(); i++) inv[size_t(p[i])] = int64_t(i);
      CHECK(same_bits(eng::permute_rows(eng::permute_rows(x, ids(p)), ids(inv)), x));
      if (threads == 1) {
        first = {ya, xa.grad(), sa.grad()};
        continue;
      }
      CHECK(same_bits(ya, first[0]));
      CHECK(same_bits(xa.grad(), first[1]));
      CHECK(same_bits(sa.grad(), first[2]));
    }
    CHECK(has(error_of([&] { eng::permute_rows(x, ids(std::vector<int64_t>(size_t(n), 0))); }),
              "permute_rows: perm is not a permutation of [0, 128): perm[1] = 0"));
    CHECK(has(error_of([&] { eng::permute_rows(x.narrow(0, 0, 3), ids({0, 1, 3})); }),
              "permute_rows: perm is not a permutation of [0, 3): perm[2] = 3"));
    CHECK(has(error_of([&] { eng::permute_rows(x, ids({0, 1})); }), "permute_rows: perm must be [128]"));
    CHECK(has(error_of([&] { eng::permute_rows(x, ids(p), Tensor::ones({3})); }), "permute_rows: scale must be [128]"));
  }
}
