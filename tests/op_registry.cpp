// op_registry.cpp: input generation, the three checking modes, and the doctest driver for all op cases.
#include "tests/op_registry.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace optest {

namespace {

std::vector<OpCase>& registry() {
  static std::vector<OpCase> r;
  return r;
}

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Deterministic normal numbers (Box-Muller over mt19937_64, whose output the standard fixes).
struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  double uniform() { return double(g() >> 11) * 0x1.0p-53; }
  double normal() {
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * M_PI * u2);
  }
};

HostArray gen_input(const InputSpec& s, Rng& rng) {
  HostArray h = make_host(s.shape);
  for (size_t i = 0; i < h.v.size(); i++) {
    switch (s.kind) {
      case Kind::Normal: h.v[i] = rng.normal(); break;
      case Kind::Positive: h.v[i] = 0.5 + 1.5 * rng.uniform(); break;
      case Kind::Uniform: h.v[i] = 2.0 * rng.uniform() - 1.0; break;
      case Kind::Index: h.v[i] = double(int64_t(rng.uniform() * double(s.hi))); break;
      case Kind::Distinct: h.v[i] = double(i) * 0.1; break;
    }
  }
  if (s.kind == Kind::Distinct) {  // a random permutation of well-separated values, centred
    for (size_t i = h.v.size(); i > 1; i--) std::swap(h.v[i - 1], h.v[size_t(rng.uniform() * double(i))]);
    for (double& x : h.v) x += 0.025 - 0.05 * double(h.v.size());  // never exactly 0 (kinks of relu, abs)
  }
  return h;
}

// Builds the tensor an op sees: dtype, and a transposed view when asked.
Tensor to_tensor(const HostArray& h, const InputSpec& s, eng::DType float_dtype) {
  eng::DType dt = s.kind == Kind::Index ? eng::DType::I64 : float_dtype;
  if (!s.transposed || h.shape.size() < 2) return Tensor::from_vector(h.v, h.shape, eng::DType::F64).to(dt);
  Shape ts = h.shape;
  std::swap(ts[ts.size() - 1], ts[ts.size() - 2]);
  Tensor base = Tensor::from_vector(h.v, h.shape, eng::DType::F64).transpose(-2, -1).contiguous();  // holds transposed data
  Tensor view = base.to(dt).transpose(-2, -1);
  REQUIRE(!view.is_contiguous());
  return view;
}

std::vector<Tensor> build_inputs(const OpCase& c, const std::vector<HostArray>& hs, eng::DType dt, bool grad) {
  std::vector<Tensor> xs;
  for (size_t i = 0; i < hs.size(); i++) {
    Tensor t = to_tensor(hs[i], c.inputs[i], dt);
    if (grad && c.inputs[i].grad && c.inputs[i].kind != Kind::Index) {
      // Make the (possibly non-contiguous) view a leaf by detaching it.
      t = t.detach();
      t.requires_grad_(true);
    }
    xs.push_back(t);
  }
  return xs;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

double rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  double d = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double e = std::fabs(got[i] - want[i]);
    if (std::isnan(e)) return INFINITY;
    d = std::max(d, e);
  }
  return d / std::max(max_abs(want), 1e-30);
}

}  // namespace

int register_case(OpCase c) {
  registry().push_back(std::move(c));
  return int(registry().size());
}
const std::vector<OpCase>& all_cases() { return registry(); }

HostArray make_host(const Shape& shape, double fill) {
  return HostArray{shape, std::vector<double>(static_cast<size_t>(eng::shape_numel(shape)), fill)};
}

HostArray broadcast_binary(const HostArray& a, const HostArray& b, const std::function<double(double, double)>& f) {
  Shape s = eng::broadcast_shapes(a.shape, b.shape);
  HostArray o = make_host(s);
  size_t n = s.size();
  for (int64_t i = 0; i < o.numel(); i++) {
    int64_t rem = i, ia = 0, ib = 0, sa = 1, sb = 1;
    for (size_t d = n; d-- > 0;) {
      int64_t idx = rem % s[d];
      rem /= s[d];
      size_t da = d + a.shape.size() - n, db = d + b.shape.size() - n;
      if (d + a.shape.size() >= n) {
        int64_t ext = a.shape[da];
        ia += (ext == 1 ? 0 : idx) * sa;
        sa *= ext;
      }
      if (d + b.shape.size() >= n) {
        int64_t ext = b.shape[db];
        ib += (ext == 1 ? 0 : idx) * sb;
        sb *= ext;
      }
    }
    o.v[size_t(i)] = f(a.v[size_t(ia)], b.v[size_t(ib)]);
  }
  return o;
}

HostArray map_unary(const HostArray& a, const std::function<double(double)>& f) {
  HostArray o = a;
  for (double& x : o.v) x = f(x);
  return o;
}

HostArray attention_ref(const HostArray& q, const HostArray& k, const HostArray& v, double scale) {
  int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3), Tk = k.size(2), Dv = v.size(3);
  if (scale <= 0) scale = 1.0 / std::sqrt(double(D));
  HostArray out = make_host({B, H, Tq, Dv});
  std::vector<double> p(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < Tq; i++) {
        double mx = -INFINITY, s = 0;
        for (int64_t j = 0; j < Tk; j++) {
          double dot = 0;
          for (int64_t d = 0; d < D; d++) dot += q.at({b, h, i, d}) * k.at({b, h, j, d});
          p[size_t(j)] = dot * scale;
          mx = std::max(mx, p[size_t(j)]);
        }
        for (auto& x : p) s += (x = std::exp(x - mx));
        for (int64_t d = 0; d < Dv; d++) {
          double acc = 0;
          for (int64_t j = 0; j < Tk; j++) acc += p[size_t(j)] / s * v.at({b, h, j, d});
          out.at({b, h, i, d}) = acc;
        }
      }
  return out;
}

