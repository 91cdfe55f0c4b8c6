// test_ops_fused.cpp: the fused kernels of the CPU speed work. Registry cases (f64 reference, f32 forward,
// finite-difference gradients) for linear with its bias in the GEMM epilogue, linear_gelu, mlp_gelu, attention_qkv on a
// packed projection (strided fused attention) and the fused attention on long sequences (row chunks); doctest
// cases for what the registry cannot express: the f32 GELU/exp polynomials against f64 over dense sweeps, the
// vectorised spans against the scalar formula bit for bit, the GEMM epilogue against a separate bias + GELU pass
// bit for bit on every path (small, packed, threaded by rows and by columns, batched), f32 column sums, and
// bitwise equality of the fused ops' forward and backward with 1 and 2 threads.
#include <doctest/doctest.h>
#include <omp.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_fused.h"
#include "engine/backends/cpu/cpu_pool.h"
#include "engine/backends/cpu/gemm_kernels.h"
#include "engine/fast_math_f32.h"
#include "tests/op_registry.h"

using namespace optest;
using eng::Tensor;

namespace {

using Ts = std::vector<Tensor>;
using Hs = std::vector<HostArray>;

// Phi through erfc, so the negative tail does not cancel in 1 + erf even in f64.
double phi_ref(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double gelu_ref(double x) { return x * phi_ref(x); }
double gelu_grad_ref(double x) { return phi_ref(x) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI); }

// x [..., in] w [out, in] (+ b [out]), optionally through the exact GELU.
HostArray linear_ref(const HostArray& x, const HostArray& w, const HostArray* b, bool gelu) {
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  Shape s = x.shape;
  s.back() = out;
  HostArray o = make_host(s);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < out; j++) {
      double acc = b ? b->v[size_t(j)] : 0.0;
      for (int64_t l = 0; l < in; l++) acc += x.v[size_t(r * in + l)] * w.at({j, l});
      o.v[size_t(r * out + j)] = gelu ? gelu_ref(acc) : acc;
    }
  return o;
}

// Attention of one packed projection qkv [B, T, 3 * H * D] (q, k, v x heads x D per token) -> [B, T, H * D].
HostArray attention_qkv_ref(const HostArray& qkv, int64_t H, double scale) {
  const std::vector<HostArray> heads = split_qkv_host(qkv, H);
  const HostArray o = attention_ref(heads[0], heads[1], heads[2], scale);  // [B, H, T, D]
  const int64_t B = o.size(0), T = o.size(2), D = o.size(3);
  HostArray out = make_host({B, T, H * D});
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) out.at({b, t, h * D + d}) = o.at({b, h, t, d});
  return out;
}

// ---------------------------------------------------------------- registry cases

OP_CASE({"linear with bias, 3-d input (bias in the GEMM epilogue)", {{{2, 5, 7}}, {{6, 7}}, {{6}}},
         [](const Ts& x) { return eng::linear(x[0], x[1], x[2]); },
         [](const Hs& h) { return linear_ref(h[0], h[1], &h[2], false); }});
OP_CASE({"linear without bias", {{{4, 3}}, {{5, 3}}}, [](const Ts& x) { return eng::linear(x[0], x[1]); },
         [](const Hs& h) { return linear_ref(h[0], h[1], nullptr, false); }});
OP_CASE({"linear of a transposed view", {{{6, 4}, Kind::Normal, 0, true, true}, {{3, 4}}, {{3}}},
         [](const Ts& x) { return eng::linear(x[0], x[1], x[2]); },
         [](const Hs& h) { return linear_ref(h[0], h[1], &h[2], false); }});
OP_CASE({"linear_gelu with bias", {{{3, 4, 5}}, {{9, 5}}, {{9}}},
         [](const Ts& x) { return eng::linear_gelu(x[0], x[1], x[2]); },
         [](const Hs& h) { return linear_ref(h[0], h[1], &h[2], true); }});
OP_CASE({"linear_gelu without bias, 1-d input", {{{6}}, {{4, 6}}},
         [](const Ts& x) { return eng::linear_gelu(x[0], x[1]); },
         [](const Hs& h) { return linear_ref(h[0], h[1], nullptr, true); }});
OP_CASE({"linear_gelu, weight as a transposed view", {{{5, 3}}, {{4, 3}, Kind::Normal, 0, true, true}, {{4}}},
         [](const Ts& x) { return eng::linear_gelu(x[0], x[1], x[2]); },
         [](const Hs& h) { return linear_ref(h[0], h[1], &h[2], true); }});
