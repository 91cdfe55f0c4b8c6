// test_gpu_mixed.cpp: bf16 mixed precision on CUDA (model::MaskedAutoencoder::set_compute_dtype(DType::BF16)).
// Every op the mixed-precision MAE runs, forward and backward, against an f64 reference on the CPU; the golden MAE
// fixture in bf16 against the f32 fixture; a short bf16 training run against the f32 run, repeated bit for bit;
// and the one-line error on the CPU, which has no bf16 arithmetic.
//
// Per-op tolerances. u = 2^-8 is bf16's unit roundoff (8 significant bits, round to nearest even); e = 2^-23 is
// one f32 ulp, twice f32's unit roundoff (it covers tensor-core accumulation, which may truncate instead of round,
// the 1/(1 - n 2^-24) of the classic sum bound, and a library that rounds its f32 result to bf16 through another
// format, as the emulator's double -> f32 -> bf16 does). The reference runs in f64 on exactly the values the GPU
// read (the bf16 inputs and the bf16 roundings of the f32 master weights), so what remains is the GPU's own
// rounding, bounded per element by first-order error analysis:
//   - a result stored in bf16 is rounded once: u |ref|;
//   - f32 arithmetic over n terms adds at most (n + 2) e times the same expression taken in absolute values (the
//     product of absolute values for a GEMM, the sum of |terms| for a reduction);
//   - an input that is itself off by d (an earlier rounding in the same op) adds |d| times the absolute value of
//     what multiplies it, propagated through the rest of the op.
// Each test states the resulting bound next to its code; a check passes when |gpu - ref| <= bound everywhere.
// Second-order terms (products of two relative errors, ~u^2 = 1.5e-5 relative) are below the slack every bound
// has from its f32 terms and are not written out.
#include <cmath>
#include <map>
#include <optional>

#include "engine/io/safetensors.h"
#include "engine/optim.h"
#include "model/mae.h"
#include "tests/gpu/gpu_test_util.h"

using namespace gputest;
using eng::abs;
using eng::matmul;