std::vector<HostArray> split_qkv_host(const HostArray& qkv, int64_t H) {
  int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / (3 * H);
  std::vector<HostArray> out(3, make_host({B, H, T, D}));
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t s = 0; s < 3; s++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t d = 0; d < D; d++) out[size_t(s)].at({b, h, t, d}) = qkv.at({b, t, (s * H + h) * D + d});
  return out;
}

std::vector<HostArray> case_inputs(const OpCase& c) {
  Rng rng(hash_name(c.name));
  std::vector<HostArray> hs;
  for (const auto& s : c.inputs) hs.push_back(gen_input(s, rng));
  return hs;
}

std::vector<double> case_normals(const OpCase& c, uint64_t salt, size_t n) {
  Rng rng(hash_name(c.name) ^ salt);
  std::vector<double> v(n);
  for (double& x : v) x = rng.normal();
  return v;
}

std::vector<std::string> run_case(const OpCase& c) {
  std::vector<std::string> fails;
  Rng rng(hash_name(c.name));  // the inputs of case_inputs, then (below) the gradient weights from the same stream
  std::vector<HostArray> hs;
  for (const auto& s : c.inputs) hs.push_back(gen_input(s, rng));

  // 1 + 2: forward in f64 and f32 against the reference.
  Tensor y64 = c.fn(build_inputs(c, hs, eng::DType::F64, false));
  bool float_out = eng::is_floating(y64.dtype());
  if (c.ref) {
    HostArray r = c.ref(hs);
    if (y64.shape() != r.shape) {
      fails.push_back("f64 forward shape " + eng::shape_str(y64.shape()) + " != reference " + eng::shape_str(r.shape));
      return fails;
    }
    double e64 = rel_err(y64.to_vector<double>(), r.v);
    if (!(e64 <= (float_out ? c.fwd_tol_f64 : 0.0)))
      fails.push_back(fmt::format("f64 forward rel err {:.3e} > {:.1e}", e64, c.fwd_tol_f64));
    Tensor y32 = c.fn(build_inputs(c, hs, eng::DType::F32, false));
    if (float_out && y32.dtype() != eng::DType::F32) fails.push_back("f32 inputs gave a non-f32 output");
    double e32 = rel_err(y32.to_vector<double>(), r.v);
    if (!(e32 <= (float_out ? c.fwd_tol_f32 : 0.0)))
      fails.push_back(fmt::format("f32 forward rel err {:.3e} > {:.1e}", e32, c.fwd_tol_f32));
  }

  // 3: gradient of L = sum(y * w) for fixed random w, against central differences in f64.
  bool any_grad = false;
  for (const auto& s : c.inputs) any_grad = any_grad || (s.grad && s.kind != Kind::Index);
  if (!any_grad || !float_out) return fails;
  HostArray w = make_host(y64.shape());
  for (double& x : w.v) x = rng.normal();
  Tensor wt = Tensor::from_vector(w.v, w.shape, eng::DType::F64);
  auto loss_of = [&](const std::vector<Tensor>& xs) { return eng::sum(eng::mul(c.fn(xs), wt)); };

  std::vector<Tensor> xs = build_inputs(c, hs, eng::DType::F64, true);
  Tensor L = loss_of(xs);
  if (!L.requires_grad()) {
    fails.push_back("output does not require grad although inputs do");
    return fails;
  }
  L.backward();
  for (size_t i = 0; i < hs.size(); i++) {
    if (!xs[i].requires_grad()) continue;
    Tensor g = xs[i].grad();
    if (!g.defined()) {
      fails.push_back(fmt::format("input {}: no gradient", i));
      continue;
    }
    std::vector<double> ga = g.to_vector<double>(), fd(hs[i].v.size());
    eng::NoGradGuard ng;
    for (size_t j = 0; j < hs[i].v.size(); j++) {
      std::vector<HostArray> hp = hs, hm = hs;
      hp[i].v[j] += c.fd_eps;
      hm[i].v[j] -= c.fd_eps;
      double lp = loss_of(build_inputs(c, hp, eng::DType::F64, false)).item();
      double lm = loss_of(build_inputs(c, hm, eng::DType::F64, false)).item();
      fd[j] = (lp - lm) / (2 * c.fd_eps);
    }
    double e = rel_err(ga, fd);
    if (!(e <= c.grad_tol)) fails.push_back(fmt::format("input {}: gradient rel err {:.3e} > {:.1e}", i, e, c.grad_tol));
  }
  return fails;
}

TEST_SUITE("ops") {
  TEST_CASE("every registered op: f64/f32 forward vs reference, f64 gradient vs finite differences") {
    REQUIRE(all_cases().size() > 0);
    for (const OpCase& c : all_cases()) {
      std::vector<std::string> fails;
      try {
        fails = run_case(c);
      } catch (const std::exception& e) {
        fails.push_back(std::string("threw: ") + e.what());
      }
      for (const auto& f : fails) FAIL_CHECK(std::string(c.name + ": " + f));
    }
    MESSAGE(all_cases().size() << " op cases checked");
  }
}

}  // namespace optest
