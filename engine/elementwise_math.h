// elementwise_math.h: the per-element math of unary and binary ops, written once for the CPU loops
// and the CUDA kernels (ENG_HOST_DEVICE), so the CPU tests check the math the GPU runs.
#pragma once
#include <cmath>

#include "engine/backend.h"
#include "engine/fast_math_f32.h"
#include "engine/host_device.h"

namespace eng {

template <typename T> ENG_HOST_DEVICE inline T gelu_exact(T x) {
  return T(0.5) * x * (T(1) + ::erf(x * T(0.70710678118654752440)));
}
// d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
template <typename T> ENG_HOST_DEVICE inline T gelu_exact_grad(T x) {
  T cdf = T(0.5) * (T(1) + ::erf(x * T(0.70710678118654752440)));
  T pdf = ::exp(T(-0.5) * x * x) * T(0.39894228040143267794);
  return cdf + x * pdf;
}
// f32 GELU: the vectorisable polynomial form of engine/fast_math_f32.h (accuracy stated there) instead of libm's
// erf/exp; f64 keeps libm for the gradient checks.
template <> ENG_HOST_DEVICE inline float gelu_exact<float>(float x) { return gelu_f32(x); }
template <> ENG_HOST_DEVICE inline float gelu_exact_grad<float>(float x) { return gelu_grad_f32(x); }
template <typename T> ENG_HOST_DEVICE inline T sigmoid_of(T x) {
  return x >= T(0) ? T(1) / (T(1) + ::exp(-x)) : ::exp(x) / (T(1) + ::exp(x));
}

template <typename T> ENG_HOST_DEVICE inline T unary_math(UnaryOp op, T x, T a, T b) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return ::exp(x);
    case UnaryOp::Log: return ::log(x);
    case UnaryOp::Sqrt: return ::sqrt(x);
    case UnaryOp::Rsqrt: return T(1) / ::sqrt(x);
    case UnaryOp::Tanh: return ::tanh(x);
    case UnaryOp::Sigmoid: return sigmoid_of(x);
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Gelu: return gelu_exact(x);
    case UnaryOp::Erf: return ::erf(x);
    case UnaryOp::Abs: return ::fabs(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return T(1) / x;
    case UnaryOp::PowScalar: return a == T(2) ? x * x : ::pow(x, a);
    case UnaryOp::AddScalar: return x + a;
    case UnaryOp::MulScalar: return x * a;
    case UnaryOp::Clamp: return x != x ? x : (x < a ? a : (x > b ? b : x));
    case UnaryOp::Sign: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
  }
  return x;
}

template <typename T> ENG_HOST_DEVICE inline T binary_math(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return ::pow(a, b);
    case BinaryOp::Maximum: return (a != a || a > b) ? a : b;
    case BinaryOp::Minimum: return (a != a || a < b) ? a : b;
    case BinaryOp::Gt: return a > b ? T(1) : T(0);
    case BinaryOp::Lt: return a < b ? T(1) : T(0);
    case BinaryOp::Ge: return a >= b ? T(1) : T(0);
    case BinaryOp::Le: return a <= b ? T(1) : T(0);
    case BinaryOp::Eq: return a == b ? T(1) : T(0);
    case BinaryOp::Ne: return a != b ? T(1) : T(0);
    case BinaryOp::GeluBackward: return b * gelu_exact_grad(a);
    case BinaryOp::ReluBackward: return a > T(0) ? b : T(0);
    case BinaryOp::TanhBackward: return b * (T(1) - a * a);
    case BinaryOp::SigmoidBackward: return b * a * (T(1) - a);
  }
  return a;
}

// Integer tensors take only the ops that make sense for indices.
template <typename T> ENG_HOST_DEVICE inline T binary_int(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return b == 0 ? T(0) : T(a / b);
    case BinaryOp::Maximum: return a > b ? a : b;
    case BinaryOp::Minimum: return a < b ? a : b;
    case BinaryOp::Gt: return a > b;
    case BinaryOp::Lt: return a < b;
    case BinaryOp::Ge: return a >= b;
    case BinaryOp::Le: return a <= b;
    case BinaryOp::Eq: return a == b;
    case BinaryOp::Ne: return a != b;
    default: return T(0);
  }
}

}  // namespace eng
