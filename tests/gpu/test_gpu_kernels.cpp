// test_gpu_kernels.cpp: every CUDA kernel family against the CPU backend at sizes that reach the multi-block,
// chunked and library paths the small registry cases never touch; bitwise checks where the kernels promise
// them; bf16 and TF32 with tolerances derived below; two runs of each kernel must give the same bits.
//
// Tolerances (u = unit roundoff):
//   f32 vs cpu        1e-5 relative to the largest |value| (issue's bound); f64 1e-12 or tighter where exact.
//   bitwise           add/sub/mul/div and AdamW (same per-element code, no fma on either side), copies and
//                     conversions, gather/index_select/sort/topk/max/min, uniform random fills, index_add and
//                     scatter_add (same accumulation order as the CPU), layer norm dw/db (same block order).
//   bf16 outputs      the GPU computes in f32 and rounds once to bf16 (u = 2^-8): per element
//                     |gpu - ref| <= 2^-8 |ref| (+ a few f32 ulps), ref computed from the same bf16 inputs.
//   TF32 GEMM         inputs rounded to a 10-bit mantissa (u <= 2^-10 each), f32 accumulation: per element
//                     |C - C64| <= (2^-9 + (k+2) 2^-23) (|A||B|)_ij + 2^-23 |C64_ij|.
//   bf16 GEMM         products of bf16 values are exact in f32, f32 accumulation, one rounding to bf16:
//                     |C - C64| <= 2^-8 |C64_ij| + (k+2) 2^-23 (|A||B|)_ij.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "engine/optim.h"
#include "tests/gpu/gpu_test_util.h"

using namespace gputest;
using eng::Backend;
using eng::desc_of;

namespace {

Backend& gpu_backend() { return eng::backend_for(cuda()); }
Backend& cpu_backend() { return eng::backend_for(cpu()); }

constexpr double kBf16U = 1.0 / 256.0;  // 2^-8

// |gpu - ref| <= 2^-8 |ref| + 4 f32 ulps of the largest |ref|, per element (bf16 results vs an f32 reference).
double bf16_ratio(const Tensor& gpu, const Tensor& ref) {
  auto g = gpu.to_vector<double>(), r = ref.to_vector<double>();
  double m = 0;
  for (double x : r) m = std::max(m, std::fabs(x));
  std::vector<double> bound(r.size());
  for (size_t i = 0; i < r.size(); i++) bound[i] = kBf16U * std::fabs(r[i]) * 1.0001 + 4.8e-7 * m + 1e-37;
  return bound_ratio(g, r, bound);
}

// One row-major product C (m x n, row pitch ldc) = op(A) op(B) of contiguous operands, alpha 1, beta 0, no batch:
// the GemmArgs the single-matrix cases start from.
eng::GemmArgs gemm_args(DType dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const Tensor& a, const Tensor& b,
                        Tensor& c, int64_t ldc) {
  eng::GemmArgs g;
  g.dtype = dt;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a.raw_data();
  g.lda = ta ? m : k;
  g.b = b.raw_data();
  g.ldb = tb ? k : n;
  g.c = c.raw_data();
  g.ldc = ldc;
  return g;
}

// A [rows, cols] view with non-unit strides on `dev`: the transpose of a contiguous [cols, rows] tensor.
Tensor transposed_on(const Shape& s, uint64_t seed, Device dev, DType dt = DType::F32) {
  return normal({s[1], s[0]}, seed, dt).to(dev).detach().t();
}

}  // namespace

