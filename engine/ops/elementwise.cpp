// elementwise.cpp: unary, binary (broadcasting), comparison and selection ops with their backward.
#include <cmath>

#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

namespace {

void check_float(const Tensor& x, const char* op) {
  ENG_CHECK(is_floating(x.dtype()), "{}: needs a floating tensor, got {}", op, dtype_name(x.dtype()));
}

Tensor unary_kernel(UnaryOp op, const Tensor& x, const char* name, UnaryParams p = {}) {
  check_float(x, name);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel()) backend_for(x.device()).unary(op, desc_of(out), desc_of(x), p);
  return out;
}

Tensor binary_kernel(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  check_same_device(a, b, name);
  ENG_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ ({} and {}); convert one with .to()", name, dtype_name(a.dtype()),
            dtype_name(b.dtype()));
  Shape s = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  if (out.numel())
    backend_for(a.device()).binary(op, desc_of(out), desc_of(a.detach().expand(s)), desc_of(b.detach().expand(s)));
  return out;
}

// A gradient helper: apply a binary backward kernel (a = saved value, b = incoming gradient).
Tensor grad_kernel(BinaryOp op, const Tensor& saved, const Tensor& g) { return binary_kernel(op, saved, g, "backward"); }

Tensor scalar_like(double v, const Tensor& t) { return Tensor::scalar(v, t.dtype(), t.device()); }

}  // namespace

// ---------------------------------------------------------------- binary

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::Add, a, b, "add");
  Shape sa = a.shape(), sb = b.shape();
  return record("add", out, {a, b}, [sa, sb](const Tensor& g) { return std::vector<Tensor>{sum_to(g, sa), sum_to(g, sb)}; });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::Sub, a, b, "sub");
  Shape sa = a.shape(), sb = b.shape();
  bool gb = b.requires_grad();
  return record("sub", out, {a, b}, [sa, sb, gb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), gb ? neg(sum_to(g, sb)) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::Mul, a, b, "mul");
  if (!any_requires_grad({&a, &b})) return out;
  Tensor sa = b.requires_grad() ? a.detach() : Tensor();  // only what the other gradient needs
  Tensor sb = a.requires_grad() ? b.detach() : Tensor();
  Shape ha = a.shape(), hb = b.shape();
  return record("mul", out, {a, b}, [sa, sb, ha, hb](const Tensor& g) {
    return std::vector<Tensor>{sb.defined() ? sum_to(mul(g, sb), ha) : Tensor(),
                               sa.defined() ? sum_to(mul(g, sa), hb) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::Div, a, b, "div");
  if (!any_requires_grad({&a, &b})) return out;
  Tensor sb = b.detach();
  Tensor so = b.requires_grad() ? out.detach() : Tensor();
  Shape ha = a.shape(), hb = b.shape();
  bool ga = a.requires_grad();
  return record("div", out, {a, b}, [sb, so, ha, hb, ga](const Tensor& g) {
    Tensor g_over_b = div(g, sb);
    return std::vector<Tensor>{ga ? sum_to(g_over_b, ha) : Tensor(),
                               so.defined() ? neg(sum_to(mul(g_over_b, so), hb)) : Tensor()};
  });
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(BinaryOp::Pow, a, b, "pow");
  if (!any_requires_grad({&a, &b})) return out;
  Tensor sa = a.detach(), sb = b.detach(), so = out.detach();
  Shape ha = a.shape(), hb = b.shape();
  bool ga = a.requires_grad(), gb = b.requires_grad();
  return record("pow", out, {a, b}, [=](const Tensor& g) {
    Tensor dA, dB;
    if (ga) dA = sum_to(mul(g, mul(sb, pow(sa, sub(sb, scalar_like(1.0, sb))))), ha);
    if (gb) dB = sum_to(mul(g, mul(so, log(sa))), hb);
    return std::vector<Tensor>{dA, dB};
  });
}

static Tensor extremum(const Tensor& a, const Tensor& b, bool is_max) {
  Tensor out = binary_kernel(is_max ? BinaryOp::Maximum : BinaryOp::Minimum, a, b, is_max ? "maximum" : "minimum");
  if (!any_requires_grad({&a, &b})) return out;
  Tensor sa = a.detach(), sb = b.detach();
  Shape ha = a.shape(), hb = b.shape();
  return record(is_max ? "maximum" : "minimum", out, {a, b}, [=](const Tensor& g) {
    // The larger (smaller) operand takes the gradient; ties split it in half, as PyTorch does.
    Tensor wins = is_max ? gt(sa, sb) : lt(sa, sb);
    Tensor ties = mul(eq(sa, sb), 0.5);
    Tensor wa = add(wins, ties);
    Tensor wb = sub(scalar_like(1.0, wa), wa);
    return std::vector<Tensor>{sum_to(mul(g, wa), ha), sum_to(mul(g, wb), hb)};
  });
}
Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(a, b, false); }

