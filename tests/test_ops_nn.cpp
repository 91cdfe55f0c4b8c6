// test_ops_nn.cpp: registry cases (f64 reference, f32 forward, finite-difference gradients) for softmax,
// log_softmax, layer_norm, l2_normalize, cross_entropy, mse_loss and attention, plus doctest cases for what
// the registry cannot express: dropout's mask, numerical stability, a hand-computed cross entropy, and
// bitwise determinism of the kernels across thread counts.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "tests/op_registry.h"

using namespace optest;
using eng::Tensor;

namespace {

// ---------------------------------------------------------------- naive f64 references

// Calls f(base, stride, n) for every line of `s` along `dim` (row-major element indices).
template <typename F> void for_each_line(const Shape& s, int64_t dim, F f) {
  int64_t outer = 1, inner = 1, n = s[size_t(dim)];
  for (int64_t d = 0; d < dim; d++) outer *= s[size_t(d)];
  for (size_t d = size_t(dim) + 1; d < s.size(); d++) inner *= s[d];
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) f(o * n * inner + i, inner, n);
}

int64_t wrap(int64_t dim, const HostArray& x) { return dim < 0 ? dim + int64_t(x.shape.size()) : dim; }

HostArray softmax_ref(const HostArray& x, int64_t dim, bool log, double scale = 1.0) {
  HostArray y = x;
  for_each_line(x.shape, wrap(dim, x), [&](int64_t base, int64_t stride, int64_t n) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = std::max(mx, scale * x.v[size_t(base + j * stride)]);
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += std::exp(scale * x.v[size_t(base + j * stride)] - mx);
    for (int64_t j = 0; j < n; j++) {
      double z = scale * x.v[size_t(base + j * stride)] - mx;
      y.v[size_t(base + j * stride)] = log ? z - std::log(s) : std::exp(z) / s;
    }
  });
  return y;
}

// w, b: null for no affine.
HostArray layer_norm_ref(const HostArray& x, const HostArray* w, const HostArray* b, double eps) {
  HostArray y = x;
  int64_t cols = x.shape.back();
  for (int64_t r = 0; r < x.numel() / cols; r++) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < cols; j++) mu += x.v[size_t(r * cols + j)];
    mu /= double(cols);
    for (int64_t j = 0; j < cols; j++) var += std::pow(x.v[size_t(r * cols + j)] - mu, 2);
    var /= double(cols);
    for (int64_t j = 0; j < cols; j++) {
      double v = (x.v[size_t(r * cols + j)] - mu) / std::sqrt(var + eps);
      if (w) v *= w->v[size_t(j)];
      if (b) v += b->v[size_t(j)];
      y.v[size_t(r * cols + j)] = v;
    }
  }
  return y;
}

HostArray l2_normalize_ref(const HostArray& x, int64_t dim, double eps) {
  HostArray y = x;
  for_each_line(x.shape, wrap(dim, x), [&](int64_t base, int64_t stride, int64_t n) {
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += std::pow(x.v[size_t(base + j * stride)], 2);
    double norm = std::max(std::sqrt(s), eps);
    for (int64_t j = 0; j < n; j++) y.v[size_t(base + j * stride)] /= norm;
  });
  return y;
}

// PyTorch's definition: (1 - ls) * nll + ls * mean_c(-log p), averaged over samples.
HostArray cross_entropy_ref(const HostArray& logits, const HostArray& targets, double ls) {
  int64_t n = logits.size(0), c = logits.size(1);
  HostArray logp = softmax_ref(logits, 1, true);
  double total = 0;
  for (int64_t i = 0; i < n; i++) {
    double nll = -logp.at({i, int64_t(targets.v[size_t(i)])});
    double smooth = 0;
    for (int64_t j = 0; j < c; j++) smooth -= logp.at({i, j});
    total += (1 - ls) * nll + ls * smooth / double(c);
  }
  return HostArray{{}, {total / double(n)}};
}

