// test_ops_reduce.cpp: registry cases for sum, mean, var, std, amax over various dims.
#include <cmath>

#include "tests/op_registry.h"

using namespace optest;
using eng::Tensor;

namespace {

// Reference reduction of a [A, B, C] array over the dims in `mask` (bit d set = reduce dim d).
HostArray reduce3(const HostArray& x, int mask, bool keep, const char* kind, bool unbiased = true) {
  int64_t A = x.shape[0], B = x.shape[1], C = x.shape[2];
  Shape ks = {mask & 1 ? 1 : A, mask & 2 ? 1 : B, mask & 4 ? 1 : C};
  HostArray sum = make_host(ks), sq = make_host(ks), mx = make_host(ks, -INFINITY);
  int64_t n = (A * B * C) / eng::shape_numel(ks);
  auto idx = [&](int64_t a, int64_t b, int64_t c) {
    return ((mask & 1 ? 0 : a) * ks[1] + (mask & 2 ? 0 : b)) * ks[2] + (mask & 4 ? 0 : c);
  };
  for (int64_t a = 0; a < A; a++)
    for (int64_t b = 0; b < B; b++)
      for (int64_t c = 0; c < C; c++) {
        double v = x.at({a, b, c});
        sum.v[size_t(idx(a, b, c))] += v;
        mx.v[size_t(idx(a, b, c))] = std::max(mx.v[size_t(idx(a, b, c))], v);
      }
  for (int64_t a = 0; a < A; a++)
    for (int64_t b = 0; b < B; b++)
      for (int64_t c = 0; c < C; c++) {
        double d = x.at({a, b, c}) - sum.v[size_t(idx(a, b, c))] / double(n);
        sq.v[size_t(idx(a, b, c))] += d * d;
      }
  HostArray out = make_host(ks);
  std::string k = kind;
  for (size_t i = 0; i < out.v.size(); i++) {
    double var = sq.v[i] / double(unbiased ? n - 1 : n);
    out.v[i] = k == "sum" ? sum.v[i] : k == "mean" ? sum.v[i] / double(n) : k == "var" ? var : k == "std" ? std::sqrt(var) : mx.v[i];
  }
  if (!keep) {
    Shape s;
    for (int d = 0; d < 3; d++)
      if (!(mask & (1 << d))) s.push_back(x.shape[size_t(d)]);
    out.shape = s;
  }
  return out;
}

OP_CASE({"sum all", {{{2, 3, 4}}}, [](const std::vector<Tensor>& x) { return eng::sum(x[0]); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 7, false, "sum"); }});
OP_CASE({"sum dim 1", {{{2, 3, 4}}}, [](const std::vector<Tensor>& x) { return eng::sum(x[0], {1}); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 2, false, "sum"); }});
OP_CASE({"sum dims 0,2 keepdim", {{{2, 3, 4}}}, [](const std::vector<Tensor>& x) { return eng::sum(x[0], {0, -1}, true); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 5, true, "sum"); }});
OP_CASE({"sum dim 2 of transposed view", {{{2, 3, 4}, Kind::Normal, 0, true, true}},
         [](const std::vector<Tensor>& x) { return eng::sum(x[0], {2}); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 4, false, "sum"); }});
OP_CASE({"mean dim -1", {{{2, 3, 5}}}, [](const std::vector<Tensor>& x) { return eng::mean(x[0], {-1}); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 4, false, "mean"); }});
OP_CASE({"mean all", {{{2, 3, 5}}}, [](const std::vector<Tensor>& x) { return eng::mean(x[0]); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 7, false, "mean"); }});
OP_CASE({"var unbiased dim 1", {{{2, 4, 3}}}, [](const std::vector<Tensor>& x) { return eng::var(x[0], {1}); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 2, false, "var"); }});
OP_CASE({"var biased dims 1,2 keepdim", {{{2, 4, 3}}},
         [](const std::vector<Tensor>& x) { return eng::var(x[0], {1, 2}, false, true); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 6, true, "var", false); }});
OP_CASE({"std unbiased dim 2", {{{2, 3, 6}}}, [](const std::vector<Tensor>& x) { return eng::std(x[0], {2}); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 4, false, "std"); }});
OP_CASE({"amax dim 1", {{{2, 5, 3}, Kind::Distinct}}, [](const std::vector<Tensor>& x) { return eng::amax(x[0], {1}); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 2, false, "max"); }});
OP_CASE({"amax all", {{{2, 5, 3}, Kind::Distinct}}, [](const std::vector<Tensor>& x) { return eng::amax(x[0]); },
         [](const std::vector<HostArray>& h) { return reduce3(h[0], 7, false, "max"); }});

}  // namespace