Tensor add(const Tensor& a, double s) {
  Tensor out = unary_kernel(UnaryOp::AddScalar, a, "add", {s, 0});
  return record("add_scalar", out, {a}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor mul(const Tensor& a, double s) {
  Tensor out = unary_kernel(UnaryOp::MulScalar, a, "mul", {s, 0});
  return record("mul_scalar", out, {a}, [s](const Tensor& g) { return std::vector<Tensor>{mul(g, s)}; });
}

Tensor pow(const Tensor& a, double e) {
  Tensor out = unary_kernel(UnaryOp::PowScalar, a, "pow", {e, 0});
  if (!any_requires_grad({&a})) return out;
  Tensor sa = a.detach();
  return record("pow_scalar", out, {a}, [sa, e](const Tensor& g) {
    Tensor d = e == 2.0 ? mul(sa, 2.0) : mul(pow(sa, e - 1.0), e);
    return std::vector<Tensor>{mul(g, d)};
  });
}

// ---------------------------------------------------------------- unary

Tensor neg(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Neg, x, "neg");
  return record("neg", out, {x}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
}

Tensor exp(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Exp, x, "exp");
  if (!any_requires_grad({&x})) return out;
  Tensor y = out.detach();
  return record("exp", out, {x}, [y](const Tensor& g) { return std::vector<Tensor>{mul(g, y)}; });
}

Tensor log(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Log, x, "log");
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  return record("log", out, {x}, [sx](const Tensor& g) { return std::vector<Tensor>{div(g, sx)}; });
}

Tensor sqrt(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Sqrt, x, "sqrt");
  if (!any_requires_grad({&x})) return out;
  Tensor y = out.detach();
  return record("sqrt", out, {x}, [y](const Tensor& g) { return std::vector<Tensor>{mul(div(g, y), 0.5)}; });
}

Tensor rsqrt(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Rsqrt, x, "rsqrt");
  if (!any_requires_grad({&x})) return out;
  Tensor y = out.detach();
  // d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
  return record("rsqrt", out, {x}, [y](const Tensor& g) { return std::vector<Tensor>{mul(mul(g, pow(y, 3.0)), -0.5)}; });
}

Tensor tanh(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Tanh, x, "tanh");
  if (!any_requires_grad({&x})) return out;
  Tensor y = out.detach();
  return record("tanh", out, {x}, [y](const Tensor& g) { return std::vector<Tensor>{grad_kernel(BinaryOp::TanhBackward, y, g)}; });
}

Tensor sigmoid(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Sigmoid, x, "sigmoid");
  if (!any_requires_grad({&x})) return out;
  Tensor y = out.detach();
  return record("sigmoid", out, {x},
                [y](const Tensor& g) { return std::vector<Tensor>{grad_kernel(BinaryOp::SigmoidBackward, y, g)}; });
}

Tensor relu(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Relu, x, "relu");
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  return record("relu", out, {x}, [sx](const Tensor& g) { return std::vector<Tensor>{grad_kernel(BinaryOp::ReluBackward, sx, g)}; });
}

Tensor gelu(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Gelu, x, "gelu");
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  return record("gelu", out, {x}, [sx](const Tensor& g) { return std::vector<Tensor>{grad_kernel(BinaryOp::GeluBackward, sx, g)}; });
}

Tensor erf(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Erf, x, "erf");
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  return record("erf", out, {x}, [sx](const Tensor& g) {
    Tensor d = mul(exp(neg(square(sx))), 2.0 / std::sqrt(M_PI));
    return std::vector<Tensor>{mul(g, d)};
  });
}

Tensor abs(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Abs, x, "abs");
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  return record("abs", out, {x},
                [sx](const Tensor& g) { return std::vector<Tensor>{mul(g, unary_kernel(UnaryOp::Sign, sx, "sign"))}; });
}

Tensor square(const Tensor& x) {
  Tensor out = unary_kernel(UnaryOp::Square, x, "square");
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach();
  return record("square", out, {x}, [sx](const Tensor& g) { return std::vector<Tensor>{mul(g, mul(sx, 2.0))}; });
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  ENG_CHECK(lo <= hi, "clamp: lower bound {} above upper bound {}", lo, hi);
  Tensor out = unary_kernel(UnaryOp::Clamp, x, "clamp", {lo, hi});
  if (!any_requires_grad({&x})) return out;
  Tensor sx = x.detach(), y = out.detach();
  // Gradient passes where the value was not clipped (bounds included, as in PyTorch).
  return record("clamp", out, {x}, [sx, y](const Tensor& g) { return std::vector<Tensor>{mul(g, eq(sx, y))}; });
}

// ---------------------------------------------------------------- comparisons and selection

Tensor gt(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::Gt, a, b, "gt"); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::Lt, a, b, "lt"); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::Ge, a, b, "ge"); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::Le, a, b, "le"); }
Tensor eq(const Tensor& a, const Tensor& b) { return binary_kernel(BinaryOp::Eq, a, b, "eq"); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_same_device(a, b, "where");
  check_same_device(cond, a, "where");
  ENG_CHECK(a.dtype() == b.dtype(), "where: dtypes differ ({} and {})", dtype_name(a.dtype()), dtype_name(b.dtype()));
  Shape s = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape()), b.shape());
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  Tensor c = cond.detach().expand(s);
  if (out.numel())
    backend_for(a.device()).where(desc_of(out), desc_of(c), desc_of(a.detach().expand(s)), desc_of(b.detach().expand(s)));
  if (!any_requires_grad({&a, &b})) return out;
  Shape ha = a.shape(), hb = b.shape();
  Tensor sc = cond.detach();
  return record("where", out, {a, b}, [sc, ha, hb](const Tensor& g) {
    Tensor zero = Tensor::scalar(0.0, g.dtype(), g.device());
    return std::vector<Tensor>{sum_to(where(sc, g, zero), ha), sum_to(where(sc, zero, g), hb)};
  });
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  return where(mask, Tensor::scalar(value, x.dtype(), x.device()), x);
}

}  // namespace eng
