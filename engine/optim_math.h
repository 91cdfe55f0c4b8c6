// optim_math.h: the per-element math of the fused AdamW update, written once for the CPU loop
// (engine/backends/cpu/cpu_optim.cpp) and a CUDA kernel (ENG_HOST_DEVICE), so the CPU tests check
// the math the GPU runs. Kept free of Tensor/JSON headers so device code can include it cheaply.
//
// Update (PyTorch AdamW, decoupled weight decay), with t the 1-based step of this parameter:
//   p  = p * (1 - lr*wd)
//   m  = b1*m + (1-b1)*g
//   v  = b2*v + (1-b2)*g*g
//   p  = p - (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
// which is p -= lr * m_hat / (sqrt(v_hat) + eps) with m_hat, v_hat the bias-corrected moments.
// Scalars are computed once in double (adamw_scalars) and rounded to T; the element math runs in T.
// Note for CUDA: nvcc contracts a*b+c into fma by default; compile this with -fmad=false (or use
// __fmul_rn/__fadd_rn) where a bitwise CPU/GPU match is wanted.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/backend.h"
#include "engine/host_device.h"

namespace eng {

template <typename T> struct AdamWScalars {
  T decay;            // 1 - lr*wd
  T beta1, one_minus_beta1;
  T beta2, one_minus_beta2;
  T step_size;        // lr / (1 - b1^t)
  T bias2_sqrt;       // sqrt(1 - b2^t)
  T eps;
};

template <typename T> inline AdamWScalars<T> adamw_scalars(const AdamWArgs& a) {
  double t = double(a.step);
  double bc1 = 1.0 - std::pow(a.beta1, t);
  double bc2 = 1.0 - std::pow(a.beta2, t);
  AdamWScalars<T> s;
  s.decay = T(1.0 - a.lr * a.weight_decay);
  s.beta1 = T(a.beta1);
  s.one_minus_beta1 = T(1.0 - a.beta1);
  s.beta2 = T(a.beta2);
  s.one_minus_beta2 = T(1.0 - a.beta2);
  s.step_size = T(a.lr / bc1);
  s.bias2_sqrt = T(std::sqrt(bc2));
  s.eps = T(a.eps);
  return s;
}

template <typename T>
ENG_HOST_DEVICE inline void adamw_element(T& p, T g, T& m, T& v, const AdamWScalars<T>& s) {
  T pd = p * s.decay;
  T mn = s.beta1 * m + s.one_minus_beta1 * g;
  T vn = s.beta2 * v + s.one_minus_beta2 * (g * g);
  T denom = ::sqrt(vn) / s.bias2_sqrt + s.eps;
  p = pd - s.step_size * (mn / denom);
  m = mn;
  v = vn;
}

}  // namespace eng
