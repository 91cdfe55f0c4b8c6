// test_ops_elementwise.cpp: registry cases for unary, binary (broadcasting), comparison and where ops.
#include <cmath>

#include "tests/op_registry.h"

using namespace optest;
using eng::Tensor;

namespace {

double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

#define UNARY_CASE(NAME, KIND, FN, REF)                                                                       \
  OP_CASE({NAME, {{{3, 5}, KIND}}, [](const std::vector<Tensor>& x) { return FN(x[0]); },                     \
           [](const std::vector<HostArray>& h) { return map_unary(h[0], [](double v) { return REF; }); }});   \
  OP_CASE({NAME " (transposed view)", {{{4, 3}, KIND, 0, true, true}},                                        \
           [](const std::vector<Tensor>& x) { return FN(x[0]); },                                             \
           [](const std::vector<HostArray>& h) { return map_unary(h[0], [](double v) { return REF; }); }})

UNARY_CASE("neg", Kind::Normal, eng::neg, -v);
UNARY_CASE("exp", Kind::Normal, eng::exp, std::exp(v));
UNARY_CASE("log", Kind::Positive, eng::log, std::log(v));
UNARY_CASE("sqrt", Kind::Positive, eng::sqrt, std::sqrt(v));
UNARY_CASE("rsqrt", Kind::Positive, eng::rsqrt, 1 / std::sqrt(v));
UNARY_CASE("tanh", Kind::Normal, eng::tanh, std::tanh(v));
UNARY_CASE("sigmoid", Kind::Normal, eng::sigmoid, 1 / (1 + std::exp(-v)));
UNARY_CASE("relu", Kind::Distinct, eng::relu, v > 0 ? v : 0);
UNARY_CASE("gelu", Kind::Normal, eng::gelu, gelu_ref(v));
UNARY_CASE("erf", Kind::Normal, eng::erf, std::erf(v));
UNARY_CASE("abs", Kind::Distinct, eng::abs, std::fabs(v));
UNARY_CASE("square", Kind::Normal, eng::square, v * v);
UNARY_CASE("pow scalar 3", Kind::Positive, [](const Tensor& t) { return eng::pow(t, 3.0); }, v * v * v);
UNARY_CASE("pow scalar -0.5", Kind::Positive, [](const Tensor& t) { return eng::pow(t, -0.5); }, std::pow(v, -0.5));
UNARY_CASE("add scalar", Kind::Normal, [](const Tensor& t) { return t + 2.5; }, v + 2.5);
UNARY_CASE("mul scalar", Kind::Normal, [](const Tensor& t) { return t * -1.5; }, v * -1.5);
UNARY_CASE("clamp", Kind::Distinct, [](const Tensor& t) { return eng::clamp(t, -0.33, 0.47); },
           v < -0.33 ? -0.33 : (v > 0.47 ? 0.47 : v));

#define BINARY_CASE(NAME, KA, KB, SA, SB, FN, REF)                                                                \
  OP_CASE({NAME, {{SA, KA}, {SB, KB}}, [](const std::vector<Tensor>& x) { return FN(x[0], x[1]); },             \
           [](const std::vector<HostArray>& h) { return broadcast_binary(h[0], h[1], [](double a, double b) { return REF; }); }})

BINARY_CASE("add", Kind::Normal, Kind::Normal, Shape({2, 3, 4}), Shape({2, 3, 4}), eng::add, a + b);
BINARY_CASE("add broadcast", Kind::Normal, Kind::Normal, Shape({2, 3, 4}), Shape({3, 1}), eng::add, a + b);
BINARY_CASE("add broadcast both", Kind::Normal, Kind::Normal, Shape({2, 1, 4}), Shape({3, 1}), eng::add, a + b);
BINARY_CASE("sub broadcast", Kind::Normal, Kind::Normal, Shape({4}), Shape({3, 4}), eng::sub, a - b);
BINARY_CASE("mul broadcast", Kind::Normal, Kind::Normal, Shape({2, 3, 4}), Shape({1, 3, 1}), eng::mul, a * b);
BINARY_CASE("mul scalar tensor", Kind::Normal, Kind::Normal, Shape({3, 4}), Shape({}), eng::mul, a * b);
BINARY_CASE("div broadcast", Kind::Normal, Kind::Positive, Shape({3, 4}), Shape({4}), eng::div, a / b);
BINARY_CASE("pow tensor", Kind::Positive, Kind::Normal, Shape({3, 4}), Shape({3, 4}), eng::pow, std::pow(a, b));
BINARY_CASE("maximum", Kind::Distinct, Kind::Normal, Shape({3, 4}), Shape({3, 4}), eng::maximum, a > b ? a : b);
BINARY_CASE("minimum broadcast", Kind::Distinct, Kind::Normal, Shape({3, 4}), Shape({4}), eng::minimum, a < b ? a : b);
// Comparisons have no gradient: their inputs are marked grad=false.
OP_CASE({"gt", {{{3, 4}, Kind::Normal, 0, false}, {{3, 4}, Kind::Normal, 0, false}},
         [](const std::vector<Tensor>& x) { return eng::gt(x[0], x[1]); },
         [](const std::vector<HostArray>& h) { return broadcast_binary(h[0], h[1], [](double a, double b) { return a > b ? 1.0 : 0.0; }); }});
OP_CASE({"le broadcast", {{{3, 4}, Kind::Normal, 0, false}, {{1}, Kind::Normal, 0, false}},
         [](const std::vector<Tensor>& x) { return eng::le(x[0], x[1]); },
         [](const std::vector<HostArray>& h) { return broadcast_binary(h[0], h[1], [](double a, double b) { return a <= b ? 1.0 : 0.0; }); }});

OP_CASE({"mul with transposed operand",
         {{{3, 4}, Kind::Normal, 0, true, true}, {{3, 4}, Kind::Normal}},
         [](const std::vector<Tensor>& x) { return x[0] * x[1]; },
         [](const std::vector<HostArray>& h) { return broadcast_binary(h[0], h[1], [](double a, double b) { return a * b; }); }});

OP_CASE({"where",
         {{{3, 4}, Kind::Normal, 0, false}, {{3, 4}, Kind::Normal}, {{4}, Kind::Normal}},
         [](const std::vector<Tensor>& x) { return eng::where(eng::gt(x[0], Tensor::scalar(0.0, x[0].dtype())), x[1], x[2]); },
         [](const std::vector<HostArray>& h) {
           HostArray o = make_host({3, 4});
           for (int64_t i = 0; i < 3; i++)
             for (int64_t j = 0; j < 4; j++) o.at({i, j}) = h[0].at({i, j}) > 0 ? h[1].at({i, j}) : h[2].v[size_t(j)];
           return o;
         }});

OP_CASE({"masked_fill",
         {{{3, 4}, Kind::Normal}, {{3, 1}, Kind::Normal, 0, false}},
         [](const std::vector<Tensor>& x) { return eng::masked_fill(x[0], eng::gt(x[1], Tensor::scalar(0.0, x[1].dtype())), -7.0); },
         [](const std::vector<HostArray>& h) {
           HostArray o = h[0];
           for (int64_t i = 0; i < 3; i++)
             for (int64_t j = 0; j < 4; j++)
               if (h[1].v[size_t(i)] > 0) o.at({i, j}) = -7.0;
           return o;
         }});

OP_CASE({"composite: reused input (x*x + exp(x))",
         {{{5}, Kind::Normal}},
         [](const std::vector<Tensor>& x) { return x[0] * x[0] + eng::exp(x[0]); },
         [](const std::vector<HostArray>& h) { return map_unary(h[0], [](double v) { return v * v + std::exp(v); }); }});

}  // namespace