HostArray mse_ref(const HostArray& a, const HostArray& b) {
  double s = 0;
  for (size_t i = 0; i < a.v.size(); i++) s += std::pow(a.v[i] - b.v[i], 2);
  return HostArray{{}, {s / double(a.v.size())}};
}

// Splits a fused projection qkv [B, T, 3 * H * D] into its (non-contiguous) q, k, v views [B, H, T, D],
// as a ViT attention block does (split_qkv_host in op_registry.h does the same for the reference).
std::vector<Tensor> split_qkv(const Tensor& qkv, int64_t H) {
  int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / (3 * H);
  Tensor p = qkv.reshape({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, D]
  return {p.select(0, 0), p.select(0, 1), p.select(0, 2)};
}

using Ts = std::vector<Tensor>;
using Hs = std::vector<HostArray>;

// ---------------------------------------------------------------- softmax / log_softmax

OP_CASE({"softmax last dim", {{{3, 7}}}, [](const Ts& x) { return eng::softmax(x[0], -1); },
         [](const Hs& h) { return softmax_ref(h[0], -1, false); }});
OP_CASE({"softmax dim 0 of 3-d", {{{4, 3, 5}}}, [](const Ts& x) { return eng::softmax(x[0], 0); },
         [](const Hs& h) { return softmax_ref(h[0], 0, false); }});
OP_CASE({"softmax dim 1 of 3-d", {{{2, 5, 6}}}, [](const Ts& x) { return eng::softmax(x[0], 1); },
         [](const Hs& h) { return softmax_ref(h[0], 1, false); }});
OP_CASE({"softmax last dim of transposed view", {{{3, 4, 6}, Kind::Normal, 0, true, true}},
         [](const Ts& x) { return eng::softmax(x[0], -1); }, [](const Hs& h) { return softmax_ref(h[0], -1, false); }});
OP_CASE({"softmax of wide-range logits", {{{4, 9}}}, [](const Ts& x) { return eng::softmax(eng::mul(x[0], 8.0), -1); },
         [](const Hs& h) { return softmax_ref(h[0], -1, false, 8.0); }});
OP_CASE({"softmax 1-d", {{{11}}}, [](const Ts& x) { return eng::softmax(x[0], 0); },
         [](const Hs& h) { return softmax_ref(h[0], 0, false); }});
OP_CASE({"log_softmax last dim", {{{3, 7}}}, [](const Ts& x) { return eng::log_softmax(x[0], -1); },
         [](const Hs& h) { return softmax_ref(h[0], -1, true); }});
OP_CASE({"log_softmax dim 0", {{{5, 4}}}, [](const Ts& x) { return eng::log_softmax(x[0], 0); },
         [](const Hs& h) { return softmax_ref(h[0], 0, true); }});
OP_CASE({"log_softmax dim 1 of transposed view", {{{2, 6, 5}, Kind::Normal, 0, true, true}},
         [](const Ts& x) { return eng::log_softmax(x[0], 1); }, [](const Hs& h) { return softmax_ref(h[0], 1, true); }});

// ---------------------------------------------------------------- layer_norm

OP_CASE({"layer_norm affine", {{{4, 10}}, {{10}}, {{10}}},
         [](const Ts& x) { return eng::layer_norm(x[0], x[1], x[2], 1e-5); },
         [](const Hs& h) { return layer_norm_ref(h[0], &h[1], &h[2], 1e-5); }});
OP_CASE({"layer_norm no affine 3-d", {{{3, 2, 8}}}, [](const Ts& x) { return eng::layer_norm(x[0], Tensor(), Tensor(), 1e-5); },
         [](const Hs& h) { return layer_norm_ref(h[0], nullptr, nullptr, 1e-5); }});
OP_CASE({"layer_norm weight only", {{{5, 6}}, {{6}}},
         [](const Ts& x) { return eng::layer_norm(x[0], x[1], Tensor(), 1e-5); },
         [](const Hs& h) { return layer_norm_ref(h[0], &h[1], nullptr, 1e-5); }});
OP_CASE({"layer_norm affine of transposed view, eps 1e-2", {{{7, 9}, Kind::Normal, 0, true, true}, {{9}}, {{9}}},
         [](const Ts& x) { return eng::layer_norm(x[0], x[1], x[2], 1e-2); },
         [](const Hs& h) { return layer_norm_ref(h[0], &h[1], &h[2], 1e-2); }});
// 70 rows: more than one block of rows in the dw/db partial sums.
OP_CASE({"layer_norm affine many rows", {{{70, 3}}, {{3}}, {{3}}},
         [](const Ts& x) { return eng::layer_norm(x[0], x[1], x[2], 1e-5); },
         [](const Hs& h) { return layer_norm_ref(h[0], &h[1], &h[2], 1e-5); }});

// ---------------------------------------------------------------- l2_normalize

OP_CASE({"l2_normalize last dim", {{{4, 6}}}, [](const Ts& x) { return eng::l2_normalize(x[0], -1); },
         [](const Hs& h) { return l2_normalize_ref(h[0], -1, 1e-12); }});
OP_CASE({"l2_normalize dim 0", {{{5, 3}}}, [](const Ts& x) { return eng::l2_normalize(x[0], 0); },
         [](const Hs& h) { return l2_normalize_ref(h[0], 0, 1e-12); }});
OP_CASE({"l2_normalize transposed view, eps active", {{{3, 4, 5}, Kind::Uniform, 0, true, true}},
         [](const Ts& x) { return eng::l2_normalize(eng::mul(x[0], 0.1), -1, 0.3); },
         [](const Hs& h) { return l2_normalize_ref(map_unary(h[0], [](double v) { return 0.1 * v; }), -1, 0.3); }});

// ---------------------------------------------------------------- cross_entropy, mse_loss

OP_CASE({"cross_entropy", {{{6, 5}}, {{6}, Kind::Index, 5, false}},
         [](const Ts& x) { return eng::cross_entropy(x[0], x[1]); },
         [](const Hs& h) { return cross_entropy_ref(h[0], h[1], 0.0); }});
OP_CASE({"cross_entropy label smoothing 0.1", {{{6, 5}}, {{6}, Kind::Index, 5, false}},
         [](const Ts& x) { return eng::cross_entropy(x[0], x[1], 0.1); },
         [](const Hs& h) { return cross_entropy_ref(h[0], h[1], 0.1); }});
OP_CASE({"cross_entropy label smoothing 0.3 transposed logits", {{{4, 7}, Kind::Normal, 0, true, true}, {{4}, Kind::Index, 7, false}},
         [](const Ts& x) { return eng::cross_entropy(x[0], x[1], 0.3); },
         [](const Hs& h) { return cross_entropy_ref(h[0], h[1], 0.3); }});
OP_CASE({"mse_loss", {{{3, 4}}, {{3, 4}}}, [](const Ts& x) { return eng::mse_loss(x[0], x[1]); },
         [](const Hs& h) { return mse_ref(h[0], h[1]); }});
OP_CASE({"mse_loss transposed operand", {{{2, 3, 4}, Kind::Normal, 0, true, true}, {{2, 3, 4}}},
         [](const Ts& x) { return eng::mse_loss(x[0], x[1]); }, [](const Hs& h) { return mse_ref(h[0], h[1]); }});

// ---------------------------------------------------------------- attention

OP_CASE({"attention B1 H2 T17 D8", {{{1, 2, 17, 8}}, {{1, 2, 17, 8}}, {{1, 2, 17, 8}}},
         [](const Ts& x) { return eng::attention(x[0], x[1], x[2]); },
         [](const Hs& h) { return attention_ref(h[0], h[1], h[2], 0.0); }});
OP_CASE({"attention Tq != Tk, explicit scale", {{{2, 1, 3, 4}}, {{2, 1, 5, 4}}, {{2, 1, 5, 3}}},
         [](const Ts& x) { return eng::attention(x[0], x[1], x[2], 0.7); },
         [](const Hs& h) { return attention_ref(h[0], h[1], h[2], 0.7); }});
// q, k, v as the strided views a fused qkv projection gives: [B=1, T=5, 3*H*D] with H=2, D=4.
OP_CASE({"attention on views split from a fused qkv", {{{1, 5, 24}}},
         [](const Ts& x) {
           Ts qkv = split_qkv(x[0], 2);
           REQUIRE(!qkv[0].is_contiguous());
           return eng::attention(qkv[0], qkv[1], qkv[2]);
         },
         [](const Hs& h) {
           Hs qkv = split_qkv_host(h[0], 2);
           return attention_ref(qkv[0], qkv[1], qkv[2], 0.0);
         }});

// ---------------------------------------------------------------- doctest cases

Tensor ones_f(eng::Shape s, eng::DType dt = eng::DType::F32) { return Tensor::ones(s, dt); }

// Runs f with 1 and then 2 OpenMP threads; the outputs must be bitwise equal.
template <typename F> void check_thread_invariant(F f) {
  int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<double> one = f();
  omp_set_num_threads(2);
  std::vector<double> two = f();
  omp_set_num_threads(prev);
  REQUIRE(one.size() == two.size());
  bool same = true;
  for (size_t i = 0; i < one.size(); i++) same = same && std::memcmp(&one[i], &two[i], sizeof(double)) == 0;
  CHECK(same);
}

}  // namespace

