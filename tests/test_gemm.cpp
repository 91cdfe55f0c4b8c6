// test_gemm.cpp: CPU GEMM (cpu_sgemm, cpu_dgemm, CpuBackend::gemm) against a naive f64 triple loop: every
// transpose combination, odd sizes that cut every cache block and register tile, padded leading dimensions,
// alpha/beta variants, beta = 0 over NaN-filled C, k = 0, strided batches, each micro-kernel the CPU can run,
// and bitwise equality of results computed with 1 and 2 OpenMP threads.
#include <doctest/doctest.h>
#include <omp.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/gemm_kernels.h"
#include "engine/error.h"
#include "tests/test_util.h"

namespace {

using eng::cpu_dgemm;
using eng::cpu_sgemm;

// Deterministic values in [-1, 1).
struct Lcg {
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 6364136223846793005ull + 1442695040888963407ull) {}
  double next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return double(s >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
  }
};

template <typename T>
std::vector<T> random_vec(size_t n, uint64_t seed) {
  Lcg g(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = T(g.next());
  return v;
}

// Stored shapes: A is m x k (k x m when trans_a), B is k x n (n x k when trans_b); leading dims padded by `pad`.
struct Problem {
  bool ta, tb;
  int64_t m, n, k, pad;
  int64_t lda() const { return (ta ? m : k) + pad; }
  int64_t ldb() const { return (tb ? k : n) + pad; }
  int64_t ldc() const { return n + pad; }
  size_t a_size() const { return size_t((ta ? k : m) * lda()); }
  size_t b_size() const { return size_t((tb ? n : k) * ldb()); }
  size_t c_size() const { return size_t(m * ldc()); }
  std::string str() const {
    return "ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " m=" + std::to_string(m) +
           " n=" + std::to_string(n) + " k=" + std::to_string(k) + " pad=" + std::to_string(pad);
  }
};

// Reference in f64 plus, per element, the scale sum |alpha a b| + |beta c| that bounds the rounding error.
template <typename T>
void reference(const Problem& P, double alpha, const T* a, const T* b, double beta, const T* c0, std::vector<double>& ref,
               std::vector<double>& scale) {
  ref.assign(size_t(P.m * P.n), 0.0);
  scale.assign(size_t(P.m * P.n), 0.0);
  for (int64_t i = 0; i < P.m; i++)
    for (int64_t j = 0; j < P.n; j++) {
      double s = 0, sa = 0;
      for (int64_t p = 0; p < P.k; p++) {
        const double x = P.ta ? double(a[p * P.lda() + i]) : double(a[i * P.lda() + p]);
        const double y = P.tb ? double(b[j * P.ldb() + p]) : double(b[p * P.ldb() + j]);
        s += x * y;
        sa += std::fabs(x * y);
      }
      double r = alpha * s, sc = std::fabs(alpha) * sa;
      if (beta != 0) {
        r += beta * double(c0[i * P.ldc() + j]);
        sc += std::fabs(beta * double(c0[i * P.ldc() + j]));
      }
      ref[size_t(i * P.n + j)] = r;
      scale[size_t(i * P.n + j)] = sc;
    }
}

// Checks C against the reference within (k + 2) * unit roundoff * scale, and that the padding past n in each
// row of C was not touched.
template <typename T>
void check_result(const Problem& P, const std::vector<T>& c, const std::vector<T>& c0, const std::vector<double>& ref,
                  const std::vector<double>& scale, const std::string& what) {
  const double u = std::numeric_limits<T>::epsilon();
  int64_t bad = 0;
  for (int64_t i = 0; i < P.m; i++) {
    for (int64_t j = 0; j < P.n; j++) {
      const double got = double(c[size_t(i * P.ldc() + j)]);
      const double want = ref[size_t(i * P.n + j)];
      const double tol = double(P.k + 2) * u * scale[size_t(i * P.n + j)] + 1e-30;
      if (!(std::fabs(got - want) <= tol)) {
        if (bad++ < 3) FAIL_CHECK(what << " " << P.str() << " C(" << i << "," << j << ") = " << got << " want " << want);
      }
    }
    for (int64_t j = P.n; j < P.ldc(); j++) {
      const T got = c[size_t(i * P.ldc() + j)], was = c0[size_t(i * P.ldc() + j)];
      if (std::memcmp(&got, &was, sizeof(T)) != 0 && bad++ < 3)
        FAIL_CHECK(what << " " << P.str() << " wrote the padding of row " << i);
    }
  }
  CHECK_MESSAGE(bad == 0, what << " " << P.str() << ": " << bad << " bad elements");
}

// Runs one problem through cpu_sgemm / cpu_dgemm and compares with the reference.
template <typename T>
void run_and_check(const Problem& P, double alpha, double beta, bool nan_c, const std::string& what, uint64_t seed) {
  const auto a = random_vec<T>(P.a_size(), seed);
  const auto b = random_vec<T>(P.b_size(), seed + 1);
  auto c0 = random_vec<T>(P.c_size(), seed + 2);
  if (nan_c) {
    for (int64_t i = 0; i < P.m; i++)
      for (int64_t j = 0; j < P.n; j++) c0[size_t(i * P.ldc() + j)] = std::numeric_limits<T>::quiet_NaN();
  }
  std::vector<double> ref, scale;
  reference(P, alpha, a.data(), b.data(), nan_c ? 0.0 : beta, c0.data(), ref, scale);
  auto c = c0;
  if constexpr (std::is_same_v<T, float>) {
    cpu_sgemm(P.ta, P.tb, P.m, P.n, P.k, float(alpha), a.data(), P.lda(), b.data(), P.ldb(), float(beta), c.data(),
              P.ldc());
  } else {
    cpu_dgemm(P.ta, P.tb, P.m, P.n, P.k, alpha, a.data(), P.lda(), b.data(), P.ldb(), beta, c.data(), P.ldc());
  }
  check_result(P, c, c0, ref, scale, what);
}

// Every kernel this CPU can run, pinned in turn; the automatic choice is restored afterwards.
std::vector<const char*> runnable_kernels() {
  std::vector<const char*> names;
  for (const char* n : {"avx512", "avx2", "generic"})
    if (eng::gemm::sgemm_select_kernel(n)) names.push_back(n);
  eng::gemm::sgemm_reset_kernel();
  return names;
}

struct KernelPin {
  explicit KernelPin(const char* name) { REQUIRE(eng::gemm::sgemm_select_kernel(name)); }
  ~KernelPin() { eng::gemm::sgemm_reset_kernel(); }
};

// Sizes chosen to cut the register tiles (12x32, 6x16, 4x16) and the cache blocks (kc 256/384, nc 256..512,
// mc up to 4080) at odd places, plus tiny and vector-like shapes and a few of at most 2^16 multiply-adds
// with n and k over 16 that take the small-problem path.
const int64_t kShapes[][3] = {
    {1, 1, 1},    {1, 17, 3},    {3, 1, 17},    {17, 63, 65},  {65, 129, 17}, {129, 65, 257}, {257, 33, 129},
    {63, 257, 65}, {13, 45, 400}, {40, 700, 50}, {1, 300, 500}, {300, 1, 70},  {4100, 5, 9},  {100, 96, 769},
    {7, 40, 37},   {16, 33, 100}, {33, 17, 64}, {5, 200, 30},
};

}  // namespace

