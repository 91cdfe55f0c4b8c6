// test_optim.cpp: AdamW and SGD against hand-written f64 reference loops (with weight-decay groups,
// lr scales, skipped parameters), the MAE weight-decay split, the cosine schedule, clip_grad_norm
// against an f64 reference, thread-count determinism, gradient accumulation, and state_dict round
// trips that continue bit for bit like an uninterrupted optimizer.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/rng.h"

using eng::DType;
using eng::Generator;
using eng::Shape;
using eng::Tensor;

namespace {

Tensor make_param(Generator& g, const Shape& shape, DType dt) {
  Tensor p = g.normal(shape, 0.0, 1.0, dt);
  p.requires_grad_();
  return p;
}

// A copy with its own storage, also a leaf requiring grad.
Tensor copy_param(const Tensor& p) {
  Tensor c = p.detach().clone();
  c.requires_grad_();
  return c;
}

template <typename T> bool bitwise_equal(const Tensor& a, const Tensor& b) {
  std::vector<T> x = a.to_vector<T>(), y = b.to_vector<T>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

double max_rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); i++) e = std::max(e, std::fabs(got[i] - want[i]) / (std::fabs(want[i]) + 1e-3));
  return e;
}

// The textbook AdamW step, literally as written in the PyTorch docs, in f64.
struct RefAdamW {
  std::vector<double> p, m, v;
  int64_t t = 0;
  void step(const std::vector<double>& g, double lr, double wd, double b1, double b2, double eps) {
    t++;
    for (size_t i = 0; i < p.size(); i++) {
      p[i] -= lr * wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      double mhat = m[i] / (1 - std::pow(b1, double(t)));
      double vhat = v[i] / (1 - std::pow(b2, double(t)));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

// torch.optim.SGD (dampening 0) in f64.
struct RefSGD {
  std::vector<double> p, buf;
  bool has_buf = false;
  void step(const std::vector<double>& g_in, double lr, double momentum, double wd, bool nesterov) {
    std::vector<double> g = g_in;
    for (size_t i = 0; i < p.size(); i++) g[i] += wd * p[i];
    if (momentum != 0) {
      if (!has_buf) {
        buf = g;
        has_buf = true;
      } else {
        for (size_t i = 0; i < p.size(); i++) buf[i] = momentum * buf[i] + g[i];
      }
      for (size_t i = 0; i < p.size(); i++) g[i] = nesterov ? g[i] + momentum * buf[i] : buf[i];
    }
    for (size_t i = 0; i < p.size(); i++) p[i] -= lr * g[i];
  }
};

// Deterministic gradients for parameter k at step s.
Tensor grad_for(const Tensor& p, size_t k, int s) {
  Generator g(1000 + k, uint64_t(s));
  return g.normal(p.shape(), 0.0, 0.5 + 0.1 * double(k), p.dtype());
}

// AdamW over 3 parameters in 2 groups (decay with lr_scale 1, no-decay with lr_scale 0.5) for `steps`
// steps, with the lr following a cosine schedule; parameter 2 gets no gradient on step 2.
void run_adamw_case(DType dt, double tol) {
  Generator gen(5);
  std::vector<Tensor> ps = {make_param(gen, {4, 3}, dt), make_param(gen, {7}, dt), make_param(gen, {2, 5}, dt)};
  eng::ParamGroup decay, no_decay;
  decay.params = {ps[0], ps[2]};
  decay.weight_decay = 0.05;
  no_decay.params = {ps[1]};
  no_decay.weight_decay = 0.0;
  no_decay.lr_scale = 0.5;
  eng::AdamWOptions opt;
  opt.beta1 = 0.9;
  opt.beta2 = 0.95;
  opt.eps = 1e-8;
  eng::AdamW adam({decay, no_decay}, opt);
  // Flat order: ps[0], ps[2], ps[1].
  const double wds[] = {0.05, 0.05, 0.0}, scales[] = {1.0, 1.0, 0.5};
  std::vector<Tensor> flat = {ps[0], ps[2], ps[1]};
  std::vector<RefAdamW> ref(3);
  for (size_t k = 0; k < 3; k++) {
    ref[k].p = flat[k].to_vector<double>();
    ref[k].m.assign(ref[k].p.size(), 0.0);
    ref[k].v.assign(ref[k].p.size(), 0.0);
  }
  eng::CosineSchedule sched{1e-2, 1e-4, 2, 8};
  for (int s = 0; s < 8; s++) {
    double lr = sched.lr(s + 0.5);
    adam.set_lr(lr);
    adam.zero_grad();
    for (size_t k = 0; k < 3; k++) {
      if (k == 1 && s == 2) continue;  // no gradient: skipped, its step count stays behind
      flat[k].set_grad(grad_for(flat[k], k, s));
    }
    adam.step();
    for (size_t k = 0; k < 3; k++) {
      if (k == 1 && s == 2) continue;
      ref[k].step(flat[k].grad().to_vector<double>(), lr * scales[k], wds[k], 0.9, 0.95, 1e-8);
    }
  }
  CHECK(adam.step_count() == 8);
  CHECK(adam.param_step(0) == 8);
  CHECK(adam.param_step(1) == 7);
  for (size_t k = 0; k < 3; k++) {
    CAPTURE(k);
    CHECK(max_rel_err(flat[k].to_vector<double>(), ref[k].p) < tol);
    CHECK(max_rel_err(adam.exp_avg(k).to_vector<double>(), ref[k].m) < tol);
    CHECK(max_rel_err(adam.exp_avg_sq(k).to_vector<double>(), ref[k].v) < tol);
  }
}

void run_sgd_case(DType dt, double momentum, bool nesterov, double tol) {
  Generator gen(9);
  std::vector<Tensor> ps = {make_param(gen, {3, 4}, dt), make_param(gen, {5}, dt)};
  eng::ParamGroup a, b;
  a.params = {ps[0]};  // default weight decay from the options
  b.params = {ps[1]};
  b.weight_decay = 0.0;
  b.lr_scale = 2.0;
  eng::SGDOptions opt;
  opt.lr = 0.1;
  opt.momentum = momentum;
  opt.weight_decay = 1e-2;
  opt.nesterov = nesterov;
  eng::SGD sgd({a, b}, opt);
  std::vector<RefSGD> ref(2);
  for (size_t k = 0; k < 2; k++) ref[k].p = ps[k].to_vector<double>();
  const double wds[] = {1e-2, 0.0}, scales[] = {1.0, 2.0};
  for (int s = 0; s < 6; s++) {
    double lr = 0.1 / (1 + s);
    sgd.set_lr(lr);
    sgd.zero_grad();
    for (size_t k = 0; k < 2; k++) ps[k].set_grad(grad_for(ps[k], k, s));
    sgd.step();
    for (size_t k = 0; k < 2; k++) ref[k].step(ps[k].grad().to_vector<double>(), lr * scales[k], momentum, wds[k], nesterov);
  }
  for (size_t k = 0; k < 2; k++) CHECK(max_rel_err(ps[k].to_vector<double>(), ref[k].p) < tol);
}

template <typename Opt, typename Options>
void check_round_trip(DType dt, Options opt, bool through_json) {
  Generator gen(21);
  std::vector<std::pair<std::string, Tensor>> named = {{"blocks.0.fc.weight", make_param(gen, {6, 4}, dt)},
                                                        {"blocks.0.fc.bias", make_param(gen, {6}, dt)},
                                                        {"cls_token", make_param(gen, {1, 1, 4}, dt)}};
  auto groups = eng::param_groups_weight_decay(named, 0.1);
  Opt a(groups, opt);
  auto grads_at = [&](std::vector<Tensor>& ps, int s) {
    for (size_t k = 0; k < ps.size(); k++) ps[k].set_grad(grad_for(ps[k], k, s));
  };
  std::vector<Tensor> pa = a.params();
  for (int s = 0; s < 3; s++) {
    a.zero_grad();
    grads_at(pa, s);
    a.step();
  }
  // Snapshot: parameters and optimizer state copied out (a checkpoint would write them to disk).
  eng::OptimizerState saved = a.state_dict();
  eng::OptimizerState copy;
  copy.meta = through_json ? nlohmann::json::parse(saved.meta.dump()) : saved.meta;
  for (auto& [k, t] : saved.tensors) copy.tensors[k] = t.clone();
  std::vector<std::pair<std::string, Tensor>> named_b;
  for (auto& [n, p] : named) named_b.push_back({n, copy_param(p)});

  // A fresh optimizer (different lr, to see the saved one restored) continues from the snapshot.
  Options other = opt;
  other.lr = 123.0;
  Opt b(eng::param_groups_weight_decay(named_b, 0.7), other);
  b.load_state_dict(copy);
  CHECK(b.lr() == a.lr());
  CHECK(b.step_count() == a.step_count());
  std::vector<Tensor> pb = b.params();
  for (int s = 3; s < 6; s++) {
    a.zero_grad();
    b.zero_grad();
    grads_at(pa, s);
    grads_at(pb, s);
    a.step();
    b.step();
  }
  for (size_t k = 0; k < pa.size(); k++) {
    CAPTURE(k);
    if (dt == DType::F32)
      CHECK(bitwise_equal<float>(pa[k], pb[k]));
    else
      CHECK(bitwise_equal<double>(pa[k], pb[k]));
  }
}

}  // namespace

TEST_SUITE("optim") {
  TEST_CASE("AdamW matches an f64 reference loop (groups, lr scales, skipped parameter)") {
    SUBCASE("f64") { run_adamw_case(DType::F64, 1e-12); }
    SUBCASE("f32") { run_adamw_case(DType::F32, 2e-5); }
  }

  TEST_CASE("AdamW single group uses the options' weight decay") {
    Generator gen(2);
    Tensor p = make_param(gen, {10}, DType::F64);
    RefAdamW ref{p.to_vector<double>(), std::vector<double>(10, 0.0), std::vector<double>(10, 0.0)};
    eng::AdamW adam({p}, {1e-3, 0.9, 0.999, 1e-8, 0.3});
    for (int s = 0; s < 4; s++) {
      p.set_grad(grad_for(p, 0, s));
      adam.step();
      ref.step(p.grad().to_vector<double>(), 1e-3, 0.3, 0.9, 0.999, 1e-8);
    }
    CHECK(max_rel_err(p.to_vector<double>(), ref.p) < 1e-12);
  }

  TEST_CASE("SGD matches torch.optim.SGD semantics in an f64 reference loop") {
    SUBCASE("plain") { run_sgd_case(DType::F64, 0.0, false, 1e-13); }
    SUBCASE("momentum") { run_sgd_case(DType::F64, 0.9, false, 1e-13); }
    SUBCASE("nesterov") { run_sgd_case(DType::F64, 0.9, true, 1e-13); }
    SUBCASE("momentum f32") { run_sgd_case(DType::F32, 0.9, false, 1e-5); }
  }

  TEST_CASE("AdamW kernel is bitwise identical for 1 and 2 threads") {
    auto run = [](int threads) {
      int prev = omp_get_max_threads();
      omp_set_num_threads(threads);
      Generator gen(77);
      Tensor p = make_param(gen, {300001}, DType::F32);
      eng::AdamW adam({p}, {});
      for (int s = 0; s < 3; s++) {
        p.set_grad(grad_for(p, 0, s));
        adam.step();
      }
      omp_set_num_threads(prev);
      return p;
    };
    CHECK(bitwise_equal<float>(run(1), run(2)));
  }

  TEST_CASE("MAE weight-decay split") {
    Generator gen(1);
    Tensor pos = Tensor::zeros({1, 5, 4});  // fixed sin-cos: no requires_grad, left out
    eng::NamedParams named = {
        {"cls_token", make_param(gen, {1, 1, 4}, DType::F32)},
        {"pos_embed", pos},
        {"patch_embed.proj.weight", make_param(gen, {4, 3, 2, 2}, DType::F32)},
        {"patch_embed.proj.bias", make_param(gen, {4}, DType::F32)},
        {"blocks.0.norm1.weight", make_param(gen, {4}, DType::F32)},
        {"blocks.0.attn.qkv.weight", make_param(gen, {12, 4}, DType::F32)},
        {"decoder_pos_embed_learned", make_param(gen, {1, 5, 4}, DType::F32)},
        {"mask_token", make_param(gen, {1, 1, 4}, DType::F32)},
        {"head.bias", make_param(gen, {1, 1}, DType::F32)},  // 2-D but named .bias
    };
    auto groups = eng::param_groups_weight_decay(named, 0.05);
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].weight_decay.value() == 0.0);
    CHECK(groups[1].weight_decay.value() == 0.05);
    CHECK(groups[0].names == std::vector<std::string>{"cls_token", "patch_embed.proj.bias", "blocks.0.norm1.weight",
                                                      "decoder_pos_embed_learned", "mask_token", "head.bias"});
    CHECK(groups[1].names == std::vector<std::string>{"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"});
    CHECK(groups[1].params[1].same_storage(named[5].second));
  }

