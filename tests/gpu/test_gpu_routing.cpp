// test_gpu_routing.cpp: the routing ops of expert layers on CUDA against the CPU at sizes beyond the registry's
// cases (which run on CUDA through "every registered op"): cumsum, one_hot and bincount give the CPU's bits;
// grouped_matmul (cuBLAS's grouped GEMM) in f32 within 1e-5 of the CPU and in bf16 within the bf16 GEMM bound of
// test_gpu_kernels.cpp, |C - C64| <= 2^-8 |C64| + (k+2) 2^-23 (|A||B| + |bias|), forward and backward; and the
// deferred index errors of one_hot and bincount.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "tests/gpu/gpu_test_util.h"

using namespace gputest;

namespace {

constexpr double kBf16U = 1.0 / 256.0;  // 2^-8

// Largest violation of the bf16 GEMM bound for a bf16 result `got` of an inner dimension k, given the f64 result and
// the f64 result of the same products on absolute values.
double bf16_gemm_ratio(const Tensor& got, const Tensor& ref64, const Tensor& abs64, int64_t k) {
  auto rv = ref64.to_vector<double>(), av = abs64.to_vector<double>();
  std::vector<double> bound(rv.size());
  for (size_t i = 0; i < rv.size(); i++)
    bound[i] = kBf16U * std::fabs(rv[i]) + double(k + 2) * std::ldexp(1.0, -23) * av[i] + 1e-37;
  return bound_ratio(got.to(DType::F64).to_vector<double>(), rv, bound);
}

struct Grads {
  Tensor y, dx, dw, db;
};

Grads grouped_with_grads(const Tensor& x, const Tensor& w, const Tensor& b, const std::vector<int64_t>& sizes,
                         const Tensor& dy, Device dev) {
  Tensor xl = on(x, dev).requires_grad_(true), wl = on(w, dev).requires_grad_(true), bl = on(b, dev).requires_grad_(true);
  Tensor y = eng::grouped_matmul(xl, wl, sizes, bl);
  eng::sum(eng::mul(y, on(dy, dev))).backward();
  return {y.detach(), xl.grad(), wl.grad(), bl.grad()};
}

}  // namespace

TEST_SUITE("gpu routing") {
  TEST_CASE("out-of-range one_hot and bincount indices on cuda: the cpu's one-line error at the next read-back") {
    GPU_TEST_OR_SKIP();
    Tensor bad = on(Tensor::from_vector(std::vector<int64_t>{1, 4, 0}, {3}), cuda());
    Tensor oh = eng::one_hot(bad, 4);  // queued; the read-back that waits for it throws
    CHECK_THROWS_WITH_AS(oh.to(cpu()), doctest::Contains("one_hot: index 4 out of range for 4 classes"), eng::Error);
    // Reported once; the bad row stays zero, the others are right.
    CHECK(oh.to(cpu()).to_vector<float>() == std::vector<float>{0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0});
    Tensor neg = on(Tensor::from_vector(std::vector<int64_t>{2, -1, 2}, {3}), cuda());
    Tensor counts = eng::bincount(neg, 3);
    CHECK_THROWS_WITH_AS(counts.to(cpu()), doctest::Contains("bincount: index -1 out of range for 3 bins"), eng::Error);
    CHECK(counts.to(cpu()).to_vector<int64_t>() == std::vector<int64_t>{0, 0, 2});
  }

  TEST_CASE("cumsum, one_hot and bincount on large inputs: the cpu's bits, repeatable") {
    GPU_TEST_OR_SKIP();
    Tensor x = normal({37, 1500}, 901);
    for (int64_t dim : {0, 1}) {
      Tensor want = eng::cumsum(x, dim), got = eng::cumsum(on(x, cuda()), dim);
      CHECK_MESSAGE(same_bits(got, want), "cumsum dim " << dim);
      CHECK(same_bits(got, eng::cumsum(on(x, cuda()), dim)));
      Tensor xl = on(x, cuda()).requires_grad_(true), xc = x.detach().requires_grad_(true);
      eng::sum(eng::mul(eng::cumsum(xl, dim), on(x, cuda()))).backward();
      eng::sum(eng::mul(eng::cumsum(xc, dim), x)).backward();
      CHECK_MESSAGE(same_bits(xl.grad(), xc.grad()), "cumsum backward dim " << dim);
    }
    Tensor idx = indices({20000}, 300, 902);
    Tensor gidx = on(idx, cuda());
    CHECK(eng::bincount(gidx, 301).to_vector<int64_t>() == eng::bincount(idx, 301).to_vector<int64_t>());
    Tensor counts = eng::bincount(gidx, 301);
    CHECK(eng::cumsum(counts, 0).to_vector<int64_t>() == eng::cumsum(eng::bincount(idx, 301), 0).to_vector<int64_t>());
    Tensor small = indices({50, 7}, 9, 903);
    for (DType dt : {DType::F32, DType::BF16, DType::I64})
      CHECK_MESSAGE(same_bits(eng::one_hot(on(small, cuda()), 9, dt), eng::one_hot(small, 9, dt)), eng::dtype_name(dt));
  }

  TEST_CASE("grouped_matmul on cuda: f32 within 1e-5 of the cpu, bf16 within the bf16 GEMM bound, forward and backward") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    const std::vector<int64_t> sizes = {150, 0, 61, 40, 5, 0, 20};  // skewed, two empty groups
    const int64_t R = std::accumulate(sizes.begin(), sizes.end(), int64_t(0)), E = int64_t(sizes.size());
    const int64_t in = 48, out = 72;
    Tensor x = normal({R, in}, 910), w = normal({E, out, in}, 911), b = normal({E, out}, 912), dy = normal({R, out}, 913);
    Grads c = grouped_with_grads(x, w, b, sizes, dy, cpu()), g = grouped_with_grads(x, w, b, sizes, dy, cuda());
    CHECK(rel_err(g.y, c.y) <= 1e-5);
    CHECK(rel_err(g.dx, c.dx) <= 1e-5);
    CHECK(rel_err(g.dw, c.dw) <= 1e-5);
    CHECK(rel_err(g.db, c.db) <= 1e-5);
    Grads again = grouped_with_grads(x, w, b, sizes, dy, cuda());
    CHECK(same_bits(g.y, again.y));
    CHECK(same_bits(g.dw, again.dw));

    // bf16: each output against the f64 result from the same bf16 values.
    Tensor xb = x.to(DType::BF16), wb = w.to(DType::BF16), bb = b.to(DType::BF16), dyb = dy.to(DType::BF16);
    Grads h = grouped_with_grads(xb, wb, bb, sizes, dyb, cuda());
    CHECK(h.y.dtype() == DType::BF16);
    Tensor x64 = xb.to(DType::F64), w64 = wb.to(DType::F64), b64 = bb.to(DType::F64), dy64 = dyb.to(DType::F64);
    Grads r = grouped_with_grads(x64, w64, b64, sizes, dy64, cpu());
    Grads a = grouped_with_grads(eng::abs(x64), eng::abs(w64), eng::abs(b64), sizes, eng::abs(dy64), cpu());
    CHECK(bf16_gemm_ratio(h.y, r.y, a.y, in) <= 1.0);
    CHECK(bf16_gemm_ratio(h.dx, r.dx, a.dx, out) <= 1.0);
    CHECK(bf16_gemm_ratio(h.dw, r.dw, a.dw, *std::max_element(sizes.begin(), sizes.end())) <= 1.0);
    CHECK(bf16_gemm_ratio(h.db, r.db, a.db, *std::max_element(sizes.begin(), sizes.end())) <= 1.0);
  }
}
