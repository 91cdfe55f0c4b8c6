// fast_math_f32.h: branch-free f32 exp, normal CDF and exact-erf GELU (value and derivative), written once for
// the CPU loops and the CUDA kernels. Pure arithmetic with integer bit tricks, selects and explicit fused
// multiply-adds (fma_f32), no other libm call, so a loop over them vectorises (`#pragma omp simd`) and every
// target that computes them (AVX-512, AVX2, baseline x86-64, CUDA) gets the same bits, on any thread count.
//
// Accuracy (checked against f64 over dense sweeps in tests/test_ops_fused.cpp):
//   exp_f32(x):        within 1 ulp for -87 <= x <= 88; 0 below -87 (the true value is < 1.7e-38).
//   normal_cdf_f32(x): absolute error <= 2.5e-7 everywhere; relative error <= 5e-7 for x >= -12 (x^2 is carried
//                      exactly into the exp); 0 below about -13.2, where Phi < 1e-38.
//   gelu_f32:          x * Phi(x): relative error <= 5e-7 for x >= -12 (plus one rounding).
//   gelu_grad_f32:     absolute error <= 2.5e-7 everywhere (finite x).
// How: erfc(z) = t exp(-z^2 + P(t)) with t = 1 / (1 + z / 2) and P of degree 9, whose coefficients are our own
// minimax-weighted least-squares fit of log(erfc(z) / t) + z^2 over z in [0, 10] in f64 (error of the exponent
// 4.6e-8, i.e. relative error of erfc). Phi(x) = erfc(-x / sqrt2) / 2 then needs one exp for every x, and the
// negative tail keeps its relative accuracy instead of cancelling in 1 + erf.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine/host_device.h"

namespace eng {

ENG_HOST_DEVICE inline int32_t f32_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
#endif
}

ENG_HOST_DEVICE inline float f32_from_bits(int32_t i) {
#ifdef __CUDA_ARCH__
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#endif
}