TEST_SUITE("gemm") {
  TEST_CASE("sgemm matches an f64 reference for every kernel, transpose and odd size") {
    uint64_t seed = 1;
    for (const char* kernel : runnable_kernels()) {
      KernelPin pin(kernel);
      CHECK(std::string(eng::cpu_sgemm_kernel_name()) == kernel);
      for (const auto& s : kShapes)
        for (int t = 0; t < 4; t++) {
          const Problem P{bool(t & 1), bool(t & 2), s[0], s[1], s[2], (t == 3 || s[0] == 17) ? 7 : 0};
          run_and_check<float>(P, 1.0, 0.0, false, std::string("sgemm/") + kernel, seed++);
        }
    }
  }

  TEST_CASE("sgemm alpha and beta variants, beta = 0 ignores NaN in C, k = 0") {
    const double ab[][2] = {{1, 0}, {0.5, -1.5}, {-2, 1}, {1, 1}, {0, 2}, {0, 0}, {3, 0.25}};
    uint64_t seed = 100;
    for (const char* kernel : runnable_kernels()) {
      KernelPin pin(kernel);
      for (const auto& s : {std::array<int64_t, 3>{5, 7, 3}, std::array<int64_t, 3>{70, 45, 500},
                            std::array<int64_t, 3>{131, 97, 33}})
        for (int t = 0; t < 4; t++)
          for (const auto& x : ab) {
            const Problem P{bool(t & 1), bool(t & 2), s[0], s[1], s[2], 3};
            run_and_check<float>(P, x[0], x[1], false, std::string("alpha/beta ") + kernel, seed++);
            if (x[1] == 0) run_and_check<float>(P, x[0], 0.0, true, std::string("NaN C ") + kernel, seed++);
          }
    }
    // k = 0: C = beta * C; beta = 0 writes zeros over NaN.
    for (int64_t m : {2, 40})
      for (int64_t n : {3, 50}) {
        const Problem P{false, true, m, n, 0, 2};
        run_and_check<float>(P, 1.0, 0.5, false, "k=0", seed++);
        run_and_check<float>(P, 1.0, 0.0, true, "k=0 NaN", seed++);
        run_and_check<double>(P, 1.0, -3.0, false, "dgemm k=0", seed++);
      }
  }

  TEST_CASE("dgemm matches the reference to f64 rounding") {
    uint64_t seed = 500;
    for (const auto& s : kShapes)
      for (int t = 0; t < 4; t++) {
        if (s[0] * s[1] * s[2] > 2000000) continue;
        const Problem P{bool(t & 1), bool(t & 2), s[0], s[1], s[2], t == 2 ? 5 : 0};
        run_and_check<double>(P, 1.0, 0.0, false, "dgemm", seed++);
        run_and_check<double>(P, -0.75, 1.25, false, "dgemm alpha/beta", seed++);
        run_and_check<double>(P, 2.0, 0.0, true, "dgemm NaN C", seed++);
      }
  }

  TEST_CASE("results are bitwise identical with 1 and 2 threads") {
    for (const char* kernel : runnable_kernels()) {
      KernelPin pin(kernel);
      // Shapes big enough for the threaded packed path, with ragged edges and several k blocks.
      for (const auto& s : {std::array<int64_t, 3>{300, 333, 800}, std::array<int64_t, 3>{13, 1000, 200},
                            std::array<int64_t, 3>{1000, 20, 200}, std::array<int64_t, 3>{129, 129, 129}})
        for (int t = 0; t < 4; t++) {
          const Problem P{bool(t & 1), bool(t & 2), s[0], s[1], s[2], 1};
          const auto a = random_vec<float>(P.a_size(), 7), b = random_vec<float>(P.b_size(), 8);
          const auto c0 = random_vec<float>(P.c_size(), 9);
          std::vector<float> c1 = c0, c2 = c0;
          {
            testutil::ThreadCount one(1);
            cpu_sgemm(P.ta, P.tb, P.m, P.n, P.k, 0.75f, a.data(), P.lda(), b.data(), P.ldb(), 0.5f, c1.data(), P.ldc());
          }
          {
            testutil::ThreadCount two(2);
            cpu_sgemm(P.ta, P.tb, P.m, P.n, P.k, 0.75f, a.data(), P.lda(), b.data(), P.ldb(), 0.5f, c2.data(), P.ldc());
          }
          CHECK_MESSAGE(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)) == 0,
                        kernel << " " << P.str() << " differs between 1 and 2 threads");
        }
    }
  }

  TEST_CASE("CpuBackend::gemm runs strided batches in f32 and f64, deterministically") {
    eng::CpuBackend be;
    struct Case {
      int64_t batch, m, n, k;
      bool ta, tb;
    };
    // Many small items (parallel over the batch) and a few large ones (parallel inside each GEMM).
    for (const Case& cs : {Case{37, 17, 17, 64, false, true}, Case{9, 65, 32, 65, true, false},
                           Case{3, 200, 190, 300, false, false}, Case{2, 3, 5, 7, true, true}}) {
      for (eng::DType dt : {eng::DType::F32, eng::DType::F64}) {
        const Problem P{cs.ta, cs.tb, cs.m, cs.n, cs.k, 2};
        // Batch strides larger than one item, so items are not packed back to back.
        const int64_t sa = int64_t(P.a_size()) + 5, sb = int64_t(P.b_size()) + 3, sc = int64_t(P.c_size()) + 1;
        const size_t na = size_t(sa * cs.batch), nb = size_t(sb * cs.batch), nc = size_t(sc * cs.batch);
        eng::GemmArgs g;
        g.dtype = dt;
        g.trans_a = cs.ta;
        g.trans_b = cs.tb;
        g.m = cs.m, g.n = cs.n, g.k = cs.k;
        g.alpha = 1.5, g.beta = -0.5;
        g.lda = P.lda(), g.ldb = P.ldb(), g.ldc = P.ldc();
        g.stride_a = sa, g.stride_b = sb, g.stride_c = sc;
        g.batch = cs.batch;
        auto run = [&](auto tag, int threads) {
          using T = decltype(tag);
          const auto a = random_vec<T>(na, 11), b = random_vec<T>(nb, 12);
          auto c = random_vec<T>(nc, 13);
          const auto c0 = c;
          g.a = a.data(), g.b = b.data(), g.c = c.data();
          {
            testutil::ThreadCount tc(threads);
            be.gemm(g);
          }
          if (threads == 2) {
            std::vector<double> ref, scale;
            for (int64_t i = 0; i < cs.batch; i++) {
              reference(P, g.alpha, a.data() + i * sa, b.data() + i * sb, g.beta, c0.data() + i * sc, ref, scale);
              const std::vector<T> ci(c.begin() + i * sc, c.begin() + i * sc + int64_t(P.c_size()));
              const std::vector<T> c0i(c0.begin() + i * sc, c0.begin() + i * sc + int64_t(P.c_size()));
              check_result(P, ci, c0i, ref, scale, "batched item " + std::to_string(i));
              // The gap between items is not written either.
              for (int64_t q = int64_t(P.c_size()); q < sc; q++) CHECK(c[size_t(i * sc + q)] == c0[size_t(i * sc + q)]);
            }
          }
          return c;
        };
        if (dt == eng::DType::F32) {
          CHECK(run(float(), 1) == run(float(), 2));
        } else {
          CHECK(run(double(), 1) == run(double(), 2));
        }
      }
    }
  }

  TEST_CASE("gemm rejects bad arguments with a clear error") {
    eng::CpuBackend be;
    eng::GemmArgs g;
    std::vector<int32_t> x(16);
    g.dtype = eng::DType::I32;
    g.m = g.n = g.k = 2;
    g.lda = g.ldb = g.ldc = 2;
    g.a = x.data(), g.b = x.data(), g.c = x.data();
    CHECK_THROWS_AS(be.gemm(g), eng::Error);
    std::vector<float> f(16);
    CHECK_THROWS_AS(cpu_sgemm(false, false, 2, 2, 2, 1.f, f.data(), 1, f.data(), 2, 0.f, f.data(), 2), eng::Error);
    CHECK_THROWS_AS(cpu_sgemm(false, false, 2, 3, 2, 1.f, f.data(), 2, f.data(), 3, 0.f, f.data(), 2), eng::Error);
    CHECK_THROWS_AS(cpu_sgemm(false, false, -1, 3, 2, 1.f, f.data(), 2, f.data(), 3, 0.f, f.data(), 3), eng::Error);
  }

  TEST_CASE("the automatic kernel is the best this CPU supports") {
    const auto kernels = runnable_kernels();
    REQUIRE(!kernels.empty());
    CHECK(std::string(eng::cpu_sgemm_kernel_name()) == kernels.front());
  }
}