OP_CASE({"mlp_gelu (GELU gradient in the GEMM epilogue)", {{{2, 3, 5}}, {{8, 5}}, {{8}}, {{4, 8}}, {{4}}},
         [](const Ts& x) { return eng::mlp_gelu(x[0], x[1], x[2], x[3], x[4]); },
         [](const Hs& h) { return linear_ref(linear_ref(h[0], h[1], &h[2], true), h[3], &h[4], false); }});
OP_CASE({"mlp_gelu without fc2 bias, 1-d input", {{{6}}, {{5, 6}}, {{5}}, {{3, 5}}},
         [](const Ts& x) { return eng::mlp_gelu(x[0], x[1], x[2], x[3], Tensor()); },
         [](const Hs& h) { return linear_ref(linear_ref(h[0], h[1], &h[2], true), h[3], nullptr, false); }});
OP_CASE({"attention_qkv B2 T17 H3 D4 (encoder-like)", {{{2, 17, 36}}},
         [](const Ts& x) { return eng::attention_qkv(x[0], 3); },
         [](const Hs& h) { return attention_qkv_ref(h[0], 3, 0.0); }});
OP_CASE({"attention_qkv B1 T5 H2 D3, explicit scale", {{{1, 5, 18}}},
         [](const Ts& x) { return eng::attention_qkv(x[0], 2, 0.9); },
         [](const Hs& h) { return attention_qkv_ref(h[0], 2, 0.9); }});
OP_CASE({"attention_qkv of a transposed view", {{{2, 4, 6}, Kind::Normal, 0, true, true}},
         [](const Ts& x) { return eng::attention_qkv(x[0], 1); },
         [](const Hs& h) { return attention_qkv_ref(h[0], 1, 0.0); }});
OP_CASE({"attention_qkv T130 H1 D2 (strided operands, two row chunks)", {{{1, 130, 6}}},
         [](const Ts& x) { return eng::attention_qkv(x[0], 1); },
         [](const Hs& h) { return attention_qkv_ref(h[0], 1, 0.0); }});
// More query rows than one chunk of the f32 kernel (128): the scores go in two chunks, dk and dv add up over them.
OP_CASE({"attention 150 queries, 9 keys (row chunks)", {{{1, 1, 150, 3}}, {{1, 1, 9, 3}}, {{1, 1, 9, 2}}},
         [](const Ts& x) { return eng::attention(x[0], x[1], x[2]); },
         [](const Hs& h) { return attention_ref(h[0], h[1], h[2], 1.0 / std::sqrt(3.0)); }});

// ---------------------------------------------------------------- helpers

// Runs f with 1 and then 2 OpenMP threads; the outputs must be bitwise equal.
template <typename F> void check_thread_invariant(F f) {
  int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<float> one = f();
  omp_set_num_threads(2);
  std::vector<float> two = f();
  omp_set_num_threads(prev);
  REQUIRE(one.size() == two.size());
  CHECK(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)) == 0);
}

std::vector<float> wave(size_t n, double a, double b) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = float(a * std::sin(0.37 * double(i) + b) + 0.1 * std::cos(0.05 * double(i)));
  return v;
}

void append(std::vector<float>& out, const Tensor& t) {
  std::vector<float> v = t.to_vector<float>();
  out.insert(out.end(), v.begin(), v.end());
}

// Equal bits, or both NaN (a vector and a scalar unit may give NaNs different payloads).
bool same_bits(float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(float)) == 0; }
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (!same_bits(a[i], b[i])) return false;
  return true;
}

}  // namespace

