// test_rng.cpp: Philox4x32-10 against the published known-answer vectors, the documented counter
// mapping and conversions, moments and a histogram of large fills, bitwise thread-count determinism,
// reproducibility from a saved state, and permutations.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"

using eng::DType;
using eng::Generator;
using eng::Philox4x32;
using eng::Tensor;

namespace {

// Runs f with the OpenMP thread count set to n, restoring the previous count afterwards.
template <typename F> auto with_threads(int n, F f) {
  int prev = omp_get_max_threads();
  omp_set_num_threads(n);
  auto out = f();
  omp_set_num_threads(prev);
  return out;
}

template <typename T> bool bitwise_equal(const Tensor& a, const Tensor& b) {
  std::vector<T> x = a.to_vector<T>(), y = b.to_vector<T>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

struct Moments {
  double mean = 0, var = 0, skew = 0, kurt = 0;
};
Moments moments(const std::vector<double>& x) {
  Moments m;
  double n = double(x.size());
  for (double v : x) m.mean += v;
  m.mean /= n;
  double m2 = 0, m3 = 0, m4 = 0;
  for (double v : x) {
    double d = v - m.mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m3 /= n;
  m4 /= n;
  m.var = m2;
  m.skew = m3 / std::pow(m2, 1.5);
  m.kurt = m4 / (m2 * m2);
  return m;
}

}  // namespace

TEST_SUITE("rng") {
  TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
    struct Kat {
      uint32_t ctr[4], key[2], out[4];
    };
    const Kat kats[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (const Kat& k : kats) {
      Philox4x32 c{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}};
      Philox4x32 r = eng::philox4x32_10(c, k.key[0], k.key[1]);
      for (int w = 0; w < 4; w++) CHECK(r.v[w] == k.out[w]);
    }
  }

  TEST_CASE("counter and key words follow the documented mapping") {
    // counter = {lo(c), hi(c), lo(stream), hi(stream)}, key = {lo(seed), hi(seed)}: the third KAT again.
    uint64_t seed = (uint64_t(0x299f31d0) << 32) | 0xa4093822u;
    uint64_t stream = (uint64_t(0x03707344) << 32) | 0x13198a2eu;
    uint64_t c = (uint64_t(0x85a308d3) << 32) | 0x243f6a88u;
    Philox4x32 r = eng::philox_block(seed, stream, c);
    CHECK(r.v[0] == 0xd16cfe09u);
    CHECK(r.v[1] == 0x94fdcceb);
    CHECK(r.v[2] == 0x5001e420u);
    CHECK(r.v[3] == 0x24126ea1u);
  }

  TEST_CASE("fills use counter offset+i and the documented conversions") {
    const uint64_t seed = 0x0123456789abcdefULL, stream = 5, offset = 1000;
    Generator g(seed, stream, offset);
    Tensor uf = g.uniform({3, 7}, -2.0, 3.0, DType::F32);
    Tensor ud = g.uniform({3, 7}, -2.0, 3.0, DType::F64);
    Tensor nd = g.normal({3, 7}, 1.5, 2.0, DType::F64);
    Tensor nf = g.normal({3, 7}, 1.5, 2.0, DType::F32);
    CHECK(g.offset() == offset + 4 * 21);
    std::vector<float> vuf = uf.to_vector<float>(), vnf = nf.to_vector<float>();
    std::vector<double> vud = ud.to_vector<double>(), vnd = nd.to_vector<double>();
    for (uint64_t i = 0; i < 21; i++) {
      // Independent re-derivation of each element from its own counter.
      Philox4x32 r = eng::philox_block(seed, stream, offset + i);
      double u24 = double(r.v[0] >> 8) / 16777216.0;
      CHECK(vuf[i] == float(-2.0 + 5.0 * u24));
      Philox4x32 r2 = eng::philox_block(seed, stream, offset + 21 + i);
      double u53 = double(((uint64_t(r2.v[1]) << 32) | r2.v[0]) >> 11) / 9007199254740992.0;
      CHECK(vud[i] == doctest::Approx(-2.0 + 5.0 * u53).epsilon(1e-15));
      for (int which = 0; which < 2; which++) {
        uint64_t base = offset + 42 + 21 * uint64_t(which);
        Philox4x32 r3 = eng::philox_block(seed, stream, base + i);
        double a = 1.0 - double(((uint64_t(r3.v[1]) << 32) | r3.v[0]) >> 11) / 9007199254740992.0;
        double b = double(((uint64_t(r3.v[3]) << 32) | r3.v[2]) >> 11) / 9007199254740992.0;
        double z = std::sqrt(-2.0 * std::log(a)) * std::cos(2.0 * M_PI * b);
        if (which == 0)
          CHECK(vnd[i] == doctest::Approx(1.5 + 2.0 * z).epsilon(1e-14));
        else
          CHECK(double(vnf[i]) == doctest::Approx(1.5 + 2.0 * z).epsilon(1e-7));
      }
    }
  }

  TEST_CASE("element i depends only on (seed, stream, offset + i), whatever the layout") {
    Generator a(11, 3, 0), b(11, 3, 4);
    Tensor full = a.uniform({10});
    Tensor tail = b.uniform({6});
    CHECK(bitwise_equal<float>(full.slice(0, 4, 10), tail));

    // A transposed (non-contiguous) destination gets values in its own row-major logical order.
    Generator c(11, 3, 0), d(11, 3, 0);
    Tensor base = Tensor::zeros({5, 6}, DType::F64);
    Tensor view = base.t();  // 6 x 5, strides (1, 6)
    c.normal_(view);
    Tensor ref = d.normal({6, 5}, 0.0, 1.0, DType::F64);
    CHECK(bitwise_equal<double>(view.contiguous(), ref));
    CHECK(bitwise_equal<double>(base, ref.t().contiguous()));
  }

  TEST_CASE("different seeds and streams give different numbers") {
    std::vector<float> x = Generator(1, 0).uniform({64}).to_vector<float>();
    std::vector<float> y = Generator(2, 0).uniform({64}).to_vector<float>();
    std::vector<float> z = Generator(1, 1).uniform({64}).to_vector<float>();
    int same_xy = 0, same_xz = 0;
    for (size_t i = 0; i < x.size(); i++) {
      same_xy += x[i] == y[i];
      same_xz += x[i] == z[i];
    }
    CHECK(same_xy < 3);
    CHECK(same_xz < 3);
  }

  TEST_CASE("uniform moments and histogram over 1e6 samples") {
    const int64_t n = 1000000;
    for (DType dt : {DType::F32, DType::F64}) {
      CAPTURE(eng::dtype_name(dt));
      std::vector<double> x = Generator(2024, 1).uniform({n}, 0.0, 1.0, dt).to_vector<double>();
      Moments m = moments(x);
      // Standard errors: mean 0.29e-3, variance 0.075e-3; tolerances are ~6 standard errors.
      CHECK(std::fabs(m.mean - 0.5) < 1.8e-3);
      CHECK(std::fabs(m.var - 1.0 / 12.0) < 4.5e-4);
      CHECK(std::fabs(m.skew) < 0.015);
      CHECK(*std::min_element(x.begin(), x.end()) >= 0.0);
      CHECK(*std::max_element(x.begin(), x.end()) < 1.0);
      // Chi-square over 100 equal bins: 99 degrees of freedom, mean 99, sd 14.
      std::vector<double> count(100, 0.0);
      for (double v : x) count[size_t(v * 100)]++;
      double chi2 = 0, expect = double(n) / 100;
      for (double c : count) chi2 += (c - expect) * (c - expect) / expect;
      CHECK(chi2 < 99 + 6 * 14.07);
      CHECK(chi2 > 99 - 5 * 14.07);
    }
    // A shifted, scaled range.
    std::vector<double> y = Generator(7).uniform({n}, -3.0, 5.0, DType::F64).to_vector<double>();
    Moments my = moments(y);
    CHECK(std::fabs(my.mean - 1.0) < 6 * 8.0 / std::sqrt(12.0 * n));
    CHECK(std::fabs(my.var - 64.0 / 12.0) < 6 * 64.0 * std::sqrt(1.0 / 180.0 / n));
  }

  TEST_CASE("normal moments over 1e6 samples") {
    const int64_t n = 1000000;
    for (DType dt : {DType::F32, DType::F64}) {
      CAPTURE(eng::dtype_name(dt));
      std::vector<double> x = Generator(99, 2).normal({n}, 2.0, 3.0, dt).to_vector<double>();
      Moments m = moments(x);
      // Standard errors: mean 3e-3, variance 9*sqrt(2/n) = 12.7e-3, skew 2.4e-3, kurtosis 4.9e-3.
      CHECK(std::fabs(m.mean - 2.0) < 0.018);
      CHECK(std::fabs(m.var - 9.0) < 0.076);
      CHECK(std::fabs(m.skew) < 0.015);
      CHECK(std::fabs(m.kurt - 3.0) < 0.03);
      // Tail mass beyond 3 sigma: 0.0027 of the samples (sd 5.2e-5).
      double tail = 0;
      for (double v : x) tail += std::fabs(v - 2.0) > 9.0;
      CHECK(std::fabs(tail / n - 0.0026998) < 4e-4);
    }
  }

  TEST_CASE("uniform f32 stays below hi even where rounding would reach it") {
    // In f32, 1e8 + u rounds to 1e8 or 1e8 + 8; [1e8, 1e8 + 1) holds only 1e8.
    std::vector<float> x = Generator(3).uniform({4096}, 1e8, 1e8 + 1, DType::F32).to_vector<float>();
    for (float v : x) REQUIRE(v == 1e8f);
    // And the plain [0, 1) f32 fill never returns 1 (24-bit values are exact).
    CHECK(eng::philox_u24(0xffffffffu) < 1.0f);
    CHECK(eng::philox_u53(0xffffffffu, 0xffffffffu) < 1.0);
  }

  TEST_CASE("fills are bitwise identical for 1, 2 and 3 threads") {
    const int64_t n = 300001;  // several parallel blocks plus a ragged tail
    auto draw = [&]() {
      Generator g(123456789, 42, 77);
      std::vector<Tensor> out;
      out.push_back(g.uniform({n}, 0.0, 1.0, DType::F32));
      out.push_back(g.uniform({n}, -1.0, 2.0, DType::F64));
      out.push_back(g.normal({n}, 0.0, 1.0, DType::F32));
      out.push_back(g.normal({n}, 0.5, 2.0, DType::F64));
      Tensor strided = Tensor::zeros({601, 500}, DType::F32);
      g.normal_(strided.t());
      out.push_back(strided);
      out.push_back(g.permutation(100000));
      return out;
    };
    std::vector<Tensor> one = with_threads(1, draw);
    for (int threads : {2, 3}) {
      CAPTURE(threads);
      std::vector<Tensor> many = with_threads(threads, draw);
      CHECK(bitwise_equal<float>(one[0], many[0]));
      CHECK(bitwise_equal<double>(one[1], many[1]));
      CHECK(bitwise_equal<float>(one[2], many[2]));
      CHECK(bitwise_equal<double>(one[3], many[3]));
      CHECK(bitwise_equal<float>(one[4], many[4]));
      CHECK(one[5].to_vector<int64_t>() == many[5].to_vector<int64_t>());
    }
  }

  TEST_CASE("the same state gives the same numbers; offset counts counters") {
    Generator g(42, 7);
    g.uniform({13});
    CHECK(g.offset() == 13);
    eng::RngState saved = g.state();
    Tensor a = g.normal({4, 5});
    uint64_t ua = g.next_u64();
    Tensor pa = g.permutation(50);
    CHECK(g.offset() == 13 + 20 + 1 + 50);

    Generator h(0);
    h.set_state(saved);
    Tensor b = h.normal({4, 5});
    CHECK(h.next_u64() == ua);
    CHECK(bitwise_equal<float>(a, b));
    CHECK(h.permutation(50).to_vector<int64_t>() == pa.to_vector<int64_t>());
    CHECK(h.state() == g.state());

    // next_u64 is r[1]:r[0] of one counter.
    Generator k(5, 6, 9);
    Philox4x32 r = eng::philox_block(5, 6, 9);
    CHECK(k.next_u64() == ((uint64_t(r.v[1]) << 32) | r.v[0]));
    CHECK(k.offset() == 10);
    CHECK(k.advance(100) == 10);
    CHECK(k.offset() == 110);
  }

  TEST_CASE("rng state JSON round trip and errors") {
    eng::RngState s{0xfedcba9876543210ULL, 3, (uint64_t(1) << 60) + 1};
    nlohmann::json j = s;
    eng::RngState back = nlohmann::json::parse(j.dump()).get<eng::RngState>();
    CHECK(back == s);
    // Decimal strings are accepted too (for stores that keep only 53-bit numbers).
    nlohmann::json js = {{"seed", "18364758544493064720"}, {"stream", 3}, {"offset", "1152921504606846977"}};
    CHECK(js.get<eng::RngState>() == s);
    nlohmann::json missing = {{"seed", 1}, {"stream", 2}};
    CHECK_THROWS_WITH_AS(missing.get<eng::RngState>(), doctest::Contains("'offset' is missing"), eng::Error);
    nlohmann::json bad = {{"seed", -1}, {"stream", 2}, {"offset", 0}};
    CHECK_THROWS_WITH_AS(bad.get<eng::RngState>(), doctest::Contains("'seed'"), eng::Error);
    nlohmann::json bad_str = {{"seed", "12x"}, {"stream", 2}, {"offset", 0}};
    CHECK_THROWS_AS(bad_str.get<eng::RngState>(), eng::Error);
  }

  TEST_CASE("permutation is a permutation, and a fair one") {
    Generator g(8);
    for (int64_t n : {0, 1, 2, 17, 1000}) {
      CAPTURE(n);
      Tensor p = g.permutation(n);
      CHECK(p.dtype() == DType::I64);
      CHECK(p.shape() == eng::Shape{n});
      std::vector<int64_t> v = p.to_vector<int64_t>();
      std::sort(v.begin(), v.end());
      for (int64_t i = 0; i < n; i++) REQUIRE(v[size_t(i)] == i);
    }
    CHECK(g.permutation(1000).to_vector<int64_t>() != g.permutation(1000).to_vector<int64_t>());
    // Where element 0 lands over many permutations of 10: uniform over the 10 places.
    const int trials = 20000;
    std::vector<double> count(10, 0.0);
    for (int t = 0; t < trials; t++) {
      std::vector<int64_t> v = g.permutation(10).to_vector<int64_t>();
      count[size_t(std::find(v.begin(), v.end(), 0) - v.begin())]++;
    }
    double chi2 = 0, expect = trials / 10.0;
    for (double c : count) chi2 += (c - expect) * (c - expect) / expect;
    CHECK(chi2 < 9 + 6 * 4.24);  // 9 degrees of freedom, sd 4.24
  }

  TEST_CASE("bf16 draws are the f32 draws rounded") {
    Tensor h = Generator(4, 1).uniform({257}, -1.0, 1.0, DType::BF16);
    Tensor f = Generator(4, 1).uniform({257}, -1.0, 1.0, DType::F32);
    std::vector<float> hv = h.to_vector<float>(), fv = f.to_vector<float>();
    for (size_t i = 0; i < hv.size(); i++) REQUIRE(hv[i] == float(eng::bf16(fv[i])));
  }

  TEST_CASE("integer destinations are refused with a clear error") {
    Generator g(1);
    CHECK_THROWS_WITH_AS(g.uniform({3}, 0, 1, DType::I64), doctest::Contains("floating"), eng::Error);
  }
}