// a * b + c rounded once: the hardware fma where the target has one (AVX-512, AVX2+FMA clones, CUDA), libm's
// correctly rounded fmaf elsewhere, so every target gets the same bits.
ENG_HOST_DEVICE inline float fma_f32(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// exp(hi + lo) for f32, Cephes-style, with the argument given as a sum whose small part lo is added only after the
// range reduction, so a large hi (an exactly known -x^2 / 2, say) loses nothing to rounding hi + lo:
// hi + lo = n ln2 + r with |r| <= ln2/2 (n rounded with the 1.5 * 2^23 trick, its integer read from the bits),
// exp(r) by a degree-6 polynomial, 2^n built in the exponent field. +inf and NaN come back as themselves.
// (Float selects like `x < lo ? lo : x` can stop GCC from vectorising under -ftrapping-math, hence the integer
// clamp and the bit mask.)
ENG_HOST_DEVICE inline float exp_sum_f32(float hi, float lo) {
  const float x = hi + lo;
  const float round_magic = 12582912.0f;
  const float nm = x * 1.44269504088896341f + round_magic;
  int32_t ni = f32_to_bits(nm) - f32_to_bits(round_magic);
  ni = ni < -126 ? -126 : ni;
  ni = ni > 127 ? 127 : ni;
  const float n = float(ni);
  float r = fma_f32(n, -0.693359375f, hi);  // ln2 split in two so n * ln2_hi is exact
  r = fma_f32(n, 2.12194440e-4f, r) + lo;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = fma_f32(p, r, 1.3981999507e-3f);
  p = fma_f32(p, r, 8.3334519073e-3f);
  p = fma_f32(p, r, 4.1665795894e-2f);
  p = fma_f32(p, r, 1.6666665459e-1f);
  p = fma_f32(p, r, 5.0000001201e-1f);
  p = fma_f32(p, z, r) + 1.0f;
  const float y = p * f32_from_bits((ni + 127) << 23);
  // A mask, not a multiply: the polynomial of -inf is NaN.
  const float out = f32_from_bits(f32_to_bits(y) & (x >= -87.0f ? -1 : 0));
  return out + (x == x ? 0.0f : x);  // NaN in, NaN out
}

// exp for f32 (exp_sum_f32 with nothing small to add): within 1 ulp for -87 <= x <= 88.
ENG_HOST_DEVICE inline float exp_f32(float x) {
  const float round_magic = 12582912.0f;
  const float nm = x * 1.44269504088896341f + round_magic;
  int32_t ni = f32_to_bits(nm) - f32_to_bits(round_magic);
  ni = ni < -126 ? -126 : ni;
  ni = ni > 127 ? 127 : ni;
  const float n = float(ni);
  float r = fma_f32(n, -0.693359375f, x);
  r = fma_f32(n, 2.12194440e-4f, r);
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = fma_f32(p, r, 1.3981999507e-3f);
  p = fma_f32(p, r, 8.3334519073e-3f);
  p = fma_f32(p, r, 4.1665795894e-2f);
  p = fma_f32(p, r, 1.6666665459e-1f);
  p = fma_f32(p, r, 5.0000001201e-1f);
  p = fma_f32(p, z, r) + 1.0f;
  const float y = p * f32_from_bits((ni + 127) << 23);
  const float out = f32_from_bits(f32_to_bits(y) & (x >= -87.0f ? -1 : 0));
  return out + (x == x ? 0.0f : x);
}

// exp(-x^2 / 2), the unnormalised standard normal density. x^2 is carried exactly as a float pair
// (x x + fma(x, x, -x x)), so the tail keeps full relative accuracy.
ENG_HOST_DEVICE inline float gauss_f32(float x) {
  const float xx = x * x;
  return exp_sum_f32(-0.5f * xx, xx < INFINITY ? -0.5f * fma_f32(x, x, -xx) : 0.0f);
}

// The standard normal CDF Phi(x) = erfc(-x / sqrt2) / 2, from erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2),
// z = |x| / sqrt2 >= 0, and Phi = 1 - erfc(z) / 2 for x >= 0. One exp, one division, one degree-9 polynomial and
// no branch; erfc keeps its relative accuracy in the tail, so Phi does too for negative x.
ENG_HOST_DEVICE inline float normal_cdf_f32(float x) {
  const float ax = f32_from_bits(f32_to_bits(x) & 0x7fffffff);
  const float xx = x * x;  // z^2 = x^2 / 2 = (xx + xx_lo) / 2 exactly
  const float xx_lo = xx < INFINITY ? fma_f32(x, x, -xx) : 0.0f;  // inf - inf would be NaN
  const float t = 1.0f / fma_f32(0.35355339059327376f, ax, 1.0f);  // 1 / (1 + z / 2), z = |x| / sqrt2
  float p = 1.4220042114847023e-1f;
  p = fma_f32(p, t, -6.660875169387215e-1f);
  p = fma_f32(p, t, 1.1224363269539888f);
  p = fma_f32(p, t, -6.512653788552386e-1f);
  p = fma_f32(p, t, -1.1679897049984958e-1f);
  p = fma_f32(p, t, 2.0215794813399312e-2f);
  p = fma_f32(p, t, 2.8345661645306195e-2f);
  p = fma_f32(p, t, 3.8790310389986976e-1f);
  p = fma_f32(p, t, 9.984920110132155e-1f);
  p = fma_f32(p, t, -1.2654414077993956f);
  const float half_erfc = 0.5f * (t * exp_sum_f32(-0.5f * xx, fma_f32(-0.5f, xx_lo, p)));
  return x < 0.0f ? half_erfc : 1.0f - half_erfc;
}

// GELU with the exact erf form: x Phi(x).
ENG_HOST_DEVICE inline float gelu_f32(float x) { return x * normal_cdf_f32(x); }

// d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
ENG_HOST_DEVICE inline float gelu_grad_f32(float x) {
  return fma_f32(x, gauss_f32(x) * 0.39894228040143267794f, normal_cdf_f32(x));
}

}  // namespace eng