  TEST_CASE("cosine schedule at key points") {
    eng::CosineSchedule s{1e-3, 1e-5, 10, 110};
    CHECK(s.lr(0) == 0.0);
    CHECK(s.lr(5) == doctest::Approx(5e-4).epsilon(1e-14));
    CHECK(s.lr(10) == doctest::Approx(1e-3).epsilon(1e-14));
    CHECK(s.lr(60) == doctest::Approx((1e-3 + 1e-5) / 2).epsilon(1e-14));
    CHECK(s.lr(35) == doctest::Approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + std::cos(M_PI / 4))).epsilon(1e-14));
    CHECK(s.lr(110) == 1e-5);
    CHECK(s.lr(500) == 1e-5);
    // Monotone: up during warm-up, down after.
    for (int i = 1; i < 10; i++) CHECK(s.lr(i) > s.lr(i - 1));
    for (int i = 11; i <= 110; i++) CHECK(s.lr(i) < s.lr(i - 1));
    eng::CosineSchedule no_warmup{1.0, 0.0, 0, 4};
    CHECK(no_warmup.lr(0) == 1.0);
    CHECK(no_warmup.lr(2) == doctest::Approx(0.5).epsilon(1e-15));
    CHECK_THROWS_AS(eng::CosineSchedule({1.0, 0.0, 5, 4}).lr(1), eng::Error);
  }

  TEST_CASE("clip_grad_norm against an f64 reference") {
    Generator gen(3);
    std::vector<Tensor> ps = {make_param(gen, {50, 40}, DType::F32), make_param(gen, {40}, DType::F32),
                              make_param(gen, {3}, DType::F64), make_param(gen, {2}, DType::F32)};
    for (size_t k = 0; k < 3; k++) ps[k].set_grad(grad_for(ps[k], k, 0));  // ps[3] has no gradient
    double ref = 0;
    for (size_t k = 0; k < 3; k++)
      for (double v : ps[k].grad().to_vector<double>()) ref += v * v;
    ref = std::sqrt(ref);
    CHECK(eng::grad_norm(ps) == doctest::Approx(ref).epsilon(1e-13));

    // Under the limit: untouched.
    std::vector<std::vector<double>> before;
    for (size_t k = 0; k < 3; k++) before.push_back(ps[k].grad().to_vector<double>());
    double n1 = eng::clip_grad_norm(ps, ref * 2);
    CHECK(n1 == doctest::Approx(ref).epsilon(1e-13));
    for (size_t k = 0; k < 3; k++) CHECK(ps[k].grad().to_vector<double>() == before[k]);

    // Over the limit: scaled by max_norm / (norm + 1e-6) (coefficient rounded to each grad's dtype).
    double max_norm = ref / 4;
    double n2 = eng::clip_grad_norm(ps, max_norm);
    CHECK(n2 == doctest::Approx(ref).epsilon(1e-13));
    double coef = max_norm / (n2 + 1e-6);
    for (size_t k = 0; k < 3; k++) {
      std::vector<double> g = ps[k].grad().to_vector<double>();
      for (size_t i = 0; i < g.size(); i++) {
        double want = ps[k].dtype() == DType::F32 ? double(float(before[k][i]) * float(coef)) : before[k][i] * coef;
        REQUIRE(g[i] == want);
      }
    }
    CHECK(eng::grad_norm(ps) == doctest::Approx(max_norm).epsilon(1e-6));
  }

  TEST_CASE("clip_grad_norm reports a non-finite norm and can name the parameter") {
    Generator gen(4);
    std::vector<Tensor> ps = {make_param(gen, {4}, DType::F32), make_param(gen, {3, 2}, DType::F32)};
    ps[0].set_grad(Tensor::ones({4}));
    ps[1].set_grad(Tensor::from_vector(std::vector<float>{1, 2, INFINITY, 4, 5, 6}, {3, 2}));
    std::vector<float> before = ps[0].grad().to_vector<float>();
    CHECK(std::isinf(eng::clip_grad_norm(ps, 1.0)));
    CHECK(ps[0].grad().to_vector<float>() == before);  // untouched
    CHECK_THROWS_WITH_AS(eng::clip_grad_norm(ps, 1.0, true), doctest::Contains("parameter 1 [3, 2]"), eng::Error);
    ps[1].set_grad(Tensor::from_vector(std::vector<float>{1, 2, NAN, 4, 5, 6}, {3, 2}));
    CHECK(std::isnan(eng::clip_grad_norm(ps, 1.0)));
  }

  TEST_CASE("grad_norm_tensor is grad_norm, as a device-side f64 scalar") {
    Generator gen(13);
    std::vector<Tensor> ps = {make_param(gen, {70, 90}, DType::F32), make_param(gen, {90}, DType::F32),
                              make_param(gen, {5}, DType::F32), make_param(gen, {20000}, DType::F32)};
    for (size_t k = 0; k < 4; k++)
      if (k != 2) ps[k].set_grad(grad_for(ps[k], k, 1));  // ps[2] has no gradient
    Tensor n = eng::grad_norm_tensor(ps);
    CHECK(n.dtype() == DType::F64);
    CHECK(n.numel() == 1);
    double want = eng::grad_norm(ps), got = n.item();
    CHECK(std::memcmp(&want, &got, sizeof(double)) == 0);
    // No gradient at all: 0. Mixed gradient dtypes: refused, naming the parameter.
    CHECK(eng::grad_norm_tensor({ps[2]}).item() == 0.0);
    Tensor d = make_param(gen, {3}, DType::F64);
    d.set_grad(grad_for(d, 9, 0));
    CHECK_THROWS_WITH_AS(eng::grad_norm_tensor({ps[0], d}), doctest::Contains("parameter 1 has an f64 gradient"),
                         eng::Error);
  }

  TEST_CASE("backend sum_squares: each tensor's f64 sum of squares, the terms global_norm adds") {
    Generator gen(21);
    // Sizes around the CPU's 4096-element blocks and 8 lanes, and an empty tensor.
    for (DType dt : {DType::F32, DType::F64}) {
      std::vector<Tensor> ts;
      for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(4095), int64_t(4096), int64_t(12289)})
        ts.push_back(gen.normal({n}, 0.0, 1.0, dt));
      std::vector<eng::SumSquaresTensor> list;
      for (const Tensor& t : ts) list.push_back({t.raw_data(), t.numel()});
      eng::Backend& cpu = eng::backend_for(eng::Device::cpu());
      std::vector<double> sums(ts.size(), -1.0);
      cpu.sum_squares(dt, list, sums.data());
      double total = 0, norm = 0;
      for (size_t k = 0; k < ts.size(); k++) {
        double ref = 0;
        for (double v : ts[k].to_vector<double>()) ref += v * v;
        CHECK(sums[k] == doctest::Approx(ref).epsilon(1e-13));
        total += sums[k];
      }
      CHECK(sums[0] == 0.0);
      cpu.global_norm(dt, list, &norm);
      const double from_sums = std::sqrt(total);
      CHECK(std::memcmp(&from_sums, &norm, sizeof(double)) == 0);
    }
    Tensor i = Tensor::zeros({3}, DType::I64);
    std::vector<double> one(1);
    CHECK_THROWS_WITH_AS(eng::backend_for(eng::Device::cpu()).sum_squares(DType::I64, {{i.raw_data(), 3}}, one.data()),
                         doctest::Contains("dtype i64 not supported"), eng::Error);
  }

  TEST_CASE("AdamW step with a grad-norm tensor is bitwise clip_grad_norm + step; a non-finite norm changes nothing") {
    for (DType dt : {DType::F32, DType::F64}) {
      CAPTURE(eng::dtype_name(dt));
      for (double max_norm : {0.0, 1e-2, 1e6}) {  // no clipping, clipping, a limit never reached
        CAPTURE(max_norm);
        Generator gen(21);
        std::vector<Tensor> a = {make_param(gen, {33, 17}, dt), make_param(gen, {17}, dt), make_param(gen, {4}, dt)};
        std::vector<Tensor> b;
        for (const Tensor& p : a) b.push_back(copy_param(p));
        eng::ParamGroup da, na, db, nb;
        da.params = {a[0]};
        na.params = {a[1], a[2]};
        na.weight_decay = 0.0;
        na.lr_scale = 0.5;
        db.params = {b[0]};
        nb.params = {b[1], b[2]};
        nb.weight_decay = 0.0;
        nb.lr_scale = 0.5;
        eng::AdamWOptions o;
        o.lr = 1e-2;
        o.weight_decay = 0.05;
        eng::AdamW oa({da, na}, o), ob({db, nb}, o);
        for (int s = 0; s < 3; s++) {
          for (size_t k = 0; k < 3; k++) {
            if (s == 1 && k == 2) continue;  // a parameter without a gradient on one step
            a[k].set_grad(grad_for(a[k], k, s));
            b[k].set_grad(grad_for(b[k], k, s));
          }
          if (max_norm > 0) eng::clip_grad_norm(a, max_norm);
          oa.step();
          ob.step(eng::grad_norm_tensor(b), max_norm);
          oa.zero_grad();
          ob.zero_grad();
        }
        for (size_t k = 0; k < 3; k++) {
          CAPTURE(k);
          if (dt == DType::F32) {
            CHECK(bitwise_equal<float>(a[k], b[k]));
            CHECK(bitwise_equal<float>(oa.exp_avg(k), ob.exp_avg(k)));
            CHECK(bitwise_equal<float>(oa.exp_avg_sq(k), ob.exp_avg_sq(k)));
          } else {
            CHECK(bitwise_equal<double>(a[k], b[k]));
            CHECK(bitwise_equal<double>(oa.exp_avg(k), ob.exp_avg(k)));
            CHECK(bitwise_equal<double>(oa.exp_avg_sq(k), ob.exp_avg_sq(k)));
          }
          CHECK(oa.param_step(k) == ob.param_step(k));
        }
        // A non-finite gradient: the norm says so and the step leaves parameters and moments alone.
        std::vector<double> p_before = b[0].to_vector<double>(), m_before = ob.exp_avg(0).to_vector<double>();
        std::vector<double> g = grad_for(b[0], 0, 7).to_vector<double>();
        g[5] = NAN;
        b[0].set_grad(Tensor::from_vector(g, b[0].shape()).to(dt));
        Tensor norm = eng::grad_norm_tensor(b);
        CHECK(std::isnan(norm.item()));
        ob.step(norm, max_norm);
        CHECK(b[0].to_vector<double>() == p_before);
        CHECK(ob.exp_avg(0).to_vector<double>() == m_before);
      }
    }
    Generator gen(2);
    Tensor p = make_param(gen, {3}, DType::F32);
    p.set_grad(Tensor::ones({3}));
    eng::AdamW opt({p}, {});
    CHECK_THROWS_WITH_AS(opt.step(Tensor::ones({2}, DType::F64), 1.0), doctest::Contains("one-element f64"), eng::Error);
  }

  TEST_CASE("grad norm is bitwise identical for 1 and 2 threads") {
    Generator gen(6);
    Tensor p = make_param(gen, {1000003}, DType::F32);
    p.set_grad(grad_for(p, 0, 0));
    auto norm = [&](int threads) {
      int prev = omp_get_max_threads();
      omp_set_num_threads(threads);
      double n = eng::grad_norm({p});
      omp_set_num_threads(prev);
      return n;
    };
    double a = norm(1), b = norm(2);
    CHECK(std::memcmp(&a, &b, sizeof(double)) == 0);
  }

  TEST_CASE("zero_grad drops gradients; set_lr sets the base lr") {
    Generator gen(8);
    Tensor p = make_param(gen, {3}, DType::F32);
    eng::SGD sgd({p}, {});
    p.set_grad(Tensor::ones({3}));
    sgd.zero_grad();
    CHECK_FALSE(p.grad().defined());
    sgd.step();  // no gradient: nothing moves
    sgd.set_lr(0.25);
    CHECK(sgd.lr() == 0.25);
  }

  TEST_CASE("gradients accumulate across backward calls: two half batches equal one full batch") {
    // Linear regression: loss = mean((x w - y)^2) over a batch of 8, in f64.
    Generator gen(10);
    Tensor x = gen.normal({8, 5}, 0.0, 1.0, DType::F64);
    Tensor y = gen.normal({8, 3}, 0.0, 1.0, DType::F64);
    Tensor w = make_param(gen, {5, 3}, DType::F64);
    auto loss_of = [&](const Tensor& xb, const Tensor& yb) {
      Tensor d = eng::matmul(xb, w) - yb;
      return eng::mean(d * d);
    };
    loss_of(x, y).backward();
    std::vector<double> full = w.grad().to_vector<double>();

    eng::SGD sgd({w}, {});
    sgd.zero_grad();
    for (int half = 0; half < 2; half++) {
      Tensor xb = x.slice(0, 4 * half, 4 * half + 4), yb = y.slice(0, 4 * half, 4 * half + 4);
      (loss_of(xb, yb) * 0.5).backward();
    }
    std::vector<double> acc = w.grad().to_vector<double>();
    for (size_t i = 0; i < full.size(); i++) CHECK(acc[i] == doctest::Approx(full[i]).epsilon(1e-13));

    // The same with plain half-batch losses and scale_grads(1/2).
    sgd.zero_grad();
    for (int half = 0; half < 2; half++)
      loss_of(x.slice(0, 4 * half, 4 * half + 4), y.slice(0, 4 * half, 4 * half + 4)).backward();
    eng::scale_grads({w}, 0.5);
    std::vector<double> acc2 = w.grad().to_vector<double>();
    for (size_t i = 0; i < full.size(); i++) CHECK(acc2[i] == doctest::Approx(full[i]).epsilon(1e-13));
  }

  TEST_CASE("state_dict round trip continues bit for bit") {
    SUBCASE("AdamW f32") { check_round_trip<eng::AdamW>(DType::F32, eng::AdamWOptions{}, false); }
    SUBCASE("AdamW f64 via JSON text") { check_round_trip<eng::AdamW>(DType::F64, eng::AdamWOptions{}, true); }
    SUBCASE("SGD momentum f32 via JSON text") {
      eng::SGDOptions o;
      o.momentum = 0.9;
      o.weight_decay = 1e-3;
      check_round_trip<eng::SGD>(DType::F32, o, true);
    }
  }

  TEST_CASE("state_dict keys use parameter names when known") {
    Generator gen(12);
    eng::NamedParams named = {{"a.weight", make_param(gen, {2, 2}, DType::F32)}, {"a.bias", make_param(gen, {2}, DType::F32)}};
    eng::AdamW named_opt(eng::param_groups_weight_decay(named, 0.1));
    eng::OptimizerState s = named_opt.state_dict();
    CHECK(s.tensors.count("exp_avg.a.weight") == 1);
    CHECK(s.tensors.count("exp_avg_sq.a.bias") == 1);
    CHECK(s.meta["type"] == "adamw");
    eng::AdamW plain({named[0].second, named[1].second});
    CHECK(plain.state_dict().tensors.count("exp_avg.1") == 1);
  }

  TEST_CASE("load_state_dict refuses a state that does not fit, naming the parameter") {
    Generator gen(13);
    eng::NamedParams named = {{"fc.weight", make_param(gen, {4, 3}, DType::F32)}, {"fc.bias", make_param(gen, {4}, DType::F32)}};
    eng::AdamW src(eng::param_groups_weight_decay(named, 0.1));
    eng::OptimizerState good = src.state_dict();

    SUBCASE("shape") {
      eng::NamedParams other = {{"fc.weight", make_param(gen, {5, 3}, DType::F32)}, {"fc.bias", make_param(gen, {4}, DType::F32)}};
      eng::AdamW dst(eng::param_groups_weight_decay(other, 0.1));
      CHECK_THROWS_WITH_AS(dst.load_state_dict(good), doctest::Contains("parameter 1 'fc.weight' [5, 3]: the saved state has shape [4, 3]"),
                           eng::Error);
    }
    SUBCASE("name") {
      eng::NamedParams other = {{"fc.w", make_param(gen, {4, 3}, DType::F32)}, {"fc.bias", make_param(gen, {4}, DType::F32)}};
      eng::AdamW dst(eng::param_groups_weight_decay(other, 0.1));
      CHECK_THROWS_WITH_AS(dst.load_state_dict(good), doctest::Contains("'fc.w' [4, 3]: the saved state has 'fc.weight'"), eng::Error);
    }
    SUBCASE("count") {
      eng::AdamW dst(eng::param_groups_weight_decay({named[0]}, 0.1));
      CHECK_THROWS_WITH_AS(dst.load_state_dict(good), doctest::Contains("group 0 has 1 parameters, this optimizer's has 0"),
                           eng::Error);
    }
    SUBCASE("optimizer type") {
      eng::SGD dst(eng::param_groups_weight_decay(named, 0.1));
      CHECK_THROWS_WITH_AS(dst.load_state_dict(good), doctest::Contains("for a 'adamw' optimizer"), eng::Error);
    }
    SUBCASE("missing or misshapen tensor leaves the optimizer unchanged") {
      eng::NamedParams same = {{"fc.weight", make_param(gen, {4, 3}, DType::F32)}, {"fc.bias", make_param(gen, {4}, DType::F32)}};
      eng::AdamW dst(eng::param_groups_weight_decay(same, 0.1), {0.5});
      eng::OptimizerState bad = good;
      bad.meta["lr"] = 9.0;
      bad.tensors.erase("exp_avg_sq.fc.bias");
      CHECK_THROWS_WITH_AS(dst.load_state_dict(bad), doctest::Contains("state tensor 'exp_avg_sq.fc.bias' is missing"), eng::Error);
      CHECK(dst.lr() == 0.5);
      bad.tensors["exp_avg_sq.fc.bias"] = Tensor::zeros({5});
      CHECK_THROWS_WITH_AS(dst.load_state_dict(bad), doctest::Contains("'exp_avg_sq.fc.bias' has shape [5]"), eng::Error);
      bad.tensors["exp_avg_sq.fc.bias"] = Tensor::zeros({4});
      bad.meta["param_steps"] = "oops";
      CHECK_THROWS_WITH_AS(dst.load_state_dict(bad), doctest::Contains("malformed saved state"), eng::Error);
      CHECK(dst.lr() == 0.5);
    }
  }

  TEST_CASE("optimizer construction errors") {
    Generator gen(14);
    Tensor p = make_param(gen, {3}, DType::F32);
    CHECK_THROWS_WITH_AS(eng::AdamW({p, p}), doctest::Contains("appears more than once"), eng::Error);
    Tensor q = make_param(gen, {4, 3}, DType::F32);
    Tensor strided = q.detach().t();
    strided.requires_grad_();
    CHECK_THROWS_WITH_AS(eng::AdamW({strided}), doctest::Contains("not contiguous"), eng::Error);
    Tensor nonleaf = q * 2.0;
    CHECK_THROWS_WITH_AS(eng::SGD({nonleaf}), doctest::Contains("not a leaf"), eng::Error);
  }
}
