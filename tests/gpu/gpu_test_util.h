// gpu_test_util.h: helpers for the GPU suites (build/run_tests_gpu): the skip guard, host/device moves,
// deterministic test data and the error measures the suites use. Plain C++ against the engine's API, so the GPU
// test binary also builds (and skips) where the CUDA backend is not compiled in.
#pragma once
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/rng.h"
#ifdef ENGINE_WITH_CUDA
#include "engine/backends/cuda/attention_impl.h"
#endif

namespace gputest {

using eng::Device;
using eng::DType;
using eng::Shape;
using eng::Tensor;

inline Device cuda() { return Device::cuda(0); }
inline Device cpu() { return Device::cpu(); }

// Every GPU test starts with this: without a GPU it prints why and passes.
#define GPU_TEST_OR_SKIP()                                                                                       \
  do {                                                                                                           \
    if (!::eng::cuda_available()) {                                                                              \
      MESSAGE(::gputest::skip_reason());                                                                         \
      return;                                                                                                    \
    }                                                                                                            \
  } while (0)

inline bool cuda_built() {
#ifdef ENGINE_WITH_CUDA
  return true;
#else
  return false;
#endif
}
inline std::string skip_reason() {
  return cuda_built() ? "skipped: no CUDA GPU visible"
                      : "skipped: no CUDA GPU visible, and this build has no CUDA backend (nvcc/cuBLAS not found)";
}

// A detached, contiguous copy on `dev` (always a new buffer, even when t is already there: tests mutate it).
inline Tensor on(const Tensor& t, Device dev) {
  Tensor r = t.detach().to(dev);
  if (r.defined() && t.defined() && r.same_storage(t)) r = r.clone();
  return r.detach();
}

// Deterministic data: Philox normals / uniforms on the CPU in f64, then converted.
inline Tensor normal(const Shape& s, uint64_t seed, DType dt = DType::F32, double std = 1.0) {
  eng::Generator g(seed, 77);
  return g.normal(s, 0.0, std, DType::F64).to(dt);
}
inline Tensor uniform(const Shape& s, uint64_t seed, double lo, double hi, DType dt = DType::F32) {
  eng::Generator g(seed, 78);
  return g.uniform(s, lo, hi, DType::F64).to(dt);
}
// i64 values in [0, hi).
inline Tensor indices(const Shape& s, int64_t hi, uint64_t seed) {
  Tensor u = uniform(s, seed, 0.0, double(hi), DType::F64);
  std::vector<int64_t> v;
  for (double x : u.to_vector<double>()) v.push_back(std::min<int64_t>(hi - 1, int64_t(std::floor(x))));
  return Tensor::from_vector(v, s);
}

// max |a - b| / max |b| (1e-30 floor); NaN anywhere in the difference counts as infinite.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double e = std::fabs(a[i] - b[i]);
    if (std::isnan(e) && !(std::isnan(a[i]) && std::isnan(b[i]))) return INFINITY;
    if (!std::isnan(e)) d = std::max(d, e);
    if (!std::isnan(b[i])) m = std::max(m, std::fabs(b[i]));
  }
  return d / std::max(m, 1e-30);
}
inline double rel_err(const Tensor& a, const Tensor& b) { return rel_err(a.to_vector<double>(), b.to_vector<double>()); }

// Bitwise equality of two tensors' values (any devices and layouts, same dtype).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.detach().to(cpu()).contiguous(), y = b.detach().to(cpu()).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// Largest violation of |a - b| <= bound, as a ratio (<= 1 passes); bound[i] per element.
inline double bound_ratio(const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& bound) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double e = std::fabs(a[i] - b[i]);
    if (std::isnan(e)) return INFINITY;
    worst = std::max(worst, e / std::max(bound[i], 1e-300));
  }
  return worst;
}

// While alive, bf16 attention runs the engine's own kernels, not cuDNN's (for bounds derived for our kernels).
struct OwnAttentionKernels {
#ifdef ENGINE_WITH_CUDA
  eng::cuda::AttentionImplScope scope{eng::cuda::AttentionImpl::Own};
#endif
};

inline bool cudnn_attention_built() {
#ifdef ENGINE_WITH_CUDA
  return eng::cuda::cudnn_attention_compiled();
#else
  return false;
#endif
}

// Fused-attention calls so far: {cuDNN forward, cuDNN backward, own forward, own backward}.
inline std::array<int64_t, 4> attention_counts_now() {
#ifdef ENGINE_WITH_CUDA
  const eng::cuda::AttentionCounts c = eng::cuda::attention_counts();
  return {c.cudnn_forward, c.cudnn_backward, c.own_forward, c.own_backward};
#else
  return {0, 0, 0, 0};
#endif
}

inline std::string cudnn_attention_report_now() {
#ifdef ENGINE_WITH_CUDA
  return eng::cuda::cudnn_attention_report();
#else
  return "no CUDA backend in this build";
#endif
}

}  // namespace gputest
