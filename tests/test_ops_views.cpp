// test_ops_views.cpp: registry cases for the view ops (reshape, permute, slice, expand, ...) and matmul/linear.
#include "tests/op_registry.h"

using namespace optest;
using eng::Tensor;

namespace {

// Reference permutation of a row-major array.
HostArray permute_ref(const HostArray& x, const std::vector<int64_t>& p) {
  Shape s(p.size());
  for (size_t i = 0; i < p.size(); i++) s[i] = x.shape[size_t(p[i])];
  HostArray o = make_host(s);
  Shape in_strides = eng::contiguous_strides(x.shape);
  for (int64_t i = 0; i < o.numel(); i++) {
    int64_t rem = i, off = 0;
    for (size_t d = s.size(); d-- > 0;) {
      off += (rem % s[d]) * in_strides[size_t(p[d])];
      rem /= s[d];
    }
    o.v[size_t(i)] = x.v[size_t(off)];
  }
  return o;
}

OP_CASE({"reshape", {{{2, 3, 4}}}, [](const std::vector<Tensor>& x) { return x[0].reshape({4, -1}) * 1.0; },
         [](const std::vector<HostArray>& h) { HostArray o = h[0]; o.shape = {4, 6}; return o; }});
OP_CASE({"reshape of transposed view (copies)", {{{3, 4}, Kind::Normal, 0, true, true}},
         [](const std::vector<Tensor>& x) { return x[0].reshape({12}); },
         [](const std::vector<HostArray>& h) { HostArray o = h[0]; o.shape = {12}; return o; }});
OP_CASE({"permute", {{{2, 3, 4}}}, [](const std::vector<Tensor>& x) { return x[0].permute({2, 0, 1}).contiguous(); },
         [](const std::vector<HostArray>& h) { return permute_ref(h[0], {2, 0, 1}); }});
OP_CASE({"transpose then elementwise", {{{2, 3, 4}}},
         [](const std::vector<Tensor>& x) { return eng::exp(x[0].transpose(0, 2)); },
         [](const std::vector<HostArray>& h) { return map_unary(permute_ref(h[0], {2, 1, 0}), [](double v) { return std::exp(v); }); }});
OP_CASE({"slice with step", {{{5, 6}}}, [](const std::vector<Tensor>& x) { return x[0].slice(1, 1, -1, 2) * 1.0; },
         [](const std::vector<HostArray>& h) {
           HostArray o = make_host({5, 2});
           for (int64_t i = 0; i < 5; i++)
             for (int64_t j = 0; j < 2; j++) o.at({i, j}) = h[0].at({i, 1 + 2 * j});
           return o;
         }});
OP_CASE({"select", {{{3, 4}}}, [](const std::vector<Tensor>& x) { return x[0].select(0, -1) * 2.0; },
         [](const std::vector<HostArray>& h) {
           HostArray o = make_host({4});
           for (int64_t j = 0; j < 4; j++) o.v[size_t(j)] = 2 * h[0].at({2, j});
           return o;
         }});
OP_CASE({"expand (gradient sums)", {{{3, 1}}}, [](const std::vector<Tensor>& x) { return x[0].expand({2, 3, 4}) * 1.0; },
         [](const std::vector<HostArray>& h) {
           HostArray o = make_host({2, 3, 4});
           for (int64_t a = 0; a < 2; a++)
             for (int64_t b = 0; b < 3; b++)
               for (int64_t c = 0; c < 4; c++) o.at({a, b, c}) = h[0].v[size_t(b)];
           return o;
         }});
OP_CASE({"unsqueeze/squeeze/flatten", {{{2, 3, 2}}},
         [](const std::vector<Tensor>& x) { return x[0].unsqueeze(1).squeeze(1).flatten(1) * 1.0; },
         [](const std::vector<HostArray>& h) { HostArray o = h[0]; o.shape = {2, 6}; return o; }});

HostArray matmul_ref(const HostArray& a, const HostArray& b) {  // [.., m, k] x [k, n] or same-batch
  int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  int64_t batch = a.numel() / (m * k);
  bool bb = b.shape.size() > 2;
  Shape s(a.shape.begin(), a.shape.end() - 1);
  s.push_back(n);
  HostArray o = make_host(s);
  for (int64_t q = 0; q < batch; q++)
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        double acc = 0;
        for (int64_t l = 0; l < k; l++)
          acc += a.v[size_t(q * m * k + i * k + l)] * b.v[size_t((bb ? q * k * n : 0) + l * n + j)];
        o.v[size_t(q * m * n + i * n + j)] = acc;
      }
  return o;
}

OP_CASE({"matmul 2d", {{{5, 7}}, {{7, 3}}}, [](const std::vector<Tensor>& x) { return eng::matmul(x[0], x[1]); },
         [](const std::vector<HostArray>& h) { return matmul_ref(h[0], h[1]); }});
OP_CASE({"matmul transposed operands", {{{5, 7}, Kind::Normal, 0, true, true}, {{7, 3}, Kind::Normal, 0, true, true}},
         [](const std::vector<Tensor>& x) { return eng::matmul(x[0], x[1]); },
         [](const std::vector<HostArray>& h) { return matmul_ref(h[0], h[1]); }});
OP_CASE({"matmul batched", {{{2, 3, 4, 5}}, {{2, 3, 5, 2}}}, [](const std::vector<Tensor>& x) { return eng::matmul(x[0], x[1]); },
         [](const std::vector<HostArray>& h) { return matmul_ref(h[0], h[1]); }});
OP_CASE({"matmul [b,m,k] x [k,n]", {{{3, 4, 5}}, {{5, 2}}}, [](const std::vector<Tensor>& x) { return eng::matmul(x[0], x[1]); },
         [](const std::vector<HostArray>& h) { return matmul_ref(h[0], h[1]); }});
OP_CASE({"matmul broadcast batch", {{{1, 4, 3}}, {{2, 3, 2}}},
         [](const std::vector<Tensor>& x) { return eng::matmul(x[0], x[1]); },
         [](const std::vector<HostArray>& h) {
           HostArray a2 = make_host({2, 4, 3});
           for (size_t i = 0; i < a2.v.size(); i++) a2.v[i] = h[0].v[i % 12];
           return matmul_ref(a2, h[1]);
         }});
OP_CASE({"matmul vector-matrix", {{{4}}, {{4, 3}}}, [](const std::vector<Tensor>& x) { return eng::matmul(x[0], x[1]); },
         [](const std::vector<HostArray>& h) {
           HostArray a = h[0];
           a.shape = {1, 4};
           HostArray o = matmul_ref(a, h[1]);
           o.shape = {3};
           return o;
         }});
OP_CASE({"linear with bias", {{{2, 3, 4}}, {{5, 4}}, {{5}}},
         [](const std::vector<Tensor>& x) { return eng::linear(x[0], x[1], x[2]); },
         [](const std::vector<HostArray>& h) {
           HostArray o = make_host({2, 3, 5});
           for (int64_t r = 0; r < 6; r++)
             for (int64_t j = 0; j < 5; j++) {
               double acc = h[2].v[size_t(j)];
               for (int64_t l = 0; l < 4; l++) acc += h[0].v[size_t(r * 4 + l)] * h[1].at({j, l});
               o.v[size_t(r * 5 + j)] = acc;
             }
           return o;
         }});

}  // namespace