TEST_SUITE("nn") {
  TEST_CASE("dropout: mask rate, inverted scaling, reproducible by (seed, stream, offset)") {
    const double p = 0.3;
    const int64_t n = 20000;
    Tensor x = ones_f({100, n / 100});
    Tensor y = eng::dropout(x, p, true, 1234, 7, 0);
    std::vector<float> v = y.to_vector<float>();
    int64_t zeros = 0;
    double total = 0;
    for (float e : v) {
      bool ok = e == 0.0f || e == float(1.0 / (1.0 - p));
      REQUIRE(ok);
      zeros += e == 0.0f;
      total += e;
    }
    // Binomial(20000, 0.3): std of the dropped fraction is 0.0032; allow ~4 sigma.
    CHECK(std::fabs(double(zeros) / double(n) - p) < 0.013);
    CHECK(std::fabs(total / double(n) - 1.0) < 0.02);  // inverted dropout keeps the mean

    CHECK(eng::dropout(x, p, true, 1234, 7, 0).to_vector<float>() == v);      // same key, same mask
    CHECK(eng::dropout(x, p, true, 1234, 7, n).to_vector<float>() != v);      // next offset, new mask
    CHECK(eng::dropout(x, p, true, 1235, 7, 0).to_vector<float>() != v);      // other seed
    CHECK(eng::dropout(x, p, true, 1234, 8, 0).to_vector<float>() != v);      // other stream
    // The mask does not depend on the dtype of x.
    std::vector<double> v64 = eng::dropout(ones_f({100, n / 100}, eng::DType::F64), p, true, 1234, 7, 0).to_vector<double>();
    bool same_pattern = true;
    for (size_t i = 0; i < v.size(); i++) same_pattern = same_pattern && ((v[i] == 0) == (v64[i] == 0));
    CHECK(same_pattern);
  }

  TEST_CASE("dropout: backward multiplies by the same mask / (1 - p)") {
    std::vector<double> xv(300);
    for (size_t i = 0; i < xv.size(); i++) xv[i] = 0.5 + double(i % 7);
    Tensor x = Tensor::from_vector(xv, {3, 100}, eng::DType::F64);
    x.requires_grad_(true);
    Tensor y = eng::dropout(x, 0.4, true, 99, 0, 5);
    eng::sum(y).backward();
    std::vector<double> g = x.grad().to_vector<double>(), yv = y.to_vector<double>();
    int64_t dropped = 0;
    for (size_t i = 0; i < xv.size(); i++) {
      CHECK(g[i] == doctest::Approx(yv[i] / xv[i]).epsilon(1e-14));  // d(sum y)/dx_i = mask_i
      CHECK((g[i] == 0.0 || g[i] == doctest::Approx(1.0 / 0.6).epsilon(1e-14)));
      dropped += g[i] == 0.0;
    }
    CHECK(dropped > 60);
    CHECK(dropped < 180);
  }

  TEST_CASE("dropout: identity in eval or with p = 0, zeros with p = 1") {
    Tensor x = Tensor::from_vector(std::vector<double>{1, -2, 3, 4}, {2, 2});
    x.requires_grad_(true);
    CHECK(eng::dropout(x, 0.5, false, 1, 2, 3).to_vector<double>() == x.to_vector<double>());
    CHECK(eng::dropout(x, 0.0, true, 1, 2, 3).to_vector<double>() == x.to_vector<double>());
    Tensor z = eng::dropout(x, 1.0, true, 1, 2, 3);
    CHECK(z.to_vector<double>() == std::vector<double>{0, 0, 0, 0});
    eng::sum(z).backward();
    CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 0, 0, 0});
    CHECK_THROWS(eng::dropout(x, 1.5, true, 1, 2, 3));
  }

  TEST_CASE("softmax and log_softmax are finite for large logits") {
    for (eng::DType dt : {eng::DType::F32, eng::DType::F64}) {
      Tensor a = Tensor::from_vector(std::vector<double>{1000, 1001}, {1, 2}, dt);
      std::vector<double> s = eng::softmax(a).to_vector<double>();
      const double lo = 1.0 / (1.0 + std::exp(1.0));
      CHECK(s[0] == doctest::Approx(lo).epsilon(1e-6));
      CHECK(s[1] == doctest::Approx(1 - lo).epsilon(1e-6));
      Tensor b = Tensor::from_vector(std::vector<double>{1e4, 0, -1e4, 3e4}, {2, 2}, dt);
      std::vector<double> l = eng::log_softmax(b).to_vector<double>();
      for (double e : l) CHECK(std::isfinite(e));
      CHECK(l[0] == doctest::Approx(0.0));
      CHECK(l[1] == doctest::Approx(-1e4));
      CHECK(l[2] == doctest::Approx(-4e4));
      CHECK(l[3] == doctest::Approx(0.0));
      // Its gradient stays finite too.
      Tensor c = Tensor::from_vector(std::vector<double>{1e4, -1e4, 5}, {1, 3}, dt);
      c.requires_grad_(true);
      eng::sum(eng::mul(eng::log_softmax(c), Tensor::from_vector(std::vector<double>{1, 2, 3}, {1, 3}, dt))).backward();
      for (double e : c.grad().to_vector<double>()) CHECK(std::isfinite(e));
    }
  }

  TEST_CASE("f32 softmax agrees with f64 element by element, -inf entries give exact zeros") {
    // One row spanning exp arguments from 0 down to about -86 (the f32 kernel's own exp), another with -inf
    // entries as an attention mask makes them.
    const int64_t cols = 173;
    std::vector<double> xv(size_t(2 * cols));
    for (int64_t j = 0; j < cols; j++) {
      // Values exact in f32, so both dtypes see the same input.
      xv[size_t(j)] = double(float(-0.5 * double(j) + 0.013 * double(j % 7)));
      xv[size_t(cols + j)] = j % 3 == 0 ? -INFINITY : double(float(std::sin(double(j))));
    }
    Tensor x64 = Tensor::from_vector(xv, {2, cols}, eng::DType::F64);
    for (bool log : {false, true}) {
      std::vector<double> want = (log ? eng::log_softmax(x64) : eng::softmax(x64)).to_vector<double>();
      Tensor x32 = x64.to(eng::DType::F32);
      std::vector<double> got = (log ? eng::log_softmax(x32) : eng::softmax(x32)).to_vector<double>();
      // f32 rounds x - max to ~6e-8 |x - max| absolutely, which exp turns into that much relative error:
      // the bound grows with |log p|.
      double worst = 0;
      for (size_t i = 0; i < want.size(); i++) {
        if (std::isinf(want[i]) || want[i] == 0) {
          CHECK(got[i] == want[i]);
          continue;
        }
        if (!log && want[i] < 1e-37) continue;  // below f32's normal range
        double err = log ? std::fabs(got[i] - want[i]) / (1 + std::fabs(want[i]))
                         : std::fabs(got[i] - want[i]) / want[i] / (1 + std::fabs(std::log(want[i])));
        worst = std::max(worst, err);
      }
      CHECK(worst < 2e-7);
    }
    // Masked entries get no gradient; the others a finite one.
    Tensor xm = x64.slice(0, 1, 2).detach();
    xm.requires_grad_(true);
    eng::sum(eng::mul(eng::softmax(xm), eng::clamp(xm.detach(), -1, 1))).backward();
    std::vector<double> g = xm.grad().to_vector<double>();
    for (int64_t j = 0; j < cols; j++) {
      if (j % 3 == 0)
        CHECK(g[size_t(j)] == 0.0);
      else
        CHECK(std::isfinite(g[size_t(j)]));
    }
    // A row that is entirely masked has no softmax: NaN, as in the definition (and PyTorch).
    Tensor all_masked = Tensor::full({1, 3}, -INFINITY, eng::DType::F32);
    for (double e : eng::softmax(all_masked).to_vector<double>()) CHECK(std::isnan(e));
    // NaN in, NaN out (so a training loop notices), for both dtypes.
    for (eng::DType dt : {eng::DType::F32, eng::DType::F64}) {
      Tensor with_nan = Tensor::from_vector(std::vector<double>{0, NAN, 1}, {1, 3}, dt);
      CHECK(std::isnan(eng::softmax(with_nan).to_vector<double>()[0]));
    }
  }

  TEST_CASE("cross_entropy matches a hand computation") {
    Tensor logits = Tensor::from_vector(std::vector<double>{1, 2, 3, 0, 0, 0}, {2, 3});
    Tensor targets = Tensor::from_vector(std::vector<int64_t>{2, 0}, {2});
    // row 0: log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2); row 1: log 3.
    const double nll0 = std::log(1 + std::exp(-1.0) + std::exp(-2.0)), nll1 = std::log(3.0);
    CHECK(eng::cross_entropy(logits, targets).item() == doctest::Approx((nll0 + nll1) / 2).epsilon(1e-14));
    CHECK(eng::cross_entropy(logits, targets).item() == doctest::Approx(0.7531091265562452).epsilon(1e-14));
    // Smoothing 0.1: mean_c(-log p) exceeds the nll by 1 in row 0 and by 0 in row 1.
    CHECK(eng::cross_entropy(logits, targets, 0.1).item() == doctest::Approx(0.8031091265562452).epsilon(1e-14));
    // Gradient: (softmax - q) / N.
    logits.requires_grad_(true);
    eng::cross_entropy(logits, targets, 0.1).backward();
    std::vector<double> g = logits.grad().to_vector<double>();
    const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
    const double want[6] = {(std::exp(1.0) / z - 0.1 / 3) / 2, (std::exp(2.0) / z - 0.1 / 3) / 2,
                            (std::exp(3.0) / z - 0.9 - 0.1 / 3) / 2, (1.0 / 3 - 0.9 - 0.1 / 3) / 2,
                            (1.0 / 3 - 0.1 / 3) / 2, (1.0 / 3 - 0.1 / 3) / 2};
    for (int i = 0; i < 6; i++) CHECK(g[size_t(i)] == doctest::Approx(want[i]).epsilon(1e-12));
  }

  TEST_CASE("nn ops reject bad arguments with a clear error") {
    Tensor logits = Tensor::zeros({2, 3}, eng::DType::F64);
    CHECK_THROWS_WITH(eng::cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0, 3}, {2})),
                      doctest::Contains("outside [0, 3)"));
    CHECK_THROWS(eng::cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0}, {1})));
    CHECK_THROWS(eng::cross_entropy(logits, Tensor::zeros({2}, eng::DType::F64)));
    CHECK_THROWS(eng::cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0, 1}, {2}), 1.5));
    CHECK_THROWS_WITH(eng::layer_norm(logits, Tensor::ones({4}, eng::DType::F64), Tensor()),
                      doctest::Contains("weight must have shape [3]"));
    CHECK_THROWS(eng::mse_loss(logits, Tensor::zeros({3, 2}, eng::DType::F64)));
    CHECK_THROWS(eng::attention(logits, logits, logits));
    CHECK_THROWS(eng::softmax(Tensor::from_vector(std::vector<int64_t>{1, 2}, {2})));
  }

  TEST_CASE("l2_normalize of a zero vector is zero with a finite gradient") {
    Tensor x = Tensor::zeros({2, 3}, eng::DType::F64);
    x.requires_grad_(true);
    Tensor y = eng::l2_normalize(x, -1);
    CHECK(y.to_vector<double>() == std::vector<double>(6, 0.0));
    eng::sum(y).backward();
    for (double e : x.grad().to_vector<double>()) CHECK(std::isfinite(e));
  }

  TEST_CASE("softmax and layer_norm kernels are bitwise identical with 1 and 2 threads") {
    // Big enough that the kernels split into several parallel pieces (rows * cols > one block).
    const int64_t rows = 333, cols = 96;
    for (eng::DType dt : {eng::DType::F32, eng::DType::F64}) {
      std::vector<double> xv(size_t(rows * cols)), gv(xv.size()), wv(static_cast<size_t>(cols)), bv(static_cast<size_t>(cols));
      for (size_t i = 0; i < xv.size(); i++) {
        xv[i] = std::sin(0.37 * double(i)) * 3 + 0.01 * double(i % 13);
        gv[i] = std::cos(0.11 * double(i));
      }
      for (size_t j = 0; j < wv.size(); j++) {
        wv[j] = 1 + 0.1 * std::sin(double(j));
        bv[j] = 0.05 * double(j);
      }
      check_thread_invariant([&] {
        Tensor x = Tensor::from_vector(xv, {rows, cols}, dt), w = Tensor::from_vector(wv, {cols}, dt);
        Tensor b = Tensor::from_vector(bv, {cols}, dt), g = Tensor::from_vector(gv, {rows, cols}, dt);
        x.requires_grad_(true);
        w.requires_grad_(true);
        b.requires_grad_(true);
        Tensor y = eng::layer_norm(x, w, b);
        Tensor s = eng::softmax(y);
        Tensor l = eng::log_softmax(y);
        eng::sum(eng::mul(eng::add(s, l), g)).backward();
        std::vector<double> out = s.to_vector<double>();
        for (const Tensor& t : {l, x.grad(), w.grad(), b.grad()}) {
          std::vector<double> v = t.to_vector<double>();
          out.insert(out.end(), v.begin(), v.end());
        }
        return out;
      });
    }
  }

  TEST_CASE("layer_norm keeps f32 within 1e-5 of f64 on wider rows") {
    const int64_t rows = 8, cols = 768;
    std::vector<double> xv(size_t(rows * cols));
    for (size_t i = 0; i < xv.size(); i++) xv[i] = 100 + std::sin(0.7 * double(i));  // large mean, small spread
    Tensor x64 = Tensor::from_vector(xv, {rows, cols}, eng::DType::F64);
    std::vector<double> y64 = eng::layer_norm(x64, Tensor(), Tensor()).to_vector<double>();
    std::vector<double> y32 = eng::layer_norm(x64.to(eng::DType::F32), Tensor(), Tensor()).to_vector<double>();
    double err = 0;
    for (size_t i = 0; i < y64.size(); i++) err = std::max(err, std::fabs(y64[i] - y32[i]));
    // Inputs near 100 are only representable to ~4e-6 in f32, and the spread is ~0.7: rounding of x itself
    // bounds the achievable agreement at ~1e-5 of the normalised output's scale.
    CHECK(err < 2e-5);
  }
}