namespace {

constexpr double kU = 1.0 / 256.0;      // bf16 unit roundoff, 2^-8
constexpr double kE = 1.0 / 8388608.0;  // 2^-23: f32 arithmetic, per term (see the top of the file)
const char* kFixture = "tests/fixtures/mae_test_tiny.safetensors";

// The values of a (bf16) tensor as an f64 CPU tensor: exact.
Tensor f64_of(const Tensor& t) { return t.detach().to(cpu()).to(DType::F64); }
// What the GPU reads of an f32 master tensor under bf16: its bf16 rounding, as f64.
Tensor rounded(const Tensor& t) { return t.detach().to(cpu()).to(DType::BF16).to(DType::F64); }
Tensor leaf(const Tensor& t) { return t.detach().requires_grad_(); }

// Largest |got - want| / bound (<= 1 passes).
double ratio(const Tensor& got, const Tensor& want, const Tensor& bound) {
  return bound_ratio(got.to_vector<double>(), want.to_vector<double>(), bound.to_vector<double>());
}

// Checks each GPU output (`got`, and `again` from a second run) against its reference and per-element bound: the
// device, the dtype, the shape, |gpu - ref| <= bound, and that the two runs agree bit for bit. One message lists
// the worst |gpu - ref| / bound of each output.
void check_outputs(const std::vector<Tensor>& got, const std::vector<Tensor>& again, const std::vector<Tensor>& want,
                   const std::vector<Tensor>& bound, const std::vector<std::string>& names,
                   const std::vector<DType>& dtypes) {
  REQUIRE(got.size() == names.size());
  std::string summary;
  for (size_t i = 0; i < got.size(); i++) {
    const std::string what = names[i];
    CAPTURE(what);
    REQUIRE(got[i].defined());
    CHECK(got[i].device() == cuda());
    CHECK(got[i].dtype() == dtypes[i]);
    CHECK(got[i].shape() == want[i].shape());
    const double r = ratio(got[i], want[i], bound[i]);
    CHECK(r <= 1.0);
    CHECK(same_bits(got[i], again[i]));
    summary += (summary.empty() ? "" : ", ") + what + " " + std::to_string(r);
  }
  MESSAGE("worst |gpu - ref| / bound: " << summary);
}

// GELU's derivative Phi(h) + h phi(h) (standard normal CDF and density), in f64.
Tensor gelu_grad(const Tensor& h) {
  Tensor cdf = eng::mul(eng::add(eng::erf(eng::mul(h, 1.0 / std::sqrt(2.0))), 1.0), 0.5);
  Tensor pdf = eng::mul(eng::exp(eng::mul(eng::square(h), -0.5)), 1.0 / std::sqrt(2.0 * M_PI));
  return eng::add(cdf, eng::mul(h, pdf));
}

// Every tensor of the model onto `dev` (trainable ones stay leaves that require grad).
void model_to(model::MaskedAutoencoder& mae, Device dev) {
  mae.visit([&](const std::string&, Tensor& t) {
    const bool trainable = t.requires_grad();
    t = t.to(dev).detach();
    if (trainable) t.requires_grad_(true);
  });
}

// ||a - b|| / ||b|| over all elements (f64).
double norm_rel(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  double d = 0, n = 0;
  for (size_t i = 0; i < x.size(); i++) {
    d += (x[i] - y[i]) * (x[i] - y[i]);
    n += y[i] * y[i];
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

// Smooth synthetic images (a sum of two random plane waves per channel) that an MAE can learn to inpaint.
Tensor wave_images(int64_t n, int64_t size, uint64_t seed) {
  Tensor p = uniform({n, 3, 6}, seed, 0.0, 1.0, DType::F64);
  auto pv = p.to_vector<double>();
  std::vector<float> v(size_t(n * 3 * size * size));
  for (int64_t i = 0; i < n * 3; i++) {
    const double* q = &pv[size_t(i * 6)];
    for (int64_t y = 0; y < size; y++)
      for (int64_t x = 0; x < size; x++) {
        const double a = std::sin(0.8 * (q[0] - 0.5) * double(x) + 0.8 * (q[1] - 0.5) * double(y) + 6.28 * q[2]);
        const double b = std::cos(0.5 * (q[3] - 0.5) * double(x) - 0.5 * (q[4] - 0.5) * double(y) + 6.28 * q[5]);
        v[size_t((i * size + y) * size + x)] = float(a + 0.5 * b);
      }
  }
  return Tensor::from_vector(v, {n, 3, size, size});
}

struct TrainRun {
  std::vector<double> losses;
  std::vector<Tensor> params;
};

// mae_test_tiny with 16-wide heads (2 heads of 16 in the encoder and in the decoder): its bf16 attention takes the
// tensor-core path, where mae_test_tiny's 8- and 4-wide heads take the scalar kernel.
model::MaeConfig tiny_with_16_wide_heads() {
  model::MaeConfig c = model::mae_config("mae_test_tiny");
  c.embed_dim = 32;
  c.decoder_embed_dim = 32;
  return c;
}

// A few AdamW steps of a small MAE (mae_test_tiny unless given) on wave images, on `dev`, computing in `compute`.
TrainRun train_mae(Device dev, DType compute, int64_t steps,
                   const model::MaeConfig& cfg = model::mae_config("mae_test_tiny")) {
  model::MaskedAutoencoder mae(cfg, 5);
  model_to(mae, dev);
  mae.set_compute_dtype(compute);
  std::vector<Tensor> params;
  for (auto& [name, p] : mae.named_parameters()) params.push_back(p);
  eng::AdamW opt(params, eng::AdamWOptions{2e-3, 0.9, 0.95, 1e-8, 0.05});
  const int64_t batch = 8, L = mae.config().num_patches();
  Tensor images = on(wave_images(4 * batch, mae.config().img_size, 800), dev);
  TrainRun r;
  for (int64_t s = 0; s < steps; s++) {
    const int64_t start = (s % 4) * batch;
    Tensor noise = on(eng::Generator(900 + uint64_t(s), 3).uniform({batch, L}), dev);
    model::MaeOutput out = mae.forward(images.slice(0, start, start + batch), noise, 0.75);
    opt.zero_grad();
    out.loss.backward();
    opt.step();
    r.losses.push_back(out.loss.item());
  }
  r.params = params;
  return r;
}

}  // namespace

TEST_SUITE("gpu mixed precision") {
  // ---------------------------------------------------------------- the cast

  TEST_CASE("cast f32 -> bf16: the cpu's rounding bit for bit, and the gradient returns to the f32 master exactly") {
    GPU_TEST_OR_SKIP();
    Tensor w = normal({37, 53}, 1, DType::F32, 3.0);
    Tensor gw = on(w, cuda()).requires_grad_();
    Tensor wb = gw.to(DType::BF16);
    CHECK(wb.dtype() == DType::BF16);
    CHECK(same_bits(wb, w.to(DType::BF16)));
    Tensor g = normal({37, 53}, 2).to(DType::BF16);
    wb.backward(on(g, cuda()));
    REQUIRE(gw.grad().defined());
    CHECK(gw.grad().dtype() == DType::F32);
    CHECK(gw.grad().device() == cuda());
    CHECK(same_bits(gw.grad(), g.to(DType::F32)));  // bf16 -> f32 is exact
    // An f32 input leaves the parameter as it is: no cast, no copy.
    Tensor x32 = on(normal({2, 53}, 3), cuda());
    CHECK(model::in_dtype_of(gw, x32).same_storage(gw));
    CHECK_FALSE(model::in_dtype_of(Tensor(), x32).defined());
  }

  // ---------------------------------------------------------------- linear

  TEST_CASE("linear in bf16 with f32 master weights: forward and every gradient within the bound") {
    GPU_TEST_OR_SKIP();
    const int64_t B = 2, T = 37, in = 48, out = 80, rows = B * T;
    Tensor xb = normal({B, T, in}, 10).to(DType::BF16), gb = normal({B, T, out}, 13).to(DType::BF16);
    Tensor w = normal({out, in}, 11, DType::F32, 0.15), b = normal({out}, 12, DType::F32, 0.5);
    auto run = [&]() {
      model::Linear lin;
      lin.weight = on(w, cuda()).requires_grad_();
      lin.bias = on(b, cuda()).requires_grad_();
      Tensor x = on(xb, cuda()).requires_grad_();
      Tensor y = lin(x);
      y.backward(on(gb, cuda()));
      return std::vector<Tensor>{y, x.grad(), lin.weight.grad(), lin.bias.grad()};
    };
    auto got = run(), again = run();
    Tensor x64 = leaf(f64_of(xb)), w64 = leaf(rounded(w)), b64 = leaf(rounded(b)), g64 = f64_of(gb);
    Tensor y64 = eng::linear(x64, w64, b64);
    y64.backward(g64);
    eng::NoGradGuard ng;
    Tensor xa = abs(x64.detach()).reshape({rows, in}), wa = abs(w64.detach()), ga = abs(g64).reshape({rows, out});
    Tensor xw = matmul(x64.detach(), w64.detach().t());
    // y = x W^T + b: bf16 x bf16 products are exact in f32, the sum of in + 1 terms in f32, and one rounding to
    // bf16 in cuBLASLt's bias epilogue. Where the GEMM falls back to classic cuBLAS, x W^T is rounded to bf16
    // before our kernel adds the bias and rounds again, so the bound allows u |x W^T| as well:
    //   u (|y| + |x W^T|) + (in + 2) e (|x| |W|^T + |b|)
    Tensor by = eng::add(eng::mul(eng::add(abs(y64.detach()), abs(xw)), kU),
                         eng::mul(eng::add(matmul(abs(x64.detach()), wa.t()), abs(b64.detach())), double(in + 2) * kE));
    // dx = g W: one GEMM over `out` terms, one rounding:        u |dx| + (out + 2) e |g| |W|
    Tensor bdx =
        eng::add(eng::mul(abs(x64.grad()), kU), eng::mul(matmul(ga, wa), double(out + 2) * kE).reshape({B, T, in}));
    // dW = g^T x over all rows, rounded once to bf16, converted exactly to the f32 master's gradient:
    //                                                          u |dW| + (rows + 2) e |g|^T |x|
    Tensor bdw = eng::add(eng::mul(abs(w64.grad()), kU), eng::mul(matmul(ga.t(), xa), double(rows + 2) * kE));
    // db = column sums of g (accumulated in f32 or wider), one rounding: u |db| + (rows + 2) e sum |g|
    Tensor bdb = eng::add(eng::mul(abs(b64.grad()), kU), eng::mul(eng::sum(ga, {0}), double(rows + 2) * kE));
    check_outputs(got, again, {y64.detach(), x64.grad(), w64.grad(), b64.grad()}, {by, bdx, bdw, bdb},
                  {"y", "dx", "dW (f32 master)", "db (f32 master)"},
                  {DType::BF16, DType::BF16, DType::F32, DType::F32});
  }

  TEST_CASE("MLP (fc1, exact GELU, fc2) in bf16 with f32 master weights: forward and every gradient within the bound") {
    GPU_TEST_OR_SKIP();
    const int64_t B = 3, T = 17, dim = 24, hidden = 96, rows = B * T;
    Tensor xb = normal({B, T, dim}, 40).to(DType::BF16), gb = normal({B, T, dim}, 45).to(DType::BF16);
    Tensor w1 = normal({hidden, dim}, 41, DType::F32, 0.3), b1 = normal({hidden}, 42, DType::F32, 0.5);
    Tensor w2 = normal({dim, hidden}, 43, DType::F32, 0.15), b2 = normal({dim}, 44, DType::F32, 0.5);
    auto run = [&]() {
      model::Mlp mlp;
      mlp.fc1.weight = on(w1, cuda()).requires_grad_();
      mlp.fc1.bias = on(b1, cuda()).requires_grad_();
      mlp.fc2.weight = on(w2, cuda()).requires_grad_();
      mlp.fc2.bias = on(b2, cuda()).requires_grad_();
      Tensor x = on(xb, cuda()).requires_grad_();
      Tensor y = mlp(x);
      y.backward(on(gb, cuda()));
      return std::vector<Tensor>{
          y, x.grad(), mlp.fc1.weight.grad(), mlp.fc1.bias.grad(), mlp.fc2.weight.grad(), mlp.fc2.bias.grad()};
    };
    auto got = run(), again = run();
    Tensor x64 = leaf(f64_of(xb)), w164 = leaf(rounded(w1)), b164 = leaf(rounded(b1)), w264 = leaf(rounded(w2)),
           b264 = leaf(rounded(b2)), g64 = f64_of(gb);
    Tensor y64 = eng::mlp_gelu(x64, w164, b164, w264, b264);
    y64.backward(g64);
    eng::NoGradGuard ng;
    Tensor x = x64.detach().reshape({rows, dim}), W1 = w164.detach(), W2 = w264.detach(), dy = g64.reshape({rows, dim});
    Tensor h = eng::add(matmul(x, W1.t()), b164.detach());  // fc1's pre-activation
    Tensor a = eng::gelu(h), gp = gelu_grad(h);
    Tensor da = matmul(dy, W2), dh = eng::mul(da, gp);
    // h: GEMM + bias, rounded once (stored bf16; GELU's saved input too):  u |h| + (dim + 2) e (|x||W1|^T + |b1|)
    Tensor dlt_h = eng::add(eng::mul(abs(h), kU),
                            eng::mul(eng::add(matmul(abs(x), abs(W1).t()), abs(b164.detach())), double(dim + 2) * kE));
    // a = gelu(h~) in f32, rounded once: |gelu'(h)| d_h + u |a| + 8 e |h| (f32 erf/exp/multiplies)
    Tensor dlt_a = eng::add(eng::add(eng::mul(abs(gp), dlt_h), eng::mul(abs(a), kU)), eng::mul(abs(h), 8 * kE));
    // y = a~ W2^T + b2: as linear, plus the propagated d_a |W2|^T
    Tensor by =
        eng::add(eng::add(eng::mul(eng::add(abs(y64.detach().reshape({rows, dim})), abs(matmul(a, W2.t()))), kU),
                          eng::mul(eng::add(matmul(abs(a), abs(W2).t()), abs(b264.detach())), double(hidden + 2) * kE)),
                 matmul(dlt_a, abs(W2).t()));
    // da = dy W2, rounded once:                                 u |da| + (dim + 2) e |dy| |W2|
    Tensor dlt_da = eng::add(eng::mul(abs(da), kU), eng::mul(matmul(abs(dy), abs(W2)), double(dim + 2) * kE));
    // dh = gelu'(h~) da~ in f32, rounded once; |gelu''| <= 2 phi(0) < 0.8 turns d_h into 0.8 d_h |da|:
    //   u |dh| + |gelu'(h)| d_da + 0.8 d_h |da| + 8 e |gelu'(h) da|
    Tensor dlt_dh = eng::add(eng::add(eng::mul(abs(dh), kU), eng::mul(abs(gp), dlt_da)),
                             eng::add(eng::mul(eng::mul(dlt_h, abs(da)), 0.8), eng::mul(abs(dh), 8 * kE)));
    // dx = dh~ W1, dW1 = dh~^T x, db1 = sum dh~, dW2 = dy^T a~, db2 = sum dy: one rounding each, f32 sums, and the
    // propagated d_dh / d_a.
    Tensor bdx = eng::add(eng::add(eng::mul(abs(x64.grad().reshape({rows, dim})), kU),
                                   eng::mul(matmul(abs(dh), abs(W1)), double(hidden + 2) * kE)),
                          matmul(dlt_dh, abs(W1)));
    Tensor bdw1 =
        eng::add(eng::add(eng::mul(abs(w164.grad()), kU), eng::mul(matmul(abs(dh).t(), abs(x)), double(rows + 2) * kE)),
                 matmul(dlt_dh.t(), abs(x)));
    Tensor bdb1 =
        eng::add(eng::add(eng::mul(abs(b164.grad()), kU), eng::mul(eng::sum(abs(dh), {0}), double(rows + 2) * kE)),
                 eng::sum(dlt_dh, {0}));
    Tensor bdw2 =
        eng::add(eng::add(eng::mul(abs(w264.grad()), kU), eng::mul(matmul(abs(dy).t(), abs(a)), double(rows + 2) * kE)),
                 matmul(abs(dy).t(), dlt_a));
    Tensor bdb2 = eng::add(eng::mul(abs(b264.grad()), kU), eng::mul(eng::sum(abs(dy), {0}), double(rows + 2) * kE));
    check_outputs(got, again, {y64.detach(), x64.grad(), w164.grad(), b164.grad(), w264.grad(), b264.grad()},
                  {by.reshape({B, T, dim}), bdx.reshape({B, T, dim}), bdw1, bdb1, bdw2, bdb2},
                  {"y", "dx", "fc1 dW", "fc1 db", "fc2 dW", "fc2 db"},
                  {DType::BF16, DType::BF16, DType::F32, DType::F32, DType::F32, DType::F32});
  }

  // ---------------------------------------------------------------- layer norm

  TEST_CASE("layer_norm in bf16 with f32 statistics and f32 master affine: forward and gradients within the bound") {
    GPU_TEST_OR_SKIP();
    // Rows of 48 (a warp per row) and of 1100 (a block per row); a mean of 3 against a spread of 2 exercises
    // the cancellation in x - mean.
    for (Shape s : {Shape{5, 70, 48}, Shape{3, 1100}}) {
      const std::string shape = eng::shape_str(s);
      CAPTURE(shape);
      const int64_t cols = s.back(), rows = eng::shape_numel(s) / cols;
      Tensor xb = eng::add(normal(s, 20, DType::F32, 2.0), 3.0).to(DType::BF16), gb = normal(s, 23).to(DType::BF16);
      Tensor w = eng::add(normal({cols}, 21, DType::F32, 0.3), 1.0), b = normal({cols}, 22, DType::F32, 0.2);
      auto run = [&]() {
        model::LayerNorm ln(cols);
        ln.weight = on(w, cuda()).requires_grad_();
        ln.bias = on(b, cuda()).requires_grad_();
        Tensor x = on(xb, cuda()).requires_grad_();
        Tensor y = ln(x);
        y.backward(on(gb, cuda()));
        return std::vector<Tensor>{y, x.grad(), ln.weight.grad(), ln.bias.grad()};
      };
      auto got = run(), again = run();
      Tensor x64 = leaf(f64_of(xb)), w64 = leaf(rounded(w)), b64 = leaf(rounded(b)), g64 = f64_of(gb);
      Tensor y64 = eng::layer_norm(x64, w64, b64, 1e-6);
      y64.backward(g64);
      eng::NoGradGuard ng;
      Tensor x = x64.detach().reshape({rows, cols}), g = g64.reshape({rows, cols}), W = w64.detach(), Bb = b64.detach();
      Tensor mu = eng::mean(x, {-1}, true);
      Tensor rs = eng::rsqrt(eng::add(eng::mean(eng::square(eng::sub(x, mu)), {-1}, true), 1e-6));
      Tensor xhat = eng::mul(eng::sub(x, mu), rs);
      // The kernel sums in f64 and keeps mean and rstd as f32 (relative error 2^-24 each); x - mean, * rstd, * w,
      // + b are f32 operations (2^-24 each). With X = |x_hat| + rstd |mean| (the mean's rounding, seen through
      // rstd), every f32 error of x_hat is at most 3 2^-24 X, so, with margin, 2^-21 = 8 2^-24 per quantity:
      //   y:  u |y| + 2^-21 (X |w| + |b|)
      const double f = std::ldexp(1.0, -21);
      Tensor X = eng::add(abs(xhat), eng::mul(rs, abs(mu)));
      Tensor by = eng::add(eng::mul(abs(y64.detach().reshape({rows, cols})), kU),
                           eng::mul(eng::add(eng::mul(X, abs(W)), abs(Bb)), f));
      // dx = rstd (dxh - mean(dxh) - x_hat mean(dxh x_hat)), dxh = dy w, in f64 from the f32 statistics, rounded
      // once: u |dx| + 2^-21 rstd (|dxh| + |mean(dxh)| + X |mean(dxh x_hat)| + |x_hat| mean(|dxh| X))
      Tensor dxh = eng::mul(g, W);
      Tensor m1 = eng::mean(dxh, {-1}, true), m2 = eng::mean(eng::mul(dxh, xhat), {-1}, true);
      Tensor spread =
          eng::add(eng::add(abs(dxh), abs(m1)),
                   eng::add(eng::mul(X, abs(m2)), eng::mul(abs(xhat), eng::mean(eng::mul(abs(dxh), X), {-1}, true))));
      Tensor bdx = eng::add(eng::mul(abs(x64.grad().reshape({rows, cols})), kU), eng::mul(eng::mul(rs, spread), f));
      // dw = sum_rows dy x_hat, db = sum_rows dy: column sums (f32 or wider), one rounding, and x_hat's error:
      //   dw: u |dw| + (rows + 2) e sum |dy x_hat| + 2^-21 sum |dy| X;   db: u |db| + (rows + 2) e sum |dy|
      Tensor bdw = eng::add(eng::add(eng::mul(abs(w64.grad()), kU),
                                     eng::mul(eng::sum(abs(eng::mul(g, xhat)), {0}), double(rows + 2) * kE)),
                            eng::mul(eng::sum(eng::mul(abs(g), X), {0}), f));
      Tensor bdb = eng::add(eng::mul(abs(b64.grad()), kU), eng::mul(eng::sum(abs(g), {0}), double(rows + 2) * kE));
      check_outputs(got, again, {y64.detach(), x64.grad(), w64.grad(), b64.grad()},
                    {by.reshape(s), bdx.reshape(s), bdw, bdb}, {"y", "dx", "dw (f32 master)", "db (f32 master)"},
                    {DType::BF16, DType::BF16, DType::F32, DType::F32});
      // The statistics the backward pass reads are f32, not bf16: the mean to within f32's rounding.
      Tensor yk = Tensor::empty({rows, cols}, DType::BF16, cuda());
      Tensor mean = Tensor::empty({rows}, DType::F32, cuda()), rstd = Tensor::empty({rows}, DType::F32, cuda());
      Tensor xg = on(xb, cuda());
      eng::backend_for(cuda()).layer_norm_forward(DType::BF16, yk.raw_data(), mean.raw_data(), rstd.raw_data(),
                                                  xg.raw_data(), nullptr, nullptr, rows, cols, 1e-6);
      CHECK(rel_err(mean, mu.reshape({rows})) <= std::ldexp(1.0, -23));
      CHECK(rel_err(rstd, rs.reshape({rows})) <= std::ldexp(1.0, -23));
    }
  }

  // ---------------------------------------------------------------- attention

  TEST_CASE("attention_qkv in bf16 (fused on tensor cores, f32 scores and statistics): output and gradient within the bound") {
    GPU_TEST_OR_SKIP();
    OwnAttentionKernels own;  // the bound is the engine's tensor-core kernel's (cuDNN's: test_gpu_kernels.cpp)
    CHECK(eng::backend_for(cuda()).has_fused_attention(DType::BF16, 16, 16));
    const int64_t B = 2, T = 37, H = 3, Dh = 16, D = H * Dh;  // 37 tokens: two tiles of keys and of queries
    const double scale = 1.0 / std::sqrt(double(Dh));
    Tensor qkvb = normal({B, T, 3 * D}, 30).to(DType::BF16), gb = normal({B, T, D}, 31).to(DType::BF16);
    auto run = [&]() {
      Tensor qkv = on(qkvb, cuda()).requires_grad_();
      Tensor y = eng::attention_qkv(qkv, H);
      y.backward(on(gb, cuda()));
      return std::vector<Tensor>{y, qkv.grad()};
    };
    auto got = run(), again = run();
    Tensor qkv64 = leaf(f64_of(qkvb)), g64 = f64_of(gb);
    Tensor y64 = eng::attention_qkv(qkv64, H);
    y64.backward(g64);
    eng::NoGradGuard ng;
    Tensor parts = qkv64.detach().reshape({B, T, 3, H, Dh}).permute({2, 0, 3, 1, 4});
    Tensor q = parts.select(0, 0).contiguous(), k = parts.select(0, 1).contiguous(),
           v = parts.select(0, 2).contiguous();
    Tensor s = eng::mul(matmul(q, k.transpose(-2, -1)), scale);
    Tensor P = eng::softmax(s, -1), O = matmul(P, v);
    Tensor lse = eng::log(eng::sum(eng::exp(s), {-1}, true));
    // Scores: an f32 dot product of Dh bf16 products, scaled: |ds_ij| <= (Dh + 2) e scale (|q||k|^T)_ij; dS_i is
    // its row maximum (the running maximum m and lse carry the same error). A probability exp(s - m) or
    // exp(s - lse) is then off by at most eta_i = 4 dS_i + (2 T + 16 + |lse_i|) e relative (the score, the shift,
    // exp's own error and the rescalings and sums over T keys in f32).
    Tensor dS = eng::mul(eng::amax(matmul(abs(q), abs(k).transpose(-2, -1)), {-1}, true), double(Dh + 2) * kE * scale);
    Tensor eta = eng::add(eng::mul(dS, 4.0), eng::mul(eng::add(abs(lse), double(2 * T + 16)), kE));
    // out_i = sum_j P_ij v_j / l_i: the weights and their normaliser are off by eta_i each, then one rounding:
    //   u |O| + 2 eta_i (P |v|)_i
    Tensor bO = eng::add(eng::mul(abs(O), kU), eng::mul(matmul(P, abs(v)), eng::mul(eta, 2.0)));
    bO = eng::add(bO, eng::mul(matmul(P, abs(v)), kU));  // the tensor-core path's bf16 P (below)
    // Backward (P recomputed from lse): D_i = dO_i . O~_i reads the GPU's stored O, off by bO, plus its f32 sum;
    // dP_ij = dO_i . v_j in f32; dS_ij = P_ij (dP_ij - D_i) carries eta, d(dP) and d(D); then
    //   dq = scale dS k, dk = scale dS^T q, dv = P^T dO: one rounding each, T-term f32 sums, propagated errors.
    Tensor dO = g64.reshape({B, T, H, Dh}).permute({0, 2, 1, 3});
    Tensor dP = matmul(dO, v.transpose(-2, -1));
    Tensor Dv = eng::sum(eng::mul(dO, O), {-1}, true);
    Tensor dD = eng::add(eng::sum(eng::mul(abs(dO), bO), {-1}, true),
                         eng::mul(eng::sum(eng::mul(abs(dO), abs(O)), {-1}, true), double(Dh + 2) * kE));
    Tensor ddP = eng::mul(matmul(abs(dO), abs(v).transpose(-2, -1)), double(Dh + 2) * kE);
    Tensor dSm = eng::mul(P, eng::sub(dP, Dv));
    Tensor ddS = eng::add(eng::add(eng::mul(eng::mul(eta, P), abs(eng::sub(dP, Dv))), eng::mul(P, eng::add(ddP, dD))),
                          eng::mul(abs(dSm), 2 * kE));
    const double acc = double(T + 2) * kE;
    Tensor dq = eng::mul(matmul(dSm, k), scale), dk = eng::mul(matmul(dSm.transpose(-2, -1), q), scale);
    Tensor dv = matmul(P.transpose(-2, -1), dO);
    Tensor bq = eng::add(eng::mul(abs(dq), kU),
                         eng::mul(eng::add(matmul(ddS, abs(k)), eng::mul(matmul(abs(dSm), abs(k)), acc)), scale));
    Tensor bk =
        eng::add(eng::mul(abs(dk), kU), eng::mul(eng::add(matmul(ddS.transpose(-2, -1), abs(q)),
                                                          eng::mul(matmul(abs(dSm).transpose(-2, -1), abs(q)), acc)),
                                                 scale));
    Tensor bv = eng::add(eng::add(eng::mul(abs(dv), kU), matmul(eng::mul(eta, P).transpose(-2, -1), abs(dO))),
                         eng::mul(matmul(P.transpose(-2, -1), abs(dO)), acc));
    // Head dim 16 takes the tensor-core path, which rounds the left operand of each second product to bf16 first
    // (P in P v, P^T in P^T dO, dS in dS k and dS^T q): u times the product of the absolute values, each (the P v
    // term is in bO above, so D_i carries it too).
    bq = eng::add(bq, eng::mul(matmul(abs(dSm), abs(k)), kU * scale));
    bk = eng::add(bk, eng::mul(matmul(abs(dSm).transpose(-2, -1), abs(q)), kU * scale));
    bv = eng::add(bv, eng::mul(matmul(P.transpose(-2, -1), abs(dO)), kU));
    // Back to the packed layouts: y [B, T, H * Dh], dqkv [B, T, 3 * H * Dh].
    Tensor by = bO.permute({0, 2, 1, 3}).reshape({B, T, D});
    Tensor bqkv = eng::stack({bq, bk, bv}, 0).permute({1, 3, 0, 2, 4}).reshape({B, T, 3 * D});
    check_outputs(got, again, {y64.detach(), qkv64.grad()}, {by, bqkv}, {"y", "dqkv"}, {DType::BF16, DType::BF16});
  }

  // ---------------------------------------------------------------- the MAE's glue

  TEST_CASE("the MAE's glue in bf16: broadcast add, cast token, cat, gather, slice, cast to f32, and their gradients") {
    GPU_TEST_OR_SKIP();
    const int64_t N = 2, L = 17, D = 24, keep = 12;
    Tensor xb = normal({N, L, D}, 50).to(DType::BF16), posb = normal({1, L, D}, 51).to(DType::BF16);
    Tensor tok = normal({1, 1, D}, 52, DType::F32, 0.02), wgt = normal({N, L - 1, D}, 53);
    std::vector<int64_t> perm;
    for (int64_t n = 0; n < N; n++) {
      auto p = eng::Generator(54 + uint64_t(n)).permutation(L).to_vector<int64_t>();
      perm.insert(perm.end(), p.begin(), p.end());
    }
    Tensor ids = Tensor::from_vector(perm, {N, L}).unsqueeze(-1).expand({N, L, D}).contiguous();
    // The shape of MAE's masking and decoder input: x + pos (broadcast), its first `keep` tokens followed by a
    // repeated (cast) token, shuffled by ids, the first row dropped, cast to f32, weighted and summed in f32.
    auto run = [&]() {
      Tensor x = on(xb, cuda()).requires_grad_(), token = on(tok, cuda()).requires_grad_();
      Tensor a = eng::add(x, on(posb, cuda()));
      Tensor t = token.to(DType::BF16).expand({N, L - keep, D});
      Tensor gth = eng::gather(eng::cat({a.slice(1, 0, keep), t}, 1), 1, on(ids, cuda()));
      Tensor loss = eng::sum(eng::mul(gth.slice(1, 1, L).to(DType::F32), on(wgt, cuda())));
      loss.backward();
      return std::vector<Tensor>{a, gth, loss, x.grad(), token.grad()};
    };
    auto got = run(), again = run();
    // gather and cat move bf16 values: bitwise the cpu's gather of the same bf16 data.
    Tensor gth_cpu = eng::gather(
        eng::cat({got[0].to(cpu()).slice(1, 0, keep), tok.to(DType::BF16).expand({N, L - keep, D})}, 1), 1, ids);
    CHECK(same_bits(got[1], gth_cpu));
    CHECK(same_bits(got[1], again[1]));
    // f64 reference on the GPU's input values (the token rounded to bf16, as the GPU's cast does). The loss uses
    // the f32 weights; the gradients flow back through the f32 -> bf16 cast's backward, which rounds the weights
    // to bf16, so the reference gradients use the rounded weights.
    Tensor x64 = leaf(f64_of(xb)), tok64 = leaf(rounded(tok));
    Tensor a64 = eng::add(x64, f64_of(posb));
    Tensor g64 =
        eng::gather(eng::cat({a64.slice(1, 0, keep), tok64.expand({N, L - keep, D})}, 1), 1, ids).slice(1, 1, L);
    Tensor loss64 = eng::sum(eng::mul(g64, f64_of(wgt)));
    eng::sum(eng::mul(g64, rounded(wgt))).backward();
    eng::NoGradGuard ng;
    // x + pos: two bf16 values added in f32 (at most one f32 rounding), rounded once to bf16: (u + e) |a|.
    Tensor ba = eng::mul(abs(a64.detach()), kU + kE);
    // The loss: n = (L - 1) N D products of gathered values (each off by a's bound, or exact for the token) with
    // f32 weights, summed in f32 or wider: sum |w| bound(gathered) + (n + 2) e sum |w gathered|.
    const double n = double((L - 1) * N * D);
    Tensor bgth = eng::gather(eng::cat({ba.slice(1, 0, keep), Tensor::zeros({N, L - keep, D}, DType::F64)}, 1), 1, ids);
    Tensor aw = abs(f64_of(wgt));
    Tensor bl = eng::add(eng::sum(eng::mul(aw, bgth.slice(1, 1, L))),
                         eng::mul(eng::sum(eng::mul(aw, abs(g64.detach()))), (n + 2) * kE));
    // dx: the rounded weights placed by slice, gather, cat and add: exact (bound 0).
    // dtoken: a sum of (L - keep) N rounded weights (f32 or wider), rounded once to bf16, converted to f32:
    //   u |dtoken| + (count + 2) e sum |w|  (the sum over all weights bounds the sum over the token's).
    Tensor bx = Tensor::zeros({N, L, D}, DType::F64);
    Tensor bt = eng::add(eng::mul(abs(tok64.grad()), kU), eng::mul(eng::sum(aw), double((L - keep) * N + 2) * kE));
    check_outputs({got[0], got[2], got[3], got[4]}, {again[0], again[2], again[3], again[4]},
                  {a64.detach(), loss64, x64.grad(), tok64.grad()}, {ba, bl, bx, bt},
                  {"x + pos", "loss", "dx", "dtoken (f32 master)"}, {DType::BF16, DType::F32, DType::BF16, DType::F32});
  }

  // ---------------------------------------------------------------- the whole model

  TEST_CASE("golden MAE fixture in bf16 mixed precision: f32 loss, prediction and gradients near the f32 fixture's") {
    GPU_TEST_OR_SKIP();
    eng::SafetensorsFile f = eng::load_safetensors(kFixture);
    model::MaeConfig cfg = model::mae_config_from_json(nlohmann::json::parse(f.metadata.at("config")));
    const double mask_ratio = std::stod(f.metadata.at("mask_ratio"));
    model::MaskedAutoencoder mae(cfg, 0);
    model_to(mae, cuda());
    std::map<std::string, Tensor> weights;
    for (auto& [name, t] : f.tensors)
      if (name.rfind("input.", 0) != 0 && name.rfind("output.", 0) != 0 && name.rfind("grad.", 0) != 0)
        weights[name] = t;
    mae.load_state_dict(weights, kFixture);
    mae.set_compute_dtype(DType::BF16);
    const Tensor imgs = on(f.tensors.at("input.imgs"), cuda()), noise = on(f.tensors.at("input.noise"), cuda());
    model::MaeOutput out = mae.forward(imgs, noise, mask_ratio);
    CHECK(out.loss.dtype() == DType::F32);
    CHECK(out.pred.dtype() == DType::F32);
    CHECK(out.loss.device() == cuda());
    CHECK(out.mask.to_vector<float>() == f.tensors.at("output.mask").to_vector<float>());  // masking is exact
    const double want = f.tensors.at("output.loss").item(), loss = out.loss.item();
    const Tensor pred_ref = f.tensors.at("output.pred");
    const double pred_err = norm_rel(out.pred, pred_ref);
    // The prediction. Along its longest path a prediction goes through about 40 bf16 roundings (the images and
    // each weight once; per block the two norms, qkv, attention, proj, two residual adds, fc1, GELU, fc2; then
    // the norm, decoder embedding, position add, the decoder block, norm and head), each at most u = 2^-8
    // relative. Added up in the worst case that is 0.16, which bounds nothing useful; but the roundings are
    // unbiased and independent, so they add in quadrature: sqrt(40) u / sqrt(3) = 1.4% relative RMS error (a
    // uniform rounding error has RMS u / sqrt(3)), and layer norm and the residual stream keep it relative rather
    // than growing. Bound: 6% in norm, 4x that estimate.
    CHECK(pred_err <= 0.06);
    // The loss, from the prediction: both losses compare with the same f32 target t over the same M removed
    // patches of P values (the mask is exact), so with d = pred_bf16 - pred_f32 there,
    //   L' - L = mean(2 (pred_f32 - t) d + d^2)  and, by Cauchy-Schwarz,  |L' - L| <= 2 sqrt(L) r + r^2,
    // r = sqrt(mean(d^2)), means over the M P removed values; plus 2e-5 L for the two f32 evaluations of the loss
    // (ours agrees with the fixture's PyTorch loss to 1e-5 on the cpu).
    double sq = 0, count = 0;
    {
      auto gp = out.pred.to_vector<double>(), rp = pred_ref.to_vector<double>(), m = out.mask.to_vector<double>();
      const size_t P = size_t(cfg.patch_dim());
      for (size_t e = 0; e < gp.size(); e++)
        if (m[e / P] != 0) sq += (gp[e] - rp[e]) * (gp[e] - rp[e]), count += 1;
    }
    const double r = std::sqrt(sq / count), loss_bound = 2 * std::sqrt(want) * r + r * r + 2e-5 * want;
    MESSAGE("bf16 loss " << loss << " vs f32 fixture " << want << ": |diff| " << std::fabs(loss - want) << " <= bound "
                         << loss_bound << "; prediction rel err (norm) " << pred_err);
    CHECK(std::fabs(loss - want) <= loss_bound);
    CHECK(std::fabs(loss - want) <= 0.02 * want);  // and, whatever the prediction, within 2%
    out.loss.backward();
    // Gradients, a sanity bound: on the way back they meet as many roundings again (~80 in all: 2% RMS by the
    // same estimate), and a parameter whose gradient sums contributions of both signs over images and tokens
    // (cls_token, mask_token, biases) loses relative accuracy by that cancellation; measured: up to 5.5%
    // (cls_token). All gradients as one vector within 6% (3x the estimate), each parameter's within 15%. A wrong
    // backward formula, a lost gradient or a wrong dtype gives errors of order 1.
    int checked = 0;
    double worst = 0, diff2 = 0, ref2 = 0;
    std::string worst_name;
    for (auto& [name, p] : mae.named_parameters()) {
      auto it = f.tensors.find("grad." + name);
      REQUIRE_MESSAGE(it != f.tensors.end(), "fixture lacks grad." << name);
      REQUIRE_MESSAGE(p.grad().defined(), name << " got no gradient");
      CHECK(p.dtype() == DType::F32);
      CHECK(p.grad().dtype() == DType::F32);
      CHECK(p.grad().device() == cuda());
      const double e = norm_rel(p.grad(), it->second);
      if (e > worst) worst = e, worst_name = name;
      CHECK_MESSAGE(e <= 0.15, name << ": gradient rel err (norm) " << e);
      auto g = p.grad().to_vector<double>(), w = it->second.to_vector<double>();
      for (size_t k = 0; k < g.size(); k++) diff2 += (g[k] - w[k]) * (g[k] - w[k]), ref2 += w[k] * w[k];
      checked++;
    }
    const double global = std::sqrt(diff2 / ref2);
    MESSAGE("gradients: all together rel err (norm) " << global << "; largest per parameter " << worst << " ("
                                                      << worst_name << ") over " << checked << " parameters");
    CHECK(global <= 0.06);
    CHECK(checked > 20);
    // Deterministic: a second bf16 forward gives the same bits.
    eng::NoGradGuard ng;
    CHECK(same_bits(mae.forward(imgs, noise, mask_ratio).pred, out.pred));
    // encode_all (features) returns f32 in bf16 mode, close to the f32 model's.
    Tensor feats = mae.encode_all(imgs);
    CHECK(feats.dtype() == DType::F32);
    mae.set_compute_dtype(DType::F32);
    CHECK(norm_rel(feats, mae.encode_all(imgs)) <= 0.06);
  }

  TEST_CASE("a short bf16 training run (scalar, tensor-core and cuDNN attention) follows the f32 run and repeats bit for bit") {
    GPU_TEST_OR_SKIP();
    const int64_t steps = 12;
    struct Run {
      model::MaeConfig cfg;
      bool own;  // the engine's own attention kernels; else the default choice (cuDNN where it runs)
      const char* name;
    };
    std::vector<Run> runs = {{model::mae_config("mae_test_tiny"), true, "8-wide heads (scalar attention)"},
                             {tiny_with_16_wide_heads(), true, "16-wide heads (tensor cores)"}};
    if (cudnn_attention_built()) runs.push_back({tiny_with_16_wide_heads(), false, "16-wide heads (cuDNN where it runs)"});
    for (const Run& run : runs) {
      const model::MaeConfig& cfg = run.cfg;
      const std::string heads = run.name;
      CAPTURE(heads);
      std::optional<OwnAttentionKernels> own;
      if (run.own) own.emplace();
      TrainRun c = train_mae(cpu(), DType::F32, steps, cfg);
      TrainRun g = train_mae(cuda(), DType::BF16, steps, cfg);
      TrainRun g2 = train_mae(cuda(), DType::BF16, steps, cfg);
      double worst = 0;
      for (int64_t s = 0; s < steps; s++) {
        const double e = std::fabs(g.losses[size_t(s)] - c.losses[size_t(s)]) / std::fabs(c.losses[size_t(s)]);
        worst = std::max(worst, e);
      }
      MESSAGE("losses f32 (cpu) " << c.losses.front() << " -> " << c.losses.back() << ", bf16 (cuda) " << g.losses.front()
                                  << " -> " << g.losses.back() << "; largest relative step difference " << worst);
      // Step 0 differs only by the forward's rounding, bounded as in the fixture case (2%; measured there 0.1%).
      // Each later step adds the drift of the weights: AdamW moves a weight by about lr = 2e-3 per step whatever the
      // gradient's scale, and bf16 changes a step's direction only where a gradient element is within its few-%
      // error of zero, so after 12 steps the runs' weights differ by a small fraction of 12 lr = 0.024 (the weights
      // are ~0.1-0.3), which moves the loss by less than the forward's rounding does. Bound: 2% at every step.
      CHECK(worst <= 0.02);
      double first = 0, last = 0;
      for (int64_t s = 0; s < 4; s++) {
        first += c.losses[size_t(s)];
        last += c.losses[size_t(steps - 4 + s)];
      }
      CHECK(last < first);  // the f32 run learns, so "follows" is about a moving curve
      CHECK(g.losses == g2.losses);
      REQUIRE(g.params.size() == g2.params.size());
      for (size_t i = 0; i < g.params.size(); i++) {
        CHECK(g.params[i].dtype() == DType::F32);
        CHECK(same_bits(g.params[i], g2.params[i]));
      }
    }
  }

  TEST_CASE("bf16 mixed precision on the cpu stops with one clear line; only f32 and bf16 are compute dtypes") {
    // No GPU needed: this is the CPU's answer.
    model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 1);
    CHECK(mae.compute_dtype() == DType::F32);
    mae.set_compute_dtype(DType::BF16);
    CHECK(mae.compute_dtype() == DType::BF16);
    Tensor imgs = normal({2, 3, 16, 16}, 60), noise = uniform({2, 16}, 61, 0.0, 1.0);
    CHECK_THROWS_WITH_AS(mae.forward(imgs, noise, 0.75), "bf16 mixed precision needs --device cuda", eng::Error);
    CHECK_THROWS_WITH_AS(mae.encode_all(imgs), "bf16 mixed precision needs --device cuda", eng::Error);
    CHECK_THROWS_WITH_AS(mae.set_compute_dtype(DType::F64), doctest::Contains("compute dtype f64 is not supported"),
                         eng::Error);
    CHECK(mae.compute_dtype() == DType::BF16);
    mae.set_compute_dtype(DType::F32);
    CHECK(std::isfinite(mae.forward(imgs, noise, 0.75).loss.item()));
    CHECK(model::parse_precision("f32") == DType::F32);
    CHECK(model::parse_precision("bf16") == DType::BF16);
    CHECK(model::parse_precision("tf32") == DType::F32);  // f32 arithmetic; TF32 is the GEMMs' switch
    CHECK_THROWS_WITH_AS(model::parse_precision("fp16"), doctest::Contains("known: f32, tf32, bf16"), eng::Error);
  }
}