TEST_SUITE("gpu kernels") {
  // ---------------------------------------------------------------- elementwise

  TEST_CASE("unary ops on large and strided f32 tensors match the cpu (libm ulps)") {
    GPU_TEST_OR_SKIP();
    Tensor x = normal({257, 1031}, 1);
    Tensor pos = uniform({257, 1031}, 2, 0.5, 2.0);
    Tensor xt_gpu = transposed_on({1031, 257}, 3, cuda());
    Tensor xt_cpu = xt_gpu.to(cpu());  // same values, contiguous
    using F = std::function<Tensor(const Tensor&)>;
    const std::vector<std::pair<const char*, F>> ops = {
        {"neg", [](const Tensor& t) { return eng::neg(t); }},
        {"exp", [](const Tensor& t) { return eng::exp(t); }},
        {"tanh", [](const Tensor& t) { return eng::tanh(t); }},
        {"sigmoid", [](const Tensor& t) { return eng::sigmoid(t); }},
        {"relu", [](const Tensor& t) { return eng::relu(t); }},
        {"gelu", [](const Tensor& t) { return eng::gelu(t); }},
        {"erf", [](const Tensor& t) { return eng::erf(t); }},
        {"abs", [](const Tensor& t) { return eng::abs(t); }},
        {"square", [](const Tensor& t) { return eng::square(t); }},
        {"pow 3", [](const Tensor& t) { return eng::pow(t, 3.0); }},
        {"add scalar", [](const Tensor& t) { return eng::add(t, 2.5); }},
        {"mul scalar", [](const Tensor& t) { return eng::mul(t, -1.5); }},
        {"clamp", [](const Tensor& t) { return eng::clamp(t, -0.3, 0.4); }},
    };
    for (const auto& op : ops) {
      const std::string name = op.first;
      const F& f = op.second;
      CAPTURE(name);
      Tensor c = f(x), g = f(on(x, cuda()));
      CHECK(g.device() == cuda());
      CHECK(rel_err(g, c) <= 1e-6);
      CHECK(same_bits(g, f(on(x, cuda()))));  // repeats bit for bit
      CHECK(rel_err(f(xt_gpu), f(xt_cpu)) <= 1e-6);
    }
    const std::vector<std::pair<const char*, F>> positive = {
        {"log", [](const Tensor& t) { return eng::log(t); }},
        {"sqrt", [](const Tensor& t) { return eng::sqrt(t); }},
        {"rsqrt", [](const Tensor& t) { return eng::rsqrt(t); }},
        {"pow -0.5", [](const Tensor& t) { return eng::pow(t, -0.5); }},
    };
    for (const auto& op : positive) {
      const std::string name = op.first;
      const F& f = op.second;
      CAPTURE(name);
      CHECK(rel_err(f(on(pos, cuda())), f(pos)) <= 1e-6);
    }
    // No libm involved: the same bits as the CPU.
    CHECK(same_bits(eng::relu(on(x, cuda())), eng::relu(x)));
    CHECK(same_bits(eng::square(on(x, cuda())), eng::square(x)));
    CHECK(same_bits(eng::mul(on(x, cuda()), -1.5), eng::mul(x, -1.5)));
  }

  TEST_CASE("binary ops with broadcasting: add/sub/mul/div bitwise equal to the cpu, the rest within ulps") {
    GPU_TEST_OR_SKIP();
    Tensor a = normal({64, 129, 33}, 10), b = normal({129, 1}, 11), c = uniform({33}, 12, 0.5, 2.0);
    Tensor ga = on(a, cuda()), gb = on(b, cuda()), gc = on(c, cuda());
    CHECK(same_bits(eng::add(ga, gb), eng::add(a, b)));
    CHECK(same_bits(eng::sub(gb, ga), eng::sub(b, a)));
    CHECK(same_bits(eng::mul(ga, gc), eng::mul(a, c)));
    CHECK(same_bits(eng::div(ga, gc), eng::div(a, c)));
    CHECK(same_bits(eng::maximum(ga, gb), eng::maximum(a, b)));
    CHECK(same_bits(eng::minimum(ga, gb), eng::minimum(a, b)));
    CHECK(same_bits(eng::gt(ga, gb), eng::gt(a, b)));
    CHECK(same_bits(eng::le(ga, gb), eng::le(a, b)));
    CHECK(rel_err(eng::pow(gc, ga), eng::pow(c, a)) <= 1e-6);
    // Non-contiguous operand on the GPU.
    Tensor gt = transposed_on({129, 64}, 13, cuda());
    CHECK(same_bits(eng::add(gt, on(normal({129, 64}, 14), cuda())), eng::add(gt.to(cpu()), normal({129, 64}, 14))));
    // f64 and integer tensors.
    Tensor a64 = normal({1000, 37}, 15, DType::F64), b64 = normal({37}, 16, DType::F64);
    CHECK(same_bits(eng::mul(on(a64, cuda()), on(b64, cuda())), eng::mul(a64, b64)));
    Tensor i1 = indices({5000}, 1000, 17), i2 = indices({5000}, 1000, 18);
    CHECK(same_bits(eng::add(on(i1, cuda()), on(i2, cuda())), eng::add(i1, i2)));
    CHECK(same_bits(eng::maximum(on(i1, cuda()), on(i2, cuda())), eng::maximum(i1, i2)));
  }

  TEST_CASE("where and masked_fill match the cpu bitwise") {
    GPU_TEST_OR_SKIP();
    Tensor cond = eng::gt(normal({300, 77}, 20), Tensor::scalar(0.0));
    Tensor a = normal({300, 77}, 21), b = normal({77}, 22);
    Tensor g = eng::where(on(cond, cuda()), on(a, cuda()), on(b, cuda()));
    CHECK(same_bits(g, eng::where(cond, a, b)));
    CHECK(same_bits(eng::masked_fill(on(a, cuda()), on(cond, cuda()), -7.0), eng::masked_fill(a, cond, -7.0)));
  }

  TEST_CASE("copy converts between every pair of dtypes exactly like the cpu, from strided sources") {
    GPU_TEST_OR_SKIP();
    // Values that every dtype can hold (integers convert by truncation, in range).
    Tensor base = eng::mul(normal({91, 53}, 30, DType::F64), 100.0);
    const DType all[] = {DType::F32, DType::F64, DType::BF16, DType::I32, DType::I64};
    for (DType from : all) {
      Tensor src_cpu = base.to(from);
      Tensor src_gpu_t = on(src_cpu.t().contiguous(), cuda()).t();  // non-contiguous on the GPU
      for (DType to : all) {
        const std::string from_name = eng::dtype_name(from);
        CAPTURE(from_name);
        const std::string to_name = eng::dtype_name(to);
        CAPTURE(to_name);
        Tensor c = src_cpu.to(to), g = on(src_cpu, cuda()).to(to), gt = src_gpu_t.to(to);
        CHECK(same_bits(g, c));
        CHECK(same_bits(gt, c));
      }
    }
  }

  TEST_CASE("fill gives the cpu's bits for every dtype") {
    GPU_TEST_OR_SKIP();
    for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::I32, DType::I64}) {
      const std::string dtype = eng::dtype_name(dt);
      CAPTURE(dtype);
      CHECK(same_bits(Tensor::full({33, 17}, -3.3, dt, cuda()), Tensor::full({33, 17}, -3.3, dt)));
      Tensor t = Tensor::zeros({40, 30}, dt, cuda());
      t.t().slice(0, 5, 20).fill_(1.75);  // strided fill
      Tensor r = Tensor::zeros({40, 30}, dt);
      r.t().slice(0, 5, 20).fill_(1.75);
      CHECK(same_bits(t, r));
    }
  }

  TEST_CASE("bf16 elementwise: f32 math rounded once, within 2^-8 relative of the f32 result") {
    GPU_TEST_OR_SKIP();
    Tensor xb = normal({129, 257}, 40).to(DType::BF16), yb = normal({257}, 41).to(DType::BF16);
    Tensor x32 = xb.to(DType::F32), y32 = yb.to(DType::F32);
    Tensor gx = on(xb, cuda()), gy = on(yb, cuda());
    CHECK(eng::add(gx, gy).dtype() == DType::BF16);
    CHECK(bf16_ratio(eng::add(gx, gy).to(DType::F32), eng::add(x32, y32)) <= 1.0);
    CHECK(bf16_ratio(eng::mul(gx, gy).to(DType::F32), eng::mul(x32, y32)) <= 1.0);
    CHECK(bf16_ratio(eng::exp(gx).to(DType::F32), eng::exp(x32)) <= 1.0);
    CHECK(bf16_ratio(eng::tanh(gx).to(DType::F32), eng::tanh(x32)) <= 1.0);
    CHECK(bf16_ratio(eng::gelu(gx).to(DType::F32), eng::gelu(x32)) <= 1.0);
    CHECK(bf16_ratio(eng::sigmoid(gx).to(DType::F32), eng::sigmoid(x32)) <= 1.0);
    // Rounding f32 -> bf16 on the GPU is the CPU's round-to-nearest-even, bit for bit.
    Tensor f = normal({1000, 33}, 42);
    CHECK(same_bits(on(f, cuda()).to(DType::BF16), f.to(DType::BF16)));
  }

  // ---------------------------------------------------------------- reductions

  TEST_CASE("sum / amax / min over many layouts: f32 and f64 vs the cpu, chunked paths, repeatable") {
    GPU_TEST_OR_SKIP();
    struct Case {
      Shape shape;
      std::vector<int64_t> dims;
    };
    const std::vector<Case> cases = {
        {{3, 100000}, {1}},        // few outputs, long rows: inner layout, chunked
        {{100000, 3}, {0}},        // column sums: outer layout, chunked
        {{64, 70, 33}, {0, 2}},    // mixed dims
        {{64, 70, 33}, {1}},       // middle dim (strided reduction)
        {{5, 7}, {}},              // all
        {{2000003}, {}},           // one long vector
        {{33, 40000}, {0}},        // many outputs, short columns
        {{4096, 768}, {0}},        // a bias gradient
        {{1, 1, 9}, {0, 1}},       // only size-1 dims reduced
    };
    for (DType dt : {DType::F32, DType::F64}) {
      for (size_t ci = 0; ci < cases.size(); ci++) {
        const Case& c = cases[ci];
        const std::string dtype = eng::dtype_name(dt);
        CAPTURE(dtype);
        CAPTURE(ci);
        Tensor x = normal(c.shape, 50 + ci, dt);
        Tensor gx = on(x, cuda());
        Tensor s = eng::sum(gx, c.dims), s2 = eng::sum(gx, c.dims);
        CHECK(rel_err(s, eng::sum(x, c.dims)) <= (dt == DType::F32 ? 1e-6 : 1e-12));
        CHECK(same_bits(s, s2));
        CHECK(same_bits(eng::amax(gx, c.dims), eng::amax(x, c.dims)));  // max is exact
        CHECK(same_bits(eng::neg(eng::amax(eng::neg(gx), c.dims)), eng::neg(eng::amax(eng::neg(x), c.dims))));
      }
    }
    // Strided source: the transpose of a contiguous tensor, reduced along either dim.
    Tensor gt = transposed_on({1000, 300}, 60, cuda());
    Tensor ct = gt.to(cpu());
    CHECK(rel_err(eng::sum(gt, {0}), eng::sum(ct, {0})) <= 1e-6);
    CHECK(rel_err(eng::sum(gt, {1}), eng::sum(ct, {1})) <= 1e-6);
    CHECK(rel_err(eng::mean(gt, {1}), eng::mean(ct, {1})) <= 1e-6);
    CHECK(rel_err(eng::var(gt, {0}), eng::var(ct, {0})) <= 1e-5);
  }

  TEST_CASE("bf16 sum: f64 accumulation rounded once to bf16") {
    GPU_TEST_OR_SKIP();
    Tensor xb = normal({300, 500}, 70).to(DType::BF16);
    Tensor g = eng::sum(on(xb, cuda()), {1}).to(DType::F32);
    Tensor ref = eng::sum(xb.to(DType::F32), {1});  // f64 accumulation on the CPU too, rounded to f32
    CHECK(bf16_ratio(g, ref) <= 1.0);
  }

  TEST_CASE("max / min with indices: ties go to the first index, the first NaN wins, as on the cpu") {
    GPU_TEST_OR_SKIP();
    // Few distinct values (many ties), some NaNs, signed zeros.
    std::vector<float> v;
    Tensor r = normal({50, 333}, 80, DType::F64);
    for (double x : r.to_vector<double>()) v.push_back(float(std::round(x * 2.0)));
    v[size_t(3 * 333 + 17)] = NAN;
    v[size_t(7 * 333 + 5)] = NAN;
    v[size_t(7 * 333 + 300)] = NAN;
    v[size_t(9 * 333 + 0)] = -0.0f;
    Tensor x = Tensor::from_vector(v, {50, 333});
    for (int64_t dim : {0, 1}) {
      for (bool is_max : {true, false}) {
        CAPTURE(dim);
        CAPTURE(is_max);
        auto c = is_max ? eng::max(x, dim) : eng::min(x, dim);
        auto g = is_max ? eng::max(on(x, cuda()), dim) : eng::min(on(x, cuda()), dim);
        CHECK(same_bits(g.values, c.values));
        CHECK(g.indices.to_vector<int64_t>() == c.indices.to_vector<int64_t>());
      }
    }
  }

  // ---------------------------------------------------------------- softmax, layer norm

  TEST_CASE("softmax, log_softmax and layer_norm forward and backward match the cpu (warp and block rows)") {
    GPU_TEST_OR_SKIP();
    for (DType dt : {DType::F32, DType::F64}) {
      const double tol = dt == DType::F32 ? 1e-5 : 1e-12;
      for (Shape s : {Shape{1000, 77}, Shape{37, 3000}, Shape{3, 5, 1024}}) {
        const std::string dtype = eng::dtype_name(dt);
        CAPTURE(dtype);
        const std::string shape = eng::shape_str(s);
        CAPTURE(shape);
        Tensor x = normal(s, 90, dt, 3.0), w = normal(s, 91, dt);
        const int64_t cols = s.back();
        Tensor lw = normal({cols}, 92, dt), lb = normal({cols}, 93, dt);
        auto run = [&](Device dev) {
          Tensor xi = on(x, dev).requires_grad_(), wi = on(lw, dev).requires_grad_(), bi = on(lb, dev).requires_grad_();
          Tensor ww = on(w, dev);
          Tensor y1 = eng::softmax(xi, -1), y2 = eng::log_softmax(xi, -1), y3 = eng::layer_norm(xi, wi, bi, 1e-5);
          Tensor loss = eng::add(eng::add(eng::sum(eng::mul(y1, ww)), eng::sum(eng::mul(y2, ww))), eng::sum(eng::mul(y3, ww)));
          loss.backward();
          return std::vector<Tensor>{y1, y2, y3, xi.grad(), wi.grad(), bi.grad()};
        };
        auto c = run(cpu()), g = run(cuda()), g2 = run(cuda());
        const char* names[] = {"softmax", "log_softmax", "layer_norm", "dx", "dw", "db"};
        for (size_t i = 0; i < c.size(); i++) {
          const std::string what = names[i];
          CAPTURE(what);
          CHECK(rel_err(g[i], c[i]) <= tol);
          CHECK(same_bits(g[i], g2[i]));
        }
      }
    }
  }

  TEST_CASE("layer_norm dw/db: the cpu's block order, bitwise, given the same mean and rstd") {
    GPU_TEST_OR_SKIP();
    for (DType dt : {DType::F32, DType::F64}) {
      const int64_t rows = 1000, cols = 300;
      Tensor x = normal({rows, cols}, 95, dt), dy = normal({rows, cols}, 96, dt), w = normal({cols}, 97, dt);
      Tensor y = Tensor::empty({rows, cols}, dt), mean = Tensor::empty({rows}, dt), rstd = Tensor::empty({rows}, dt);
      cpu_backend().layer_norm_forward(dt, y.raw_data(), mean.raw_data(), rstd.raw_data(), x.raw_data(), w.raw_data(),
                                       nullptr, rows, cols, 1e-5);
      auto backward = [&](Device dev) {
        Backend& be = eng::backend_for(dev);
        Tensor xs = on(x, dev), dys = on(dy, dev), ms = on(mean, dev), rs = on(rstd, dev), ws = on(w, dev);
        Tensor dx = Tensor::empty({rows, cols}, dt, dev), dw = Tensor::empty({cols}, dt, dev), db = Tensor::empty({cols}, dt, dev);
        be.layer_norm_backward(dt, dx.raw_data(), dw.raw_data(), db.raw_data(), dys.raw_data(), xs.raw_data(),
                               ms.raw_data(), rs.raw_data(), ws.raw_data(), rows, cols);
        return std::vector<Tensor>{dx, dw, db};
      };
      auto c = backward(cpu()), g = backward(cuda());
      CHECK(rel_err(g[0], c[0]) <= (dt == DType::F32 ? 1e-6 : 1e-13));
      CHECK(same_bits(g[1], c[1]));
      CHECK(same_bits(g[2], c[2]));
    }
  }

  TEST_CASE("bf16 softmax and layer_norm: within one bf16 rounding of the f32 result") {
    GPU_TEST_OR_SKIP();
    Tensor xb = normal({200, 300}, 98, DType::F32, 2.0).to(DType::BF16);
    Tensor x32 = xb.to(DType::F32);
    CHECK(bf16_ratio(eng::softmax(on(xb, cuda()), -1).to(DType::F32), eng::softmax(x32, -1)) <= 1.0);
    CHECK(bf16_ratio(eng::log_softmax(on(xb, cuda()), -1).to(DType::F32), eng::log_softmax(x32, -1)) <= 1.0);
    // layer_norm normalises with the f32 mean and rstd (only their stored copies are bf16): one rounding.
    Tensor g = eng::layer_norm(on(xb, cuda()), Tensor(), Tensor(), 1e-5).to(DType::F32);
    CHECK(bf16_ratio(g, eng::layer_norm(x32, Tensor(), Tensor(), 1e-5)) <= 1.0);
  }

  // ---------------------------------------------------------------- indexing

  TEST_CASE("gather, index_select, scatter_add and index_add on large inputs: the cpu's bits") {
    GPU_TEST_OR_SKIP();
    // index_add (embedding backward): 20000 rows into a table of 500, many duplicates; f32 and f64.
    for (DType dt : {DType::F32, DType::F64}) {
      Tensor idx = indices({20000}, 500, 100);
      Tensor src = normal({20000, 64}, 101, dt);
      auto run = [&](Device dev) {
        Tensor dst = normal({500, 64}, 102, dt).to(dev);
        eng::backend_for(dev).index_add(desc_of(dst), 0, desc_of(on(idx, dev)), desc_of(on(src, dev)));
        return dst;
      };
      CHECK(same_bits(run(cuda()), run(cpu())));
      // Along dim 1 of a non-contiguous destination.
      auto run1 = [&](Device dev) {
        Tensor dst = normal({64, 700}, 103, dt).to(dev).t();  // [700, 64] viewed, dim 1 of the transpose
        Tensor i1 = indices({90}, 64, 104), s1 = normal({700, 90}, 105, dt);
        eng::backend_for(dev).index_add(desc_of(dst), 1, desc_of(on(i1, dev)), desc_of(on(s1, dev)));
        return dst.contiguous();
      };
      CHECK(same_bits(run1(cuda()), run1(cpu())));
    }
    // scatter_add along dim 1 and dim 0, duplicates; gather; index_select; embedding.
    Tensor x = normal({300, 40}, 110), src = normal({300, 90}, 111);
    Tensor i1 = indices({300, 90}, 40, 112), i0 = indices({120, 40}, 300, 113), s0 = normal({120, 40}, 114);
    CHECK(same_bits(eng::scatter_add(on(x, cuda()), 1, on(i1, cuda()), on(src, cuda())), eng::scatter_add(x, 1, i1, src)));
    CHECK(same_bits(eng::scatter_add(on(x, cuda()), 0, on(i0, cuda()), on(s0, cuda())), eng::scatter_add(x, 0, i0, s0)));
    Tensor gi = indices({300, 77}, 40, 115);
    CHECK(same_bits(eng::gather(on(x, cuda()), 1, on(gi, cuda())), eng::gather(x, 1, gi)));
    Tensor gi0 = indices({500, 40}, 300, 116);
    CHECK(same_bits(eng::gather(on(x, cuda()), 0, on(gi0, cuda())), eng::gather(x, 0, gi0)));
    Tensor si = indices({1000}, 300, 117);
    CHECK(same_bits(eng::index_select(on(x, cuda()), 0, on(si, cuda())), eng::index_select(x, 0, si)));
    Tensor xt = transposed_on({40, 300}, 118, cuda());
    CHECK(same_bits(eng::index_select(xt, 1, on(si, cuda())), eng::index_select(xt.to(cpu()), 1, si)));
    Tensor table = normal({1000, 96}, 119), ids = indices({8, 50}, 1000, 120);
    CHECK(same_bits(eng::embedding(on(table, cuda()), on(ids, cuda())), eng::embedding(table, ids)));
    // Integer payloads move too.
    Tensor xi = indices({300, 40}, 1000000, 121);
    CHECK(same_bits(eng::gather(on(xi, cuda()), 1, on(gi, cuda())), eng::gather(xi, 1, gi)));
  }

  TEST_CASE("out-of-range indices on cuda: no host sync, the ops' error at the next read-back, nothing outside written") {
    GPU_TEST_OR_SKIP();
    Tensor x = on(normal({4, 5}, 130), cuda());
    Tensor bad = on(Tensor::from_vector(std::vector<int64_t>{0, 7}, {2}), cuda());
    // The op itself returns (its kernel is only queued); the read-back that waits for the kernel throws.
    Tensor sel = eng::index_select(x, 1, bad);
    CHECK_THROWS_WITH_AS(sel.to(cpu()), doctest::Contains("index_select: index 7 out of range for dim 1 of size 5"),
                         eng::Error);
    // Reported once: the record is cleared, and the skipped element reads 0.
    std::vector<float> got = sel.to(cpu()).to_vector<float>(), xs = x.to(cpu()).to_vector<float>();
    for (int r = 0; r < 4; r++) {
      CHECK(got[size_t(r * 2)] == xs[size_t(r * 5)]);
      CHECK(got[size_t(r * 2 + 1)] == 0.0f);
    }
    Tensor bad2 = on(Tensor::from_vector(std::vector<int64_t>{0, -1, 2, 3}, {4, 1}), cuda());
    CHECK_THROWS_WITH_AS(eng::gather(x, 1, bad2).to(cpu()), doctest::Contains("gather: index -1 out of range"),
                         eng::Error);
    // scatter_add and index_add skip the bad target and add the rest.
    Tensor tgt = on(Tensor::zeros({4, 5}), cuda());
    Tensor idx3 = on(Tensor::from_vector(std::vector<int64_t>{1, 5, 0, 4}, {4, 1}), cuda());
    Tensor ones = on(Tensor::ones({4, 1}), cuda());
    Tensor sc = eng::scatter_add(tgt, 1, idx3, ones);
    CHECK_THROWS_WITH_AS(sc.to(cpu()), doctest::Contains("scatter_add: index 5 out of range for dim 1 of size 5"),
                         eng::Error);
    CHECK(eng::sum(sc).item() == 3.0);
    Tensor dst = on(Tensor::zeros({3, 2}), cuda());
    Tensor src = on(Tensor::ones({3, 2}), cuda());
    Tensor idx = on(Tensor::from_vector(std::vector<int64_t>{0, 3, 2}, {3}), cuda());
    eng::Backend& be = gpu_backend();
    be.index_add(eng::desc_of(dst), 0, eng::desc_of(idx), eng::desc_of(src));
    CHECK_THROWS_WITH_AS(dst.to(cpu()), doctest::Contains("index_add: index 3 out of range for dim 0 of size 3"),
                         eng::Error);
    CHECK(dst.to(cpu()).to_vector<float>() == std::vector<float>{1, 1, 0, 0, 1, 1});
  }

  TEST_CASE("sort, argsort and topk: the cpu's order (stable, NaN last, -0 == +0) on bitonic and radix paths") {
    GPU_TEST_OR_SKIP();
    auto with_specials = [](Shape s, uint64_t seed) {
      std::vector<float> v;
      for (double x : normal(s, seed, DType::F64).to_vector<double>()) v.push_back(float(std::round(x * 3.0)));  // ties
      if (v.size() >= 8) {
        v[1] = NAN;
        v[v.size() / 2] = NAN;
        v[2] = -0.0f;
        v[3] = 0.0f;
        v[v.size() - 1] = -INFINITY;
      }
      return Tensor::from_vector(v, s);
    };
    struct Case {
      Shape shape;
      int64_t dim;
    };
    const std::vector<Case> cases = {
        {{64, 100}, 1},   // bitonic, many lines
        {{2048, 3}, 0},   // bitonic at its largest, strided lines
        {{3, 5000}, 1},   // radix, several lines
        {{20000}, 0},     // radix, one line
        {{3000, 4}, 0},   // radix, strided lines
        {{1, 1}, 0},
    };
    for (size_t ci = 0; ci < cases.size(); ci++) {
      const Case& c = cases[ci];
      CAPTURE(ci);
      Tensor x = with_specials(c.shape, 140 + ci);
      Tensor gx = on(x, cuda());
      for (bool desc : {false, true}) {
        CAPTURE(desc);
        auto cs = eng::sort(x, c.dim, desc), gs = eng::sort(gx, c.dim, desc);
        CHECK(same_bits(gs.values, cs.values));
        CHECK(gs.indices.to_vector<int64_t>() == cs.indices.to_vector<int64_t>());
        CHECK(eng::argsort(gx, c.dim, desc).to_vector<int64_t>() == cs.indices.to_vector<int64_t>());
      }
      const int64_t n = c.shape[size_t(c.dim)];
      for (int64_t k : {int64_t(1), std::min<int64_t>(n, 10), n}) {
        for (bool largest : {true, false}) {
          CAPTURE(k);
          CAPTURE(largest);
          auto ct = eng::topk(x, k, c.dim, largest), gt = eng::topk(gx, k, c.dim, largest);
          CHECK(same_bits(gt.values, ct.values));
          CHECK(gt.indices.to_vector<int64_t>() == ct.indices.to_vector<int64_t>());
        }
      }
    }
    // f64 and integer keys.
    Tensor d = normal({7, 3000}, 150, DType::F64);
    CHECK(eng::argsort(on(d, cuda()), 1).to_vector<int64_t>() == eng::argsort(d, 1).to_vector<int64_t>());
    for (DType it : {DType::I32, DType::I64}) {
      Tensor xi = indices({9, 4000}, 50, 151).to(it);  // heavy ties
      auto cs = eng::sort(xi, 1, true), gs = eng::sort(on(xi, cuda()), 1, true);
      CHECK(same_bits(gs.values, cs.values));
      CHECK(gs.indices.to_vector<int64_t>() == cs.indices.to_vector<int64_t>());
    }
  }

  // ---------------------------------------------------------------- random, AdamW

  TEST_CASE("Philox fills: uniform bitwise equal to the cpu, normal within the last bit of log/cos") {
    GPU_TEST_OR_SKIP();
    for (DType dt : {DType::F32, DType::F64}) {
      eng::Generator a(5, 9, 123), b(5, 9, 123);
      CHECK(same_bits(a.uniform({1000, 333}, -2.0, 3.0, dt, cuda()), b.uniform({1000, 333}, -2.0, 3.0, dt)));
      Tensor gn = a.normal({777, 31}, 0.5, 2.0, dt, cuda()), cn = b.normal({777, 31}, 0.5, 2.0, dt);
      CHECK(rel_err(gn, cn) <= (dt == DType::F32 ? 1e-6 : 1e-13));
      CHECK(a.state() == b.state());
      // A strided destination gets the values of its row-major logical order.
      Tensor gt = Tensor::zeros({50, 40}, dt, cuda()), ct = Tensor::zeros({50, 40}, dt);
      a.uniform_(gt.t(), 0.0, 1.0);
      b.uniform_(ct.t(), 0.0, 1.0);
      CHECK(same_bits(gt, ct));
    }
  }

  TEST_CASE("fused AdamW: the cpu's moments bit for bit; parameters within an ulp (f32) or bitwise (f64)") {
    GPU_TEST_OR_SKIP();
    for (DType dt : {DType::F32, DType::F64}) {
      const int64_t n = 100003;
      Tensor p = normal({n}, 160, dt), m = Tensor::zeros({n}, dt), v = Tensor::zeros({n}, dt);
      Tensor gp = on(p, cuda()), gm = on(m, cuda()), gv = on(v, cuda());
      for (int64_t step = 1; step <= 3; step++) {
        Tensor g = normal({n}, 170 + uint64_t(step), dt, 0.1);
        Tensor gg = on(g, cuda());
        eng::AdamWArgs args{1e-3, 0.9, 0.999, 1e-8, 0.05, step};
        cpu_backend().adamw_update(dt, p.raw_data(), g.raw_data(), m.raw_data(), v.raw_data(), n, args);
        gpu_backend().adamw_update(dt, gp.raw_data(), gg.raw_data(), gm.raw_data(), gv.raw_data(), n, args);
      }
      const std::string dtype = eng::dtype_name(dt);
      CAPTURE(dtype);
      CHECK(same_bits(gm, m));
      CHECK(same_bits(gv, v));
      // Same adamw_element on both sides, but for f32 the host compiler resolves ::sqrt(float) to the C library's
      // double sqrt (the expression is then evaluated in double and rounded once), while the device uses the f32
      // sqrt: the parameter can differ in its last bit. f64 is the same code on both.
      if (dt == DType::F64)
        CHECK(same_bits(gp, p));
      else
        CHECK(rel_err(gp, p) <= 2.5e-7);
    }
  }

  TEST_CASE("multi-tensor AdamW and the device-side gradient norm and clipping follow the cpu") {
    GPU_TEST_OR_SKIP();
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string dtype = eng::dtype_name(dt);
      CAPTURE(dtype);
      // 70 parameters: more than one launch of either kernel (32 and 64 tensors per launch); some span several
      // 8192-element chunks of the norm, most are small.
      std::vector<Tensor> cp, gp;
      for (int k = 0; k < 70; k++) {
        const int64_t n = k % 7 == 0 ? 20000 + k : 1 + (k * 37) % 500;
        Tensor p = normal({n}, 300 + uint64_t(k), dt);
        cp.push_back(on(p, cpu()).requires_grad_());
        gp.push_back(on(p, cuda()).requires_grad_());
      }
      auto set_grads = [&](int step) {
        for (size_t k = 0; k < cp.size(); k++) {
          Tensor g = normal(cp[k].shape(), 400 + 100 * uint64_t(step) + k, dt, 0.1);
          cp[k].set_grad(on(g, cpu()));
          gp[k].set_grad(on(g, cuda()));
        }
      };
      eng::AdamWOptions o{1e-3, 0.9, 0.95, 1e-8, 0.05};
      eng::AdamW copt(cp, o), gopt(gp, o);
      // No clipping (a limit never reached): the moments bit for bit, as the one-tensor kernel.
      for (int step = 0; step < 2; step++) {
        set_grads(step);
        Tensor cn = eng::grad_norm_tensor(cp), gn = eng::grad_norm_tensor(gp);
        CHECK(gn.device() == cuda());
        // f64 sums of the same squares in another order: agree to f64 rounding.
        CHECK(std::fabs(gn.item() - cn.item()) <= 1e-14 * cn.item());
        copt.step(cn, 1e9);
        gopt.step(gn, 1e9);
      }
      for (size_t k = 0; k < cp.size(); k++) {
        CAPTURE(k);
        REQUIRE(same_bits(gopt.exp_avg(k), copt.exp_avg(k)));
        REQUIRE(same_bits(gopt.exp_avg_sq(k), copt.exp_avg_sq(k)));
        REQUIRE(rel_err(gp[k], cp[k]) <= (dt == DType::F64 ? 0.0 : 2.5e-7));
      }
      // Clipping to a quarter of the norm: the coefficient comes from each side's own norm (equal to f64
      // rounding), so the clipped gradients, and then the moments, agree to an ulp of the element type.
      set_grads(2);
      Tensor cn = eng::grad_norm_tensor(cp), gn = eng::grad_norm_tensor(gp);
      const double limit = cn.item() / 4;
      copt.step(cn, limit);
      gopt.step(gn, limit);
      const double tol = dt == DType::F64 ? 1e-13 : 1e-6;
      for (size_t k = 0; k < cp.size(); k++) {
        CAPTURE(k);
        REQUIRE(rel_err(gopt.exp_avg(k), copt.exp_avg(k)) <= tol);
        REQUIRE(rel_err(gopt.exp_avg_sq(k), copt.exp_avg_sq(k)) <= tol);
        REQUIRE(rel_err(gp[k], cp[k]) <= tol);
      }
      // The host-side helpers on cuda go through the same device norm (one read-back): grad_norm, and
      // clip_grad_norm, which scales the gradients in place as on the cpu.
      set_grads(4);
      CHECK(std::fabs(eng::grad_norm(gp) - eng::grad_norm(cp)) <= 1e-14 * eng::grad_norm(cp));
      {
        // The per-tensor sums (sum_squares) are the terms of the device's norm: added in list order on the host
        // they give its bits; each agrees with the cpu's to f64 rounding.
        std::vector<eng::SumSquaresTensor> clist, glist;
        for (size_t k = 0; k < cp.size(); k++) {
          clist.push_back({cp[k].grad().raw_data(), cp[k].grad().numel()});
          glist.push_back({gp[k].grad().raw_data(), gp[k].grad().numel()});
        }
        Tensor csums = Tensor::zeros({int64_t(cp.size())}, DType::F64, cpu());
        Tensor gsums = Tensor::zeros({int64_t(gp.size())}, DType::F64, cuda());
        cpu_backend().sum_squares(dt, clist, static_cast<double*>(csums.raw_data()));
        gpu_backend().sum_squares(dt, glist, static_cast<double*>(gsums.raw_data()));
        const std::vector<double> cs = csums.to_vector<double>(), gs = on(gsums, cpu()).to_vector<double>();
        double total = 0;
        for (size_t k = 0; k < gs.size(); k++) {
          CAPTURE(k);
          REQUIRE(std::fabs(gs[k] - cs[k]) <= 1e-14 * cs[k]);
          total += gs[k];
        }
        const double from_sums = std::sqrt(total), norm = eng::grad_norm_tensor(gp).item();
        CHECK(std::memcmp(&from_sums, &norm, sizeof(double)) == 0);
      }
      const double cpu_norm = eng::clip_grad_norm(cp, limit), gpu_norm = eng::clip_grad_norm(gp, limit);
      CHECK(std::fabs(gpu_norm - cpu_norm) <= 1e-14 * cpu_norm);
      for (size_t k = 0; k < cp.size(); k++) REQUIRE(rel_err(gp[k].grad(), cp[k].grad()) <= tol);
      // A NaN in one gradient: the norm is NaN and the step changes no parameter and no moment.
      set_grads(3);
      std::vector<double> g5 = gp[5].grad().to_vector<double>();
      g5[0] = NAN;
      gp[5].set_grad(Tensor::from_vector(g5, gp[5].shape()).to(dt).to(cuda()));
      std::vector<Tensor> p_before, m_before;
      for (size_t k = 0; k < gp.size(); k++) {
        p_before.push_back(on(gp[k], cpu()));
        m_before.push_back(on(gopt.exp_avg(k), cpu()));
      }
      Tensor bad = eng::grad_norm_tensor(gp);
      gopt.step(bad, limit);
      CHECK(std::isnan(bad.item()));
      for (size_t k = 0; k < gp.size(); k++) {
        CAPTURE(k);
        REQUIRE(same_bits(gp[k], p_before[k]));
        REQUIRE(same_bits(gopt.exp_avg(k), m_before[k]));
      }
    }
  }

  // ---------------------------------------------------------------- GEMM

  TEST_CASE("GEMM: every transpose, padded leading dims, batches, alpha/beta; f32 (1e-5) and f64 (1e-12) vs the cpu") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    for (DType dt : {DType::F32, DType::F64}) {
      for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t m = 129, n = 67, k = 300, batch = 3, pad = 5;
        const std::string dtype = eng::dtype_name(dt);
        CAPTURE(dtype);
        CAPTURE(ta);
        CAPTURE(tb);
        const int64_t ar = ta ? k : m, ac = (ta ? m : k) + pad, br = tb ? n : k, bc = (tb ? k : n) + pad;
        Tensor A = normal({batch, ar, ac}, 200 + uint64_t(t), dt), B = normal({batch, br, bc}, 210 + uint64_t(t), dt);
        Tensor C0 = normal({batch, m, n + pad}, 220 + uint64_t(t), dt);
        auto run = [&](Device dev, int64_t stride_a) {
          Tensor a = on(A, dev), b = on(B, dev), c = on(C0, dev);
          eng::GemmArgs g = gemm_args(dt, ta, tb, m, n, k, a, b, c, n + pad);
          g.alpha = 0.75;
          g.beta = 0.5;
          g.lda = ac;
          g.stride_a = stride_a;
          g.ldb = bc;
          g.stride_b = br * bc;
          g.stride_c = m * (n + pad);
          g.batch = batch;
          eng::backend_for(dev).gemm(g);
          return c;
        };
        const double tol = dt == DType::F32 ? 1e-5 : 1e-12;
        Tensor c = run(cpu(), ar * ac), g1 = run(cuda(), ar * ac);
        CHECK(rel_err(g1, c) <= tol);
        CHECK(same_bits(g1, run(cuda(), ar * ac)));
        CHECK(rel_err(run(cuda(), 0), run(cpu(), 0)) <= tol);  // A shared by the batch (stride 0)
      }
    }
  }

  TEST_CASE("GEMM degenerate cases: k = 0 and alpha = 0 scale C by beta; empty sizes are no-ops") {
    GPU_TEST_OR_SKIP();
    Tensor C0 = normal({6, 5}, 230);
    for (double beta : {0.0, 0.5}) {
      Tensor c = on(C0, cuda());
      Tensor a = Tensor::zeros({6, 1}, DType::F32, cuda()), b = Tensor::zeros({1, 5}, DType::F32, cuda());
      eng::GemmArgs g;
      g.m = 6;
      g.n = 5;
      g.k = 0;
      g.beta = beta;
      g.a = a.raw_data();
      g.lda = 1;
      g.b = b.raw_data();
      g.ldb = 5;
      g.c = c.raw_data();
      g.ldc = 5;
      gpu_backend().gemm(g);
      CHECK(rel_err(c, eng::mul(C0, beta)) == 0.0);  // values (beta 0 writes +0 where C0 * 0 may be -0)
      g.k = 1;
      g.alpha = 0.0;
      gpu_backend().gemm(g);
      CHECK(rel_err(c, eng::mul(eng::mul(C0, beta), beta)) == 0.0);
    }
  }

  TEST_CASE("TF32 GEMM: within (2^-9 + (k+2) 2^-23) |A||B| of the f64 product, per element") {
    GPU_TEST_OR_SKIP();
    const int64_t m = 200, n = 150, k = 512;
    Tensor A = normal({m, k}, 240), B = normal({k, n}, 241);
    auto gemm_on = [&](Device dev, DType dt, const Tensor& a, const Tensor& b) {
      Tensor c = Tensor::zeros({m, n}, dt, dev);
      eng::backend_for(dev).gemm(gemm_args(dt, false, false, m, n, k, a, b, c, n));
      return c;
    };
    Tensor ref = gemm_on(cpu(), DType::F64, A.to(DType::F64), B.to(DType::F64));
    Tensor absab = gemm_on(cpu(), DType::F64, eng::abs(A).to(DType::F64), eng::abs(B).to(DType::F64));
    eng::set_cuda_tf32(true);
    CHECK(eng::cuda_tf32_enabled());
    Tensor tf = gemm_on(cuda(), DType::F32, on(A, cuda()), on(B, cuda()));
    eng::set_cuda_tf32(false);
    Tensor f32 = gemm_on(cuda(), DType::F32, on(A, cuda()), on(B, cuda()));
    auto rv = ref.to_vector<double>(), av = absab.to_vector<double>();
    std::vector<double> bound(rv.size());
    for (size_t i = 0; i < rv.size(); i++)
      bound[i] = (std::ldexp(1.0, -9) + double(k + 2) * std::ldexp(1.0, -23)) * av[i] + std::ldexp(1.0, -23) * std::fabs(rv[i]);
    CHECK(bound_ratio(tf.to_vector<double>(), rv, bound) <= 1.0);
    MESSAGE("TF32 vs f32 GEMM max rel difference: " << rel_err(tf, f32) << " (0 would mean TF32 was not used)");
    CHECK(rel_err(tf, f32) > 0);
    CHECK(rel_err(f32, ref) <= 1e-5);
  }

  TEST_CASE("bf16 GEMM with f32 accumulation: within 2^-8 |C| + (k+2) 2^-23 |A||B| of the f64 product") {
    GPU_TEST_OR_SKIP();
    const int64_t m = 96, n = 160, k = 384, batch = 2;
    Tensor A = normal({batch, k, m}, 250).to(DType::BF16), B = normal({batch, n, k}, 251).to(DType::BF16);
    Tensor ga = on(A, cuda()), gb = on(B, cuda());
    Tensor gc = Tensor::zeros({batch, m, n}, DType::BF16, cuda());
    eng::GemmArgs g = gemm_args(DType::BF16, true, true, m, n, k, ga, gb, gc, n);
    g.stride_a = k * m;
    g.stride_b = n * k;
    g.stride_c = m * n;
    g.batch = batch;
    gpu_backend().gemm(g);
    Tensor a64 = A.to(DType::F64), b64 = B.to(DType::F64);
    Tensor ref = eng::matmul(a64.transpose(1, 2), b64.transpose(1, 2));
    Tensor absab = eng::matmul(eng::abs(a64).transpose(1, 2), eng::abs(b64).transpose(1, 2));
    auto rv = ref.to_vector<double>(), av = absab.to_vector<double>();
    std::vector<double> bound(rv.size());
    for (size_t i = 0; i < rv.size(); i++) bound[i] = kBf16U * std::fabs(rv[i]) + double(k + 2) * std::ldexp(1.0, -23) * av[i];
    CHECK(bound_ratio(gc.to_vector<double>(), rv, bound) <= 1.0);
  }

  TEST_CASE("GEMM epilogues: bias, bias + exact GELU (with the pre-activation) and the GELU gradient match the unfused cpu ops") {
    GPU_TEST_OR_SKIP();
    CHECK(gpu_backend().supports_gemm_epilogue(eng::GemmEpilogue::BiasGelu));
    const int64_t m = 300, n = 200, k = 64;
    for (DType dt : {DType::F32, DType::F64}) {
      Tensor x = normal({m, k}, 260, dt), w = normal({n, k}, 261, dt, 0.2), bias = normal({n}, 262, dt);
      Tensor pre_ref = eng::add(eng::matmul(x, w.t()), bias);
      Tensor gelu_ref = eng::gelu(pre_ref);
      for (auto epi : {eng::GemmEpilogue::Bias, eng::GemmEpilogue::BiasGelu}) {
        const std::string dtype = eng::dtype_name(dt);
        CAPTURE(dtype);
        CAPTURE(int(epi));
        Tensor gx = on(x, cuda()), gw = on(w, cuda()), gbias = on(bias, cuda());
        Tensor c = Tensor::zeros({m, n}, dt, cuda()), pre = Tensor::zeros({m, n}, dt, cuda());
        eng::GemmArgs g = gemm_args(dt, false, true, m, n, k, gx, gw, c, n);
        g.epilogue = epi;
        g.bias = gbias.raw_data();
        g.pre_gelu = pre.raw_data();
        gpu_backend().gemm(g);
        const double tol = dt == DType::F32 ? 1e-5 : 1e-12;
        if (epi == eng::GemmEpilogue::BiasGelu) {  // without a bias: gelu(x w^T)
          Tensor c2 = Tensor::zeros({m, n}, dt, cuda());
          g.c = c2.raw_data();
          g.bias = nullptr;
          g.pre_gelu = nullptr;
          gpu_backend().gemm(g);
          CHECK(rel_err(c2, eng::gelu(eng::matmul(x, w.t()))) <= tol);
        }
        if (epi == eng::GemmEpilogue::Bias) {
          CHECK(rel_err(c, pre_ref) <= tol);
        } else {
          CHECK(rel_err(c, gelu_ref) <= tol);
          CHECK(rel_err(pre, pre_ref) <= tol);
        }
      }
      // GeluGrad, the backward of mlp_gelu's GELU: C = (dy w) * gelu'(pre), pre read in C's layout (padded ldc).
      // Reference: the cpu's gelu backward with (dy w) as the incoming gradient.
      const std::string dtype = eng::dtype_name(dt);
      CAPTURE(dtype);
      CHECK(gpu_backend().supports_gemm_epilogue(eng::GemmEpilogue::GeluGrad));
      const int64_t ldc = n + 3;
      Tensor dy = normal({m, k}, 263, dt), w2 = normal({k, n}, 264, dt, 0.2);
      Tensor pre_cpu = pre_ref.detach().clone().requires_grad_();
      eng::gelu(pre_cpu).backward(eng::matmul(dy, w2));
      Tensor pre_padded = Tensor::zeros({m, ldc}, dt), c_padded = Tensor::zeros({m, ldc}, dt, cuda());
      pre_padded.narrow(1, 0, n).copy_(pre_ref);
      Tensor gdy = on(dy, cuda()), gw2 = on(w2, cuda()), gpre = on(pre_padded, cuda());
      eng::GemmArgs g = gemm_args(dt, false, false, m, n, k, gdy, gw2, c_padded, ldc);
      g.epilogue = eng::GemmEpilogue::GeluGrad;
      g.pre_gelu = gpre.raw_data();
      gpu_backend().gemm(g);
      CHECK(rel_err(c_padded.narrow(1, 0, n).contiguous(), pre_cpu.grad()) <= (dt == DType::F32 ? 1e-5 : 1e-12));
    }
  }

  // ---------------------------------------------------------------- attention

  // Fused attention of q, k, v (host tensors) on the GPU backend, forward then backward with dout = w:
  // {out, dq, dk, dv}.
  std::vector<Tensor> fused_attention(Backend& be, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w,
                                      double scale) {
    const DType dt = q.dtype();
    const int64_t b = q.shape()[0], h = q.shape()[1], tq = q.shape()[2], tk = k.shape()[2], d = q.shape()[3],
                  dvd = v.shape()[3];
    Tensor gq = on(q, cuda()), gk = on(k, cuda()), gv = on(v, cuda()), gw = on(w, cuda());
    const DType lse_dt = dt == DType::F64 ? DType::F64 : DType::F32;
    Tensor out = Tensor::empty({b, h, tq, dvd}, dt, cuda()), lse = Tensor::empty({b, h, tq}, lse_dt, cuda());
    Tensor dq = Tensor::empty(q.shape(), dt, cuda()), dk = Tensor::empty(k.shape(), dt, cuda());
    Tensor dv = Tensor::empty(v.shape(), dt, cuda());
    eng::AttentionArgs a;
    a.dtype = dt;
    a.batch = b;
    a.heads = h;
    a.tq = tq;
    a.tk = tk;
    a.head_dim = d;
    a.v_dim = dvd;
    a.scale = scale;
    a.q = gq.raw_data();
    a.k = gk.raw_data();
    a.v = gv.raw_data();
    a.out = out.raw_data();
    a.lse = lse.raw_data();
    be.attention_forward(a);
    a.dout = gw.raw_data();
    a.dq = dq.raw_data();
    a.dk = dk.raw_data();
    a.dv = dv.raw_data();
    be.attention_backward(a);
    return {out, dq, dk, dv};
  }

  // The f64 reference of fused_attention on the same (bf16) values: {out, dq, dk, dv}.
  std::vector<Tensor> attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w,
                                          double scale, DType ref_dt) {
    Tensor rq = q.to(ref_dt).detach().requires_grad_(), rk = k.to(ref_dt).detach().requires_grad_();
    Tensor rv = v.to(ref_dt).detach().requires_grad_();
    Tensor ref = eng::attention(rq, rk, rv, scale);
    eng::sum(eng::mul(ref, w.to(ref_dt))).backward();
    return {ref.detach(), rq.grad(), rk.grad(), rv.grad()};
  }

  // Per-element terms a bf16 fused attention adds to the bound 2^-8 |ref| + 1e-4 max |ref| (want: the f64 reference).
  //  - The backward reads the bf16-rounded output O in D_i = sum_d dO_id O_id, so D_i is off by up to
  //    dD_i = 2^-8 sum_d |dO_id| |O_id|, which moves dq_i by scale dD_i sum_j P_ij |k_j| and dk_j by
  //    scale sum_i P_ij dD_i |q_i| (dv does not use D).
  //  - rounds_p_ds (the tensor-core kernels, and cuDNN's): the left operand of each second product is rounded to
  //    bf16 first: P in O = P V and P^T in dV = P^T dO, dS in dQ = scale dS K and dS^T in dK = scale dS^T Q. Each
  //    rounding moves a product by at most 2^-8 times the product of the absolute values; the stored O carries that
  //    term too, and so does D_i (as dD above).
  std::vector<Tensor> bf16_attention_extra(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w,
                                           const std::vector<Tensor>& want, double scale, bool rounds_p_ds) {
    eng::NoGradGuard ng;
    std::vector<Tensor> extra(4);
    Tensor q64 = q.to(DType::F64), k64 = k.to(DType::F64), w64 = w.to(DType::F64);
    Tensor P = eng::softmax(eng::mul(eng::matmul(q64, k64.transpose(-2, -1)), scale), -1);
    Tensor dD = eng::mul(eng::sum(eng::mul(eng::abs(w64), eng::abs(want[0])), {-1}, true), kBf16U);
    extra[1] = eng::mul(eng::mul(dD, eng::matmul(P, eng::abs(k64))), scale);
    extra[2] = eng::mul(eng::matmul(eng::mul(P, dD).transpose(-2, -1), eng::abs(q64)), scale);
    if (rounds_p_ds) {
      Tensor v64 = v.to(DType::F64);
      Tensor dP = eng::matmul(w64, v64.transpose(-2, -1));
      Tensor D = eng::sum(eng::mul(w64, want[0]), {-1}, true);
      Tensor dS = eng::abs(eng::mul(P, eng::sub(dP, D)));
      extra[0] = eng::mul(eng::matmul(P, eng::abs(v64)), kBf16U);
      Tensor dD2 = eng::sum(eng::mul(eng::abs(w64), extra[0]), {-1}, true);
      extra[1] = eng::add(extra[1], eng::mul(eng::mul(dD2, eng::matmul(P, eng::abs(k64))), scale));
      extra[2] = eng::add(extra[2], eng::mul(eng::matmul(eng::mul(P, dD2).transpose(-2, -1), eng::abs(q64)), scale));
      extra[1] = eng::add(extra[1], eng::mul(eng::matmul(dS, eng::abs(k64)), kBf16U * scale));
      extra[2] = eng::add(extra[2], eng::mul(eng::matmul(dS.transpose(-2, -1), eng::abs(q64)), kBf16U * scale));
      extra[3] = eng::mul(eng::matmul(P.transpose(-2, -1), eng::abs(w64)), kBf16U);
    }
    return extra;
  }

  // Largest ratio of |got - want| to slack * (2^-8 |want| + extra) + 1e-4 max |want| over the four results (<= 1
  // passes): one rounding of each result to bf16, the extra terms above, and f32 arithmetic over at most a few
  // hundred terms, whose error stays below 1e-4 of the largest value.
  double bf16_attention_ratio(const std::vector<Tensor>& got, const std::vector<Tensor>& want,
                              const std::vector<Tensor>& extra, size_t i, double slack = 1.0) {
    auto gv = got[i].to_vector<double>(), wv = want[i].to_vector<double>();
    std::vector<double> ev = extra[i].defined() ? extra[i].to_vector<double>() : std::vector<double>(wv.size(), 0.0);
    double mx = 0;
    for (double x : wv) mx = std::max(mx, std::fabs(x));
    std::vector<double> bound(wv.size());
    for (size_t j = 0; j < wv.size(); j++) bound[j] = slack * (kBf16U * std::fabs(wv[j]) + ev[j]) + 1e-4 * mx;
    return bound_ratio(gv, wv, bound);
  }

  TEST_CASE("fused attention forward and backward match the unfused cpu op (f32 1e-5, f64 1e-10, bf16 bound)") {
    GPU_TEST_OR_SKIP();
    OwnAttentionKernels own;  // the bounds below are derived for the engine's kernels (cuDNN's: the next case)
    Backend& be = gpu_backend();
    CHECK(be.has_fused_attention(DType::F32, 64, 64));
    CHECK(be.has_fused_attention(DType::F32, 128, 128));
    CHECK(be.has_fused_attention(DType::F64, 64, 64));
    CHECK(be.supports_strided_attention());
    CHECK_FALSE(be.has_fused_attention(DType::F32, 129, 64));
    CHECK_FALSE(be.has_fused_attention(DType::F64, 128, 128));
    struct Case {
      int64_t b, h, tq, tk, d, dv;
      double scale;
    };
    const std::vector<Case> cases = {{2, 3, 77, 50, 64, 48, 0.125}, {1, 2, 1, 1, 8, 8, 0.5}, {1, 1, 33, 130, 128, 128, 0.0},
                                     {3, 1, 197, 197, 32, 32, 0.0}};
    for (size_t ci = 0; ci < cases.size(); ci++) {
      const Case& c = cases[ci];
      for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
        // bf16 runs the kernel directly here (the ops layer offers it too: test_gpu_mixed.cpp); same head-size limit.
        if (!be.has_fused_attention(dt == DType::BF16 ? DType::F32 : dt, c.d, c.dv)) continue;
        CAPTURE(ci);
        const std::string dtype = eng::dtype_name(dt);
        CAPTURE(dtype);
        const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(double(c.d));
        // Inputs in the test dtype; the reference runs in f64 on exactly those values (or in f32 for f32).
        Tensor q = normal({c.b, c.h, c.tq, c.d}, 300 + ci, dt), k = normal({c.b, c.h, c.tk, c.d}, 310 + ci, dt);
        Tensor v = normal({c.b, c.h, c.tk, c.dv}, 320 + ci, dt), w = normal({c.b, c.h, c.tq, c.dv}, 330 + ci, dt);
        const std::vector<Tensor> want =
            attention_reference(q, k, v, w, scale, dt == DType::F32 ? DType::F32 : DType::F64);
        auto got = fused_attention(be, q, k, v, w, scale), again = fused_attention(be, q, k, v, w, scale);
        std::vector<Tensor> extra(4);
        // The tensor-core path (head dims multiples of 16 up to 64) rounds P and dS to bf16.
        if (dt == DType::BF16)
          extra = bf16_attention_extra(q, k, v, w, want, scale, c.d % 16 == 0 && c.dv % 16 == 0 && c.d <= 64 && c.dv <= 64);
        const char* names[] = {"out", "dq", "dk", "dv"};
        for (size_t i = 0; i < got.size(); i++) {
          const std::string what = names[i];
          CAPTURE(what);
          CHECK(same_bits(got[i], again[i]));
          if (dt == DType::BF16) {
            CHECK(bf16_attention_ratio(got, want, extra, i) <= 1.0);
          } else {
            // Relative to the largest value, floored at 1 (inputs are N(0, 1)): with a single key the exact dq and dk
            // are 0 and only rounding noise remains.
            auto gv = got[i].to_vector<double>(), wv = want[i].to_vector<double>();
            double mx = 1.0, d = 0;
            for (size_t j = 0; j < wv.size(); j++) {
              mx = std::max(mx, std::fabs(wv[j]));
              d = std::max(d, std::fabs(gv[j] - wv[j]));
            }
            CHECK(d / mx <= (dt == DType::F32 ? 1e-5 : 1e-10));
          }
        }
      }
    }
  }

  TEST_CASE("cuDNN fused attention (bf16, where cuDNN offers it): within the bf16 bound, repeatable, both directions") {
    GPU_TEST_OR_SKIP();
    if (!cudnn_attention_built()) {
      MESSAGE("skipped: this build has no cuDNN fused attention (cuDNN >= 9.13.1 was not found when building)");
      return;
    }
    Backend& be = gpu_backend();
    struct Case {
      int64_t b, h, tq, tk, d;
    };
    // ViT-B/16's attention (197 tokens, head dim 64; 50 tokens with 75% of patches masked), and other head dims.
    const std::vector<Case> cases = {{2, 12, 197, 197, 64}, {4, 12, 50, 50, 64}, {2, 3, 77, 40, 32}, {1, 2, 33, 130, 128}};
    for (size_t ci = 0; ci < cases.size(); ci++) {
      const Case& c = cases[ci];
      CAPTURE(ci);
      const double scale = 1.0 / std::sqrt(double(c.d));
      Tensor q = normal({c.b, c.h, c.tq, c.d}, 400 + ci, DType::BF16), k = normal({c.b, c.h, c.tk, c.d}, 410 + ci, DType::BF16);
      Tensor v = normal({c.b, c.h, c.tk, c.d}, 420 + ci, DType::BF16), w = normal({c.b, c.h, c.tq, c.d}, 430 + ci, DType::BF16);
      const std::vector<Tensor> want = attention_reference(q, k, v, w, scale, DType::F64);
      const std::vector<Tensor> extra = bf16_attention_extra(q, k, v, w, want, scale, true);
      // Auto: cuDNN where it has a plan that passed its first-call check against our kernel. The counters say which
      // implementation ran each direction; the report says why (printed, for the log of the first GPU run).
      const auto before = attention_counts_now();
      auto got = fused_attention(be, q, k, v, w, scale), again = fused_attention(be, q, k, v, w, scale);
      const auto after = attention_counts_now();
      MESSAGE(cudnn_attention_report_now());
      const int64_t fwd = after[0] - before[0], bwd = after[1] - before[1];
      MESSAGE("case " << ci << ": cuDNN ran " << fwd << " of 2 forward and " << bwd << " of 2 backward calls");
      CHECK((fwd == 0 || fwd == 2));
      CHECK((bwd == 0 || bwd == 2));
      // cuDNN's order of roundings inside its kernels is not documented: each rounding term is allowed twice.
      const char* names[] = {"out", "dq", "dk", "dv"};
      for (size_t i = 0; i < got.size(); i++) {
        const std::string what = names[i];
        CAPTURE(what);
        CHECK(same_bits(got[i], again[i]));
        CHECK(bf16_attention_ratio(got, want, extra, i, 2.0) <= 1.0);
      }
    }
  }

  TEST_CASE("attention implementation choice: own kernels on request and counted; cuDNN forced where it cannot run fails in one line") {
    GPU_TEST_OR_SKIP();
#ifdef ENGINE_WITH_CUDA
    using eng::cuda::AttentionImpl;
    using eng::cuda::AttentionImplScope;
    Backend& be = gpu_backend();
    auto data = [](DType dt, int64_t d, uint64_t seed) { return normal({1, 2, 20, d}, seed, dt); };
    auto run = [&](DType dt, int64_t d) {
      return fused_attention(be, data(dt, d, 1), data(dt, d, 2), data(dt, d, 3), data(dt, d, 4), 0.25);
    };
    {
      AttentionImplScope own(AttentionImpl::Own);
      CHECK(eng::cuda::attention_impl() == AttentionImpl::Own);
      const auto before = attention_counts_now();
      run(DType::BF16, 16);
      const auto after = attention_counts_now();
      CHECK(after[0] == before[0]);
      CHECK(after[1] == before[1]);
      CHECK(after[2] == before[2] + 1);
      CHECK(after[3] == before[3] + 1);
    }
    {
      // Forced cuDNN concerns bf16 only: f32 runs the engine's kernels.
      AttentionImplScope forced(AttentionImpl::Cudnn);
      const auto before = attention_counts_now();
      run(DType::F32, 16);
      const auto after = attention_counts_now();
      CHECK(after[2] == before[2] + 1);
      CHECK(after[3] == before[3] + 1);
      // A bf16 call cuDNN cannot take (head dim 12 is not a multiple of 8; or no cuDNN SDPA in this build): one line.
      CHECK_THROWS_WITH_AS(run(DType::BF16, 12), doctest::Contains("attention_forward: ENG_ATTENTION=cudnn, but"),
                           eng::Error);
      if (!cudnn_attention_built())
        CHECK_THROWS_WITH_AS(run(DType::BF16, 16), doctest::Contains("this build has no cuDNN fused attention"),
                             eng::Error);
    }
    CHECK(eng::cuda::attention_impl() != AttentionImpl::Cudnn);  // the scopes restored the choice
#endif
  }

  TEST_CASE("fused attention on strided operands (views of a packed qkv) gives the contiguous run's bits") {
    GPU_TEST_OR_SKIP();
    Backend& be = gpu_backend();
    const int64_t B = 2, T = 37, H = 3, Dh = 16, D = H * Dh;
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string dtype = eng::dtype_name(dt);
      CAPTURE(dtype);
      Tensor qkv = on(normal({B, T, 3 * D}, 350, dt), cuda()), w = on(normal({B, T, D}, 351, dt), cuda());
      const double scale = 0.25;
      // Contiguous copies [B, H, T, Dh] of the three parts.
      Tensor split = qkv.reshape({B, T, 3, H, Dh}).permute({2, 0, 3, 1, 4});
      Tensor q = split.select(0, 0).contiguous(), k = split.select(0, 1).contiguous(), v = split.select(0, 2).contiguous();
      Tensor wc = w.reshape({B, T, H, Dh}).permute({0, 2, 1, 3}).contiguous();
      const DType lse_dt = dt == DType::F64 ? DType::F64 : DType::F32;
      auto base_args = [&]() {
        eng::AttentionArgs a;
        a.dtype = dt;
        a.batch = B;
        a.heads = H;
        a.tq = a.tk = T;
        a.head_dim = a.v_dim = Dh;
        a.scale = scale;
        return a;
      };
      // Contiguous run.
      Tensor out = Tensor::empty({B, H, T, Dh}, dt, cuda()), lse = Tensor::empty({B, H, T}, lse_dt, cuda());
      Tensor dq = Tensor::empty({B, H, T, Dh}, dt, cuda()), dk = Tensor::empty({B, H, T, Dh}, dt, cuda()),
             dv = Tensor::empty({B, H, T, Dh}, dt, cuda());
      eng::AttentionArgs a = base_args();
      a.q = q.raw_data();
      a.k = k.raw_data();
      a.v = v.raw_data();
      a.out = out.raw_data();
      a.lse = lse.raw_data();
      be.attention_forward(a);
      a.dout = wc.raw_data();
      a.dq = dq.raw_data();
      a.dk = dk.raw_data();
      a.dv = dv.raw_data();
      be.attention_backward(a);
      // Strided run: q, k, v read in place from qkv [B, T, 3D]; out and dout as [B, T, H, Dh]; dq/dk/dv into [B, T, 3D].
      const size_t es = eng::dtype_size(dt);
      char* base = static_cast<char*>(qkv.raw_data());
      Tensor out_s = Tensor::empty({B, T, D}, dt, cuda()), lse_s = Tensor::empty({B, H, T}, lse_dt, cuda());
      Tensor dqkv = Tensor::zeros({B, T, 3 * D}, dt, cuda());
      char* dbase = static_cast<char*>(dqkv.raw_data());
      eng::AttentionArgs s = base_args();
      s.q = base;
      s.k = base + size_t(D) * es;
      s.v = base + size_t(2 * D) * es;
      for (int64_t* st : {s.q_strides, s.k_strides, s.v_strides}) {
        st[0] = T * 3 * D;
        st[1] = Dh;
        st[2] = 3 * D;
      }
      s.o_strides[0] = T * D;
      s.o_strides[1] = Dh;
      s.o_strides[2] = D;
      s.out = out_s.raw_data();
      s.lse = lse_s.raw_data();
      be.attention_forward(s);
      s.dout = w.raw_data();
      s.dq = dbase;
      s.dk = dbase + size_t(D) * es;
      s.dv = dbase + size_t(2 * D) * es;
      be.attention_backward(s);
      CHECK(same_bits(out_s.reshape({B, T, H, Dh}).permute({0, 2, 1, 3}).contiguous(), out));
      CHECK(same_bits(lse_s, lse));
      Tensor dsplit = dqkv.reshape({B, T, 3, H, Dh}).permute({2, 0, 3, 1, 4});
      CHECK(same_bits(dsplit.select(0, 0).contiguous(), dq));
      CHECK(same_bits(dsplit.select(0, 1).contiguous(), dk));
      CHECK(same_bits(dsplit.select(0, 2).contiguous(), dv));
      // And through the op: attention_qkv on cuda against the cpu.
      auto run = [&](eng::Device dev) {
        Tensor x = on(qkv, dev).requires_grad_();
        Tensor y = eng::attention_qkv(x, H, scale);
        eng::sum(eng::mul(y, on(w, dev))).backward();
        return std::vector<Tensor>{y, x.grad()};
      };
      auto c = run(cpu()), g = run(cuda());
      const double tol = dt == DType::F32 ? 1e-5 : 1e-10;
      CHECK(rel_err(g[0], c[0]) <= tol);
      CHECK(rel_err(g[1], c[1]) <= tol);
    }
  }

  TEST_CASE("allocator: a steady loop of ops makes no new cudaMalloc calls") {
    GPU_TEST_OR_SKIP();
    eng::Allocator& alloc = eng::allocator_for(cuda());
    Tensor x = on(normal({256, 512}, 400), cuda());
    auto step = [&] { return eng::sum(eng::softmax(eng::mul(x, x), -1), {1}).to_vector<float>(); };
    step();
    step();
    const size_t before = alloc.stats().system_allocs;
    for (int i = 0; i < 5; i++) step();
    CHECK(alloc.stats().system_allocs == before);
  }
}