TEST_SUITE("fused") {
  TEST_CASE("f32 exp, normal CDF and GELU polynomials against f64, over dense sweeps") {
    double exp_ulp = 0, cdf_abs = 0, cdf_rel8 = 0, cdf_rel12 = 0, gelu_rel8 = 0, grad_abs = 0, gauss_rel = 0;
    for (double xd = -16; xd <= 16; xd += 3e-5) {
      const float x = float(xd);
      const double X = x, cdf = 0.5 * std::erfc(-X / std::sqrt(2.0));
      const float c = eng::normal_cdf_f32(x), g = eng::gauss_f32(x);
      cdf_abs = std::max(cdf_abs, std::fabs(c - cdf));
      if (X >= -8) cdf_rel8 = std::max(cdf_rel8, std::fabs(c - cdf) / cdf);
      if (X >= -12) cdf_rel12 = std::max(cdf_rel12, std::fabs(c - cdf) / cdf);
      if (X >= -8 && X != 0) gelu_rel8 = std::max(gelu_rel8, std::fabs(eng::gelu_f32(x) - gelu_ref(X)) / std::fabs(gelu_ref(X)));
      grad_abs = std::max(grad_abs, std::fabs(eng::gelu_grad_f32(x) - gelu_grad_ref(X)));
      if (X >= -12 && X <= 12) gauss_rel = std::max(gauss_rel, std::fabs(g - std::exp(-0.5 * X * X)) / std::exp(-0.5 * X * X));
    }
    for (double xd = -87; xd <= 88; xd += 7e-5) {
      const float x = float(xd);
      const double e = std::exp(double(x));
      if (e < 1.2e-38) continue;
      const double ulp = double(std::nextafter(float(e), INFINITY)) - double(float(e));
      exp_ulp = std::max(exp_ulp, std::fabs(double(eng::exp_f32(x)) - e) / ulp);
    }
    MESSAGE("exp_f32 max " << exp_ulp << " ulp; Phi abs " << cdf_abs << ", rel " << cdf_rel8 << " (x >= -8), "
                           << cdf_rel12 << " (x >= -12); gelu rel " << gelu_rel8 << "; gelu' abs " << grad_abs);
    // The bounds stated in engine/fast_math_f32.h.
    CHECK(exp_ulp <= 1.01);  // 1 ulp, measured against the spacing just above the rounded value
    CHECK(cdf_abs <= 2.5e-7);
    CHECK(cdf_rel8 <= 5e-7);
    CHECK(cdf_rel12 <= 5e-7);
    CHECK(gelu_rel8 <= 5.5e-7);
    CHECK(grad_abs <= 2.5e-7);
    CHECK(gauss_rel <= 3e-7);
    // Limits and specials.
    CHECK(eng::exp_f32(-100.0f) == 0.0f);
    CHECK(std::isinf(eng::exp_f32(INFINITY)));
    CHECK(std::isnan(eng::exp_f32(NAN)));
    CHECK(eng::gelu_f32(0.0f) == 0.0f);
    CHECK(eng::gelu_f32(30.0f) == 30.0f);
    CHECK(eng::gelu_f32(-30.0f) == 0.0f);
    CHECK(std::isnan(eng::gelu_f32(NAN)));
    CHECK(eng::gelu_f32(INFINITY) == INFINITY);
    CHECK(eng::normal_cdf_f32(-INFINITY) == 0.0f);
    CHECK(std::isnan(eng::gelu_grad_f32(NAN)));
    CHECK(eng::gelu_grad_f32(30.0f) == 1.0f);
  }

  TEST_CASE("GELU spans equal the scalar formula bit for bit, at every length and alignment") {
    std::vector<float> x = wave(1000, 4.0, 0.3), y(1000), dy = wave(1000, 1.5, 1.1), dx(1000);
    x[5] = NAN;
    x[6] = INFINITY;
    x[7] = -0.0f;
    for (int64_t off : {0, 1, 3}) {
      for (int64_t n : {0, 1, 7, 16, 17, 33, 500, 997}) {
        eng::cpu::gelu_span_f32(y.data() + off, x.data() + off, n);
        eng::cpu::gelu_backward_span_f32(dx.data() + off, x.data() + off, dy.data() + off, n);
        bool ok = true;
        for (int64_t i = off; i < off + n; i++) {
          ok = ok && same_bits(y[size_t(i)], eng::gelu_f32(x[size_t(i)]));
          ok = ok && same_bits(dx[size_t(i)], dy[size_t(i)] * eng::gelu_grad_f32(x[size_t(i)]));
        }
        CHECK_MESSAGE(ok, "offset " << off << " length " << n);
      }
    }
    // The unary/binary ops take the same path for contiguous f32 and the scalar path for strided views.
    Tensor t = Tensor::from_vector(std::vector<float>(x.begin(), x.begin() + 60), {6, 10});
    std::vector<float> a = eng::gelu(t).to_vector<float>(), b = eng::gelu(t.t().contiguous()).t().contiguous().to_vector<float>();
    std::vector<float> c = eng::gelu(t.t()).t().contiguous().to_vector<float>();
    CHECK(same_bits(a, b));
    CHECK(same_bits(a, c));
  }

  TEST_CASE("GEMM bias / GELU epilogue equals a separate pass, on every path") {
    struct Shape3 {
      int64_t m, n, k;
    };
    // small (<= 2^16 multiply-adds), packed single-thread, threaded split by rows and by columns, several k blocks
    const Shape3 shapes[] = {{5, 7, 3}, {17, 40, 60}, {300, 50, 100}, {40, 700, 90}, {130, 97, 800}};
    for (const auto& s : shapes)
      for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t lda = (ta ? s.m : s.k) + 1, ldb = (tb ? s.k : s.n) + 2, ldc = s.n + 3;
        std::vector<float> a = wave(size_t((ta ? s.k : s.m) * lda), 1.0, 0.1), b = wave(size_t((tb ? s.n : s.k) * ldb), 1.0, 0.7);
        std::vector<float> bias = wave(size_t(s.n), 2.0, 0.2), c0 = wave(size_t(s.m * ldc), 1.0, 0.9);
        // bias only, bias + GELU, bias + GELU keeping pre, times gelu'(pre) (the backward epilogue)
        for (int variant = 0; variant < 4; variant++) {
          const float beta = variant == 0 ? 0.5f : 0.0f;
          std::vector<float> want = c0, got = c0, pre(size_t(s.m * ldc), -7.0f);
          if (variant == 3) pre = wave(size_t(s.m * ldc), 2.5, 0.4);
          eng::cpu_sgemm(ta, tb, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta, want.data(), ldc);
          std::vector<float> want_pre = variant == 3 ? pre : std::vector<float>(pre.size(), -7.0f);
          for (int64_t i = 0; i < s.m; i++)
            for (int64_t j = 0; j < s.n; j++) {
              float& v = want[size_t(i * ldc + j)];
              if (variant == 3) {
                v = v * eng::gelu_grad_f32(pre[size_t(i * ldc + j)]);
                continue;
              }
              v += bias[size_t(j)];
              if (variant > 0) {
                want_pre[size_t(i * ldc + j)] = v;
                v = eng::gelu_f32(v);
              }
            }
          eng::SgemmEpilogue ep;
          ep.bias = variant == 3 ? nullptr : bias.data();
          ep.gelu = variant == 1 || variant == 2;
          ep.gelu_grad = variant == 3;
          ep.pre = variant >= 2 ? pre.data() : nullptr;
          ep.ldp = ldc;
          for (int threads : {1, 2}) {
            std::vector<float> c = got;
            const int prev = omp_get_max_threads();
            omp_set_num_threads(threads);
            eng::cpu_sgemm_fused(ta, tb, s.m, s.n, s.k, 0.75f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc, &ep);
            omp_set_num_threads(prev);
            CHECK_MESSAGE(std::memcmp(c.data(), want.data(), c.size() * 4) == 0,
                          "m=" << s.m << " n=" << s.n << " k=" << s.k << " t=" << t << " variant " << variant
                               << " threads " << threads);
            if (variant >= 2) CHECK(std::memcmp(pre.data(), want_pre.data(), pre.size() * 4) == 0);
          }
        }
      }
  }

  TEST_CASE("CpuBackend::gemm epilogues on strided batches, f32 and f64") {
    eng::CpuBackend be;
    CHECK(be.supports_gemm_epilogue(eng::GemmEpilogue::BiasGelu));
    const int64_t batch = 3, m = 20, n = 9, k = 11;
    for (eng::DType dt : {eng::DType::F32, eng::DType::F64}) {
      Tensor a = Tensor::from_vector(wave(size_t(batch * m * k), 1.0, 0.0), {batch, m, k}).to(dt);
      Tensor b = Tensor::from_vector(wave(size_t(batch * k * n), 1.0, 0.5), {batch, k, n}).to(dt);
      Tensor bias = Tensor::from_vector(wave(size_t(n), 1.0, 0.3), {n}).to(dt);
      Tensor c = Tensor::empty({batch, m, n}, dt), pre = Tensor::empty({batch, m, n}, dt);
      eng::GemmArgs g;
      g.dtype = dt;
      g.m = m, g.n = n, g.k = k, g.batch = batch;
      g.a = a.raw_data(), g.lda = k, g.stride_a = m * k;
      g.b = b.raw_data(), g.ldb = n, g.stride_b = k * n;
      g.c = c.raw_data(), g.ldc = n, g.stride_c = m * n;
      g.epilogue = eng::GemmEpilogue::BiasGelu;
      g.bias = bias.raw_data();
      g.pre_gelu = pre.raw_data();
      be.gemm(g);
      Tensor h = eng::add(eng::matmul(a.to(eng::DType::F64), b.to(eng::DType::F64)), bias.to(eng::DType::F64));
      std::vector<double> hv = h.to_vector<double>(), cv = c.to_vector<double>(), pv = pre.to_vector<double>();
      const double tol = dt == eng::DType::F32 ? 1e-5 : 1e-12;
      for (size_t i = 0; i < hv.size(); i++) {
        REQUIRE(std::fabs(pv[i] - hv[i]) <= tol * (1 + std::fabs(hv[i])));
        REQUIRE(std::fabs(cv[i] - gelu_ref(hv[i])) <= tol * (1 + std::fabs(hv[i])));
      }
    }
  }

  TEST_CASE("f32 column sums (bias gradients) in fixed row blocks match f64, any thread count") {
    for (int64_t rows : {1, 63, 64, 65, 1000, 8320}) {
      const int64_t cols = 37;
      std::vector<float> v = wave(size_t(rows * cols), 3.0, 0.4);
      Tensor x = Tensor::from_vector(v, {rows, cols});
      check_thread_invariant([&] { return eng::sum(x, {0}).to_vector<float>(); });
      std::vector<float> got = eng::sum(x.reshape({1, rows, cols}), {0, 1}).to_vector<float>();
      for (int64_t j = 0; j < cols; j++) {
        double want = 0;
        for (int64_t r = 0; r < rows; r++) want += double(v[size_t(r * cols + j)]);
        CHECK(std::fabs(double(got[size_t(j)]) - want) <= 1e-6 * (1 + std::fabs(want)));
      }
    }
  }

  TEST_CASE("fused linear, linear_gelu, mlp_gelu and attention_qkv: forward and backward bitwise equal with 1 and 2 threads") {
    const int64_t B = 16, T = 17, D = 48, H = 3;
    check_thread_invariant([&] {
      Tensor x = Tensor::from_vector(wave(size_t(B * T * D), 1.0, 0.0), {B, T, D});
      Tensor wq = Tensor::from_vector(wave(size_t(3 * D * D), 0.2, 0.1), {3 * D, D});
      Tensor bq = Tensor::from_vector(wave(size_t(3 * D), 0.1, 0.2), {3 * D});
      Tensor w1 = Tensor::from_vector(wave(size_t(4 * D * D), 0.2, 0.3), {4 * D, D});
      Tensor b1 = Tensor::from_vector(wave(size_t(4 * D), 0.1, 0.4), {4 * D});
      Tensor w2 = Tensor::from_vector(wave(size_t(4 * D * D), 0.2, 0.5), {D, 4 * D});
      for (Tensor* p : {&x, &wq, &bq, &w1, &b1, &w2}) p->requires_grad_(true);
      Tensor a = eng::attention_qkv(eng::linear(x, wq, bq), H);
      Tensor y = eng::add(eng::linear(eng::linear_gelu(a, w1, b1), w2), eng::mlp_gelu(a, w1, b1, w2, Tensor()));
      eng::sum(eng::mul(y, y)).backward();
      std::vector<float> out = y.to_vector<float>();
      for (Tensor* p : {&x, &wq, &bq, &w1, &b1, &w2}) append(out, p->grad());
      return out;
    });
  }

  TEST_CASE("attention_qkv equals attention on the split views (f32), and rejects bad shapes") {
    Tensor qkv = Tensor::from_vector(wave(size_t(2 * 65 * 96), 1.5, 0.0), {2, 65, 96});  // decoder-like: H 4, D 8
    Tensor p = qkv.reshape({2, 65, 3, 4, 8}).permute({2, 0, 3, 1, 4});
    Tensor ref = eng::attention(p.select(0, 0).contiguous(), p.select(0, 1).contiguous(), p.select(0, 2).contiguous())
                     .transpose(1, 2)
                     .reshape({2, 65, 32});
    std::vector<float> a = eng::attention_qkv(qkv, 4).to_vector<float>(), b = ref.to_vector<float>();
    double err = 0;
    for (size_t i = 0; i < a.size(); i++) err = std::max(err, double(std::fabs(a[i] - b[i])));
    CHECK(err < 1e-6);
    CHECK_THROWS_WITH(eng::attention_qkv(qkv, 5), doctest::Contains("3 x heads"));
    CHECK_THROWS_WITH(eng::attention_qkv(Tensor::ones({2, 3}), 1), doctest::Contains("[B, T, 3 * D]"));
    CHECK_THROWS_WITH(eng::linear_gelu(Tensor::ones({2, 3}), Tensor::ones({4, 2})), doctest::Contains("expects 2"));
  }

  TEST_CASE("the help-first pool runs every piece once, nests serially, rethrows, and serves two callers") {
    const int prev = omp_get_max_threads();
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      std::vector<std::atomic<int>> hits(1000);
      eng::cpu::run_pieces(1000, [&](int64_t i) { hits[size_t(i)]++; });
      bool once = true;
      for (auto& h : hits) once = once && h.load() == 1;
      CHECK_MESSAGE(once, threads << " threads");
      // A job inside a piece runs serially on that thread.
      std::atomic<int> inner{0};
      eng::cpu::run_pieces(8, [&](int64_t) {
        CHECK(eng::cpu::in_parallel_region());
        eng::cpu::run_pieces(5, [&](int64_t) { inner++; });
      });
      CHECK(inner.load() == 40);
      CHECK_FALSE(eng::cpu::in_parallel_region());
      // The first exception reaches the caller; the pool stays usable.
      CHECK_THROWS_WITH(eng::cpu::run_pieces(100,
                                             [&](int64_t i) {
                                               if (i == 37) throw std::runtime_error("piece 37 failed");
                                             }),
                        "piece 37 failed");
      std::atomic<int64_t> sum{0};
      eng::cpu::run_pieces(100, [&](int64_t i) { sum += i; });
      CHECK(sum.load() == 4950);
    }
    // Two user threads submitting at once: one gets the pool, the other runs its pieces itself; both complete.
    omp_set_num_threads(2);
    std::atomic<int64_t> a{0}, b{0};
    std::thread other([&] {
      omp_set_num_threads(2);
      for (int r = 0; r < 200; r++) eng::cpu::run_pieces(16, [&](int64_t i) { a += i; });
    });
    for (int r = 0; r < 200; r++) eng::cpu::run_pieces(16, [&](int64_t i) { b += i; });
    other.join();
    CHECK(a.load() == 200 * 120);
    CHECK(b.load() == 200 * 120);
    omp_set_num_threads(prev);
  }

  TEST_CASE("reading A in place gives the packed GEMM's bits (partial tiles, several k blocks, both thread counts)") {
    // Row-major A (n <= 256) and transposed A (lda >= 192, not a multiple of 512) take the in-place kernels.
    const int64_t shapes[][3] = {{300, 50, 100}, {13, 200, 800}, {25, 33, 385}, {1000, 130, 64}, {7, 256, 9},
                                 {197, 40, 900}, {250, 300, 50}};
    for (const auto& s : shapes)
      for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t m = s[0], n = s[1], k = s[2], lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
        std::vector<float> a = wave(size_t((ta ? k : m) * lda), 1.0, 0.2), b = wave(size_t((tb ? n : k) * ldb), 1.0, 0.6);
        std::vector<float> c0 = wave(size_t(m * ldc), 1.0, 0.8);
        for (int threads : {1, 2}) {
          std::vector<float> packed = c0, direct = c0;
          const int prev = omp_get_max_threads();
          omp_set_num_threads(threads);
          eng::gemm::sgemm_set_direct_a(false);
          eng::cpu_sgemm(ta, tb, m, n, k, 1.25f, a.data(), lda, b.data(), ldb, 0.5f, packed.data(), ldc);
          eng::gemm::sgemm_set_direct_a(true);
          eng::cpu_sgemm(ta, tb, m, n, k, 1.25f, a.data(), lda, b.data(), ldb, 0.5f, direct.data(), ldc);
          omp_set_num_threads(prev);
          CHECK_MESSAGE(std::memcmp(packed.data(), direct.data(), packed.size() * 4) == 0,
                        "m=" << m << " n=" << n << " k=" << k << " ta=" << ta << " tb=" << tb << " threads " << threads);
        }
      }
  }
}
